import assert from "node:assert/strict";
import * as http2 from "node:http2";
import * as net from "node:net";
import { after, before, describe, it } from "node:test";
import { create, toBinary } from "@bufbuild/protobuf";
import { GetSecretRequestSchema, SecretService } from "../../gen/latchkey/v1/secret_service_pb.js";
import { createH1Client, grpcFrame, grpcStatusOf, H2Client } from "../support/raw-http.js";
import { ADMIN_TOKEN, startTestServer, type TestServer } from "../support/server.js";

/**
 * What one client may take of the server: idle connections, slow headers and bodies (slow-loris), header and body
 * sizes, batch sizes and HTTP/2 streams per connection. The timeouts are shortened so the suite runs in seconds;
 * every wait is bounded. Assertions are about what happens (closed, refused, still served), never about how fast.
 */

const LIMITS = {
  LATCHKEY_IDLE_TIMEOUT_MS: "400",
  LATCHKEY_HEADERS_TIMEOUT_MS: "800",
  LATCHKEY_REQUEST_TIMEOUT_MS: "1500",
  LATCHKEY_MAX_CONCURRENT_STREAMS: "8",
};
const BOUND_MS = 15_000;

const GET_PATH = `/${SecretService.typeName}/GetSecret`;
const getFrame = (name: string) => grpcFrame(toBinary(GetSecretRequestSchema, create(GetSecretRequestSchema, { name })));

/** A raw TCP connection that records what it receives and when it is closed. */
interface RawConn {
  readonly socket: net.Socket;
  received(): string;
  readonly closed: Promise<void>;
}

function connect(port: number): Promise<RawConn> {
  return new Promise((resolve, reject) => {
    let data = "";
    const socket = net.connect(port, "127.0.0.1");
    socket.on("data", (c: Buffer) => (data += c.toString("latin1")));
    socket.on("error", () => {});
    const closed = new Promise<void>((r) => socket.once("close", () => r()));
    socket.once("connect", () => resolve({ socket, received: () => data, closed }));
    socket.once("error", reject);
  });
}

