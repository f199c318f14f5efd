import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import * as http2 from "node:http2";
import * as net from "node:net";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError, createClient, type Client, type Transport } from "@connectrpc/connect";
import {
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
  Http2SessionManager,
} from "@connectrpc/connect-node";
import { SecretKind } from "../../gen/latchkey/v1/secret_pb.js";
import { SecretService } from "../../gen/latchkey/v1/secret_service_pb.js";
import { ADMIN_TOKEN, startTestServer, type TestServer } from "../support/server.js";

/** The same handlers through every protocol connect-node speaks, plus what curl users send by hand. */

const AUTH = { authorization: `Bearer ${ADMIN_TOKEN}` };
const CALL = { headers: AUTH, timeoutMs: 5_000 };
const SERVICE_PATH = "/latchkey.v1.SecretService";

interface Variant {
  readonly name: string;
  /** Short, name-safe label used as the secrets' name prefix, so variants never collide. */
  readonly prefix: string;
  readonly make: (baseUrl: string, sessions: Http2SessionManager[]) => Transport;
}

const h2Session = (baseUrl: string, sessions: Http2SessionManager[]) => {
  const sm = new Http2SessionManager(baseUrl);
  sessions.push(sm);
  return sm;
};

const VARIANTS: Variant[] = [
  {
    name: "gRPC over h2c",
    prefix: "grpc",
    make: (baseUrl, sessions) => createGrpcTransport({ baseUrl, sessionManager: h2Session(baseUrl, sessions) }),
  },
  {
    name: "Connect binary over HTTP/2",
    prefix: "connect-bin-h2",
    make: (baseUrl, sessions) =>
      createConnectTransport({ baseUrl, httpVersion: "2", useBinaryFormat: true, sessionManager: h2Session(baseUrl, sessions) }),
  },
  {
    name: "Connect JSON over HTTP/1.1",
    prefix: "connect-json-h1",
    make: (baseUrl) => createConnectTransport({ baseUrl, httpVersion: "1.1", useBinaryFormat: false }),
  },
  {
    name: "Connect JSON over HTTP/1.1 with GET for side-effect-free calls",
    prefix: "connect-get-h1",
    make: (baseUrl) => createConnectTransport({ baseUrl, httpVersion: "1.1", useBinaryFormat: false, useHttpGet: true }),
  },
  {
    name: "gRPC-Web binary over HTTP/1.1",
    prefix: "grpcweb-h1",
    make: (baseUrl) => createGrpcWebTransport({ baseUrl, httpVersion: "1.1" }),
  },
];

async function expectCode(p: Promise<unknown>, code: Code, what: string): Promise<ConnectError> {
  try {
    await p;
  } catch (err) {
    const ce = ConnectError.from(err);
    assert.equal(ce.code, code, `${what}: expected ${Code[code]}, got ${Code[ce.code]} (${ce.rawMessage})`);
    return ce;
  }
  assert.fail(`${what}: expected ${Code[code]}, but the call succeeded`);
}

