import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { ADMIN_TOKEN, startTestServer, type TestServer } from "../support/server.js";

/**
 * An independent gRPC peer: @grpc/grpc-js with the .proto files loaded at run time by @grpc/proto-loader (no
 * generated code of ours), talking h2c to a real loopback socket.
 */

const PROTO_DIR = fileURLToPath(new URL("../../proto", import.meta.url));

// The google/protobuf well-known types (duration.proto, timestamp.proto) resolve from proto-loader's bundled copies.
const definition = protoLoader.loadSync(["latchkey/v1/secret_service.proto"], {
  includeDirs: [PROTO_DIR],
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
// The loaded package is untyped by nature.
const pkg = grpc.loadPackageDefinition(definition) as any;
const SecretServiceClient = pkg.latchkey.v1.SecretService as grpc.ServiceClientConstructor;

type Msg = Record<string, any>;

interface CallResult {
  readonly res: Msg;
  readonly headers: grpc.Metadata;
}

/** grpc-js's ServiceError: the status code, its (percent-encoded, see STACK.md) message and the trailers. */
type GrpcError = grpc.ServiceError;

const CALL_TIMEOUT_MS = 5_000;

function adminMd(token: string | null = ADMIN_TOKEN): grpc.Metadata {
  const md = new grpc.Metadata();
  if (token !== null) md.set("authorization", `Bearer ${token}`);
  return md;
}

/** A unary call: resolves with the response and the initial metadata, rejects with the ServiceError. */
function unary(client: grpc.Client, method: string, req: Msg, md: grpc.Metadata = adminMd()): Promise<CallResult> {
  return new Promise((resolve, reject) => {
    let headers = new grpc.Metadata();
    const fn = (client as unknown as Record<string, Function | undefined>)[method];
    if (typeof fn !== "function") throw new Error(`the client has no method ${method}`);
    const call = fn.call(
      client,
      req,
      md,
      { deadline: Date.now() + CALL_TIMEOUT_MS },
      (err: GrpcError | null, res: Msg) => (err ? reject(Object.assign(err, { initialMetadata: headers })) : resolve({ res, headers })),
    ) as grpc.ClientUnaryCall;
    call.on("metadata", (m: grpc.Metadata) => {
      headers = m;
    });
  });
}

/** Runs a call that must fail; returns the error. */
async function failing(client: grpc.Client, method: string, req: Msg, md?: grpc.Metadata): Promise<GrpcError & { initialMetadata: grpc.Metadata }> {
  try {
    const { res } = await unary(client, method, req, md);
    assert.fail(`${method} should have failed, got ${JSON.stringify(res)}`);
  } catch (err) {
    if (err instanceof assert.AssertionError || typeof (err as { code?: unknown }).code !== "number") throw err;
    return err as GrpcError & { initialMetadata: grpc.Metadata };
  }
}

/** Everything a failed call hands back, as text: code, details (raw and percent-decoded) and every trailer. */
function errorText(err: GrpcError): string {
  const parts = [String(err.code), err.details, err.message, safeDecode(err.details)];
  for (const [k, v] of Object.entries(err.metadata?.getMap() ?? {})) {
    parts.push(k, Buffer.isBuffer(v) ? v.toString("utf8") + v.toString("base64") : String(v));
  }
  return parts.join("\n");
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

describe("gRPC interop (grpc-js + proto-loader)", () => {
  let s: TestServer;
  let client: grpc.Client;

  before(async () => {
    s = await startTestServer();
    client = new SecretServiceClient(`127.0.0.1:${s.port}`, grpc.credentials.createInsecure());
  });
  after(async () => {
    client?.close();
    await s?.stop();
  });

  it("loads the service with the well-known types from proto-loader's defaults", () => {
    assert.ok(definition["google.protobuf.Duration"], "Duration resolved");
    assert.ok(definition["google.protobuf.Timestamp"], "Timestamp resolved");
    assert.deepEqual(Object.keys(SecretServiceClient.service).sort(), [
      "BatchDeleteSecrets",
      "BatchGetSecrets",
      "BatchUpsertSecrets",
      "CopySecret",
      "DeleteSecret",
      "GetSecret",
      "ListSecretVersions",
      "ListSecrets",
      "MoveSecret",
      "RenameSecret",
      "RotateSecret",
      "SetVersionState",
      "StoreSecret",
      "UndeleteSecret",
      "UpdateSecret",
      "VerifySecret",
      "WatchSecrets",
    ]);
  });

  it("StoreSecret (manual): first version, the value echoed, metadata filled in", async () => {
    const { res, headers } = await unary(client, "StoreSecret", {
      name: "grpc/db/password",
      kind: "SECRET_KIND_MANUAL",
      value: "grpc-v1-value",
      description: "via grpc-js",
    });
    assert.equal(res.value, "grpc-v1-value");
    assert.equal(res.secret.name, "grpc/db/password");
    assert.equal(res.secret.kind, "SECRET_KIND_MANUAL");
    assert.equal(res.secret.description, "via grpc-js");
    assert.equal(res.secret.currentVersion, 1);
    assert.equal(res.secret.store, "default");
    assert.equal(res.secret.revision, "1");
    assert.ok(res.secret.id);
    assert.equal(res.secret.rotationInterval, null, "manual secrets have no interval");
    assert.equal(res.secret.nextRotationAt, null);
    assert.deepEqual(res.secret.gracePeriod, { seconds: "0", nanos: 0 });
    assert.ok(Number(res.secret.createdAt.seconds) > 1_600_000_000);
    assert.equal(res.version.version, 1);
    assert.equal(res.version.current, true);
    assert.equal(res.version.validUntil, null);
    assert.match(headers.get("x-request-id")[0] as string, /^req_[0-9a-f]{32}$/);
  });

  it("StoreSecret defaults to manual when kind is unspecified", async () => {
    const { res } = await unary(client, "StoreSecret", { name: "grpc/defaulted", value: "x" });
    assert.equal(res.secret.kind, "SECRET_KIND_MANUAL");
  });

  it("StoreSecret (automatic): generated value, interval and grace as Durations", async () => {
    const { res } = await unary(client, "StoreSecret", {
      name: "grpc/svc/api-key",
      kind: "SECRET_KIND_AUTOMATIC",
      rotationInterval: { seconds: 86_400 },
      gracePeriod: { seconds: 3_600 },
    });
    assert.equal(res.secret.kind, "SECRET_KIND_AUTOMATIC");
    assert.equal(typeof res.value, "string");
    assert.ok(res.value.length >= 32);
    assert.deepEqual(res.secret.rotationInterval, { seconds: "86400", nanos: 0 });
    assert.deepEqual(res.secret.gracePeriod, { seconds: "3600", nanos: 0 });
    const next = Number(res.secret.nextRotationAt.seconds);
    const last = Number(res.secret.lastRotatedAt.seconds);
    assert.ok(Math.abs(next - last - 86_400) <= 1, "next rotation one interval after the last");
  });

  it("GetSecret: current and by version, without a token (reads are guarded by the IP allowlist)", async () => {
    const cur = await unary(client, "GetSecret", { name: "grpc/db/password" }, adminMd(null));
    assert.equal(cur.res.value, "grpc-v1-value");
    assert.equal(cur.res.version.version, 1);
    assert.equal(cur.res.secret.currentVersion, 1);
    const v1 = await unary(client, "GetSecret", { name: "grpc/db/password", version: 1 });
    assert.equal(v1.res.value, "grpc-v1-value");
    assert.ok(cur.headers.get("x-request-id")[0]);
  });

  it("echoes a caller-supplied x-request-id in the initial metadata", async () => {
    const md = adminMd();
    md.set("x-request-id", "trace-abc-12345678");
    const { headers } = await unary(client, "GetSecret", { name: "grpc/db/password" }, md);
    assert.deepEqual(headers.get("x-request-id"), ["trace-abc-12345678"]);
  });

  it("UpdateSecret with a new value makes version 2; the old one verifies within its grace period", async () => {
    const { res } = await unary(client, "UpdateSecret", {
      name: "grpc/db/password",
      value: "grpc-v2-value",
      description: "updated",
      gracePeriod: { seconds: 600 },
    });
    assert.equal(res.secret.currentVersion, 2);
    assert.equal(res.secret.description, "updated");
    assert.deepEqual(res.secret.gracePeriod, { seconds: "600", nanos: 0 });
    assert.equal(res.value, undefined, "UpdateSecretResponse has no value field");

    const cur = await unary(client, "GetSecret", { name: "grpc/db/password" });
    assert.equal(cur.res.value, "grpc-v2-value");
    assert.equal(cur.res.version.version, 2);
    assert.equal(cur.res.version.current, true);
    const old = await unary(client, "GetSecret", { name: "grpc/db/password", version: 1 });
    assert.equal(old.res.value, "grpc-v1-value");
    assert.equal(old.res.version.current, false);
    assert.ok(old.res.version.validUntil, "a superseded version has valid_until");

    const verifyNew = await unary(client, "VerifySecret", { name: "grpc/db/password", value: "grpc-v2-value" }, adminMd(null));
    assert.deepEqual(verifyNew.res, { valid: true, version: 2 });
    const verifyOld = await unary(client, "VerifySecret", { name: "grpc/db/password", value: "grpc-v1-value" });
    assert.deepEqual(verifyOld.res, { valid: true, version: 1 }, "old version still inside its grace window");
    const verifyBad = await unary(client, "VerifySecret", { name: "grpc/db/password", value: "wrong" });
    assert.deepEqual(verifyBad.res, { valid: false, version: 0 });
  });

  it("UpdateSecret with metadata only keeps the version", async () => {
    const { res } = await unary(client, "UpdateSecret", { name: "grpc/db/password", description: "meta only" });
    assert.equal(res.secret.currentVersion, 2);
    assert.equal(res.secret.description, "meta only");
  });

  it("a superseded version with no grace period no longer verifies", async () => {
    await unary(client, "StoreSecret", { name: "grpc/nograce", value: "first-nograce" });
    await unary(client, "UpdateSecret", { name: "grpc/nograce", value: "second-nograce" });
    const old = await unary(client, "VerifySecret", { name: "grpc/nograce", value: "first-nograce" });
    assert.deepEqual(old.res, { valid: false, version: 0 });
  });

  it("RotateSecret: a new generated value; the previous one stays valid for the grace period", async () => {
    const before = await unary(client, "GetSecret", { name: "grpc/svc/api-key" });
    const { res } = await unary(client, "RotateSecret", { name: "grpc/svc/api-key" });
    assert.equal(res.version.version, 2);
    assert.equal(res.version.current, true);
    assert.equal(res.secret.currentVersion, 2);
    assert.notEqual(res.value, before.res.value);
    assert.ok(res.value.length >= 32);
    const oldCheck = await unary(client, "VerifySecret", { name: "grpc/svc/api-key", value: before.res.value });
    assert.deepEqual(oldCheck.res, { valid: true, version: 1 });
    const newCheck = await unary(client, "VerifySecret", { name: "grpc/svc/api-key", value: res.value });
    assert.deepEqual(newCheck.res, { valid: true, version: 2 });
  });

  it("ListSecrets pages in name order with next_page_token, never carrying values", async () => {
    for (const n of ["grpc/page/a", "grpc/page/b", "grpc/page/c", "grpc/page/d", "grpc/page/e"]) {
      await unary(client, "StoreSecret", { name: n, value: `page-value-${n}` });
    }
    const seen: string[] = [];
    let token = "";
    let pages = 0;
    do {
      const { res } = await unary(client, "ListSecrets", { namePrefix: "grpc/page/", pageSize: 2, pageToken: token });
      assert.ok(res.secrets.length <= 2);
      for (const sec of res.secrets) {
        assert.equal("value" in sec, false);
        seen.push(sec.name);
      }
      token = res.nextPageToken;
      pages++;
      assert.ok(pages <= 5, "paging terminates");
    } while (token !== "");
    assert.equal(pages, 3);
    assert.deepEqual(seen, ["grpc/page/a", "grpc/page/b", "grpc/page/c", "grpc/page/d", "grpc/page/e"]);

    const all = await unary(client, "ListSecrets", {});
    const names = all.res.secrets.map((x: Msg) => x.name);
    assert.deepEqual(names, [...names].sort(), "name order");
    assert.ok(names.includes("grpc/db/password"));
    assert.equal(all.res.nextPageToken, "");
    assert.doesNotMatch(JSON.stringify(all.res), /grpc-v[12]-value|page-value-/);
  });

  it("ListSecrets rejects a page token it did not issue", async () => {
    const err = await failing(client, "ListSecrets", { pageToken: "garbage!" });
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
  });

  it("DeleteSecret removes every version; a second delete is NOT_FOUND", async () => {
    const { res } = await unary(client, "DeleteSecret", { name: "grpc/db/password" });
    assert.deepEqual(res, {});
    assert.equal((await failing(client, "GetSecret", { name: "grpc/db/password" })).code, grpc.status.NOT_FOUND);
    assert.equal((await failing(client, "GetSecret", { name: "grpc/db/password", version: 1 })).code, grpc.status.NOT_FOUND);
    assert.equal((await failing(client, "DeleteSecret", { name: "grpc/db/password" })).code, grpc.status.NOT_FOUND);
  });

  it("INVALID_ARGUMENT (3) for a bad name, an empty value, a missing manual value and a fractional duration", async () => {
    const cases: [string, Msg, RegExp][] = [
      ["StoreSecret", { name: "bad name!", value: "x" }, /name must be segments/],
      ["StoreSecret", { name: "a/../b", value: "x" }, /name must be segments/],
      ["StoreSecret", { name: "", value: "x" }, /name is required/],
      // proto3 `optional`: an explicitly empty value is present on the wire, so it is "empty", not "missing".
      ["StoreSecret", { name: "grpc/empty", value: "" }, /value must not be empty/],
      ["StoreSecret", { name: "grpc/novalue" }, /value is required/],
      ["StoreSecret", { name: "grpc/frac", kind: "SECRET_KIND_AUTOMATIC", rotationInterval: { seconds: 10, nanos: 5 } }, /whole/],
      ["UpdateSecret", { name: "grpc/svc/api-key", value: "" }, /value must not be empty/],
      ["GetSecret", { name: "bad name!" }, /name must be segments/],
      ["VerifySecret", { name: "grpc/svc/api-key", value: "" }, /value is required/],
    ];
    for (const [method, req, message] of cases) {
      const err = await failing(client, method, req);
      assert.equal(err.code, grpc.status.INVALID_ARGUMENT, `${method} ${JSON.stringify(req)}: ${err.details}`);
      // grpc-js leaves some characters of grpc-message percent-encoded (STACK.md section 3): decode before matching.
      assert.match(safeDecode(err.details), message);
    }
    const list = await unary(client, "ListSecrets", { namePrefix: "grpc/" });
    const names = list.res.secrets.map((x: Msg) => x.name);
    for (const n of ["grpc/empty", "grpc/novalue", "grpc/frac"]) assert.ok(!names.includes(n), `${n} was not created`);
  });

  it("NOT_FOUND (5) for a missing secret or version", async () => {
    const cases: [string, Msg][] = [
      ["GetSecret", { name: "grpc/ghost" }],
      ["GetSecret", { name: "grpc/svc/api-key", version: 99 }],
      ["UpdateSecret", { name: "grpc/ghost", description: "x" }],
      ["RotateSecret", { name: "grpc/ghost" }],
      ["VerifySecret", { name: "grpc/ghost", value: "x" }],
      ["DeleteSecret", { name: "grpc/ghost" }],
    ];
    for (const [method, req] of cases) {
      const err = await failing(client, method, req);
      assert.equal(err.code, grpc.status.NOT_FOUND, `${method} ${JSON.stringify(req)}`);
      assert.match(safeDecode(err.details), /not found/);
    }
  });

  it("ALREADY_EXISTS (6) for a duplicate name", async () => {
    const err = await failing(client, "StoreSecret", { name: "grpc/svc/api-key", value: "dup" });
    assert.equal(err.code, grpc.status.ALREADY_EXISTS);
    assert.match(safeDecode(err.details), /grpc\/svc\/api-key/);
  });

  it("FAILED_PRECONDITION (9) when rotating a manual secret", async () => {
    const err = await failing(client, "RotateSecret", { name: "grpc/defaulted" });
    assert.equal(err.code, grpc.status.FAILED_PRECONDITION);
    assert.match(safeDecode(err.details), /manual/);
  });

  it("UNAUTHENTICATED (16) for management calls without a token or with a wrong one", async () => {
    const bad = [adminMd(null), adminMd("wrong-token-0123456789"), (() => {
      const md = new grpc.Metadata();
      md.set("authorization", "Basic abc");
      return md;
    })()];
    const calls: [string, Msg][] = [
      ["StoreSecret", { name: "grpc/intruder", value: "x" }],
      ["ListSecrets", {}],
      ["UpdateSecret", { name: "grpc/svc/api-key", description: "hacked" }],
      ["RotateSecret", { name: "grpc/svc/api-key" }],
      ["DeleteSecret", { name: "grpc/svc/api-key" }],
    ];
    for (const [method, req] of calls) {
      for (const md of bad) {
        const err = await failing(client, method, req, md);
        assert.equal(err.code, grpc.status.UNAUTHENTICATED, `${method} with ${md.get("authorization")[0] ?? "no token"}`);
      }
    }
    const { res } = await unary(client, "GetSecret", { name: "grpc/svc/api-key" });
    assert.equal(res.version.version, 2, "nothing changed");
    assert.notEqual(res.secret.description, "hacked");
  });

  it("a failed call carries x-request-id too, and never echoes the value in its status or trailers", async () => {
    const canary = `grpc-canary-${Math.random().toString(36).slice(2)}-value`;
    const failures: [string, Msg][] = [
      ["StoreSecret", { name: "grpc/svc/api-key", value: canary }], // already exists
      ["StoreSecret", { name: "bad name!", value: canary }], // invalid name
      ["StoreSecret", { name: "grpc/too-long", value: canary.repeat(1000) }], // value too long
      ["UpdateSecret", { name: "grpc/ghost", value: canary }], // not found
      ["UpdateSecret", { name: "grpc/svc/api-key", value: canary, rotationInterval: { seconds: 0 } }], // bad interval
      ["VerifySecret", { name: "grpc/ghost", value: canary }], // not found
    ];
    for (const [method, req] of failures) {
      const err = await failing(client, method, req);
      assert.notEqual(err.code, grpc.status.OK);
      const text = errorText(err);
      assert.ok(!text.includes(canary), `${method} leaked the value: ${text}`);
      assert.ok(!text.includes(Buffer.from(canary).toString("base64")), `${method} leaked the value (base64)`);
      const id = err.initialMetadata.get("x-request-id")[0] ?? err.metadata.get("x-request-id")[0];
      assert.ok(id, `${method}: x-request-id in the response metadata`);
    }
    await new Promise((r) => setTimeout(r, 20));
    const log = s.logs.join("\n");
    assert.ok(!log.includes(canary), "the log never carries the value");
    assert.ok(!log.includes(ADMIN_TOKEN), "the log never carries the admin token");
  });

  it("logs one line per call with request_id, op, code and duration_ms", async () => {
    const md = adminMd();
    md.set("x-request-id", "grpc-log-check-0001");
    await failing(client, "GetSecret", { name: "grpc/ghost" }, md);
    await new Promise((r) => setTimeout(r, 20));
    const lines = s.logs.map((l) => JSON.parse(l)).filter((l) => l.request_id === "grpc-log-check-0001");
    assert.equal(lines.length, 1);
    assert.equal(lines[0].op, "latchkey.v1.SecretService/GetSecret");
    assert.equal(lines[0].code, "not_found");
    assert.equal(typeof lines[0].duration_ms, "number");
  });

  it("a request that cannot be decoded fails, and its log line says so under the procedure's name", async () => {
    const md = adminMd();
    md.set("x-request-id", "grpc-garbage-00001");
    // A peer that sends bytes which are not a GetSecretRequest (a truncated varint field).
    const err = await new Promise<GrpcError>((resolve, reject) => {
      client.makeUnaryRequest(
        "/latchkey.v1.SecretService/GetSecret",
        () => Buffer.from([0x0a, 0xff, 0xff]),
        (b: Buffer) => b,
        {},
        md,
        { deadline: Date.now() + CALL_TIMEOUT_MS },
        (e, res) => (e ? resolve(e) : reject(new Error(`expected a failure, got ${String(res)}`))),
      );
    });
    assert.notEqual(err.code, grpc.status.OK);
    assert.ok([grpc.status.INVALID_ARGUMENT, grpc.status.INTERNAL].includes(err.code), `code ${err.code}`);
    await new Promise((r) => setTimeout(r, 20));
    const lines = s.logs.map((l) => JSON.parse(l)).filter((l) => l.request_id === "grpc-garbage-00001");
    assert.equal(lines.length, 1);
    const expected = err.code === grpc.status.INTERNAL ? "internal" : "invalid_argument";
    assert.equal(lines[0].code, expected, `the log line must not call a failed call "${lines[0].code}"`);
    assert.equal(lines[0].op, "latchkey.v1.SecretService/GetSecret");
  });
});

describe("gRPC reads and the IP allowlist", () => {
  let s: TestServer;
  let client: grpc.Client;

  before(async () => {
    s = await startTestServer({ LATCHKEY_ALLOWED_IPS: "10.0.0.1" });
    client = new SecretServiceClient(`127.0.0.1:${s.port}`, grpc.credentials.createInsecure());
    await unary(client, "StoreSecret", { name: "grpc/guarded", value: "guarded-value" });
  });
  after(async () => {
    client?.close();
    await s?.stop();
  });

  it("PERMISSION_DENIED (7) for GetSecret and VerifySecret from a loopback peer, token or not", async () => {
    for (const md of [adminMd(null), adminMd()]) {
      const get = await failing(client, "GetSecret", { name: "grpc/guarded" }, md);
      assert.equal(get.code, grpc.status.PERMISSION_DENIED);
      assert.match(safeDecode(get.details), /not allowed/);
      assert.ok(!errorText(get).includes("guarded-value"));
      const verify = await failing(client, "VerifySecret", { name: "grpc/guarded", value: "guarded-value" }, md);
      assert.equal(verify.code, grpc.status.PERMISSION_DENIED);
    }
  });

  it("management calls still work with the token", async () => {
    const { res } = await unary(client, "ListSecrets", {});
    assert.deepEqual(
      res.secrets.map((x: Msg) => x.name),
      ["grpc/guarded"],
    );
  });
});
