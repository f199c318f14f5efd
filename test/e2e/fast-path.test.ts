import assert from "node:assert/strict";
import * as http from "node:http";
import * as http2 from "node:http2";
import { after, before, describe, it } from "node:test";
import { create, type DescMessage, fromBinary, toBinary, toJson } from "@bufbuild/protobuf";
import { StatusSchema } from "../../gen/google/rpc/status_pb.js";
import { RequestInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import {
  GetSecretRequestSchema,
  GetSecretResponseSchema,
  ListSecretsRequestSchema,
  ListSecretsResponseSchema,
  SecretService,
  StoreSecretRequestSchema,
  VerifySecretRequestSchema,
} from "../../gen/latchkey/v1/secret_service_pb.js";
import { ADMIN_TOKEN, startTestServer, type TestServer } from "../support/server.js";

/**
 * The unary fast path (src/rpc/unary-fast-path.ts) answers what connect-node would: the same raw requests sent to
 * a server with it and one without give the same status, headers, trailers and messages, over gRPC and Connect,
 * HTTP/2 and HTTP/1.1, for successes, domain errors and malformed requests; and what it does not take (compressed
 * requests, gRPC-Web, GET, a bad timeout header) still reaches connect-node and works.
 */

const AUTH = `Bearer ${ADMIN_TOKEN}`;
const ALLOW = { LATCHKEY_ALLOWED_IPS: "127.0.0.1/32,::1/128" };

interface Raw {
  status: number;
  headers: Record<string, string>;
  trailers: Record<string, string>;
  body: Buffer;
}

const frame = (b: Uint8Array, flags = 0) => {
  const f = Buffer.alloc(5 + b.length);
  f[0] = flags;
  f.writeUInt32BE(b.length, 1);
  f.set(b, 5);
  return f;
};

function h2call(url: string, path: string, headers: Record<string, string>, body: Buffer): Promise<Raw> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(url);
    session.on("error", reject);
    const st = session.request({ ":method": "POST", ":path": path, ...headers });
    const chunks: Buffer[] = [];
    const out: Raw = { status: 0, headers: {}, trailers: {}, body: Buffer.alloc(0) };
    st.on("response", (h) => {
      out.status = Number(h[":status"]);
      for (const [k, v] of Object.entries(h)) if (!k.startsWith(":")) out.headers[k] = String(v);
    });
    st.on("trailers", (t) => {
      for (const [k, v] of Object.entries(t)) out.trailers[k] = String(v);
    });
    st.on("data", (c: Buffer) => chunks.push(c));
    st.on("error", reject);
    st.on("end", () => {
      out.body = Buffer.concat(chunks);
      session.close();
      resolve(out);
    });
    st.end(body);
  });
}

function h1call(url: string, path: string, headers: Record<string, string>, body: Buffer): Promise<Raw> {
  return new Promise((resolve, reject) => {
    const req = http.request(`${url}${path}`, { method: "POST", headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        const hs: Record<string, string> = {};
        for (const [k, v] of Object.entries(res.headers)) hs[k] = String(v);
        resolve({ status: res.statusCode ?? 0, headers: hs, trailers: {}, body: Buffer.concat(chunks) });
      });
    });
    req.on("error", reject);
    req.end(body);
  });
}

const GENERATED = /^(req_[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|\d{4}-\d\d-\d\dT[\d:.]+Z)$/;

/** A JSON value with generated ids, request ids and times replaced, for comparing two servers' answers. */
function normalize(v: unknown): unknown {
  if (typeof v === "string") return GENERATED.test(v) ? "<generated>" : v;
  if (Array.isArray(v)) return v.map(normalize);
  if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, normalize(x)]));
  return v;
}

