import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Code } from "@connectrpc/connect";
import type { WatchSecretsResponse } from "../../gen/latchkey/v1/secret_service_pb.js";
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
  type JsonReply,
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
 * Service-owned stores end to end: a service token owns the stores it creates and sees only those; every other
 * store (the default one included) is NOT_FOUND to it, on every operation and protocol; admins see everything with
 * its owner; anonymous readers cannot see owned stores.
 */

const BILLING = "billing-token-0123456789abcdef";
const SEARCH = "search-token-0123456789abcdef";

describe("service-owned stores", () => {
  let s: TestServer;
  let rpc: RpcClients;
  let g: GrpcClients;
  let billingSecretValue = "";

  before(async () => {
    s = await startTestServer({ LATCHKEY_SERVICE_TOKENS: `billing=${BILLING},search=${SEARCH}` });
    rpc = rpcClients(s.url);
    g = grpcClients(s.port);
    // An ordinary store and a default-store secret made by the admin.
    assert.equal((await rest(s.url, "POST", "/v1/stores", { name: "shared" })).status, 201);
    assert.equal((await rest(s.url, "POST", "/v1/secrets", { name: "plain", value: "plain-value" })).status, 201);
  });
  after(async () => {
    rpc?.close();
    g?.close();
    await s?.stop();
  });

  const cj = (procedure: string, body: unknown, token?: string | null) => connectJson(s.url, procedure, body, token);
  const r = (method: string, path: string, body?: unknown, token?: string | null) => rest(s.url, method, path, body, token);

  function storeNotFound(res: JsonReply, what: string) {
    const body = assertRestError(res, 404, "not_found", what);
    assert.equal(body.reason, "STORE_NOT_FOUND", what);
  }

  describe("a service creates and manages its own stores", () => {
    it("stores created with a service token are managed_by that service, on every protocol", async () => {
      const viaRest = await r("POST", "/v1/stores", { name: "acct-1", description: "billing account 1" }, BILLING);
      assert.equal(viaRest.status, 201);
      assert.equal(viaRest.body.managed_by, "billing");

      const viaRpc = await rpc.stores.createStore({ name: "acct-2" }, opts(BILLING));
      assert.equal(viaRpc.store?.managedBy, "billing");

      const viaJson = await cj("StoreService/CreateStore", { name: "acct-3" }, BILLING);
      assert.equal(viaJson.status, 200);
      assert.equal(viaJson.body.store.managedBy, "billing");

      const viaGrpcJs = await grpcOk(g.stores, "CreateStore", { name: "acct-4" }, grpcMd(BILLING));
      assert.equal(viaGrpcJs.store.managedBy, "billing");

      const got = await r("GET", "/v1/stores/acct-1", undefined, BILLING);
      assert.equal(got.status, 200);
      assert.equal(got.body.managed_by, "billing");
      assert.equal((await rpc.stores.getStore({ name: "acct-2" }, opts(BILLING))).store?.managedBy, "billing");
    });

    it("a service lists only its own stores (not default, not ordinary ones, not other services')", async () => {
      assert.equal((await r("POST", "/v1/stores", { name: "idx-0" }, SEARCH)).status, 201);
      const mine = ["acct-1", "acct-2", "acct-3", "acct-4"];

      const viaRest = await r("GET", "/v1/stores", undefined, BILLING);
      assert.deepEqual(
        viaRest.body.map((x: { name: string; managed_by: string }) => [x.name, x.managed_by]),
        mine.map((n) => [n, "billing"]),
      );
      const seen: string[] = [];
      let pageToken = "";
      for (let i = 0; i < 10; i++) {
        const page = await rpc.stores.listStores({ pageSize: 3, pageToken }, opts(BILLING));
        seen.push(...page.stores.map((x) => x.name));
        pageToken = page.nextPageToken;
        if (!pageToken) break;
      }
      assert.deepEqual(seen, mine, "paged over gRPC");
      const viaJson = await cj("StoreService/ListStores", {}, BILLING);
      assert.deepEqual(
        viaJson.body.stores.map((x: { name: string }) => x.name),
        mine,
      );
      const viaGrpcJs = await grpcOk(g.stores, "ListStores", {}, grpcMd(SEARCH));
      assert.deepEqual(
        viaGrpcJs.stores.map((x: { name: string; managedBy: string }) => [x.name, x.managedBy]),
        [["idx-0", "search"]],
      );
    });

    it("a service manages secrets and vars in its store over every protocol", async () => {
      const created = await r("POST", "/v1/stores/acct-1/secrets", { name: "stripe/key", value: "sk_billing_1" }, BILLING);
      assert.equal(created.status, 201);
      billingSecretValue = created.body.value;
      assert.equal((await r("GET", "/v1/stores/acct-1/secrets/stripe/key", undefined, BILLING)).body.value, "sk_billing_1");
      assert.deepEqual((await r("POST", "/v1/stores/acct-1/secrets/stripe/key/verify", { value: "sk_billing_1" }, BILLING)).body, {
        valid: true,
        version: 1,
      });
      const list = await r("GET", "/v1/stores/acct-1/secrets", undefined, BILLING);
      assert.deepEqual(
        list.body.map((x: { name: string }) => x.name),
        ["stripe/key"],
      );

      const auto = await rpc.secrets.storeSecret({ store: "acct-1", name: "webhook", value: "wh-1" }, opts(BILLING));
      assert.equal(auto.secret?.store, "acct-1");
      const upd = await rpc.secrets.updateSecret({ store: "acct-1", name: "webhook", value: "wh-2" }, opts(BILLING));
      assert.equal(upd.secret?.currentVersion, 2);
      assert.equal((await rpc.secrets.getSecret({ store: "acct-1", name: "webhook" }, opts(BILLING))).value, "wh-2");
      assert.equal((await cj("SecretService/GetSecret", { store: "acct-1", name: "webhook" }, BILLING)).body.value, "wh-2");
      assert.equal((await grpcOk(g.secrets, "GetSecret", { store: "acct-1", name: "webhook" }, grpcMd(BILLING))).value, "wh-2");

      assert.equal((await r("PUT", "/v1/stores/acct-1/vars/currency", { value: "EUR" }, BILLING)).status, 200);
      await rpc.vars.setVars({ store: "acct-1", vars: [{ name: "tier", value: "gold" }] }, opts(BILLING));
      assert.equal((await cj("VarService/GetVar", { store: "acct-1", name: "tier" }, BILLING)).body.var.value, "gold");
      const vars = await grpcOk(g.vars, "ListVars", { store: "acct-1" }, grpcMd(BILLING));
      assert.deepEqual(
        vars.vars.map((v: { name: string; value: string }) => [v.name, v.value]),
        [
          ["currency", "EUR"],
          ["tier", "gold"],
        ],
      );

      const usage = await r("GET", "/v1/stores/acct-1/usage", undefined, BILLING);
      assert.equal(usage.status, 200);
      assert.deepEqual([usage.body.usage.secrets, usage.body.usage.versions, usage.body.usage.vars], [2, 3, 2]);
      const rpcUsage = await rpc.stores.getUsage({ store: "acct-1" }, opts(BILLING));
      assert.equal(rpcUsage.usage?.secrets, 2n);
    });

    it("a service watches its own store", async () => {
      const w = rpcStream<WatchSecretsResponse>((signal) => rpc.secrets.watchSecrets({ store: "acct-2" }, { headers: opts(BILLING).headers, signal }));
      try {
        await w.waitFor((m) => m.length >= 1, 3000, "STARTED");
        await r("POST", "/v1/stores/acct-2/secrets", { name: "watched", value: "x" }, BILLING);
        await w.waitFor((m) => m.length >= 2, 3000, "CREATED");
        assert.deepEqual([w.messages[1]?.store, w.messages[1]?.name], ["acct-2", "watched"]);
      } finally {
        w.cancel();
        await w.done;
      }
    });
  });

  describe("another service gets NOT_FOUND for the store on every operation", () => {
    it("REST: the store, its usage, its secrets and its vars are 404 STORE_NOT_FOUND", async () => {
      const base = "/v1/stores/acct-1";
      const calls: [string, string, unknown?][] = [
        ["GET", base],
        ["DELETE", base],
        ["DELETE", `${base}?purge=true`],
        ["GET", `${base}/usage`],
        ["GET", `${base}/secrets`],
        ["GET", `${base}/secrets?limit=5`],
        ["POST", `${base}/secrets`, { name: "planted", value: "x" }],
        ["GET", `${base}/secrets/stripe/key`],
        ["GET", `${base}/secrets/stripe/key?version=1`],
        ["PUT", `${base}/secrets/stripe/key`, { value: "overwritten" }],
        ["DELETE", `${base}/secrets/stripe/key`],
        ["POST", `${base}/secrets/stripe/key/rotate`],
        ["POST", `${base}/secrets/stripe/key/verify`, { value: "sk_billing_1" }],
        ["GET", `${base}/vars`],
        ["GET", `${base}/vars/currency`],
        ["PUT", `${base}/vars/currency`, { value: "USD" }],
        ["POST", `${base}/vars`, { vars: [{ name: "currency", value: "USD" }] }],
        ["DELETE", `${base}/vars/currency`],
      ];
      for (const [method, path, body] of calls) {
        storeNotFound(await r(method, path, body, SEARCH), `search ${method} ${path}`);
      }
      // Indistinguishable from a store that does not exist.
      const real = await r("GET", `${base}/secrets/stripe/key`, undefined, SEARCH);
      const none = await r("GET", "/v1/stores/acct-none/secrets/stripe/key", undefined, SEARCH);
      assert.deepEqual([real.status, real.body.code, real.body.reason], [none.status, none.body.code, none.body.reason]);
    });

    it("gRPC (Connect client): every SecretService, VarService and StoreService call is NOT_FOUND", async () => {
      const o = opts(SEARCH);
      const store = "acct-1";
      const calls: [string, Promise<unknown>][] = [
        ["GetStore", rpc.stores.getStore({ name: store }, o)],
        ["DeleteStore", rpc.stores.deleteStore({ name: store, purge: true }, o)],
        ["GetUsage", rpc.stores.getUsage({ store }, o)],
        ["StoreSecret", rpc.secrets.storeSecret({ store, name: "planted", value: "x" }, o)],
        ["GetSecret", rpc.secrets.getSecret({ store, name: "stripe/key" }, o)],
        ["ListSecrets", rpc.secrets.listSecrets({ store }, o)],
        ["UpdateSecret", rpc.secrets.updateSecret({ store, name: "stripe/key", value: "overwritten" }, o)],
        ["DeleteSecret", rpc.secrets.deleteSecret({ store, name: "stripe/key" }, o)],
        ["RotateSecret", rpc.secrets.rotateSecret({ store, name: "stripe/key" }, o)],
        ["VerifySecret", rpc.secrets.verifySecret({ store, name: "stripe/key", value: "sk_billing_1" }, o)],
        ["SetVars", rpc.vars.setVars({ store, vars: [{ name: "currency", value: "USD" }] }, o)],
        ["GetVar", rpc.vars.getVar({ store, name: "currency" }, o)],
        ["ListVars", rpc.vars.listVars({ store }, o)],
        ["DeleteVar", rpc.vars.deleteVar({ store, name: "currency" }, o)],
      ];
      for (const [what, p] of calls) {
        assert.equal(reasonOf(await rpcFails(p, Code.NotFound, `search ${what}`)), "STORE_NOT_FOUND", what);
      }
      const w = rpcStream<WatchSecretsResponse>((signal) => rpc.secrets.watchSecrets({ store }, { headers: o.headers, signal }));
      const err = await w.done;
      assert.equal(err?.code, Code.NotFound, "WatchSecrets");
      assert.deepEqual(w.messages, []);
    });

    it("Connect JSON and grpc-js: NOT_FOUND likewise", async () => {
      const json: [string, unknown][] = [
        ["StoreService/GetStore", { name: "acct-1" }],
        ["StoreService/DeleteStore", { name: "acct-1", purge: true }],
        ["SecretService/GetSecret", { store: "acct-1", name: "stripe/key" }],
        ["SecretService/ListSecrets", { store: "acct-1" }],
        ["SecretService/StoreSecret", { store: "acct-1", name: "planted", value: "x" }],
        ["SecretService/VerifySecret", { store: "acct-1", name: "stripe/key", value: "sk_billing_1" }],
        ["VarService/GetVar", { store: "acct-1", name: "currency" }],
        ["VarService/SetVars", { store: "acct-1", vars: [{ name: "currency", value: "USD" }] }],
      ];
      for (const [proc, body] of json) {
        const res = await cj(proc, body, SEARCH);
        assertConnectError(res, 404, "not_found", proc);
        assert.equal(connectReason(res.body), "STORE_NOT_FOUND", proc);
      }
      const grpcJs: [grpc.Client, string, Record<string, unknown>][] = [
        [g.stores, "GetStore", { name: "acct-1" }],
        [g.stores, "DeleteStore", { name: "acct-1", purge: true }],
        [g.secrets, "GetSecret", { store: "acct-1", name: "stripe/key" }],
        [g.secrets, "ListSecrets", { store: "acct-1" }],
        [g.secrets, "StoreSecret", { store: "acct-1", name: "planted", value: "x" }],
        [g.secrets, "VerifySecret", { store: "acct-1", name: "stripe/key", value: "sk_billing_1" }],
        [g.vars, "ListVars", { store: "acct-1" }],
        [g.vars, "DeleteVar", { store: "acct-1", name: "currency" }],
      ];
      for (const [client, method, req] of grpcJs) {
        const out = await grpcFails(client, method, req, grpc.status.NOT_FOUND, grpcMd(SEARCH));
        assert.equal(grpcStatusDetails(out.trailers)?.errorInfo?.reason, "STORE_NOT_FOUND", method);
      }
    });

    it("nothing billing owns was changed by search's attempts", async () => {
      assert.equal((await r("GET", "/v1/stores/acct-1", undefined, BILLING)).status, 200);
      const secret = await r("GET", "/v1/stores/acct-1/secrets/stripe/key", undefined, BILLING);
      assert.deepEqual([secret.body.version, secret.body.value], [1, billingSecretValue]);
      const list = await r("GET", "/v1/stores/acct-1/secrets", undefined, BILLING);
      assert.deepEqual(
        list.body.map((x: { name: string }) => x.name),
        ["stripe/key", "webhook"],
      );
      assert.equal((await r("GET", "/v1/stores/acct-1/vars/currency", undefined, BILLING)).body.value, "EUR");
    });

    it("a service cannot see the default store or ordinary stores", async () => {
      storeNotFound(await r("GET", "/v1/stores/default", undefined, SEARCH), "GET default");
      storeNotFound(await r("GET", "/v1/stores/shared", undefined, SEARCH), "GET shared");
      storeNotFound(await r("GET", "/v1/secrets/plain", undefined, SEARCH), "bare secret route");
      storeNotFound(await r("GET", "/v1/secrets", undefined, SEARCH), "bare list");
      storeNotFound(await r("POST", "/v1/secrets", { name: "planted", value: "x" }, SEARCH), "bare create");
      storeNotFound(await r("GET", "/v1/stores/default/vars", undefined, SEARCH), "default vars");
      storeNotFound(await r("GET", "/v1/stores/default/usage", undefined, SEARCH), "default usage");
      storeNotFound(await r("DELETE", "/v1/stores/default", undefined, SEARCH), "DELETE default");
      storeNotFound(await r("DELETE", "/v1/stores/shared?purge=true", undefined, SEARCH), "DELETE shared");

      assert.equal(reasonOf(await rpcFails(rpc.secrets.getSecret({ name: "plain" }, opts(SEARCH)), Code.NotFound, "GetSecret default")), "STORE_NOT_FOUND");
      await rpcFails(rpc.stores.getStore({ name: "default" }, opts(SEARCH)), Code.NotFound, "GetStore default");
      await rpcFails(rpc.vars.listVars({}, opts(SEARCH)), Code.NotFound, "ListVars default");
      assertConnectError(await cj("SecretService/VerifySecret", { name: "plain", value: "plain-value" }, SEARCH), 404, "not_found");
      await grpcFails(g.secrets, "ListSecrets", {}, grpc.status.NOT_FOUND, grpcMd(SEARCH));

      assert.equal((await r("GET", "/v1/secrets/plain")).body.value, "plain-value", "untouched");
      assert.equal((await r("GET", "/v1/stores/shared")).status, 200, "untouched");
    });
  });

  describe("admins and anonymous readers", () => {
    it("an admin sees every store with its owner, and can read inside a managed one", async () => {
      const list = await r("GET", "/v1/stores");
      const owners = Object.fromEntries(list.body.map((x: { name: string; managed_by: string | null }) => [x.name, x.managed_by]));
      assert.deepEqual(owners, {
        "acct-1": "billing",
        "acct-2": "billing",
        "acct-3": "billing",
        "acct-4": "billing",
        default: null,
        "idx-0": "search",
        shared: null,
      });
      const viaRpc = await rpc.stores.listStores({}, opts());
      assert.deepEqual(
        viaRpc.stores.map((x) => [x.name, x.managedBy]),
        Object.entries(owners).map(([n, o]) => [n, o ?? ""]),
      );
      assert.equal((await r("GET", "/v1/stores/acct-1")).body.managed_by, "billing");
      assert.equal((await r("GET", "/v1/stores/acct-1/secrets/stripe/key")).body.value, billingSecretValue);
      assert.equal((await grpcOk(g.stores, "GetStore", { name: "idx-0" })).store.managedBy, "search");
    });

    it("anonymous reads from an allowed IP: a managed store is 404, an ordinary one readable", async () => {
      storeNotFound(await r("GET", "/v1/stores/acct-1/secrets/stripe/key", undefined, null), "anonymous GET secret");
      storeNotFound(await r("POST", "/v1/stores/acct-1/secrets/stripe/key/verify", { value: billingSecretValue }, null), "anonymous verify");
      storeNotFound(await r("GET", "/v1/stores/acct-1/vars/currency", undefined, null), "anonymous GET var");
      storeNotFound(await r("GET", "/v1/stores/acct-1/vars", undefined, null), "anonymous list vars");
      assert.equal(
        reasonOf(await rpcFails(rpc.secrets.getSecret({ store: "acct-1", name: "stripe/key" }, opts(null)), Code.NotFound, "rpc")),
        "STORE_NOT_FOUND",
      );
      await rpcFails(rpc.vars.getVar({ store: "acct-1", name: "currency" }, opts(null)), Code.NotFound, "rpc GetVar");
      assertConnectError(await cj("SecretService/GetSecret", { store: "acct-1", name: "stripe/key" }, null), 404, "not_found");
      await grpcFails(g.secrets, "VerifySecret", { store: "acct-1", name: "stripe/key", value: billingSecretValue }, grpc.status.NOT_FOUND, grpcMd(null));
      const w = rpcStream<WatchSecretsResponse>((signal) => rpc.secrets.watchSecrets({ store: "acct-1" }, { signal }));
      assert.equal((await w.done)?.code, Code.NotFound, "anonymous watch");

      // Control: the default store is readable anonymously.
      assert.equal((await r("GET", "/v1/secrets/plain", undefined, null)).body.value, "plain-value");
      assert.equal((await rpc.secrets.getSecret({ name: "plain" }, opts(null))).value, "plain-value");
    });

    it("an admin can create a store managed by a service; that service then owns it", async () => {
      const viaRest = await r("POST", "/v1/stores", { name: "idx-1", managed_by: "search" });
      assert.equal(viaRest.status, 201);
      assert.equal(viaRest.body.managed_by, "search");
      const viaRpc = await rpc.stores.createStore({ name: "idx-2", managedBy: "search" }, opts());
      assert.equal(viaRpc.store?.managedBy, "search");
      const viaJson = await cj("StoreService/CreateStore", { name: "idx-3", managedBy: "search" });
      assert.equal(viaJson.body.store.managedBy, "search");

      const searchList = await r("GET", "/v1/stores", undefined, SEARCH);
      assert.deepEqual(
        searchList.body.map((x: { name: string }) => x.name),
        ["idx-0", "idx-1", "idx-2", "idx-3"],
      );
      assert.equal((await r("POST", "/v1/stores/idx-1/secrets", { name: "es", value: "es-key" }, SEARCH)).status, 201);
      storeNotFound(await r("GET", "/v1/stores/idx-1/secrets/es", undefined, BILLING), "billing on search's store");
      storeNotFound(await r("GET", "/v1/stores/idx-1/secrets/es", undefined, null), "anonymous on search's store");

      const bad = await r("POST", "/v1/stores", { name: "idx-bad", managed_by: "not a service!" });
      assert.deepEqual(restViolations(assertRestError(bad, 400, "invalid_argument")), [["managed_by", "pattern"]]);
    });

    it("a service cannot create a store for another service (400) and nothing is created", async () => {
      const viaRest = await r("POST", "/v1/stores", { name: "stolen-1", managed_by: "search" }, BILLING);
      assert.deepEqual(restViolations(assertRestError(viaRest, 400, "invalid_argument")), [["managed_by", "not_allowed"]]);
      const ce = await rpcFails(rpc.stores.createStore({ name: "stolen-2", managedBy: "search" }, opts(BILLING)), Code.InvalidArgument, "rpc");
      assert.deepEqual(violationsOf(ce), [["managed_by", "not_allowed"]]);
      assertConnectError(await cj("StoreService/CreateStore", { name: "stolen-3", managedBy: "search" }, BILLING), 400, "invalid_argument");
      await grpcFails(g.stores, "CreateStore", { name: "stolen-4", managedBy: "search" }, grpc.status.INVALID_ARGUMENT, grpcMd(BILLING));
      for (const n of ["stolen-1", "stolen-2", "stolen-3", "stolen-4"]) assert.equal((await r("GET", `/v1/stores/${n}`)).status, 404, n);
    });

    it("a watch never outlives its store: events of a re-created store owned by a service do not reach it", async () => {
      assert.equal((await r("POST", "/v1/stores", { name: "reused" })).status, 201);
      assert.equal((await r("POST", "/v1/stores/reused/secrets", { name: "old", value: "x" })).status, 201);
      // An anonymous reader may watch the ordinary store.
      const w = rpcStream<WatchSecretsResponse>((signal) => rpc.secrets.watchSecrets({ store: "reused" }, { signal }));
      try {
        await w.waitFor((m) => m.length >= 1, 3000, "STARTED");
        assert.equal((await r("DELETE", "/v1/stores/reused?purge=true")).status, 204);
        await w.waitFor((m) => m.some((e) => e.name === "old"), 3000, "DELETED old");
        // The name is taken again, by billing; billing's secret must stay invisible to the anonymous watcher.
        assert.equal((await r("POST", "/v1/stores", { name: "reused" }, BILLING)).status, 201);
        assert.equal((await r("POST", "/v1/stores/reused/secrets", { name: "billing/private", value: "y" }, BILLING)).status, 201);
        await new Promise((res) => setTimeout(res, 300));
        assert.deepEqual(
          w.messages.filter((e) => e.name === "billing/private").map((e) => [e.type, e.store, e.name]),
          [],
          "an anonymous watch saw an event of a store managed by billing",
        );
      } finally {
        w.cancel();
        await w.done;
      }
    });

    it("the owning service deletes its store with purge", async () => {
      const removed = await rpc.stores.deleteStore({ name: "acct-1", purge: true }, opts(BILLING));
      assert.deepEqual([removed.secretsRemoved, removed.varsRemoved], [2n, 2n]);
      storeNotFound(await r("GET", "/v1/stores/acct-1", undefined, BILLING), "after purge");
      storeNotFound(await r("GET", "/v1/stores/acct-1"), "admin after purge");
      assert.equal((await r("DELETE", "/v1/stores/acct-3", undefined, BILLING)).status, 204, "empty store, no purge needed");
    });
  });
});
