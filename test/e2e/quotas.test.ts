import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Code } from "@connectrpc/connect";
import { SecretKind } from "../../gen/latchkey/v1/secret_pb.js";
import type { GetUsageResponse } from "../../gen/latchkey/v1/store_service_pb.js";
import {
  assertConnectError,
  assertRestError,
  connectJson,
  connectReason,
  grpc,
  grpcClients,
  type GrpcClients,
  grpcFails,
  grpcMd,
  grpcOk,
  grpcStatusDetails,
  opts,
  reasonOf,
  rest,
  restViolations,
  rpcClients,
  type RpcClients,
  rpcFails,
  sealedBytes,
} from "../support/clients.js";
import { startTestServer, type TestServer } from "../support/server.js";

/**
 * Usage and quotas end to end: usage per store and for the service over REST, gRPC (Connect client, grpc-js) and
 * Connect JSON with the limits echoed; every limit exceeded is 429 / RESOURCE_EXHAUSTED (QUOTA_EXCEEDED) and
 * changes nothing; writes that do not grow usage still pass at the limit.
 */

const BILLING = "billing-token-0123456789abcdef";

interface Numbers {
  stores: number;
  secrets: number;
  versions: number;
  vars: number;
  bytes: number;
}
const DIMS = ["stores", "secrets", "versions", "vars", "bytes"] as const;

/** Usage numbers from any protocol's rendering (numbers, bigints, strings, or absent for zero). */
function numbers(u: Record<string, unknown> | undefined): Numbers {
  const n = (v: unknown) => (v === undefined || v === null ? 0 : Number(v));
  return { stores: n(u?.stores), secrets: n(u?.secrets), versions: n(u?.versions), vars: n(u?.vars), bytes: n(u?.bytes) };
}

/** Limits from any protocol's rendering, unset ones left out. */
function limits(l: Record<string, unknown> | undefined): Record<string, number> {
  const out: Record<string, number> = {};
  for (const d of DIMS) {
    const v = l?.[d];
    if (v !== undefined && v !== null) out[d] = Number(v);
  }
  return out;
}

const GLOBAL_LIMITS = { stores: 3, secrets: 5 };
const STORE_LIMITS = { secrets: 3, vars: 2, versions: 5, bytes: 4000 };