describe("Connect clients over every protocol", () => {
  let s: TestServer;
  const sessions: Http2SessionManager[] = [];

  before(async () => {
    s = await startTestServer();
  });
  after(async () => {
    for (const sm of sessions) sm.abort();
    await s?.stop();
  });

  for (const variant of VARIANTS) {
    describe(variant.name, () => {
      let client: Client<typeof SecretService>;
      const n = (rest: string) => `${variant.prefix}/${rest}`;
      before(() => {
        client = createClient(SecretService, variant.make(s.url, sessions));
      });

      it("StoreSecret manual and automatic", async () => {
        let requestId: string | null = null;
        const manual = await client.storeSecret(
          { name: n("db"), value: `${variant.prefix}-v1`, description: "d" },
          { ...CALL, onHeader: (h) => (requestId = h.get("x-request-id")) },
        );
        assert.equal(manual.value, `${variant.prefix}-v1`);
        assert.equal(manual.secret?.kind, SecretKind.MANUAL);
        assert.equal(manual.secret?.currentVersion, 1);
        assert.equal(manual.secret?.revision, 1n);
        assert.equal(manual.version?.version, 1);
        assert.equal(manual.version?.current, true);
        assert.match(requestId ?? "", /^req_[0-9a-f]{32}$/, "x-request-id response header");

        const auto = await client.storeSecret(
          { name: n("auto"), kind: SecretKind.AUTOMATIC, rotationInterval: { seconds: 3600n }, gracePeriod: { seconds: 600n } },
          CALL,
        );
        assert.equal(auto.secret?.kind, SecretKind.AUTOMATIC);
        assert.equal(auto.secret?.rotationInterval?.seconds, 3600n);
        assert.equal(auto.secret?.gracePeriod?.seconds, 600n);
        assert.ok(auto.value.length >= 32);
      });

      it("GetSecret current and by version", async () => {
        const cur = await client.getSecret({ name: n("db") }, { timeoutMs: 5_000 });
        assert.equal(cur.value, `${variant.prefix}-v1`);
        assert.equal(cur.version?.version, 1);
        const v1 = await client.getSecret({ name: n("db"), version: 1 }, { timeoutMs: 5_000 });
        assert.equal(v1.value, `${variant.prefix}-v1`);
      });

      it("VerifySecret valid and invalid", async () => {
        const ok = await client.verifySecret({ name: n("db"), value: `${variant.prefix}-v1` }, { timeoutMs: 5_000 });
        assert.equal(ok.valid, true);
        assert.equal(ok.version, 1);
        const bad = await client.verifySecret({ name: n("db"), value: "nope" }, { timeoutMs: 5_000 });
        assert.equal(bad.valid, false);
        assert.equal(bad.version, 0);
      });

      it("ListSecrets pages with a token, without values", async () => {
        const first = await client.listSecrets({ namePrefix: `${variant.prefix}/`, pageSize: 1 }, CALL);
        assert.deepEqual(
          first.secrets.map((x) => x.name),
          [n("auto")],
        );
        assert.notEqual(first.nextPageToken, "");
        const second = await client.listSecrets(
          { namePrefix: `${variant.prefix}/`, pageSize: 1, pageToken: first.nextPageToken },
          CALL,
        );
        assert.deepEqual(
          second.secrets.map((x) => x.name),
          [n("db")],
        );
        assert.equal(second.nextPageToken, "");
        for (const sec of [...first.secrets, ...second.secrets]) assert.equal("value" in sec, false);
      });

      it("UpdateSecret with a new value makes version 2", async () => {
        const res = await client.updateSecret(
          { name: n("db"), value: `${variant.prefix}-v2`, gracePeriod: { seconds: 300n } },
          CALL,
        );
        assert.equal(res.secret?.currentVersion, 2);
        const cur = await client.getSecret({ name: n("db") }, { timeoutMs: 5_000 });
        assert.equal(cur.value, `${variant.prefix}-v2`);
        const old = await client.verifySecret({ name: n("db"), value: `${variant.prefix}-v1` }, { timeoutMs: 5_000 });
        assert.equal(old.valid, true, "version 1 inside its grace period");
        assert.equal(old.version, 1);
      });

      it("RotateSecret generates a new value", async () => {
        const before = await client.getSecret({ name: n("auto") }, { timeoutMs: 5_000 });
        const rotated = await client.rotateSecret({ name: n("auto") }, CALL);
        assert.equal(rotated.version?.version, 2);
        assert.notEqual(rotated.value, before.value);
        const v = await client.verifySecret({ name: n("auto"), value: rotated.value }, { timeoutMs: 5_000 });
        assert.equal(v.version, 2);
      });

      it("error codes: NotFound, AlreadyExists, InvalidArgument, FailedPrecondition, Unauthenticated", async () => {
        await expectCode(client.getSecret({ name: n("ghost") }, { timeoutMs: 5_000 }), Code.NotFound, "get missing");
        await expectCode(client.storeSecret({ name: n("db"), value: "dup" }, CALL), Code.AlreadyExists, "duplicate");
        const bad = await expectCode(client.storeSecret({ name: "bad name!", value: "x" }, CALL), Code.InvalidArgument, "bad name");
        assert.match(bad.rawMessage, /name must be segments/, "Connect clients decode the message fully");
        await expectCode(client.storeSecret({ name: n("empty"), value: "" }, CALL), Code.InvalidArgument, "empty value");
        await expectCode(client.rotateSecret({ name: n("db") }, CALL), Code.FailedPrecondition, "rotate manual");
        await expectCode(client.listSecrets({}, { timeoutMs: 5_000 }), Code.Unauthenticated, "no token");
        await expectCode(
          client.deleteSecret({ name: n("db") }, { headers: { authorization: "Bearer wrong-token-0123456789" } }),
          Code.Unauthenticated,
          "wrong token",
        );
      });

      it("DeleteSecret, then NotFound", async () => {
        await client.deleteSecret({ name: n("db") }, CALL);
        await client.deleteSecret({ name: n("auto") }, CALL);
        await expectCode(client.getSecret({ name: n("db") }, { timeoutMs: 5_000 }), Code.NotFound, "deleted");
        await expectCode(client.deleteSecret({ name: n("db") }, CALL), Code.NotFound, "delete again");
        const rest = await client.listSecrets({ namePrefix: `${variant.prefix}/` }, CALL);
        assert.deepEqual(rest.secrets, []);
      });
    });
  }
});