/** Resolves with `p`, or rejects if it takes longer than `ms` (a hang, not a slow machine: the bounds are wide). */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
    }),
  ]);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("limits", () => {
  let srv: TestServer;

  before(async () => {
    srv = await startTestServer({ ...LIMITS, LOG_LEVEL: "warn" });
    const r = await srv.admin("/v1/secrets", { method: "POST", body: JSON.stringify({ name: "db/password", value: "limits-value-1" }) });
    assert.equal(r.status, 201);
  });
  after(() => srv.stop());

  /** A served call, to show slow clients do not hold the server. */
  async function served(): Promise<void> {
    const r = await fetch(`${srv.url}/v1/secrets/db/password`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    assert.equal(r.status, 200);
    assert.equal(((await r.json()) as { value: string }).value, "limits-value-1");
  }

  it("drops connections that send nothing, and keeps serving while they are open", async () => {
    const idle = await Promise.all(Array.from({ length: 50 }, () => connect(srv.port)));
    await served();
    await within(Promise.all(idle.map((c) => c.closed)), BOUND_MS, "idle connections closed by the server");
    for (const c of idle) assert.equal(c.received(), "", "nothing is sent to a connection that never spoke");
  });

  it("answers a slow-loris client (headers one byte at a time) with 408 and closes it, serving others meanwhile", async () => {
    const slow = await Promise.all(Array.from({ length: 100 }, () => connect(srv.port)));
    for (const c of slow) c.socket.write("GET /v1/secrets/db/password HTTP/1.1\r\nHost: x\r\nX-Slow: ");
    let stop = false;
    const trickle = (async () => {
      while (!stop) {
        for (const c of slow) if (!c.socket.destroyed) c.socket.write("a");
        await sleep(100);
      }
    })();
    try {
      for (let i = 0; i < 20; i++) await served();
      await within(Promise.all(slow.map((c) => c.closed)), BOUND_MS, "slow-loris connections closed by the server");
    } finally {
      stop = true;
      await trickle;
    }
    for (const c of slow) assert.match(c.received(), /^HTTP\/1\.1 408 /, "a slow client is told why");
  });

  it("cuts off an HTTP/1.1 body that trickles in past the request timeout", async () => {
    const c = await connect(srv.port);
    c.socket.write(
      `POST /v1/secrets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{"name":"slow/body","value":"`,
    );
    const trickle = setInterval(() => !c.socket.destroyed && c.socket.write("x"), 100);
    try {
      await within(c.closed, BOUND_MS, "slow body connection closed");
    } finally {
      clearInterval(trickle);
    }
    assert.match(c.received(), /^HTTP\/1\.1 408 /);
    const r = await srv.admin("/v1/secrets/slow/body");
    assert.equal(r.status, 404, "nothing of the cut-off request was stored");
  });

  it("resets an HTTP/2 stream whose body trickles past the request timeout; the connection keeps serving", async () => {
    const session = http2.connect(srv.url);
    session.on("error", () => {});
    try {
      const headers = { ":method": "POST", ":path": GET_PATH, "content-type": "application/grpc", te: "trailers" };
      const slow = session.request(headers);
      slow.on("error", () => {});
      slow.write(getFrame("db/password").subarray(0, 3));
      const rst = await within(new Promise<number>((r) => slow.once("close", () => r(slow.rstCode))), BOUND_MS, "slow stream reset");
      assert.equal(rst, http2.constants.NGHTTP2_CANCEL);
      assert.equal(session.destroyed, false);
      const ok = session.request(headers);
      let status: string | undefined;
      ok.on("trailers", (t) => (status = String(t["grpc-status"])));
      ok.resume();
      ok.end(getFrame("db/password"));
      await new Promise((r) => ok.once("close", r));
      assert.equal(status, "0", "a whole call on the same connection is answered");
    } finally {
      session.destroy();
    }
  });

  it("does not cut off a watch (its request is complete) however long it stays open", async () => {
    const session = http2.connect(srv.url);
    session.on("error", () => {});
    try {
      const watch = openWatch(session);
      await within(watch.started, BOUND_MS, "watch started");
      await sleep(Number(LIMITS.LATCHKEY_REQUEST_TIMEOUT_MS) + 700);
      assert.equal(watch.isClosed(), false, "the watch outlived the request timeout");
      watch.stream.close();
    } finally {
      session.destroy();
    }
  });

  it("advertises its concurrent-stream limit per HTTP/2 connection; streams beyond it wait for a free one", async () => {
    const limit = Number(LIMITS.LATCHKEY_MAX_CONCURRENT_STREAMS);
    const session = http2.connect(srv.url);
    session.on("error", () => {});
    try {
      await within(new Promise((r) => session.once("remoteSettings", r)), BOUND_MS, "server SETTINGS");
      assert.equal(session.remoteSettings.maxConcurrentStreams, limit);
      const first = Array.from({ length: limit }, () => openWatch(session));
      await within(Promise.all(first.map((w) => w.started)), BOUND_MS, `${limit} watches started`);
      const extra = Array.from({ length: 2 }, () => openWatch(session));
      await sleep(300);
      assert.deepEqual(
        extra.map((w) => w.isStarted()),
        [false, false],
        "streams over the limit are not served while the limit is reached",
      );
      for (const w of first.slice(0, 2)) w.stream.close();
      await within(Promise.all(extra.map((w) => w.started)), BOUND_MS, "queued watches started once streams were free");
      for (const w of [...first, ...extra]) w.stream.close();
    } finally {
      session.destroy();
    }
  });

  it("refuses request headers over 16 KiB on HTTP/1.1 and HTTP/2 alike: 431, or RESOURCE_EXHAUSTED for gRPC", async () => {
    const big = { "x-big": "a".repeat(20 * 1024) };
    const h1 = createH1Client(srv.url);
    try {
      const r = await h1.request({ method: "GET", path: "/v1/secrets/db/password", headers: big }, BOUND_MS);
      assert.equal(r.status, 431);
    } finally {
      h1.close();
    }
    const h2 = new H2Client(srv.url, { maxSendHeaderBlockLength: 4 << 20 });
    try {
      const grpc = await h2.request(
        { method: "POST", path: GET_PATH, headers: { "content-type": "application/grpc", te: "trailers", ...big }, body: getFrame("db/password") },
        BOUND_MS,
      );
      assert.equal(grpcStatusOf(grpc), 8, "gRPC: RESOURCE_EXHAUSTED");
      const rest = await h2.request({ method: "GET", path: "/v1/secrets/db/password", headers: big }, BOUND_MS);
      assert.equal(rest.status, 431);
      assert.doesNotMatch(rest.body.toString(), /limits-value-1/);
      const connect = await h2.request(
        { method: "POST", path: GET_PATH, headers: { "content-type": "application/json", ...big }, body: '{"name":"db/password"}' },
        BOUND_MS,
      );
      assert.equal(connect.status, 431);
      // Just under the limit is served.
      const fits = await h2.request(
        { method: "POST", path: GET_PATH, headers: { "content-type": "application/grpc", te: "trailers", "x-big": "a".repeat(12 * 1024) }, body: getFrame("db/password") },
        BOUND_MS,
      );
      assert.equal(grpcStatusOf(fits), 0);
    } finally {
      h2.close();
    }
    await served();
  });

  it("refuses a gRPC message over the 8 MiB limit with RESOURCE_EXHAUSTED", async () => {
    const h2 = new H2Client(srv.url);
    try {
      const payload = Buffer.alloc(8 * 1024 * 1024 + 1, 0x41);
      const reply = await h2.request(
        { method: "POST", path: GET_PATH, headers: { "content-type": "application/grpc", te: "trailers" }, body: grpcFrame(payload) },
        BOUND_MS,
      );
      assert.equal(grpcStatusOf(reply), 8);
    } finally {
      h2.close();
    }
  });

  it("refuses a batch of more than 100 items, storing none of them", async () => {
    const items = Array.from({ length: 101 }, (_, i) => ({ name: `batch/over-${i}`, value: `v-${i}` }));
    const rest = await srv.admin("/v1/secrets:batchSet", { method: "POST", body: JSON.stringify({ items }) });
    assert.equal(rest.status, 400);
    assert.match(((await rest.json()) as { error: string }).error, /at most 100/);
    const rpc = await srv.admin(`/${SecretService.typeName}/BatchUpsertSecrets`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ items }),
    });
    assert.equal(rpc.status, 400);
    assert.equal(((await rpc.json()) as { code: string }).code, "invalid_argument");
    const list = await srv.admin("/v1/secrets?prefix=batch/");
    const names = ((await list.json()) as { secrets?: { name: string }[] }).secrets ?? [];
    assert.deepEqual(names, []);
  });
});

/** A WatchSecrets stream over raw HTTP/2: started once its first message (STARTED) arrives. */
function openWatch(session: http2.ClientHttp2Session) {
  const stream = session.request({
    ":method": "POST",
    ":path": `/${SecretService.typeName}/WatchSecrets`,
    "content-type": "application/grpc",
    te: "trailers",
    authorization: `Bearer ${ADMIN_TOKEN}`,
  });
  stream.on("error", () => {});
  let started = false;
  let closed = false;
  stream.once("close", () => (closed = true));
  const startedP = new Promise<void>((resolve) =>
    stream.once("data", () => {
      started = true;
      resolve();
    }),
  );
  stream.end(grpcFrame(new Uint8Array(0)));
  return { stream, started: startedP, isStarted: () => started, isClosed: () => closed };
}
