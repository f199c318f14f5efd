import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Code } from "@connectrpc/connect";
import type { WatchSecretsResponse } from "../../gen/latchkey/v1/secret_service_pb.js";
import {
  assertConnectError,
  assertRestError,
  connectJson,
  connectReason,
  connectRequestId,
  connectViolations,
  eventually,
  grpc,
  grpcCall,
  grpcClients,
  type GrpcClients,
  grpcFails,
  grpcMd,
  grpcStatusDetails,
  grpcStream,
  logLinesFor,
  mdValue,
  opts,
  reasonOf,
  requestIdOf,
  rest,
  rpcClients,
  type RpcClients,
  rpcFails,
  rpcStream,
  violationsOf,
} from "../support/clients.js";
import { ADMIN_TOKEN, startTestServer, type TestServer } from "../support/server.js";

/**
 * Request ids end to end: every response carries x-request-id; gRPC carries it in the trailers too; REST error
 * bodies quote it as request_id; Connect and gRPC errors carry it as a google.rpc.RequestInfo detail (with ErrorInfo
 * and BadRequest where they apply); a well-formed caller id is kept, anything else replaced; the log line has it.
 */

const GENERATED = /^req_[0-9a-f]{32}$/;
const SERVICE = "billing-token-0123456789abcdef";

/** Every value of a (possibly comma-joined, possibly repeated) header must be `id`. */
function allEqual(values: readonly string[], id: string, what: string) {
  const parts = values.flatMap((v) => v.split(",").map((p) => p.trim()));
  assert.ok(parts.length > 0, `${what}: present`);
  for (const p of parts) assert.equal(p, id, what);
}