describe("usage and quotas", () => {
  let s: TestServer;
  let rpc: RpcClients;
  let g: GrpcClients;

  before(async () => {
    s = await startTestServer({
      LATCHKEY_QUOTAS: "stores=3,secrets=5",
      LATCHKEY_STORE_QUOTAS: "secrets=3,vars=2,versions=5,bytes=4000",
      LATCHKEY_SERVICE_TOKENS: `billing=${BILLING}`,
    });
    rpc = rpcClients(s.url);
    g = grpcClients(s.port);
  });
  after(async () => {
    rpc?.close();
    g?.close();
    await s?.stop();
  });

  const cj = (procedure: string, body: unknown, token?: string | null) => connectJson(s.url, procedure, body, token);
  const r = (method: string, path: string, body?: unknown, token?: string | null) => rest(s.url, method, path, body, token);

  /** A store's usage over REST (numbers), checked against the limits echoed. */
  async function storeUsage(store: string): Promise<Numbers> {
    const res = await r("GET", `/v1/stores/${store}/usage`);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.store, store);
    assert.deepEqual(res.body.limits, STORE_LIMITS);
    return numbers(res.body.usage);
  }

  /** The service's usage, the same over all four clients, with the service limits echoed. */
  async function serviceUsage(): Promise<Numbers> {
    const viaRest = await r("GET", "/v1/usage");
    assert.equal(viaRest.status, 200);
    assert.deepEqual(viaRest.body.limits, GLOBAL_LIMITS);
    const viaRpc: GetUsageResponse = await rpc.stores.getUsage({}, opts());
    assert.deepEqual(limits(viaRpc.limits as unknown as Record<string, unknown>), GLOBAL_LIMITS);
    assert.equal(viaRpc.limits?.versions, undefined, "unset limits stay unset");
    const viaJson = await cj("StoreService/GetUsage", {});
    assert.equal(viaJson.status, 200);
    assert.deepEqual(limits(viaJson.body.limits), GLOBAL_LIMITS);
    const viaGrpcJs = await grpcOk(g.stores, "GetUsage", {});
    assert.deepEqual(limits(viaGrpcJs.limits), GLOBAL_LIMITS);

    const u = numbers(viaRest.body.usage);
    assert.deepEqual(numbers(viaRpc.usage as unknown as Record<string, unknown>), u, "gRPC agrees with REST");
    assert.deepEqual(numbers(viaJson.body.usage), u, "Connect JSON agrees with REST");
    assert.deepEqual(numbers(viaGrpcJs.usage), u, "grpc-js agrees with REST");
    return u;
  }

  /** A store's usage must agree across protocols. */
  async function storeUsageEverywhere(store: string): Promise<Numbers> {
    const u = await storeUsage(store);
    const viaRpc = await rpc.stores.getUsage({ store }, opts());
    assert.deepEqual(numbers(viaRpc.usage as unknown as Record<string, unknown>), u);
    assert.deepEqual(limits(viaRpc.limits as unknown as Record<string, unknown>), STORE_LIMITS);
    assert.equal(viaRpc.limits?.stores, undefined, "no store limit per store");
    const viaJson = await cj("StoreService/GetUsage", { store });
    assert.deepEqual(numbers(viaJson.body.usage), u);
    assert.deepEqual(limits(viaJson.body.limits), STORE_LIMITS);
    const viaGrpcJs = await grpcOk(g.stores, "GetUsage", { store });
    assert.deepEqual(numbers(viaGrpcJs.usage), u);
    assert.deepEqual(limits(viaGrpcJs.limits), STORE_LIMITS);
    return u;
  }

  function restQuota(res: Awaited<ReturnType<typeof r>>, what: string) {
    const body = assertRestError(res, 429, "resource_exhausted", what);
    assert.equal(body.reason, "QUOTA_EXCEEDED", what);
  }
  async function rpcQuota(p: Promise<unknown>, what: string) {
    assert.equal(reasonOf(await rpcFails(p, Code.ResourceExhausted, what)), "QUOTA_EXCEEDED", what);
  }
  function jsonQuota(res: Awaited<ReturnType<typeof cj>>, what: string) {
    assertConnectError(res, 429, "resource_exhausted", what);
    assert.equal(connectReason(res.body), "QUOTA_EXCEEDED", what);
  }
  async function grpcJsQuota(client: grpc.Client, method: string, req: Record<string, unknown>) {
    const out = await grpcFails(client, method, req, grpc.status.RESOURCE_EXHAUSTED);
    assert.equal(grpcStatusDetails(out.trailers)?.errorInfo?.reason, "QUOTA_EXCEEDED", `grpc-js ${method}`);
  }

  let s3Value = "";
  /** What store qa holds, tracked as the test goes. */
  const qa = { secrets: 0, versions: 0, vars: 0, bytes: 0 };

  it("a fresh service: only the default store, nothing held, limits echoed", async () => {
    assert.deepEqual(await serviceUsage(), { stores: 1, secrets: 0, versions: 0, vars: 0, bytes: 0 });
    assert.deepEqual(await storeUsageEverywhere("default"), { stores: 1, secrets: 0, versions: 0, vars: 0, bytes: 0 });
  });

  it("stores: the service limit is enforced on every protocol and nothing is created", async () => {
    assert.equal((await r("POST", "/v1/stores", { name: "qa" })).status, 201);
    await rpc.stores.createStore({ name: "qb" }, opts());
    assert.equal((await serviceUsage()).stores, 3);

    restQuota(await r("POST", "/v1/stores", { name: "qc" }), "REST CreateStore");
    await rpcQuota(rpc.stores.createStore({ name: "qc" }, opts()), "rpc CreateStore");
    jsonQuota(await cj("StoreService/CreateStore", { name: "qc" }), "Connect JSON CreateStore");
    await grpcJsQuota(g.stores, "CreateStore", { name: "qc" });

    assert.equal((await r("GET", "/v1/stores/qc")).status, 404);
    assert.equal((await serviceUsage()).stores, 3);
  });

  it("secrets per store: usage counts secrets, versions and sealed bytes; the fourth secret is refused", async () => {
    assert.equal((await r("POST", "/v1/stores/qa/secrets", { name: "s1", value: "a".repeat(10) })).status, 201);
    await rpc.secrets.storeSecret({ store: "qa", name: "s2", value: "b".repeat(20) }, opts());
    const s3 = await cj("SecretService/StoreSecret", { store: "qa", name: "s3", kind: "SECRET_KIND_AUTOMATIC" });
    assert.equal(s3.status, 200);
    s3Value = s3.body.value;
    Object.assign(qa, {
      secrets: 3,
      versions: 3,
      bytes: sealedBytes(10) + sealedBytes(20) + sealedBytes(Buffer.byteLength(s3Value)),
    });
    assert.deepEqual(await storeUsageEverywhere("qa"), { stores: 1, ...qa });

    restQuota(await r("POST", "/v1/stores/qa/secrets", { name: "s4", value: "x" }), "REST StoreSecret");
    await rpcQuota(rpc.secrets.storeSecret({ store: "qa", name: "s4", value: "x" }, opts()), "rpc StoreSecret");
    jsonQuota(await cj("SecretService/StoreSecret", { store: "qa", name: "s4", value: "x" }), "Connect JSON StoreSecret");
    await grpcJsQuota(g.secrets, "StoreSecret", { store: "qa", name: "s4", value: "x" });
    restQuota(await r("POST", "/v1/stores/qa/secrets", { name: "s4", kind: "automatic" }), "REST automatic");

    assert.equal((await r("GET", "/v1/stores/qa/secrets/s4")).status, 404, "s4 not created");
    assert.deepEqual(await storeUsage("qa"), { stores: 1, ...qa }, "usage unchanged");
  });

  it("secrets for the service: the sixth secret is refused even in a store below its own limit", async () => {
    await grpcOk(g.secrets, "StoreSecret", { store: "qb", name: "s1", value: "d".repeat(10) });
    assert.equal((await r("POST", "/v1/stores/qb/secrets", { name: "s2", value: "e".repeat(10) })).status, 201);
    assert.equal((await serviceUsage()).secrets, 5);
    assert.equal((await storeUsage("qb")).secrets, 2);

    restQuota(await r("POST", "/v1/stores/qb/secrets", { name: "s3", value: "x" }), "REST in qb");
    await rpcQuota(rpc.secrets.storeSecret({ store: "qb", name: "s3", value: "x" }, opts()), "rpc in qb");
    jsonQuota(await cj("SecretService/StoreSecret", { name: "in-default", value: "x" }), "Connect JSON in default");
    await grpcJsQuota(g.secrets, "StoreSecret", { name: "in-default", value: "x" });

    assert.equal((await serviceUsage()).secrets, 5);
    assert.equal((await storeUsage("default")).secrets, 0);
    assert.equal((await r("GET", "/v1/stores/qb/secrets/s3")).status, 404);
  });

  it("versions per store: new values and rotations count; at the limit they are refused, metadata updates pass", async () => {
    const upd = await r("PUT", "/v1/stores/qa/secrets/s1", { value: "A".repeat(10) });
    assert.equal(upd.status, 200);
    assert.equal(upd.body.version, 2);
    const rot = await rpc.secrets.rotateSecret({ store: "qa", name: "s3" }, opts());
    assert.equal(rot.version?.version, 2);
    qa.versions = 5;
    qa.bytes += sealedBytes(10) + sealedBytes(Buffer.byteLength(rot.value));
    assert.deepEqual(await storeUsageEverywhere("qa"), { stores: 1, ...qa });

    await rpcQuota(rpc.secrets.updateSecret({ store: "qa", name: "s2", value: "new" }, opts()), "rpc UpdateSecret");
    restQuota(await r("POST", "/v1/stores/qa/secrets/s3/rotate"), "REST rotate");
    restQuota(await r("PUT", "/v1/stores/qa/secrets/s2", { value: "new" }), "REST update");
    jsonQuota(await cj("SecretService/UpdateSecret", { store: "qa", name: "s1", value: "new" }), "Connect JSON UpdateSecret");
    await grpcJsQuota(g.secrets, "RotateSecret", { store: "qa", name: "s3" });
    await rpcQuota(rpc.secrets.rotateSecret({ store: "qa", name: "s3" }, opts()), "rpc RotateSecret");

    // Nothing changed.
    const s2 = await r("GET", "/v1/stores/qa/secrets/s2");
    assert.deepEqual([s2.body.version, s2.body.value], [1, "b".repeat(20)]);
    const s3 = await rpc.secrets.getSecret({ store: "qa", name: "s3" }, opts());
    assert.deepEqual([s3.version?.version, s3.value], [2, rot.value]);
    assert.deepEqual(await storeUsage("qa"), { stores: 1, ...qa });

    // Writes that do not grow usage pass at the limit.
    const described = await r("PUT", "/v1/stores/qa/secrets/s2", { description: "metadata only" });
    assert.equal(described.status, 200);
    assert.equal(described.body.description, "metadata only");
    const kindChange = await rpc.secrets.updateSecret({ store: "qa", name: "s3", gracePeriod: { seconds: 60n }, kind: SecretKind.AUTOMATIC }, opts());
    assert.equal(kindChange.secret?.gracePeriod?.seconds, 60n);
    assert.deepEqual(await storeUsage("qa"), { stores: 1, ...qa });
  });

  it("vars per store: the third var is refused; a batch with one new var changes nothing; replacing passes", async () => {
    assert.equal((await r("PUT", "/v1/stores/qa/vars/v1", { value: "x".repeat(100) })).status, 200);
    await rpc.vars.setVars({ store: "qa", vars: [{ name: "v2", value: "y".repeat(50) }] }, opts());
    qa.vars = 2;
    qa.bytes += 150;
    assert.deepEqual(await storeUsageEverywhere("qa"), { stores: 1, ...qa });

    restQuota(
      await r("POST", "/v1/stores/qa/vars", {
        vars: [
          { name: "v2", value: "changed" },
          { name: "v3", value: "new" },
        ],
      }),
      "REST batch",
    );
    restQuota(await r("PUT", "/v1/stores/qa/vars/v3", { value: "new" }), "REST PUT");
    await rpcQuota(rpc.vars.setVars({ store: "qa", vars: [{ name: "v3", value: "new" }] }, opts()), "rpc SetVars");
    jsonQuota(await cj("VarService/SetVars", { store: "qa", vars: [{ name: "v3", value: "new" }] }), "Connect JSON SetVars");
    await grpcJsQuota(g.vars, "SetVars", { store: "qa", vars: [{ name: "v1", value: "z" }, { name: "v3", value: "new" }] });

    assert.equal((await r("GET", "/v1/stores/qa/vars/v2")).body.value, "y".repeat(50), "v2 not replaced by the refused batch");
    assert.equal((await r("GET", "/v1/stores/qa/vars/v1")).body.value, "x".repeat(100), "v1 not replaced by the refused batch");
    assert.equal((await r("GET", "/v1/stores/qa/vars/v3")).status, 404, "v3 not created");
    assert.deepEqual(await storeUsage("qa"), { stores: 1, ...qa });

    // Replacing existing vars does not add vars: it passes at the limit.
    assert.equal((await r("PUT", "/v1/stores/qa/vars/v1", { value: "z".repeat(100) })).status, 200);
    const both = await rpc.vars.setVars(
      {
        store: "qa",
        vars: [
          { name: "v1", value: "1".repeat(100) },
          { name: "v2", value: "2".repeat(40) },
        ],
      },
      opts(),
    );
    assert.equal(both.vars.length, 2);
    qa.bytes -= 10;
    assert.deepEqual(await storeUsage("qa"), { stores: 1, ...qa });
  });

  it("bytes per store: vars and secret values count; exactly the limit passes, one byte over is refused", async () => {
    const base = 2 * sealedBytes(10);
    assert.equal((await storeUsage("qb")).bytes, base);

    assert.equal((await r("PUT", "/v1/stores/qb/vars/big", { value: "x".repeat(3800) })).status, 200);
    assert.equal((await storeUsage("qb")).bytes, base + 3800);
    restQuota(await r("PUT", "/v1/stores/qb/vars/big2", { value: "y".repeat(100) }), "REST new var over bytes");

    const exact = 4000 - base;
    assert.equal((await r("PUT", "/v1/stores/qb/vars/big", { value: "x".repeat(exact) })).status, 200, "exactly at the limit");
    assert.equal((await storeUsage("qb")).bytes, 4000);
    restQuota(await r("PUT", "/v1/stores/qb/vars/big", { value: "x".repeat(exact + 1) }), "REST one byte over");
    await rpcQuota(rpc.vars.setVars({ store: "qb", vars: [{ name: "big2", value: "y" }] }, opts()), "rpc one new byte");
    // Multi-byte characters count as bytes.
    await rpcQuota(rpc.vars.setVars({ store: "qb", vars: [{ name: "big", value: `${"x".repeat(exact - 1)}é` }] }, opts()), "rpc é");
    // A new secret version would add bytes (and a version, which is within its limit): refused.
    restQuota(await r("PUT", "/v1/stores/qb/secrets/s1", { value: "d".repeat(10) }), "REST secret value over bytes");
    jsonQuota(await cj("SecretService/UpdateSecret", { store: "qb", name: "s2", value: "e" }), "Connect JSON secret value");

    assert.equal((await r("GET", "/v1/stores/qb/vars/big")).body.value, "x".repeat(exact));
    assert.equal((await r("GET", "/v1/stores/qb/vars/big2")).status, 404);
    assert.equal((await r("GET", "/v1/stores/qb/secrets/s1")).body.version, 1);
    assert.deepEqual(await storeUsage("qb"), { stores: 1, secrets: 2, versions: 2, vars: 1, bytes: 4000 });

    // At the limit, writes that keep or shrink usage pass.
    assert.equal((await r("PUT", "/v1/stores/qb/vars/big", { value: "w".repeat(exact) })).status, 200, "same size");
    assert.equal((await r("PUT", "/v1/stores/qb/secrets/s1", { description: "no new bytes" })).status, 200);
    assert.equal((await r("PUT", "/v1/stores/qb/vars/big", { value: "x".repeat(10) })).status, 200, "shrink");
    assert.equal((await r("PUT", "/v1/stores/qb/vars/big2", { value: "y".repeat(100) })).status, 200, "room again");
    assert.deepEqual(await storeUsageEverywhere("qb"), { stores: 1, secrets: 2, versions: 2, vars: 2, bytes: base + 110 });
  });

  it("the service's usage is the sum of its stores'", async () => {
    const total = await serviceUsage();
    const parts = await Promise.all(["default", "qa", "qb"].map(storeUsage));
    for (const d of ["secrets", "versions", "vars", "bytes"] as const) {
      assert.equal(total[d], parts.reduce((n, p) => n + p[d], 0), d);
    }
    assert.deepEqual(total, { stores: 3, secrets: 5, versions: 7, vars: 4, bytes: qa.bytes + 2 * sealedBytes(10) + 110 });
  });

  it("the service's usage needs an admin token: a service token is 403 / PERMISSION_DENIED, no token 401", async () => {
    assertRestError(await r("GET", "/v1/usage", undefined, BILLING), 403, "permission_denied");
    await rpcFails(rpc.stores.getUsage({}, opts(BILLING)), Code.PermissionDenied, "rpc");
    assertConnectError(await cj("StoreService/GetUsage", {}, BILLING), 403, "permission_denied");
    await grpcFails(g.stores, "GetUsage", {}, grpc.status.PERMISSION_DENIED, grpcMd(BILLING));
    assertRestError(await r("GET", "/v1/usage", undefined, null), 401, "unauthenticated");
    await rpcFails(rpc.stores.getUsage({}, opts(null)), Code.Unauthenticated, "rpc anonymous");
    // A store the service does not own is not found, whatever its usage.
    assertRestError(await r("GET", "/v1/stores/qa/usage", undefined, BILLING), 404, "not_found");
  });

  it("the per-store usage route needs a store: an empty one is invalid_argument, not the service's usage", async () => {
    const res = await r("GET", "/v1/stores//usage");
    assert.deepEqual(restViolations(assertRestError(res, 400, "invalid_argument")), [["store", "required"]]);
    const spaced = await r("GET", "/v1/stores/%20/usage");
    assert.deepEqual(restViolations(assertRestError(spaced, 400, "invalid_argument")), [["store", "pattern"]]);
  });

  it("freeing usage makes room again", async () => {
    assert.equal((await r("DELETE", "/v1/stores/qa/secrets/s1")).status, 204);
    assert.equal((await r("POST", "/v1/stores/qa/secrets", { name: "s4", value: "room" })).status, 201);
    await rpc.vars.deleteVar({ store: "qa", name: "v1" }, opts());
    await rpc.vars.setVars({ store: "qa", vars: [{ name: "v3", value: "room" }] }, opts());

    assert.equal((await r("DELETE", "/v1/stores/qb?purge=true")).status, 204);
    assert.equal((await serviceUsage()).stores, 2);
    assert.equal((await r("POST", "/v1/stores", { name: "qc" })).status, 201);
    const u = await serviceUsage();
    assert.deepEqual([u.stores, u.secrets], [3, 3]);
  });
});