describe("raw Connect JSON, as curl users send it", () => {
  let s: TestServer;
  let guarded: TestServer;

  const rpc = (method: string, body: unknown, headers: Record<string, string> = AUTH) =>
    fetch(`${s.url}${SERVICE_PATH}/${method}`, {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body: typeof body === "string" ? body : JSON.stringify(body),
      signal: AbortSignal.timeout(5_000),
    });

  before(async () => {
    s = await startTestServer();
    guarded = await startTestServer({ LATCHKEY_ALLOWED_IPS: "10.0.0.1" });
    const res = await rpc("StoreSecret", { name: "raw/db", value: "raw-value-1", description: "raw" });
    assert.equal(res.status, 200);
  });
  after(async () => {
    await s?.stop();
    await guarded?.stop();
  });

  it("POST GetSecret: 200 JSON with camelCase fields", async () => {
    const res = await rpc("GetSecret", { name: "raw/db" }, {});
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type") ?? "", /^application\/json/);
    assert.ok(res.headers.get("x-request-id"));
    const body = await res.json();
    assert.equal(body.value, "raw-value-1");
    assert.equal(body.secret.name, "raw/db");
    assert.equal(body.secret.kind, "SECRET_KIND_MANUAL");
    assert.equal(body.secret.currentVersion, 1);
    assert.equal(body.secret.revision, "1", "uint64 as a JSON string");
    assert.equal(body.secret.store, "default");
    assert.match(body.secret.createdAt, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/);
    assert.match(body.secret.lastRotatedAt, /Z$/);
    assert.equal(body.version.version, 1);
    assert.equal(body.version.current, true);
    const keys = JSON.stringify(body);
    assert.doesNotMatch(keys, /"[a-z]+_[a-z_]+":/, "no snake_case keys");
  });

  it("accepts the original proto field names in requests too", async () => {
    const res = await rpc("ListSecrets", { name_prefix: "raw/", page_size: 10 });
    assert.equal(res.status, 200);
    const body = await res.json();
    assert.deepEqual(
      body.secrets.map((x: { name: string }) => x.name),
      ["raw/db"],
    );
  });

  it("errors: the Connect HTTP status and a {code, message} body", async () => {
    const cases: [string, unknown, Record<string, string>, number, string][] = [
      ["GetSecret", { name: "raw/ghost" }, {}, 404, "not_found"],
      ["ListSecrets", {}, {}, 401, "unauthenticated"],
      ["ListSecrets", {}, { authorization: "Bearer nope-nope-nope-nope" }, 401, "unauthenticated"],
      ["StoreSecret", { name: "bad name!", value: "x" }, AUTH, 400, "invalid_argument"],
      ["StoreSecret", { name: "raw/db", value: "x" }, AUTH, 409, "already_exists"],
      ["RotateSecret", { name: "raw/db" }, AUTH, 400, "failed_precondition"],
      ["GetSecret", "{not json", {}, 400, "invalid_argument"],
    ];
    for (const [method, body, headers, status, code] of cases) {
      const res = await rpc(method, body, headers);
      assert.equal(res.status, status, `${method} ${JSON.stringify(body)}`);
      assert.match(res.headers.get("content-type") ?? "", /^application\/json/);
      const err = await res.json();
      assert.equal(err.code, code);
      assert.equal(typeof err.message, "string");
      assert.ok(err.message.length > 0);
    }
  });

  it("permission_denied is 403 from an IP outside the allowlist", async () => {
    const res = await fetch(`${guarded.url}${SERVICE_PATH}/GetSecret`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ name: "raw/db" }),
    });
    assert.equal(res.status, 403);
    assert.equal((await res.json()).code, "permission_denied");
  });

  it("rejects an unknown JSON field with invalid_argument", async () => {
    const res = await rpc("StoreSecret", { name: "raw/typo", value: "x", colour: "red" });
    assert.equal(res.status, 400);
    const err = await res.json();
    assert.equal(err.code, "invalid_argument");
    assert.match(err.message, /colour/);
    const get = await rpc("GetSecret", { name: "raw/typo" }, {});
    assert.equal(get.status, 404, "nothing was created");
  });

  it("logs a request that fails to decode under its procedure, with the code the caller got", async () => {
    const res = await rpc("StoreSecret", { name: "raw/typo2", value: "x", colour: "red" }, { ...AUTH, "x-request-id": "raw-decode-fail-01" });
    assert.equal(res.status, 400);
    assert.equal((await res.json()).code, "invalid_argument");
    await new Promise((r) => setTimeout(r, 20));
    const lines = s.logs.map((l) => JSON.parse(l)).filter((l) => l.request_id === "raw-decode-fail-01");
    assert.equal(lines.length, 1);
    assert.equal(lines[0].op, "latchkey.v1.SecretService/StoreSecret");
    assert.equal(lines[0].code, "invalid_argument");
  });

  it("Connect GET for GetSecret (NO_SIDE_EFFECTS)", async () => {
    const message = encodeURIComponent(JSON.stringify({ name: "raw/db" }));
    const res = await fetch(`${s.url}${SERVICE_PATH}/GetSecret?encoding=json&message=${message}`, {
      signal: AbortSignal.timeout(5_000),
    });
    assert.equal(res.status, 200);
    const body = await res.json();
    assert.equal(body.value, "raw-value-1");
    assert.equal(body.secret.currentVersion, 1);
    const withVersion = await fetch(
      `${s.url}${SERVICE_PATH}/GetSecret?connect=v1&encoding=json&message=${encodeURIComponent('{"name":"raw/db","version":1}')}`,
    );
    assert.equal(withVersion.status, 200);
    const missing = await fetch(`${s.url}${SERVICE_PATH}/GetSecret?encoding=json&message=${encodeURIComponent('{"name":"raw/none"}')}`);
    assert.equal(missing.status, 404);
    assert.equal((await missing.json()).code, "not_found");
  });

  it("refuses GET for a call with side effects", async () => {
    const message = encodeURIComponent(JSON.stringify({ name: "raw/get-store", value: "x" }));
    const res = await fetch(`${s.url}${SERVICE_PATH}/StoreSecret?encoding=json&message=${message}`, { headers: AUTH });
    assert.equal(res.status, 405);
    await res.arrayBuffer();
    assert.equal((await rpc("GetSecret", { name: "raw/get-store" }, {})).status, 404);
  });

  it("answers an unknown procedure with 404", async () => {
    const res = await rpc("NoSuchMethod", {});
    assert.equal(res.status, 404);
    await res.arrayBuffer();
  });
});