/** What must match between the paths: status, the headers that carry meaning, and the decoded messages. */
function essence(r: Raw, output: DescMessage, wire: "grpc" | "proto" | "json") {
  const pick = (h: Record<string, string>, keys: string[]) => Object.fromEntries(keys.filter((k) => k in h).map((k) => [k, h[k]]));
  const headers = pick(r.headers, ["content-type", "etag", "cache-control", "grpc-status", "grpc-message"]);
  const trailers = pick(r.trailers, ["grpc-status", "grpc-message"]);
  let message: unknown;
  let details: unknown;
  if (wire === "grpc") {
    if (r.body.length > 0) message = normalize(toJson(output, fromBinary(output, r.body.subarray(5))));
    const bin = r.trailers["grpc-status-details-bin"];
    // The detail types, RequestInfo aside: the fast path adds it to errors raised before the handler too.
    if (bin) {
      details = fromBinary(StatusSchema, Buffer.from(bin, "base64"))
        .details.map((d) => d.typeUrl)
        .filter((t) => !t.endsWith("google.rpc.RequestInfo"));
      if ((details as string[]).length === 0) details = undefined;
    }
  } else if (r.status === 200) {
    message = normalize(wire === "json" ? JSON.parse(r.body.toString("utf8")) : toJson(output, fromBinary(output, r.body)));
  } else {
    const e = JSON.parse(r.body.toString("utf8")) as { code: string; message: string; details?: { type: string }[] };
    message = { code: e.code, message: e.message };
    details = (e.details ?? []).map((d) => d.type).filter((t) => t !== "google.rpc.RequestInfo");
  }
  return { status: r.status, headers, trailers, message, details, requestId: r.headers["x-request-id"] !== undefined };
}