describe("request ids", () => {
  let s: TestServer;
  let rpc: RpcClients;
  let g: GrpcClients;

  before(async () => {
    s = await startTestServer({ LATCHKEY_SERVICE_TOKENS: `billing=${SERVICE}` });
    rpc = rpcClients(s.url);
    g = grpcClients(s.port);
    assert.equal((await rest(s.url, "POST", "/v1/secrets", { name: "present", value: "here" })).status, 201);
  });
  after(async () => {
    rpc?.close();
    g?.close();
    await s?.stop();
  });

  const cj = (procedure: string, body: unknown, token?: string | null, headers?: Record<string, string>) =>
    connectJson(s.url, procedure, body, token, headers);
  const r = (method: string, path: string, body?: unknown, token?: string | null, headers?: Record<string, string>) =>
    rest(s.url, method, path, body, token, headers);

  /** The request log line of `id`, once written. */
  async function logLine(id: string): Promise<Record<string, unknown>> {
    await eventually(() => logLinesFor(s.logs, id).some((l) => l.msg === "request"), 2000, `log line of ${id}`);
    return logLinesFor(s.logs, id).find((l) => l.msg === "request") as Record<string, unknown>;
  }

  describe("REST", () => {
    it("every success response has a fresh generated x-request-id", async () => {
      const ids = new Set<string>();
      const calls: [string, string, unknown?][] = [
        ["GET", "/healthz"],
        ["GET", "/readyz"],
        ["GET", "/v1/stores"],
        ["POST", "/v1/stores", { name: "rid" }],
        ["PUT", "/v1/stores/rid/vars/a", { value: "b" }],
        ["DELETE", "/v1/stores/rid/vars/a"],
        ["GET", "/v1/secrets/present"],
        ["GET", "/v1/usage"],
      ];
      for (const [method, path, body] of calls) {
        const res = await r(method, path, body);
        assert.ok(res.status < 300, `${method} ${path}: ${res.status}`);
        const id = res.headers.get("x-request-id") ?? "";
        assert.match(id, GENERATED, `${method} ${path}`);
        ids.add(id);
      }
      assert.equal(ids.size, calls.length, "one id per request");
    });

    it("every error response has x-request-id, quoted as request_id in the body", async () => {
      const cases: [string, string, unknown, string | null | undefined, number, string][] = [
        ["GET", "/v1/secrets/missing", undefined, null, 404, "not_found"],
        ["GET", "/v1/no-such-route", undefined, null, 404, "not_found"],
        ["GET", "/v1/stores", undefined, null, 401, "unauthenticated"],
        ["GET", "/v1/stores", undefined, "wrong-token-0123456789", 401, "unauthenticated"],
        ["GET", "/v1/usage", undefined, SERVICE, 403, "permission_denied"],
        ["PATCH", "/v1/stores", undefined, undefined, 405, "method_not_allowed"],
        ["POST", "/v1/stores", { name: "bad name" }, undefined, 400, "invalid_argument"],
        ["POST", "/v1/stores", { name: "rid" }, undefined, 409, "already_exists"],
        ["DELETE", "/v1/stores/default", undefined, undefined, 400, "failed_precondition"],
      ];
      for (const [method, path, body, token, status, code] of cases) {
        const res = await r(method, path, body, token);
        const b = assertRestError(res, status, code, `${method} ${path}`);
        assert.match(b.request_id, GENERATED, `${method} ${path}`);
      }

      const badJson = await fetch(`${s.url}/v1/stores`, {
        method: "POST",
        headers: { authorization: `Bearer ${ADMIN_TOKEN}`, "content-type": "application/json" },
        body: "{not json",
      });
      const body = await badJson.json();
      assert.equal(badJson.status, 400);
      assert.match(body.request_id, GENERATED);
      assert.equal(body.request_id, badJson.headers.get("x-request-id"));
    });

    it("a well-formed caller id is echoed in the header, the error body and the log line", async () => {
      const id = "trace-0001:abc_DEF.xyz";
      const ok = await r("GET", "/v1/secrets/present", undefined, null, { "x-request-id": id });
      assert.equal(ok.headers.get("x-request-id"), id);

      const errId = "trace-0002:abc_DEF.xyz";
      const err = await r("GET", "/v1/secrets/missing", undefined, null, { "x-request-id": errId });
      assert.equal(err.headers.get("x-request-id"), errId);
      assert.equal(assertRestError(err, 404, "not_found").request_id, errId);

      const line = await logLine(errId);
      assert.equal(line.op, "GET /v1/secrets/{name}");
      assert.equal(line.code, "not_found");
      assert.equal(line.status, 404);
      const okLine = await logLine(id);
      assert.equal(okLine.code, "ok");
      assert.equal(okLine.status, 200);
    });

    it("a malformed caller id is replaced by a generated one", async () => {
      for (const bad of ["short", "has spaces in it", "slash/not/allowed", "x".repeat(129), "ünïcödé-id-1234"]) {
        const res = await fetch(`${s.url}/v1/secrets/missing`, {
          headers: { "x-request-id": encodeURIComponent(bad) === bad ? bad : bad.replace(/[^\x20-\x7e]/g, "?") },
        });
        const body = await res.json();
        const id = res.headers.get("x-request-id") ?? "";
        assert.match(id, GENERATED, JSON.stringify(bad));
        assert.equal(body.request_id, id);
      }
      // The edges of the accepted form are kept.
      for (const good of ["a".repeat(8), "Z".repeat(128), "0.1_2:3-4"]) {
        const res = await r("GET", "/healthz", undefined, null, { "x-request-id": good });
        assert.equal(res.headers.get("x-request-id"), good);
      }
    });
  });

  describe("Connect JSON", () => {
    it("success and error responses carry x-request-id; errors carry RequestInfo with the same id and ErrorInfo", async () => {
      const ok = await cj("SecretService/GetSecret", { name: "present" }, null);
      assert.equal(ok.status, 200);
      assert.match(ok.headers.get("x-request-id") ?? "", GENERATED);

      const notFound = await cj("SecretService/GetSecret", { name: "missing" }, null);
      assertConnectError(notFound, 404, "not_found");
      const id = notFound.headers.get("x-request-id") ?? "";
      assert.match(id, GENERATED);
      assert.equal(connectRequestId(notFound.body), id, "RequestInfo.request_id is the header");
      assert.equal(connectReason(notFound.body), "SECRET_NOT_FOUND");

      const unauth = await cj("StoreService/ListStores", {}, null);
      assertConnectError(unauth, 401, "unauthenticated");
      assert.equal(connectRequestId(unauth.body), unauth.headers.get("x-request-id"));

      const denied = await cj("StoreService/GetUsage", {}, SERVICE);
      assertConnectError(denied, 403, "permission_denied");
      assert.equal(connectRequestId(denied.body), denied.headers.get("x-request-id"));
    });

    it("invalid_argument carries BadRequest field violations and RequestInfo", async () => {
      const res = await cj("StoreService/CreateStore", { name: "bad name" });
      assertConnectError(res, 400, "invalid_argument");
      assert.deepEqual(connectViolations(res.body), [["name", "pattern"]]);
      assert.equal(connectRequestId(res.body), res.headers.get("x-request-id"));
      const vars = await cj("VarService/SetVars", { vars: [{ name: "a", value: "" }, { name: "b c", value: "x" }] });
      assert.deepEqual(connectViolations(vars.body), [
        ["vars[0].value", "empty"],
        ["vars[1].name", "pattern"],
      ]);
      assert.equal(connectRequestId(vars.body), vars.headers.get("x-request-id"));
    });

    it("a caller id is echoed into the header, RequestInfo and the log line", async () => {
      const id = "connect-json-trace-42";
      const res = await cj("SecretService/GetSecret", { name: "missing" }, null, { "x-request-id": id });
      assert.equal(res.headers.get("x-request-id"), id);
      assert.equal(connectRequestId(res.body), id);
      const line = await logLine(id);
      assert.equal(line.op, "latchkey.v1.SecretService/GetSecret");
      assert.equal(line.code, "not_found");

      const replaced = await cj("SecretService/GetSecret", { name: "missing" }, null, { "x-request-id": "bad id" });
      const newId = replaced.headers.get("x-request-id") ?? "";
      assert.match(newId, GENERATED);
      assert.equal(connectRequestId(replaced.body), newId);
    });

    it("a request the server cannot decode still gets an error with RequestInfo quoting the header", async () => {
      const unknownField = await cj("SecretService/GetSecret", { name: "x", colour: "red" }, null);
      assertConnectError(unknownField, 400, "invalid_argument");
      const id = unknownField.headers.get("x-request-id") ?? "";
      assert.match(id, GENERATED);
      assert.equal(connectRequestId(unknownField.body), id, "RequestInfo on a decode error");

      const raw = await fetch(`${s.url}/latchkey.v1.SecretService/GetSecret`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: "{not json",
      });
      const body = await raw.json();
      assert.equal(body.code, "invalid_argument");
      assert.equal(connectRequestId(body), raw.headers.get("x-request-id"), "RequestInfo on malformed JSON");
    });

    it("an unknown procedure still answers with x-request-id", async () => {
      const res = await fetch(`${s.url}/latchkey.v1.SecretService/NoSuchMethod`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: "{}",
      });
      await res.arrayBuffer();
      assert.equal(res.status, 404);
      assert.match(res.headers.get("x-request-id") ?? "", GENERATED);
    });
  });

  describe("gRPC (Connect client)", () => {
    it("success: x-request-id in the response header and the trailer, the same id", async () => {
      let header: string | null = null;
      let trailer: string | null = null;
      await rpc.secrets.getSecret(
        { name: "present" },
        { ...opts(null), onHeader: (h) => (header = h.get("x-request-id")), onTrailer: (t) => (trailer = t.get("x-request-id")) },
      );
      assert.match(header ?? "", GENERATED);
      assert.equal(trailer, header);
    });

    it("errors: RequestInfo, ErrorInfo and x-request-id metadata all quote the same id", async () => {
      const ce = await rpcFails(rpc.secrets.getSecret({ name: "missing" }, opts(null)), Code.NotFound, "GetSecret");
      const id = requestIdOf(ce) ?? "";
      assert.match(id, GENERATED);
      assert.equal(reasonOf(ce), "SECRET_NOT_FOUND");
      allEqual([ce.metadata.get("x-request-id") ?? ""], id, "x-request-id metadata (header and trailer)");

      const bad = await rpcFails(rpc.vars.setVars({ store: "default", vars: [{ name: "v", value: "" }] }, opts()), Code.InvalidArgument, "SetVars");
      assert.deepEqual(violationsOf(bad), [["vars[0].value", "empty"]]);
      assert.match(requestIdOf(bad) ?? "", GENERATED);

      const unauth = await rpcFails(rpc.stores.listStores({}, opts(null)), Code.Unauthenticated, "ListStores");
      assert.match(requestIdOf(unauth) ?? "", GENERATED);
    });

    it("a caller id is echoed in header, trailer and RequestInfo; a malformed one replaced", async () => {
      const id = "grpc-connect-trace.7";
      let header: string | null = null;
      let trailer: string | null = null;
      await rpc.secrets.getSecret(
        { name: "present" },
        {
          ...opts(null, { "x-request-id": id }),
          onHeader: (h) => (header = h.get("x-request-id")),
          onTrailer: (t) => (trailer = t.get("x-request-id")),
        },
      );
      assert.deepEqual([header, trailer], [id, id]);

      const errId = "grpc-connect-trace.8";
      const ce = await rpcFails(rpc.secrets.getSecret({ name: "missing" }, opts(null, { "x-request-id": errId })), Code.NotFound, "caller id");
      assert.equal(requestIdOf(ce), errId);
      const line = await logLine(errId);
      assert.equal(line.op, "latchkey.v1.SecretService/GetSecret");
      assert.equal(line.code, "not_found");

      const replaced = await rpcFails(rpc.secrets.getSecret({ name: "missing" }, opts(null, { "x-request-id": "tiny" })), Code.NotFound, "bad id");
      assert.match(requestIdOf(replaced) ?? "", GENERATED);
    });

    it("a stream's response header carries x-request-id; a failing stream carries RequestInfo", async () => {
      let header: string | null = null;
      const ok = rpcStream<WatchSecretsResponse>((signal) =>
        rpc.secrets.watchSecrets({}, { signal, onHeader: (h) => (header = h.get("x-request-id")) }),
      );
      try {
        await ok.waitFor((m) => m.length >= 1, 3000, "STARTED");
        assert.match(header ?? "", GENERATED);
      } finally {
        ok.cancel();
        await ok.done;
      }

      const failing = rpcStream<WatchSecretsResponse>((signal) =>
        rpc.secrets.watchSecrets({ store: "no-such-store" }, { signal, headers: { "x-request-id": "watch-trace-0001" } }),
      );
      const err = await failing.done;
      assert.equal(err?.code, Code.NotFound);
      assert.equal(err && requestIdOf(err), "watch-trace-0001");
      assert.equal(err && reasonOf(err), "STORE_NOT_FOUND");
    });
  });

  describe("gRPC (grpc-js)", () => {
    it("success: x-request-id in the initial metadata and in the trailers (status metadata), the same id", async () => {
      const out = await grpcCall(g.secrets, "GetSecret", { name: "present" }, grpcMd(null));
      assert.equal(out.code, grpc.status.OK);
      const id = mdValue(out.headers, "x-request-id") ?? "";
      assert.match(id, GENERATED);
      assert.deepEqual(out.trailers.get("x-request-id"), [id], "exactly one x-request-id trailer");
    });

    it("errors: the trailers carry x-request-id and grpc-status-details-bin with RequestInfo, ErrorInfo and BadRequest", async () => {
      const nf = await grpcFails(g.secrets, "GetSecret", { name: "missing" }, grpc.status.NOT_FOUND, grpcMd(null));
      const id = mdValue(nf.trailers, "x-request-id") ?? "";
      assert.match(id, GENERATED);
      assert.deepEqual(nf.trailers.get("x-request-id"), [id], "exactly one x-request-id trailer");
      const details = grpcStatusDetails(nf.trailers);
      assert.equal(details?.code, grpc.status.NOT_FOUND);
      assert.equal(details?.requestId, id);
      assert.equal(details?.errorInfo?.reason, "SECRET_NOT_FOUND");
      assert.equal(details?.errorInfo?.domain, "latchkey");
      assert.equal(mdValue(nf.err.metadata, "x-request-id"), id, "also on the ServiceError's metadata");

      const bad = await grpcFails(g.stores, "CreateStore", { name: "bad name" }, grpc.status.INVALID_ARGUMENT);
      const bd = grpcStatusDetails(bad.trailers);
      assert.deepEqual(
        bd?.badRequest?.fieldViolations.map((v) => [v.field, v.reason]),
        [["name", "pattern"]],
      );
      assert.equal(bd?.requestId, mdValue(bad.trailers, "x-request-id"));

      const denied = await grpcFails(g.stores, "GetUsage", {}, grpc.status.PERMISSION_DENIED, grpcMd(SERVICE));
      assert.equal(grpcStatusDetails(denied.trailers)?.requestId, mdValue(denied.trailers, "x-request-id"));
    });

    it("a caller id sent as metadata is echoed in headers, trailers, RequestInfo and the log line", async () => {
      const id = "grpcjs:trace_0009";
      const ok = await grpcCall(g.secrets, "GetSecret", { name: "present" }, grpcMd(null, { "x-request-id": id }));
      assert.equal(mdValue(ok.headers, "x-request-id"), id);
      assert.deepEqual(ok.trailers.get("x-request-id"), [id]);

      const errId = "grpcjs:trace_0010";
      const nf = await grpcFails(g.secrets, "GetSecret", { name: "missing" }, grpc.status.NOT_FOUND, grpcMd(null, { "x-request-id": errId }));
      assert.deepEqual(nf.trailers.get("x-request-id"), [errId]);
      assert.equal(grpcStatusDetails(nf.trailers)?.requestId, errId);
      const line = await logLine(errId);
      assert.equal(line.op, "latchkey.v1.SecretService/GetSecret");
      assert.equal(line.code, "not_found");

      const replaced = await grpcCall(g.secrets, "GetSecret", { name: "present" }, grpcMd(null, { "x-request-id": "no spaces allowed" }));
      assert.match(mdValue(replaced.headers, "x-request-id") ?? "", GENERATED);
    });

    it("streams: the initial metadata carries x-request-id; a failing stream's trailers carry it once, with RequestInfo", async () => {
      const ok = grpcStream(g.secrets, "WatchSecrets", {}, grpcMd(null));
      try {
        await ok.waitFor((m) => m.length >= 1, 3000, "STARTED");
        assert.match(mdValue(await ok.headers, "x-request-id") ?? "", GENERATED);
      } finally {
        ok.cancel();
        await ok.done;
      }

      const failing = grpcStream(g.secrets, "WatchSecrets", { store: "no-such-store" }, grpcMd(null, { "x-request-id": "grpcjs-watch-0001" }));
      const status = await failing.done;
      assert.equal(status.code, grpc.status.NOT_FOUND);
      assert.equal(grpcStatusDetails(status.metadata)?.requestId, "grpcjs-watch-0001");
      assert.deepEqual(status.metadata.get("x-request-id"), ["grpcjs-watch-0001"], "exactly one x-request-id trailer");
    });
  });
});