describe("quotas with version pruning", () => {
  let s: TestServer;
  let rpc: RpcClients;
  before(async () => {
    s = await startTestServer({ LATCHKEY_MAX_VERSIONS: "2", LATCHKEY_STORE_QUOTAS: "versions=2,bytes=200" });
    rpc = rpcClients(s.url);
  });
  after(async () => {
    rpc?.close();
    await s?.stop();
  });

  it("a new value that prunes the oldest version does not grow versions and passes at the limit; bytes still count", async () => {
    const usage = async () => numbers((await rest(s.url, "GET", "/v1/stores/default/usage")).body.usage);
    assert.equal((await rest(s.url, "POST", "/v1/secrets", { name: "p", value: "a".repeat(10) })).status, 201);
    await rpc.secrets.updateSecret({ name: "p", value: "b".repeat(10) }, opts());
    assert.deepEqual(await usage(), { stores: 1, secrets: 1, versions: 2, vars: 0, bytes: 2 * sealedBytes(10) });

    // At the version limit: the third version prunes the first.
    const third = await rpc.secrets.updateSecret({ name: "p", value: "c".repeat(10) }, opts());
    assert.equal(third.secret?.currentVersion, 3);
    assert.deepEqual(await usage(), { stores: 1, secrets: 1, versions: 2, vars: 0, bytes: 2 * sealedBytes(10) });

    // A larger value grows bytes by the difference: within 200 it passes ...
    const fourth = await rest(s.url, "PUT", "/v1/secrets/p", { value: "d".repeat(40) });
    assert.equal(fourth.status, 200);
    assert.deepEqual(await usage(), { stores: 1, secrets: 1, versions: 2, vars: 0, bytes: sealedBytes(10) + sealedBytes(40) });
    // ... beyond it, it is refused and nothing changes.
    const over = await rest(s.url, "PUT", "/v1/secrets/p", { value: "e".repeat(100) });
    assert.equal(assertRestError(over, 429, "resource_exhausted").reason, "QUOTA_EXCEEDED");
    const cur = await rpc.secrets.getSecret({ name: "p" }, opts());
    assert.deepEqual([cur.version?.version, cur.value], [4, "d".repeat(40)]);
    assert.deepEqual(await usage(), { stores: 1, secrets: 1, versions: 2, vars: 0, bytes: sealedBytes(10) + sealedBytes(40) });

    // A second secret would add a version: refused.
    const second = await rpcFails(rpc.secrets.storeSecret({ name: "q", value: "x" }, opts()), Code.ResourceExhausted, "second secret");
    assert.equal(reasonOf(second), "QUOTA_EXCEEDED");
    assert.equal((await usage()).secrets, 1);
  });
});