/** A tiny HTTP/2 client on node:http2 (prior knowledge, cleartext). */
function h2Request(
  session: http2.ClientHttp2Session,
  path: string,
  body: unknown,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: http2.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = session.request({
      ":method": body === undefined ? "GET" : "POST",
      ":path": path,
      ...(body === undefined ? {} : { "content-type": "application/json" }),
      ...headers,
    });
    req.setTimeout(5_000, () => req.close(http2.constants.NGHTTP2_CANCEL));
    let status = 0;
    let respHeaders: http2.IncomingHttpHeaders = {};
    const chunks: Buffer[] = [];
    req.on("response", (h) => {
      status = Number(h[":status"]);
      respHeaders = h;
    });
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => resolve({ status, headers: respHeaders, body: Buffer.concat(chunks).toString("utf8") }));
    req.on("error", reject);
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

function connectH2(authority: string, createConnection?: () => net.Socket): Promise<http2.ClientHttp2Session> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(authority, createConnection ? { createConnection } : {});
    const timer = setTimeout(() => {
      session.destroy();
      reject(new Error("h2 session did not connect in time"));
    }, 5_000);
    session.once("connect", () => {
      clearTimeout(timer);
      resolve(session);
    });
    session.once("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

function curl(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile("curl", args, { timeout: 5_000 }, (err, stdout, stderr) => {
      // On failure execFile's error carries curl's exit status as a number in `code`.
      const code: unknown = err ? (err as { code?: unknown }).code : 0;
      resolve({ code: typeof code === "number" ? code : -1, stdout, stderr });
    });
  });
}