describe("the unary fast path answers as connect-node does", () => {
  let fast: TestServer;
  let stock: TestServer;
  before(async () => {
    [fast, stock] = await Promise.all([
      startTestServer({ ...ALLOW, LATCHKEY_UNARY_FAST_PATH: "true" }),
      startTestServer({ ...ALLOW, LATCHKEY_UNARY_FAST_PATH: "false" }),
    ]);
    for (const s of [fast, stock]) {
      const res = await s.admin("/v1/secrets", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ name: "db/password", value: "s3cret-parity" }),
      });
      assert.equal(res.status, 201);
    }
  });
  after(async () => {
    await Promise.all([fast.stop(), stock.stop()]);
  });

  const get = (name: string) => toBinary(GetSecretRequestSchema, create(GetSecretRequestSchema, { name }));
  const cases: { what: string; method: string; output: DescMessage; body: Buffer | Uint8Array; json?: string; auth?: boolean }[] = [
    { what: "GetSecret", method: "GetSecret", output: GetSecretResponseSchema, body: get("db/password"), json: '{"name":"db/password"}' },
    { what: "GetSecret of a missing secret", method: "GetSecret", output: GetSecretResponseSchema, body: get("nope"), json: '{"name":"nope"}' },
    { what: "GetSecret of a bad name", method: "GetSecret", output: GetSecretResponseSchema, body: get("bad name!"), json: '{"name":"bad name!"}' },
    {
      what: "VerifySecret",
      method: "VerifySecret",
      output: GetSecretResponseSchema.file.messages.find((m) => m.name === "VerifySecretResponse") as DescMessage,
      body: toBinary(VerifySecretRequestSchema, create(VerifySecretRequestSchema, { name: "db/password", value: "s3cret-parity" })),
      json: '{"name":"db/password","value":"s3cret-parity"}',
    },
    {
      what: "ListSecrets",
      method: "ListSecrets",
      output: ListSecretsResponseSchema,
      body: toBinary(ListSecretsRequestSchema, create(ListSecretsRequestSchema, { pageSize: 10 })),
      json: '{"pageSize":10}',
      auth: true,
    },
    { what: "ListSecrets without a token", method: "ListSecrets", output: ListSecretsResponseSchema, body: new Uint8Array(), json: "{}" },
    {
      what: "StoreSecret of a taken name",
      method: "StoreSecret",
      output: GetSecretResponseSchema,
      body: toBinary(StoreSecretRequestSchema, create(StoreSecretRequestSchema, { name: "db/password", value: "x" })),
      json: '{"name":"db/password","value":"x"}',
      auth: true,
    },
    { what: "bytes that are not a message", method: "GetSecret", output: GetSecretResponseSchema, body: Buffer.from([0xff, 0xff, 0xff]), json: "{bad" },
    { what: "an unknown JSON field", method: "GetSecret", output: GetSecretResponseSchema, body: get("db/password"), json: '{"name":"db/password","nope":1}' },
  ];

  for (const c of cases) {
    it(`gRPC over h2c: ${c.what}`, async () => {
      const headers = { "content-type": "application/grpc", te: "trailers", ...(c.auth ? { authorization: AUTH } : {}) };
      const path = `/${SecretService.typeName}/${c.method}`;
      const [a, b] = await Promise.all([h2call(fast.url, path, headers, frame(c.body)), h2call(stock.url, path, headers, frame(c.body))]);
      assert.deepEqual(essence(a, c.output, "grpc"), essence(b, c.output, "grpc"));
    });
    for (const [proto, call] of [
      ["HTTP/1.1", h1call],
      ["HTTP/2", h2call],
    ] as const) {
      it(`Connect JSON over ${proto}: ${c.what}`, async () => {
        const headers = { "content-type": "application/json", ...(c.auth ? { authorization: AUTH } : {}) };
        const path = `/${SecretService.typeName}/${c.method}`;
        const body = Buffer.from(c.json ?? "{}");
        const [a, b] = await Promise.all([call(fast.url, path, headers, body), call(stock.url, path, headers, body)]);
        assert.deepEqual(essence(a, c.output, "json"), essence(b, c.output, "json"));
      });
      it(`Connect binary over ${proto}: ${c.what}`, async () => {
        const headers = { "content-type": "application/proto", ...(c.auth ? { authorization: AUTH } : {}) };
        const path = `/${SecretService.typeName}/${c.method}`;
        const [a, b] = await Promise.all([call(fast.url, path, headers, Buffer.from(c.body)), call(stock.url, path, headers, Buffer.from(c.body))]);
        assert.deepEqual(essence(a, c.output, "proto"), essence(b, c.output, "proto"));
      });
    }
  }

  it("gRPC envelopes that are wrong: truncated, extra message, none: invalid_argument with the request id", async () => {
    const good = frame(get("db/password"));
    const bodies = [good.subarray(0, 3), good.subarray(0, good.length - 1), Buffer.concat([good, good]), Buffer.alloc(0)];
    const headers = { "content-type": "application/grpc", te: "trailers" };
    for (const body of bodies) {
      for (const s of [fast, stock]) {
        const r = await h2call(s.url, `/${SecretService.typeName}/GetSecret`, headers, body);
        const code = r.trailers["grpc-status"] ?? r.headers["grpc-status"];
        // connect-node calls a missing or second message for a unary method unimplemented; the fast path,
        // invalid_argument (the request is malformed; the method exists).
        const expected = s === stock && (body.length === 2 * good.length || body.length === 0) ? "12" : "3";
        assert.equal(code, expected, `${body.length} bytes: ${JSON.stringify(r.trailers)}`);
        assert.ok(r.headers["x-request-id"]);
      }
    }
  });

  it("the fast path's errors before the handler carry the request id in google.rpc.RequestInfo, as every other error", async () => {
    const r = await h2call(fast.url, `/${SecretService.typeName}/GetSecret`, { "content-type": "application/grpc", te: "trailers" }, frame(Buffer.from([0xff])));
    const status = fromBinary(StatusSchema, Buffer.from(r.trailers["grpc-status-details-bin"] ?? "", "base64"));
    const info = status.details.find((d: { typeUrl: string }) => d.typeUrl.endsWith("google.rpc.RequestInfo"));
    assert.ok(info, "RequestInfo detail");
    assert.equal(fromBinary(RequestInfoSchema, info.value).requestId, r.headers["x-request-id"]);
    assert.equal(r.trailers["x-request-id"], r.headers["x-request-id"]);
  });

  it("a message with the compressed flag but no grpc-encoding: INTERNAL, as the gRPC spec requires", async () => {
    const r = await h2call(fast.url, `/${SecretService.typeName}/GetSecret`, { "content-type": "application/grpc", te: "trailers" }, frame(get("db/password"), 1));
    assert.equal(r.trailers["grpc-status"], "13");
  });

  it("leaves to connect-node what it does not take, and those calls work: gzip, gRPC-Web, a malformed timeout", async () => {
    const path = `/${SecretService.typeName}/GetSecret`;
    const { gzipSync } = await import("node:zlib");
    const zipped = frame(gzipSync(get("db/password")), 1);
    const gz = await h2call(fast.url, path, { "content-type": "application/grpc", te: "trailers", "grpc-encoding": "gzip" }, zipped);
    assert.equal(gz.trailers["grpc-status"], "0", JSON.stringify(gz.trailers));
    assert.equal(fromBinary(GetSecretResponseSchema, gz.body.subarray(5)).value, "s3cret-parity");

    const web = await h1call(fast.url, path, { "content-type": "application/grpc-web+proto", "x-grpc-web": "1" }, frame(get("db/password")));
    assert.equal(web.status, 200);
    assert.match(web.body.toString("latin1"), /grpc-status:\s*0/);

    const badTimeout = await h2call(fast.url, path, { "content-type": "application/grpc", te: "trailers", "grpc-timeout": "soon" }, frame(get("db/password")));
    assert.equal(badTimeout.trailers["grpc-status"] ?? badTimeout.headers["grpc-status"], "3");
  });

  it("honours a deadline header without tripping it for a quick call", async () => {
    const path = `/${SecretService.typeName}/GetSecret`;
    const r = await h2call(fast.url, path, { "content-type": "application/grpc", te: "trailers", "grpc-timeout": "5S" }, frame(get("db/password")));
    assert.equal(r.trailers["grpc-status"], "0");
    const c = await h1call(fast.url, path, { "content-type": "application/json", "connect-timeout-ms": "5000" }, Buffer.from('{"name":"db/password"}'));
    assert.equal(c.status, 200);
  });

  it("takes a deadline too far off for a timer (99999999H) as no deadline, on both paths and on streams", async () => {
    const path = `/${SecretService.typeName}/GetSecret`;
    for (const srv of [fast, stock]) {
      const r = await h2call(srv.url, path, { "content-type": "application/grpc", te: "trailers", "grpc-timeout": "99999999H" }, frame(get("db/password")));
      assert.equal(r.trailers["grpc-status"], "0", String(r.trailers["grpc-message"]));
      const c = await h1call(srv.url, path, { "content-type": "application/json", "connect-timeout-ms": "9999999999" }, Buffer.from('{"name":"db/password"}'));
      assert.equal(c.status, 200);
      // A watch with such a deadline stays open (setTimeout would have fired at once: 1 ms).
      for (const timeout of ["99999999H", "720H"]) {
        const session = http2.connect(srv.url);
        try {
          const st = session.request({
            ":method": "POST",
            ":path": `/${SecretService.typeName}/WatchSecrets`,
            "content-type": "application/grpc",
            te: "trailers",
            "grpc-timeout": timeout,
          });
          let trailers: http2.IncomingHttpHeaders | undefined;
          st.on("trailers", (t) => (trailers = t));
          st.on("response", (h) => (trailers ??= h["grpc-status"] !== undefined ? h : undefined));
          const firstData = new Promise((resolve) => st.once("data", resolve));
          st.end(frame(new Uint8Array(0)));
          await firstData;
          await new Promise((resolve) => setTimeout(resolve, 200));
          assert.equal(trailers, undefined, `watch with grpc-timeout ${timeout} ended: ${JSON.stringify(trailers)}`);
          st.close();
        } finally {
          session.destroy();
        }
      }
    }
  });

  it("logs fast-path calls like any other: operation, code, request id", async () => {
    const before = fast.logs.length;
    await h2call(fast.url, `/${SecretService.typeName}/GetSecret`, { "content-type": "application/grpc", te: "trailers" }, frame(get("nope")));
    await h1call(fast.url, `/${SecretService.typeName}/GetSecret`, { "content-type": "application/json" }, Buffer.from("{bad"));
    const deadline = Date.now() + 3_000;
    let lines: { op?: string; code?: string; request_id?: string }[] = [];
    while (Date.now() < deadline) {
      lines = fast.logs.slice(before).map((l) => JSON.parse(l)).filter((l) => l.msg === "request");
      if (lines.length >= 2) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.deepEqual(
      lines.map((l) => [l.op, l.code]),
      [
        ["latchkey.v1.SecretService/GetSecret", "not_found"],
        ["latchkey.v1.SecretService/GetSecret", "invalid_argument"],
      ],
    );
    assert.ok(lines.every((l) => typeof l.request_id === "string"));
  });
});