describe("quotas under concurrent writes", () => {
  let s: TestServer;
  before(async () => {
    s = await startTestServer({ LATCHKEY_QUOTAS: "stores=4", LATCHKEY_STORE_QUOTAS: "secrets=3,vars=3" });
  });
  after(() => s?.stop());

  it("parallel creations never overshoot a limit: exactly the room left is admitted", async () => {
    const secrets = await Promise.all(
      Array.from({ length: 10 }, (_, i) => rest(s.url, "POST", "/v1/secrets", { name: `race/${i}`, value: `v${i}` })),
    );
    assert.deepEqual(
      secrets.map((x) => x.status).sort(),
      [201, 201, 201, 429, 429, 429, 429, 429, 429, 429],
    );
    const vars = await Promise.all(Array.from({ length: 10 }, (_, i) => rest(s.url, "PUT", `/v1/stores/default/vars/race${i}`, { value: "x" })));
    assert.equal(vars.filter((x) => x.status === 200).length, 3);
    assert.ok(vars.every((x) => x.status === 200 || x.status === 429));
    const stores = await Promise.all(Array.from({ length: 6 }, (_, i) => rest(s.url, "POST", "/v1/stores", { name: `race-${i}` })));
    assert.equal(stores.filter((x) => x.status === 201).length, 3);

    const u = numbers((await rest(s.url, "GET", "/v1/usage")).body.usage);
    assert.deepEqual([u.stores, u.secrets, u.vars], [4, 3, 3]);
    assert.equal((await rest(s.url, "GET", "/v1/secrets?prefix=race/")).body.length, 3);
  });
});
