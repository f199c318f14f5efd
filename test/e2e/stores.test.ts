import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Code } from "@connectrpc/connect";
import { SecretEventType, SecretKind } from "../../gen/latchkey/v1/secret_pb.js";
import type { WatchSecretsResponse } from "../../gen/latchkey/v1/secret_service_pb.js";
import {
  assertConnectError,
  assertRestError,
  connectJson,
  connectJsonStream,
  connectReason,
  connectViolations,
  grpc,
  grpcClients,
  type GrpcClients,
  grpcFails,
  grpcMd,
  grpcOk,
  grpcStatusDetails,
  grpcStream,
  opts,
  reasonOf,
  rest,
  restViolations,
  rpcClients,
  type RpcClients,
  rpcFails,
  rpcStream,
  violationsOf,
} from "../support/clients.js";
import { startTestServer, type TestServer } from "../support/server.js";

/**
 * Stores (namespaces) end to end, over gRPC (a Connect client on h2c and an independent grpc-js client), Connect
 * JSON as curl sends it, and REST: lifecycle, per-store secrets, refusal to delete a non-empty store, purge, the
 * undeletable default store, name rules, the store-qualified secret routes and WatchSecrets per store.
 */
describe("stores", () => {
  let s: TestServer;
  let rpc: RpcClients;
  let g: GrpcClients;

  before(async () => {
    s = await startTestServer();
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

  describe("the default store", () => {
    it("always exists, unowned, over every protocol", async () => {
      const viaRest = await r("GET", "/v1/stores/default");
      assert.equal(viaRest.status, 200);
      assert.equal(viaRest.body.name, "default");
      assert.equal(viaRest.body.managed_by, null);
      assert.match(viaRest.body.created_at, /\+00:00$/);

      const viaRpc = await rpc.stores.getStore({ name: "default" }, opts());
      assert.equal(viaRpc.store?.name, "default");
      assert.equal(viaRpc.store?.managedBy, "");

      const viaJson = await cj("StoreService/GetStore", { name: "default" });
      assert.equal(viaJson.status, 200);
      assert.equal(viaJson.body.store.name, "default");

      const viaGrpcJs = await grpcOk(g.stores, "GetStore", { name: "default" });
      assert.equal(viaGrpcJs.store.name, "default");
    });

    it("cannot be deleted, with or without purge, and keeps its secrets", async () => {
      const created = await r("POST", "/v1/secrets", { name: "keep/me", value: "kept-value" });
      assert.equal(created.status, 201);

      for (const path of ["/v1/stores/default", "/v1/stores/default?purge=true"]) {
        const res = await r("DELETE", path);
        assert.ok(res.status === 400 || res.status === 409, `${path}: ${res.status}`);
        const body = assertRestError(res, res.status, "failed_precondition", path);
        assert.equal(body.reason, "DEFAULT_STORE");
      }
      const ce = await rpcFails(rpc.stores.deleteStore({ name: "default", purge: true }, opts()), Code.FailedPrecondition, "rpc");
      assert.equal(reasonOf(ce), "DEFAULT_STORE");

      const json = await cj("StoreService/DeleteStore", { name: "default", purge: true });
      assertConnectError(json, 400, "failed_precondition");
      assert.equal(connectReason(json.body), "DEFAULT_STORE");

      const gf = await grpcFails(g.stores, "DeleteStore", { name: "default", purge: true }, grpc.status.FAILED_PRECONDITION);
      assert.equal(grpcStatusDetails(gf.trailers)?.errorInfo?.reason, "DEFAULT_STORE");

      assert.equal((await r("GET", "/v1/stores/default")).status, 200);
      const still = await r("GET", "/v1/secrets/keep/me");
      assert.equal(still.status, 200);
      assert.equal(still.body.value, "kept-value");
    });
  });

  describe("lifecycle", () => {
    it("REST: create (201), get, list, duplicate (409), delete (204), then gone (404)", async () => {
      const created = await r("POST", "/v1/stores", { name: "rest-life", description: "made over REST" });
      assert.equal(created.status, 201);
      assert.equal(created.body.name, "rest-life");
      assert.equal(created.body.description, "made over REST");
      assert.equal(created.body.managed_by, null);
      assert.match(created.body.created_at, /^\d{4}-\d\d-\d\dT.*\+00:00$/);
      assert.equal(created.body.updated_at, created.body.created_at);

      const got = await r("GET", "/v1/stores/rest-life");
      assert.equal(got.status, 200);
      assert.deepEqual(got.body, created.body);

      const list = await r("GET", "/v1/stores");
      assert.equal(list.status, 200);
      const names = list.body.map((x: { name: string }) => x.name);
      assert.ok(names.includes("rest-life") && names.includes("default"), names.join());
      assert.deepEqual(names, [...names].sort(), "name order");

      const dup = await r("POST", "/v1/stores", { name: "rest-life" });
      assert.equal(assertRestError(dup, 409, "already_exists").reason, "STORE_EXISTS");

      const del = await r("DELETE", "/v1/stores/rest-life");
      assert.equal(del.status, 204);
      assert.equal(del.body, undefined);
      assert.equal(assertRestError(await r("GET", "/v1/stores/rest-life"), 404, "not_found").reason, "STORE_NOT_FOUND");
      assert.equal(assertRestError(await r("DELETE", "/v1/stores/rest-life"), 404, "not_found").reason, "STORE_NOT_FOUND");
      const after = await r("GET", "/v1/stores");
      assert.ok(!after.body.some((x: { name: string }) => x.name === "rest-life"));
    });

    it("REST: list pages with limit and x-next-cursor", async () => {
      for (const n of ["pg-1", "pg-2", "pg-3"]) assert.equal((await r("POST", "/v1/stores", { name: n })).status, 201);
      const seen: string[] = [];
      let cursor: string | null = null;
      for (let i = 0; i < 20; i++) {
        const page: Awaited<ReturnType<typeof r>> = await r("GET", `/v1/stores?limit=2${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
        assert.equal(page.status, 200);
        assert.ok(page.body.length <= 2);
        seen.push(...page.body.map((x: { name: string }) => x.name));
        cursor = page.headers.get("x-next-cursor");
        if (!cursor) break;
      }
      assert.equal(cursor, null, "paging ends");
      for (const n of ["default", "pg-1", "pg-2", "pg-3"]) assert.ok(seen.includes(n), `${n} listed`);
      assert.deepEqual(seen, [...new Set(seen)].sort(), "no repeats, name order");
    });

    it("gRPC (Connect client): create, get, list with paging, duplicate, delete", async () => {
      const created = await rpc.stores.createStore({ name: "rpc-life", description: "made over gRPC" }, opts());
      assert.equal(created.store?.name, "rpc-life");
      assert.equal(created.store?.description, "made over gRPC");
      assert.equal(created.store?.managedBy, "");
      assert.ok(created.store?.createdAt && created.store.createdAt.seconds > 1_600_000_000n);

      const got = await rpc.stores.getStore({ name: "rpc-life" }, opts());
      assert.equal(got.store?.description, "made over gRPC");

      const seen: string[] = [];
      let pageToken = "";
      for (let i = 0; i < 20; i++) {
        const page = await rpc.stores.listStores({ pageSize: 1, pageToken }, opts());
        assert.ok(page.stores.length <= 1);
        seen.push(...page.stores.map((x) => x.name));
        pageToken = page.nextPageToken;
        if (!pageToken) break;
      }
      assert.equal(pageToken, "");
      assert.ok(seen.includes("rpc-life") && seen.includes("default"));
      assert.deepEqual(seen, [...new Set(seen)].sort());

      const dup = await rpcFails(rpc.stores.createStore({ name: "rpc-life" }, opts()), Code.AlreadyExists, "duplicate");
      assert.equal(reasonOf(dup), "STORE_EXISTS");

      const del = await rpc.stores.deleteStore({ name: "rpc-life" }, opts());
      assert.equal(del.secretsRemoved, 0n);
      assert.equal(del.varsRemoved, 0n);
      const gone = await rpcFails(rpc.stores.getStore({ name: "rpc-life" }, opts()), Code.NotFound, "get after delete");
      assert.equal(reasonOf(gone), "STORE_NOT_FOUND");
      await rpcFails(rpc.stores.deleteStore({ name: "rpc-life" }, opts()), Code.NotFound, "delete again");
    });

    it("Connect JSON: create, get, list, delete", async () => {
      const created = await cj("StoreService/CreateStore", { name: "json-life", description: "curl" });
      assert.equal(created.status, 200);
      assert.equal(created.body.store.name, "json-life");
      assert.equal(created.body.store.description, "curl");
      assert.equal(created.body.store.managedBy ?? "", "");
      assert.match(created.body.store.createdAt, /^\d{4}-\d\d-\d\dT.*Z$/);

      const got = await cj("StoreService/GetStore", { name: "json-life" });
      assert.equal(got.status, 200);
      assert.equal(got.body.store.name, "json-life");

      const list = await cj("StoreService/ListStores", { pageSize: 1000 });
      assert.equal(list.status, 200);
      assert.ok(list.body.stores.some((x: { name: string }) => x.name === "json-life"));

      const dup = await cj("StoreService/CreateStore", { name: "json-life" });
      assertConnectError(dup, 409, "already_exists");
      assert.equal(connectReason(dup.body), "STORE_EXISTS");

      const del = await cj("StoreService/DeleteStore", { name: "json-life" });
      assert.equal(del.status, 200);
      assert.equal(BigInt(del.body.secretsRemoved ?? 0), 0n);

      const gone = await cj("StoreService/GetStore", { name: "json-life" });
      assertConnectError(gone, 404, "not_found");
      assert.equal(connectReason(gone.body), "STORE_NOT_FOUND");
    });

    it("grpc-js: create, get, list, delete", async () => {
      const created = await grpcOk(g.stores, "CreateStore", { name: "grpcjs-life", description: "grpc-js" });
      assert.equal(created.store.name, "grpcjs-life");
      assert.equal(created.store.managedBy, "");
      const got = await grpcOk(g.stores, "GetStore", { name: "grpcjs-life" });
      assert.equal(got.store.description, "grpc-js");
      const list = await grpcOk(g.stores, "ListStores", { pageSize: 1000 });
      assert.ok(list.stores.some((x: { name: string }) => x.name === "grpcjs-life"));
      const del = await grpcOk(g.stores, "DeleteStore", { name: "grpcjs-life" });
      assert.equal(del.secretsRemoved, "0");
      const gone = await grpcFails(g.stores, "GetStore", { name: "grpcjs-life" }, grpc.status.NOT_FOUND);
      assert.equal(grpcStatusDetails(gone.trailers)?.errorInfo?.reason, "STORE_NOT_FOUND");
    });
  });

  describe("store names", () => {
    const bad: [string, string][] = [
      ["", "required"],
      ["-leading-dash", "pattern"],
      [".leading-dot", "pattern"],
      ["has space", "pattern"],
      ["slash/inside", "pattern"],
      ["ünïcode", "pattern"],
      ["a".repeat(64), "pattern"],
    ];

    it("invalid names are rejected with a field violation on every protocol", async () => {
      for (const [name, reason] of bad) {
        const viaRest = await r("POST", "/v1/stores", { name });
        assertRestError(viaRest, 400, "invalid_argument", `REST ${JSON.stringify(name)}`);
        assert.deepEqual(restViolations(viaRest.body), [["name", reason]], `REST ${JSON.stringify(name)}`);

        const ce = await rpcFails(rpc.stores.createStore({ name }, opts()), Code.InvalidArgument, `rpc ${JSON.stringify(name)}`);
        assert.deepEqual(violationsOf(ce), [["name", reason]]);

        const json = await cj("StoreService/CreateStore", { name });
        assertConnectError(json, 400, "invalid_argument");
        assert.deepEqual(connectViolations(json.body), [["name", reason]]);
      }
      const gf = await grpcFails(g.stores, "CreateStore", { name: "has space" }, grpc.status.INVALID_ARGUMENT);
      assert.deepEqual(
        grpcStatusDetails(gf.trailers)?.badRequest?.fieldViolations.map((v) => [v.field, v.reason]),
        [["name", "pattern"]],
      );
      const list = await r("GET", "/v1/stores");
      for (const [name] of bad) assert.ok(!list.body.some((x: { name: string }) => x.name === name), `${name} not created`);
    });

    it("the longest and most varied valid names are accepted", async () => {
      for (const name of ["a".repeat(63), "0digit-first", "Mixed_Case.dots-and_underscores"]) {
        const res = await r("POST", "/v1/stores", { name });
        assert.equal(res.status, 201, `${name}: ${JSON.stringify(res.body)}`);
        assert.equal((await r("GET", `/v1/stores/${name}`)).status, 200);
        assert.equal((await r("DELETE", `/v1/stores/${name}`)).status, 204);
      }
    });

    it("an invalid store in a secret or var path or request is invalid_argument on field store", async () => {
      const viaRest = await r("GET", "/v1/stores/bad%20name/secrets/x");
      assertRestError(viaRest, 400, "invalid_argument");
      assert.deepEqual(restViolations(viaRest.body), [["store", "pattern"]]);
      const vars = await r("GET", "/v1/stores/-bad/vars");
      assertRestError(vars, 400, "invalid_argument");
      assert.deepEqual(restViolations(vars.body), [["store", "pattern"]]);

      const ce = await rpcFails(rpc.secrets.getSecret({ store: "bad name", name: "x" }, opts()), Code.InvalidArgument, "rpc");
      assert.deepEqual(violationsOf(ce), [["store", "pattern"]]);
      const json = await cj("SecretService/StoreSecret", { store: "bad/name", name: "x", value: "v" });
      assertConnectError(json, 400, "invalid_argument");
      assert.deepEqual(connectViolations(json.body), [["store", "pattern"]]);
    });
  });

  describe("secrets per store", () => {
    before(async () => {
      for (const n of ["alpha", "beta"]) assert.equal((await r("POST", "/v1/stores", { name: n })).status, 201);
    });

    it("the same secret name in three stores holds three values", async () => {
      const d = await r("POST", "/v1/secrets", { name: "db/password", value: "default-pw" });
      assert.equal(d.status, 201);
      const a = await r("POST", "/v1/stores/alpha/secrets", { name: "db/password", value: "alpha-pw" });
      assert.equal(a.status, 201);
      const b = await rpc.secrets.storeSecret({ store: "beta", name: "db/password", value: "beta-pw" }, opts());
      assert.equal(b.secret?.store, "beta");

      // REST: bare routes mean the default store; store-qualified routes the named one.
      assert.equal((await r("GET", "/v1/secrets/db/password")).body.value, "default-pw");
      assert.equal((await r("GET", "/v1/stores/default/secrets/db/password")).body.value, "default-pw");
      assert.equal((await r("GET", "/v1/stores/alpha/secrets/db/password")).body.value, "alpha-pw");
      assert.equal((await r("GET", "/v1/stores/beta/secrets/db/password")).body.value, "beta-pw");

      // gRPC (Connect client): an empty store means default.
      assert.equal((await rpc.secrets.getSecret({ name: "db/password" }, opts())).value, "default-pw");
      const ga = await rpc.secrets.getSecret({ store: "alpha", name: "db/password" }, opts());
      assert.equal(ga.value, "alpha-pw");
      assert.equal(ga.secret?.store, "alpha");
      assert.equal((await rpc.secrets.getSecret({ store: "beta", name: "db/password" }, opts(null))).value, "beta-pw");

      // Connect JSON.
      const ja = await cj("SecretService/GetSecret", { store: "alpha", name: "db/password" }, null);
      assert.equal(ja.status, 200);
      assert.equal(ja.body.value, "alpha-pw");
      assert.equal(ja.body.secret.store, "alpha");
      assert.equal((await cj("SecretService/GetSecret", { name: "db/password" }, null)).body.value, "default-pw");

      // grpc-js.
      const gb = await grpcOk(g.secrets, "GetSecret", { store: "beta", name: "db/password" }, grpcMd(null));
      assert.equal(gb.value, "beta-pw");
      assert.equal(gb.secret.store, "beta");
      const gd = await grpcOk(g.secrets, "GetSecret", { name: "db/password" }, grpcMd(null));
      assert.equal(gd.value, "default-pw");
      assert.equal(gd.secret.store, "default");

      // Three distinct secrets.
      const ids = new Set([ga.secret?.id, gb.secret.id, gd.secret.id]);
      assert.equal(ids.size, 3);

      // Lists are per store.
      const la = await r("GET", "/v1/stores/alpha/secrets");
      assert.deepEqual(
        la.body.map((x: { store: string; name: string }) => [x.store, x.name]),
        [["alpha", "db/password"]],
      );
      const lb = await rpc.secrets.listSecrets({ store: "beta" }, opts());
      assert.deepEqual(
        lb.secrets.map((x) => [x.store, x.name]),
        [["beta", "db/password"]],
      );
    });

    it("names are unique per store: a duplicate in the same store is already_exists on every protocol", async () => {
      const viaRest = await r("POST", "/v1/stores/alpha/secrets", { name: "db/password", value: "again" });
      assertRestError(viaRest, 409, "already_exists");
      await rpcFails(rpc.secrets.storeSecret({ store: "alpha", name: "db/password", value: "again" }, opts()), Code.AlreadyExists, "rpc");
      assertConnectError(await cj("SecretService/StoreSecret", { store: "beta", name: "db/password", value: "again" }), 409, "already_exists");
      await grpcFails(g.secrets, "StoreSecret", { store: "beta", name: "db/password", value: "again" }, grpc.status.ALREADY_EXISTS);
      assert.equal((await r("GET", "/v1/stores/alpha/secrets/db/password")).body.value, "alpha-pw", "unchanged");
    });

    it("a secret in a store that does not exist is store not_found", async () => {
      const viaRest = await r("POST", "/v1/stores/no-such-store/secrets", { name: "x", value: "v" });
      assert.equal(assertRestError(viaRest, 404, "not_found").reason, "STORE_NOT_FOUND");
      const get = await r("GET", "/v1/stores/no-such-store/secrets/x", undefined, null);
      assert.equal(assertRestError(get, 404, "not_found").reason, "STORE_NOT_FOUND");
      const ce = await rpcFails(rpc.secrets.storeSecret({ store: "no-such-store", name: "x", value: "v" }, opts()), Code.NotFound, "rpc");
      assert.equal(reasonOf(ce), "STORE_NOT_FOUND");
      const json = await cj("SecretService/ListSecrets", { store: "no-such-store" });
      assertConnectError(json, 404, "not_found");
      assert.equal(connectReason(json.body), "STORE_NOT_FOUND");
      const gf = await grpcFails(g.secrets, "VerifySecret", { store: "no-such-store", name: "x", value: "v" }, grpc.status.NOT_FOUND, grpcMd(null));
      assert.equal(grpcStatusDetails(gf.trailers)?.errorInfo?.reason, "STORE_NOT_FOUND");
    });

    it("REST store-qualified routes: names with '/', percent-encoded names, get by version, update, rotate, verify, list, delete", async () => {
      const base = "/v1/stores/alpha/secrets";
      const created = await r("POST", base, {
        name: "svc/api/key",
        kind: "automatic",
        rotation_interval_secs: 3600,
        grace_period_secs: 600,
      });
      assert.equal(created.status, 201);
      const v1 = created.body.value as string;
      assert.ok(v1.length >= 32);

      assert.equal((await r("GET", `${base}/svc/api/key`)).body.value, v1);
      assert.equal((await r("GET", `${base}/svc%2Fapi%2Fkey`)).body.value, v1, "percent-encoded slashes");
      assert.equal(assertRestError(await r("GET", "/v1/secrets/svc/api/key"), 404, "not_found").reason, "SECRET_NOT_FOUND");

      const rotated = await r("POST", `${base}/svc/api/key/rotate`);
      assert.equal(rotated.status, 200);
      assert.equal(rotated.body.version, 2);
      assert.notEqual(rotated.body.value, v1);
      const v2 = rotated.body.value as string;

      assert.deepEqual((await r("POST", `${base}/svc/api/key/verify`, { value: v2 }, null)).body, { valid: true, version: 2 });
      assert.deepEqual((await r("POST", `${base}/svc/api/key/verify`, { value: v1 }, null)).body, { valid: true, version: 1 });
      assert.deepEqual((await r("POST", `${base}/svc/api/key/verify`, { value: "wrong" }, null)).body, { valid: false, version: null });
      // The same name in another store is another secret: the value does not verify there.
      const elsewhere = await r("POST", "/v1/stores/beta/secrets/svc/api/key/verify", { value: v2 }, null);
      assert.equal(assertRestError(elsewhere, 404, "not_found").reason, "SECRET_NOT_FOUND");

      const old = await r("GET", `${base}/svc/api/key?version=1`, undefined, null);
      assert.equal(old.status, 200);
      assert.equal(old.body.value, v1);

      const updated = await r("PUT", `${base}/svc/api/key`, { description: "described" });
      assert.equal(updated.status, 200);
      assert.equal(updated.body.store, "alpha");
      assert.equal(updated.body.name, "svc/api/key");
      assert.equal(updated.body.description, "described");
      assert.equal(updated.body.version, 2);

      const newValue = await r("PUT", `${base}/svc/api/key`, { value: "manual-v3-value" });
      assert.equal(newValue.body.version, 3);
      assert.equal((await r("GET", `${base}/svc/api/key`)).body.value, "manual-v3-value");

      assert.equal((await r("POST", base, { name: "svc/other", value: "o" })).status, 201);
      const listed = await r("GET", `${base}?prefix=svc/`);
      assert.deepEqual(
        listed.body.map((x: { store: string; name: string }) => [x.store, x.name]),
        [
          ["alpha", "svc/api/key"],
          ["alpha", "svc/other"],
        ],
      );
      const first = await r("GET", `${base}?prefix=svc/&limit=1`);
      assert.equal(first.body.length, 1);
      const cursor = first.headers.get("x-next-cursor");
      assert.ok(cursor);
      const second = await r("GET", `${base}?prefix=svc/&limit=1&cursor=${encodeURIComponent(cursor)}`);
      assert.deepEqual(
        second.body.map((x: { name: string }) => x.name),
        ["svc/other"],
      );

      // A name whose last segment is "rotate" or "verify" is reachable with the slashes percent-encoded.
      assert.equal((await r("POST", base, { name: "jobs/rotate", value: "job-value" })).status, 201);
      assert.equal((await r("GET", `${base}/jobs%2Frotate`)).body.value, "job-value");
      assert.equal((await rpc.secrets.getSecret({ store: "alpha", name: "jobs/rotate" }, opts())).value, "job-value");
      assert.equal((await r("DELETE", `${base}/jobs%2Frotate`)).status, 204);

      assert.equal((await r("DELETE", `${base}/svc/other`)).status, 204);
      assert.equal(assertRestError(await r("GET", `${base}/svc/other`), 404, "not_found").reason, "SECRET_NOT_FOUND");
      assert.equal(assertRestError(await r("DELETE", `${base}/svc/other`), 404, "not_found").reason, "SECRET_NOT_FOUND");
    });

    it("store-qualified RPCs: update, rotate, verify, list and delete over gRPC, Connect JSON and grpc-js", async () => {
      const created = await rpc.secrets.storeSecret(
        { store: "beta", name: "rpc/rotating", kind: SecretKind.AUTOMATIC, rotationInterval: { seconds: 3600n }, gracePeriod: { seconds: 600n } },
        opts(),
      );
      assert.equal(created.secret?.store, "beta");
      const rotated = await rpc.secrets.rotateSecret({ store: "beta", name: "rpc/rotating" }, opts());
      assert.equal(rotated.version?.version, 2);
      assert.equal(rotated.secret?.store, "beta");
      const ok = await rpc.secrets.verifySecret({ store: "beta", name: "rpc/rotating", value: created.value }, opts(null));
      assert.deepEqual([ok.valid, ok.version], [true, 1]);
      const wrongStore = await rpcFails(
        rpc.secrets.rotateSecret({ store: "alpha", name: "rpc/rotating" }, opts()),
        Code.NotFound,
        "rotate in the wrong store",
      );
      assert.equal(reasonOf(wrongStore), "SECRET_NOT_FOUND");

      const jsonRot = await cj("SecretService/RotateSecret", { store: "beta", name: "rpc/rotating" });
      assert.equal(jsonRot.status, 200);
      assert.equal(jsonRot.body.version.version, 3);
      assert.equal(jsonRot.body.secret.store, "beta");
      const jsonVerify = await cj("SecretService/VerifySecret", { store: "beta", name: "rpc/rotating", value: jsonRot.body.value }, null);
      assert.deepEqual(jsonVerify.body, { valid: true, version: 3 });
      const jsonUpd = await cj("SecretService/UpdateSecret", { store: "beta", name: "rpc/rotating", description: "json" });
      assert.equal(jsonUpd.body.secret.description, "json");
      assert.equal(jsonUpd.body.secret.store, "beta");

      const gv = await grpcOk(g.secrets, "VerifySecret", { store: "beta", name: "rpc/rotating", value: jsonRot.body.value }, grpcMd(null));
      assert.deepEqual([gv.valid, gv.version], [true, 3]);
      const grot = await grpcOk(g.secrets, "RotateSecret", { store: "beta", name: "rpc/rotating" });
      assert.equal(grot.version.version, 4);
      const glist = await grpcOk(g.secrets, "ListSecrets", { store: "beta", namePrefix: "rpc/" });
      assert.deepEqual(
        glist.secrets.map((x: { store: string; name: string }) => [x.store, x.name]),
        [["beta", "rpc/rotating"]],
      );

      await rpc.secrets.deleteSecret({ store: "beta", name: "rpc/rotating" }, opts());
      const gone = await rpcFails(rpc.secrets.getSecret({ store: "beta", name: "rpc/rotating" }, opts()), Code.NotFound, "after delete");
      assert.equal(reasonOf(gone), "SECRET_NOT_FOUND");
      assert.equal((await r("GET", "/v1/stores/beta/secrets/db/password")).body.value, "beta-pw", "the other secret stays");
    });
  });

  describe("deleting a store", () => {
    async function fill(store: string, secrets: string[], vars: string[]) {
      assert.equal((await r("POST", "/v1/stores", { name: store })).status, 201);
      for (const n of secrets) assert.equal((await r("POST", `/v1/stores/${store}/secrets`, { name: n, value: `${store}:${n}` })).status, 201);
      if (vars.length > 0) {
        const res = await r("POST", `/v1/stores/${store}/vars`, { vars: vars.map((name) => ({ name, value: `${store}=${name}` })) });
        assert.equal(res.status, 200);
      }
    }

    it("a non-empty store is refused (REST 409, FAILED_PRECONDITION) on every protocol, and nothing changes", async () => {
      await fill("full", ["a/one", "b"], ["cfg/x"]);
      await fill("vars-only", [], ["only"]);
      const usageBefore = (await r("GET", "/v1/stores/full/usage")).body;
      assert.deepEqual([usageBefore.usage.secrets, usageBefore.usage.vars], [2, 1]);

      for (const path of ["/v1/stores/full", "/v1/stores/full?purge=false", "/v1/stores/vars-only"]) {
        const res = await r("DELETE", path);
        assert.equal(assertRestError(res, 409, "failed_precondition", path).reason, "STORE_NOT_EMPTY");
      }
      const ce = await rpcFails(rpc.stores.deleteStore({ name: "full" }, opts()), Code.FailedPrecondition, "rpc");
      assert.equal(reasonOf(ce), "STORE_NOT_EMPTY");
      const json = await cj("StoreService/DeleteStore", { name: "vars-only" });
      assert.equal(json.body?.code, "failed_precondition");
      assert.equal(connectReason(json.body), "STORE_NOT_EMPTY");
      const gf = await grpcFails(g.stores, "DeleteStore", { name: "full", purge: false }, grpc.status.FAILED_PRECONDITION);
      assert.equal(grpcStatusDetails(gf.trailers)?.errorInfo?.reason, "STORE_NOT_EMPTY");

      assert.equal((await r("GET", "/v1/stores/full")).status, 200);
      assert.equal((await r("GET", "/v1/stores/vars-only")).status, 200);
      assert.equal((await r("GET", "/v1/stores/full/secrets/a/one")).body.value, "full:a/one");
      assert.equal((await r("GET", "/v1/stores/full/vars/cfg/x")).body.value, "full=cfg/x");
      assert.equal((await r("GET", "/v1/stores/vars-only/vars/only")).body.value, "vars-only=only");
      assert.deepEqual((await r("GET", "/v1/stores/full/usage")).body, usageBefore);
    });

    it("an invalid purge parameter is rejected", async () => {
      const res = await r("DELETE", "/v1/stores/full?purge=yes");
      assert.deepEqual(restViolations(assertRestError(res, 400, "invalid_argument")), [["purge", "type"]]);
      assert.equal((await r("GET", "/v1/stores/full")).status, 200);
    });

    it("REST purge removes secrets, vars and the data key for good; a recreated store is empty", async () => {
      const keysBefore = await s.app.storage.listDataKeys("full");
      assert.ok(keysBefore.length > 0, "the store has a data key");

      const res = await r("DELETE", "/v1/stores/full?purge=true");
      assert.equal(res.status, 204);
      assert.equal(assertRestError(await r("GET", "/v1/stores/full"), 404, "not_found").reason, "STORE_NOT_FOUND");
      const gone = await r("GET", "/v1/stores/full/secrets/a/one", undefined, null);
      assert.equal(gone.status, 404);
      assert.equal((await r("GET", "/v1/stores/full/vars/cfg/x", undefined, null)).status, 404);
      await rpcFails(rpc.secrets.getSecret({ store: "full", name: "a/one" }, opts()), Code.NotFound, "GetSecret after purge");
      assert.deepEqual(await s.app.storage.listDataKeys("full"), [], "the data key is destroyed");

      // Recreated under the same name: empty, and the old secrets do not come back.
      assert.equal((await r("POST", "/v1/stores", { name: "full" })).status, 201);
      assert.deepEqual((await r("GET", "/v1/stores/full/secrets")).body, []);
      assert.deepEqual((await r("GET", "/v1/stores/full/vars")).body, []);
      const usage = (await r("GET", "/v1/stores/full/usage")).body.usage;
      assert.deepEqual([usage.secrets, usage.versions, usage.vars, usage.bytes], [0, 0, 0, 0]);
      const again = await r("GET", "/v1/stores/full/secrets/a/one");
      assert.equal(assertRestError(again, 404, "not_found").reason, "SECRET_NOT_FOUND");
      await rpcFails(rpc.secrets.getSecret({ store: "full", name: "b" }, opts()), Code.NotFound, "GetSecret in the new store");
      assert.equal(assertRestError(await r("GET", "/v1/stores/full/vars/cfg/x"), 404, "not_found").reason, "VAR_NOT_FOUND");

      // The new store works, under a new key.
      assert.equal((await r("POST", "/v1/stores/full/secrets", { name: "a/one", value: "reborn" })).status, 201);
      assert.equal((await r("GET", "/v1/stores/full/secrets/a/one")).body.value, "reborn");
      const keysAfter = await s.app.storage.listDataKeys("full");
      assert.equal(keysAfter.length, 1);
      assert.ok(!keysBefore.some((k) => k.id === keysAfter[0]?.id), "a fresh data key");
    });

    it("gRPC purge reports what it removed; GetSecret is then NOT_FOUND", async () => {
      await fill("purge-rpc", ["s1", "s2"], ["v1", "v2", "v3"]);
      const removed = await rpc.stores.deleteStore({ name: "purge-rpc", purge: true }, opts());
      assert.equal(removed.secretsRemoved, 2n);
      assert.equal(removed.varsRemoved, 3n);
      const ce = await rpcFails(rpc.secrets.getSecret({ store: "purge-rpc", name: "s1" }, opts()), Code.NotFound, "after purge");
      assert.equal(reasonOf(ce), "STORE_NOT_FOUND");
      await rpcFails(rpc.vars.getVar({ store: "purge-rpc", name: "v1" }, opts()), Code.NotFound, "var after purge");

      await rpc.stores.createStore({ name: "purge-rpc" }, opts());
      const list = await rpc.secrets.listSecrets({ store: "purge-rpc" }, opts());
      assert.deepEqual(list.secrets, []);
      const vars = await rpc.vars.listVars({ store: "purge-rpc" }, opts());
      assert.deepEqual(vars.vars, []);
      const again = await rpcFails(rpc.secrets.getSecret({ store: "purge-rpc", name: "s2" }, opts()), Code.NotFound, "in the new store");
      assert.equal(reasonOf(again), "SECRET_NOT_FOUND");
    });

    it("Connect JSON and grpc-js purge", async () => {
      await fill("purge-json", ["only"], ["cfg"]);
      const json = await cj("StoreService/DeleteStore", { name: "purge-json", purge: true });
      assert.equal(json.status, 200);
      assert.equal(String(json.body.secretsRemoved), "1");
      assert.equal(String(json.body.varsRemoved), "1");
      const gone = await cj("SecretService/GetSecret", { store: "purge-json", name: "only" }, null);
      assertConnectError(gone, 404, "not_found");

      await fill("purge-grpcjs", ["x", "y", "z"], []);
      const removed = await grpcOk(g.stores, "DeleteStore", { name: "purge-grpcjs", purge: true });
      assert.equal(removed.secretsRemoved, "3");
      assert.equal(removed.varsRemoved, "0");
      await grpcFails(g.secrets, "GetSecret", { store: "purge-grpcjs", name: "x" }, grpc.status.NOT_FOUND, grpcMd(null));
      await grpcOk(g.stores, "CreateStore", { name: "purge-grpcjs" });
      const after = await grpcFails(g.secrets, "GetSecret", { store: "purge-grpcjs", name: "x" }, grpc.status.NOT_FOUND, grpcMd(null));
      assert.equal(grpcStatusDetails(after.trailers)?.errorInfo?.reason, "SECRET_NOT_FOUND");
    });
  });

  describe("WatchSecrets per store", () => {
    before(async () => {
      for (const n of ["watch-a", "watch-b"]) assert.equal((await r("POST", "/v1/stores", { name: n })).status, 201);
    });

    it("a watch on one store sees that store's changes only, over all three protocols", async () => {
      const started = (m: readonly { type?: unknown }[]) => m.some((e) => e.type === SecretEventType.STARTED || e.type === "SECRET_EVENT_TYPE_STARTED");
      const viaRpc = rpcStream<WatchSecretsResponse>((signal) =>
        rpc.secrets.watchSecrets({ store: "watch-a", namePrefix: "w/" }, { headers: opts().headers, signal }),
      );
      const viaDefault = rpcStream<WatchSecretsResponse>((signal) =>
        rpc.secrets.watchSecrets({ namePrefix: "w/" }, { headers: opts().headers, signal }),
      );
      const viaGrpcJs = grpcStream(g.secrets, "WatchSecrets", { store: "watch-b", namePrefix: "w/" }, grpcMd(null));
      const viaJson = connectJsonStream(s.url, "SecretService/WatchSecrets", { store: "watch-a", namePrefix: "w/" }, null);
      try {
        await viaRpc.waitFor(started, 3000, "STARTED (rpc)");
        await viaDefault.waitFor(started, 3000, "STARTED (default)");
        await viaGrpcJs.waitFor(started, 3000, "STARTED (grpc-js)");
        await viaJson.waitFor((m) => m.some((e) => e.type === "SECRET_EVENT_TYPE_STARTED"), 3000, "STARTED (json)");

        // The same name in three stores; only watch-a's changes may reach the watch-a watchers.
        await r("POST", "/v1/secrets", { name: "w/key", value: "in-default" });
        await r("POST", "/v1/stores/watch-b/secrets", { name: "w/key", value: "in-b" });
        await r("POST", "/v1/stores/watch-a/secrets", { name: "w/key", kind: "automatic" });
        await r("POST", "/v1/stores/watch-a/secrets/w/key/rotate");
        await r("PUT", "/v1/stores/watch-b/secrets/w/key", { value: "in-b-2" });
        await r("DELETE", "/v1/stores/watch-a/secrets/w/key");

        const deleted = (m: readonly { type?: unknown }[]) => m.some((e) => e.type === SecretEventType.DELETED || e.type === "SECRET_EVENT_TYPE_DELETED");
        await viaRpc.waitFor(deleted, 3000, "DELETED (rpc)");
        await viaJson.waitFor(deleted, 3000, "DELETED (json)");
        await viaGrpcJs.waitFor((m) => m.some((e) => e.type === "SECRET_EVENT_TYPE_ROTATED"), 3000, "ROTATED (grpc-js)");
        await viaDefault.waitFor((m) => m.some((e) => e.type === SecretEventType.CREATED), 3000, "CREATED (default)");

        const rpcSeen = viaRpc.messages.slice(1).map((e) => [SecretEventType[e.type], e.store, e.name, e.version]);
        assert.deepEqual(rpcSeen, [
          ["CREATED", "watch-a", "w/key", 1],
          ["ROTATED", "watch-a", "w/key", 2],
          ["DELETED", "watch-a", "w/key", 2],
        ]);
        const jsonSeen = viaJson.messages.slice(1).map((e) => [e.type, e.store, e.name, e.version]);
        assert.deepEqual(jsonSeen, [
          ["SECRET_EVENT_TYPE_CREATED", "watch-a", "w/key", 1],
          ["SECRET_EVENT_TYPE_ROTATED", "watch-a", "w/key", 2],
          ["SECRET_EVENT_TYPE_DELETED", "watch-a", "w/key", 2],
        ]);
        const grpcJsSeen = viaGrpcJs.messages.slice(1).map((e) => [e.type, e.store, e.name, e.version]);
        assert.deepEqual(grpcJsSeen, [
          ["SECRET_EVENT_TYPE_CREATED", "watch-b", "w/key", 1],
          ["SECRET_EVENT_TYPE_ROTATED", "watch-b", "w/key", 2],
        ]);
        const defaultSeen = viaDefault.messages.slice(1).map((e) => [SecretEventType[e.type], e.store, e.name]);
        assert.deepEqual(defaultSeen, [["CREATED", "default", "w/key"]]);
      } finally {
        viaRpc.cancel();
        viaDefault.cancel();
        viaGrpcJs.cancel();
        viaJson.cancel();
        await Promise.all([viaRpc.done, viaDefault.done, viaGrpcJs.done, viaJson.done]);
      }
    });

    it("a purge reports every secret of the store as DELETED to its watchers", async () => {
      assert.equal((await r("POST", "/v1/stores", { name: "watch-purge" })).status, 201);
      for (const n of ["p/1", "p/2"]) assert.equal((await r("POST", "/v1/stores/watch-purge/secrets", { name: n, value: n })).status, 201);
      const w = rpcStream<WatchSecretsResponse>((signal) => rpc.secrets.watchSecrets({ store: "watch-purge" }, { signal }));
      try {
        await w.waitFor((m) => m.length >= 1, 3000, "STARTED");
        assert.equal((await r("DELETE", "/v1/stores/watch-purge?purge=true")).status, 204);
        await w.waitFor((m) => m.filter((e) => e.type === SecretEventType.DELETED).length >= 2, 3000, "two DELETED events");
        assert.deepEqual(
          w.messages
            .slice(1)
            .map((e) => [SecretEventType[e.type], e.store, e.name])
            .sort(),
          [
            ["DELETED", "watch-purge", "p/1"],
            ["DELETED", "watch-purge", "p/2"],
          ],
        );
      } finally {
        w.cancel();
        await w.done;
      }
    });

    it("a watch on a store that does not exist ends with NOT_FOUND", async () => {
      const viaRpc = rpcStream<WatchSecretsResponse>((signal) =>
        rpc.secrets.watchSecrets({ store: "no-such-store" }, { headers: opts().headers, signal }),
      );
      const err = await viaRpc.done;
      assert.equal(err?.code, Code.NotFound);
      assert.equal(err && reasonOf(err), "STORE_NOT_FOUND");

      const viaGrpcJs = grpcStream(g.secrets, "WatchSecrets", { store: "no-such-store" }, grpcMd(null));
      const status = await viaGrpcJs.done;
      assert.equal(status.code, grpc.status.NOT_FOUND);
      assert.equal(grpcStatusDetails(status.metadata)?.errorInfo?.reason, "STORE_NOT_FOUND");

      const viaJson = connectJsonStream(s.url, "SecretService/WatchSecrets", { store: "no-such-store" }, null);
      const end = await viaJson.done;
      assert.equal(end?.error?.code, "not_found");
      assert.deepEqual(viaJson.messages, []);
    });
  });
});