const hasCurl = await new Promise<boolean>((resolve) => {
  execFile("curl", ["--version"], { timeout: 3_000 }, (err, stdout) => resolve(!err && /nghttp2/.test(stdout)));
});

/**
 * A loopback TCP proxy that forwards what the client sends a byte at a time for the first `trickle` bytes, each in
 * its own write a few milliseconds apart, so the server's protocol sniffer sees tiny first packets.
 */
async function startTrickleProxy(target: number, trickle: number): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(target, "127.0.0.1");
    upstream.setNoDelay(true);
    sockets.add(client);
    sockets.add(upstream);
    for (const sock of [client, upstream]) {
      sock.on("close", () => sockets.delete(sock));
      sock.on("error", () => {
        client.destroy();
        upstream.destroy();
      });
    }
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
    upstream.pipe(client);
    let sent = 0;
    let queue: Promise<void> = Promise.resolve();
    client.on("data", (chunk: Buffer) => {
      client.pause();
      queue = queue.then(async () => {
        let i = 0;
        while (i < chunk.length && sent < trickle) {
          upstream.write(chunk.subarray(i, i + 1));
          i++;
          sent++;
          await new Promise((r) => setTimeout(r, 3));
        }
        if (i < chunk.length) upstream.write(chunk.subarray(i));
        client.resume();
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    async close() {
      for (const sock of sockets) sock.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

describe("HTTP/1.1 and h2c on one port", () => {
  let s: TestServer;
  let proxy: Awaited<ReturnType<typeof startTrickleProxy>> | undefined;
  const sessions: http2.ClientHttp2Session[] = [];

  before(async () => {
    s = await startTestServer();
    proxy = await startTrickleProxy(s.port, 40);
    const res = await s.admin(`${SERVICE_PATH}/StoreSecret`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ name: "dual/db", value: "dual-value" }),
    });
    assert.equal(res.status, 200);
  });
  after(async () => {
    for (const sess of sessions) sess.destroy();
    await proxy?.close();
    await s?.stop();
  });

  it("serves Connect JSON and REST over HTTP/2 prior knowledge (node:http2)", async () => {
    const session = await connectH2(s.url);
    sessions.push(session);
    const rpc = await h2Request(session, `${SERVICE_PATH}/GetSecret`, { name: "dual/db" });
    assert.equal(rpc.status, 200);
    assert.equal(JSON.parse(rpc.body).value, "dual-value");
    assert.ok(rpc.headers["x-request-id"]);
    const health = await h2Request(session, "/healthz", undefined);
    assert.equal(health.status, 200);
    assert.deepEqual(JSON.parse(health.body), { status: "ok" });
    const rest = await h2Request(session, "/v1/secrets/dual/db", undefined);
    assert.equal(rest.status, 200);
    assert.equal(JSON.parse(rest.body).value, "dual-value");
    session.close();
  });

  it("serves the same over HTTP/1.1 (fetch)", async () => {
    const res = await fetch(`${s.url}${SERVICE_PATH}/GetSecret`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ name: "dual/db" }),
    });
    assert.equal(res.status, 200);
    assert.equal((await res.json()).value, "dual-value");
  });

  it("curl --http1.1 and --http2-prior-knowledge on the same port", { skip: !hasCurl && "curl with nghttp2 not found" }, async () => {
    const url = `${s.url}${SERVICE_PATH}/GetSecret`;
    const common = ["-sS", "-H", "content-type: application/json", "-d", '{"name":"dual/db"}', "-w", "\n%{http_version} %{http_code}", url];
    const h1 = await curl(["--http1.1", ...common]);
    assert.equal(h1.code, 0, h1.stderr);
    const [h1Body, h1Meta] = h1.stdout.split("\n");
    assert.equal(h1Meta, "1.1 200");
    assert.equal(JSON.parse(h1Body ?? "").value, "dual-value");
    const h2 = await curl(["--http2-prior-knowledge", ...common]);
    assert.equal(h2.code, 0, h2.stderr);
    const [h2Body, h2Meta] = h2.stdout.split("\n");
    assert.equal(h2Meta, "2 200");
    assert.equal(JSON.parse(h2Body ?? "").value, "dual-value");
    const rest = await curl(["--http2-prior-knowledge", "-sS", "-w", "\n%{http_version} %{http_code}", `${s.url}/v1/secrets/dual/db`]);
    assert.equal(rest.stdout.split("\n")[1], "2 200");
  });

  it("sniffs HTTP/2 and HTTP/1.1 when the first bytes arrive one at a time", async () => {
    assert.ok(proxy);
    const proxied = `http://127.0.0.1:${proxy.port}`;

    const session = await connectH2(proxied);
    sessions.push(session);
    const h2 = await h2Request(session, `${SERVICE_PATH}/GetSecret`, { name: "dual/db" });
    assert.equal(h2.status, 200);
    assert.equal(JSON.parse(h2.body).value, "dual-value");
    const again = await h2Request(session, "/healthz", undefined);
    assert.equal(again.status, 200);
    session.close();

    // "P" starts both "PRI * HTTP/2.0" and "POST": the sniffer must wait for more and then pick HTTP/1.1.
    const h1 = await fetch(`${proxied}${SERVICE_PATH}/GetSecret`, {
      method: "POST",
      headers: { "content-type": "application/json", connection: "close" },
      body: JSON.stringify({ name: "dual/db" }),
      signal: AbortSignal.timeout(5_000),
    });
    assert.equal(h1.status, 200);
    assert.equal((await h1.json()).value, "dual-value");
  });

  it("gRPC through the trickling proxy too", async () => {
    assert.ok(proxy);
    const sm = new Http2SessionManager(`http://127.0.0.1:${proxy.port}`);
    try {
      const client = createClient(SecretService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${proxy.port}`, sessionManager: sm }));
      const res = await client.getSecret({ name: "dual/db" }, { timeoutMs: 5_000 });
      assert.equal(res.value, "dual-value");
    } finally {
      sm.abort();
    }
  });
});
