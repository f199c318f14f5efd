import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Code } from "@connectrpc/connect";
import { SecretEventType, VersionState } from "../../gen/latchkey/v1/secret_pb.js";
import { SecretListState, type WatchSecretsResponse } from "../../gen/latchkey/v1/secret_service_pb.js";
import {
  connectJson,
  connectJsonStream,
  grpc,
  grpcClients,
  type GrpcClients,
  grpcFails,
  grpcOk,
  grpcStream,
  opts,
  rest,
  rpcClients,
  type RpcClients,
  rpcFails,
  rpcStream,
} from "../support/clients.js";
import { assertReason, connectFails, grpcReason, restFails, tsMs, waitUntil } from "../support/lifecycle.js";
import { startTestServer, type TestServer } from "../support/server.js";

const DAY_MS = 86_400_000;

/**
 * Soft deletion end to end, over gRPC (Connect client and grpc-js), Connect JSON and REST: a deleted secret is kept
 * restorable (listed with state=deleted, never readable), its name is free at once, UndeleteSecret restores it (the
 * most recently deleted, or one by id) unless the name was taken again, purge deletes for good, the scheduler
 * purges once LATCHKEY_DELETE_RETENTION is over, watches report DELETED and RESTORED, and usage follows.
 */
describe("soft delete", () => {
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

  const cj = (procedure: string, body: unknown) => connectJson(s.url, `SecretService/${procedure}`, body);
  const r = (method: string, path: string, body?: unknown) => rest(s.url, method, path, body);

  async function deletedNames(prefix: string): Promise<string[]> {
    const page = await rpc.secrets.listSecrets({ namePrefix: prefix, state: SecretListState.DELETED }, opts());
    return page.secrets.map((x) => x.name);
  }

  describe("DeleteSecret", () => {
    it("REST: keeps the secret restorable, listed with state=deleted, never readable", async () => {
      assert.equal((await r("POST", "/v1/secrets", { name: "sd/rest", value: "sd-rest-value", description: "d" })).status, 201);
      const del = await r("DELETE", "/v1/secrets/sd/rest");
      assert.equal(del.status, 204);

      restFails(await r("GET", "/v1/secrets/sd/rest"), 404, "not_found", "SECRET_NOT_FOUND", "read after delete");
      restFails(await r("GET", "/v1/secrets/sd/rest/versions"), 404, "not_found", "SECRET_NOT_FOUND", "versions after delete");
      restFails(await r("POST", "/v1/secrets/sd/rest/verify", { value: "sd-rest-value" }), 404, "not_found");
      restFails(await r("DELETE", "/v1/secrets/sd/rest"), 404, "not_found", "SECRET_NOT_FOUND", "delete again");

      const live = await r("GET", "/v1/secrets?prefix=sd/rest");
      assert.deepEqual(live.body, [], "not in the live list");
      const deleted = await r("GET", "/v1/secrets?prefix=sd/rest&state=deleted");
      assert.equal(deleted.status, 200);
      assert.equal(deleted.body.length, 1);
      const d = deleted.body[0];
      assert.equal(d.name, "sd/rest");
      assert.equal(d.description, "d");
      assert.equal("value" in d, false);
      const deletedAt = Date.parse(d.deleted_at);
      const purgeAt = Date.parse(d.purge_at);
      assert.ok(Math.abs(deletedAt - Date.now()) < 60_000, "deleted_at is now");
      assert.equal(purgeAt - deletedAt, 7 * DAY_MS, "purge_at = deleted_at + 7 days (the default retention)");
      assert.match(d.deleted_at, /\+00:00$/);
      const bad = restFails(await r("GET", "/v1/secrets?state=gone"), 400, "invalid_argument");
      assert.equal(bad.violations?.[0]?.field, "state");
    });

    it("gRPC, Connect JSON and grpc-js: deleted secrets listed with state DELETED, with deleted_at and purge_at", async () => {
      await rpc.secrets.storeSecret({ name: "sd/rpc", value: "sd-rpc-value" }, opts());
      await cj("StoreSecret", { name: "sd/json", value: "sd-json-value" });
      await grpcOk(g.secrets, "StoreSecret", { name: "sd/grpcjs", value: "sd-grpcjs-value" });

      await rpc.secrets.deleteSecret({ name: "sd/rpc" }, opts());
      const jd = await cj("DeleteSecret", { name: "sd/json" });
      assert.equal(jd.status, 200);
      assert.deepEqual(jd.body, {});
      await grpcOk(g.secrets, "DeleteSecret", { name: "sd/grpcjs" });

      for (const name of ["sd/rpc", "sd/json", "sd/grpcjs"]) {
        assertReason(await rpcFails(rpc.secrets.getSecret({ name }, opts()), Code.NotFound, `get ${name}`), "SECRET_NOT_FOUND");
      }
      connectFails(await cj("GetSecret", { name: "sd/json" }), 404, "not_found", "SECRET_NOT_FOUND");
      const gf = await grpcFails(g.secrets, "GetSecret", { name: "sd/grpcjs" }, grpc.status.NOT_FOUND);
      assert.equal(grpcReason(gf.trailers), "SECRET_NOT_FOUND");

      const viaRpc = await rpc.secrets.listSecrets({ namePrefix: "sd/", state: SecretListState.DELETED }, opts());
      const rpcNames = viaRpc.secrets.map((x) => x.name);
      for (const n of ["sd/rpc", "sd/json", "sd/grpcjs"]) assert.ok(rpcNames.includes(n), `${n} listed as deleted`);
      for (const x of viaRpc.secrets) {
        const at = tsMs(x.deletedAt);
        assert.ok(at !== undefined && tsMs(x.purgeAt) === at + 7 * DAY_MS, `${x.name}: purge_at = deleted_at + retention`);
      }
      const liveRpc = await rpc.secrets.listSecrets({ namePrefix: "sd/" }, opts());
      assert.deepEqual(liveRpc.secrets.map((x) => x.name), [], "none of them live");

      const viaJson = await cj("ListSecrets", { namePrefix: "sd/json", state: "SECRET_LIST_STATE_DELETED" });
      assert.equal(viaJson.status, 200);
      assert.equal(viaJson.body.secrets.length, 1);
      assert.match(viaJson.body.secrets[0].deletedAt, /Z$/);
      assert.match(viaJson.body.secrets[0].purgeAt, /Z$/);

      const viaGrpcJs = await grpcOk(g.secrets, "ListSecrets", { namePrefix: "sd/grpcjs", state: "SECRET_LIST_STATE_DELETED" });
      assert.deepEqual(viaGrpcJs.secrets.map((x: any) => x.name), ["sd/grpcjs"]);
      assert.ok(viaGrpcJs.secrets[0].deletedAt?.seconds, "deleted_at set");
    });

    it("frees the name at once: the same name can be created again, over every protocol", async () => {
      await rpc.secrets.storeSecret({ name: "sd/reuse", value: "first-life" }, opts());
      await rpc.secrets.deleteSecret({ name: "sd/reuse" }, opts());
      const again = await r("POST", "/v1/secrets", { name: "sd/reuse", value: "second-life" });
      assert.equal(again.status, 201, JSON.stringify(again.body));
      assert.equal(again.body.version, 1);
      await r("DELETE", "/v1/secrets/sd/reuse");
      const viaJson = await cj("StoreSecret", { name: "sd/reuse", value: "third-life" });
      assert.equal(viaJson.status, 200);
      await cj("DeleteSecret", { name: "sd/reuse" });
      await grpcOk(g.secrets, "StoreSecret", { name: "sd/reuse", value: "fourth-life" });
      assert.equal((await rpc.secrets.getSecret({ name: "sd/reuse" }, opts())).value, "fourth-life");
      const deleted = (await rpc.secrets.listSecrets({ namePrefix: "sd/reuse", state: SecretListState.DELETED }, opts())).secrets;
      assert.equal(deleted.length, 3, "three deleted incarnations kept");
      assert.equal(new Set(deleted.map((x) => x.id)).size, 3, "each with its own id");
    });

    it("purge=true deletes for good: not listed as deleted, not restorable", async () => {
      await rpc.secrets.storeSecret({ name: "sd/purge-rest", value: "p1" }, opts());
      await rpc.secrets.storeSecret({ name: "sd/purge-rpc", value: "p2" }, opts());
      await rpc.secrets.storeSecret({ name: "sd/purge-json", value: "p3" }, opts());
      await rpc.secrets.storeSecret({ name: "sd/purge-grpcjs", value: "p4" }, opts());
      const ids = await Promise.all(
        ["sd/purge-rest", "sd/purge-rpc", "sd/purge-json", "sd/purge-grpcjs"].map(
          async (name) => (await rpc.secrets.listSecretVersions({ name }, opts())).secret?.id as string,
        ),
      );

      restFails(await r("DELETE", "/v1/secrets/sd/purge-rest?purge=maybe"), 400, "invalid_argument");
      assert.equal((await r("DELETE", "/v1/secrets/sd/purge-rest?purge=true")).status, 204);
      await rpc.secrets.deleteSecret({ name: "sd/purge-rpc", purge: true }, opts());
      assert.equal((await cj("DeleteSecret", { name: "sd/purge-json", purge: true })).status, 200);
      await grpcOk(g.secrets, "DeleteSecret", { name: "sd/purge-grpcjs", purge: true });

      assert.deepEqual(await deletedNames("sd/purge-"), [], "purged secrets are not listed as deleted");
      for (const id of ids) assert.equal(await s.app.storage.findSecretById(id), undefined, "gone from storage");
      restFails(await r("POST", "/v1/secrets/sd/purge-rest/undelete"), 404, "not_found", "DELETED_SECRET_NOT_FOUND");
      assertReason(
        await rpcFails(rpc.secrets.undeleteSecret({ name: "sd/purge-rpc" }, opts()), Code.NotFound, "undelete purged"),
        "DELETED_SECRET_NOT_FOUND",
      );
      connectFails(await cj("UndeleteSecret", { name: "sd/purge-json" }), 404, "not_found", "DELETED_SECRET_NOT_FOUND");
      await grpcFails(g.secrets, "UndeleteSecret", { name: "sd/purge-grpcjs" }, grpc.status.NOT_FOUND);
    });
  });

  describe("UndeleteSecret", () => {
    it("REST: restores the secret as it was (id, versions, values, metadata)", async () => {
      const created = await r("POST", "/v1/secrets", { name: "ud/rest", value: "ud-one", tags: ["keep"], folder: "f" });
      assert.equal(created.status, 201);
      await r("PUT", "/v1/secrets/ud/rest", { value: "ud-two" });
      await r("PUT", "/v1/secrets/ud/rest/versions/1", { state: "deactivated" });
      const beforeDel = (await r("GET", "/v1/secrets?prefix=ud/rest")).body[0];
      assert.equal((await r("DELETE", "/v1/secrets/ud/rest")).status, 204);

      const restored = await r("POST", "/v1/secrets/ud/rest/undelete");
      assert.equal(restored.status, 200, JSON.stringify(restored.body));
      assert.equal(restored.body.id, beforeDel.id, "same id");
      assert.equal(restored.body.name, "ud/rest");
      assert.deepEqual(restored.body.tags, ["keep"]);
      assert.equal(restored.body.folder, "f");
      assert.equal(restored.body.version, 2);
      assert.equal("deleted_at" in restored.body, false, "no longer deleted");
      assert.ok(restored.body.revision > beforeDel.revision, "revision bumped");
      assert.equal("value" in restored.body, false);

      const got = await r("GET", "/v1/secrets/ud/rest");
      assert.deepEqual([got.body.value, got.body.version], ["ud-two", 2]);
      assert.equal((await r("GET", "/v1/secrets/ud/rest?version=1")).body.value, "ud-one");
      const vs = await r("GET", "/v1/secrets/ud/rest/versions");
      assert.deepEqual(vs.body.versions.map((v: any) => v.state), ["deactivated", "active"], "version states kept");
      assert.deepEqual(await deletedNames("ud/rest"), [], "no longer listed as deleted");
      restFails(await r("POST", "/v1/secrets/ud/rest/undelete"), 404, "not_found", "DELETED_SECRET_NOT_FOUND", "undelete a live secret");
    });

    it("restores the most recently deleted by default, or the one named by id; refuses a taken name (ALREADY_EXISTS / 409)", async () => {
      const first = await rpc.secrets.storeSecret({ name: "ud/many", value: "many-first" }, opts());
      await rpc.secrets.deleteSecret({ name: "ud/many" }, opts());
      await new Promise((res) => setTimeout(res, 5)); // distinct deletion times
      const second = await rpc.secrets.storeSecret({ name: "ud/many", value: "many-second" }, opts());
      await rpc.secrets.deleteSecret({ name: "ud/many" }, opts());
      assert.notEqual(first.secret?.id, second.secret?.id);

      const latest = await rpc.secrets.undeleteSecret({ name: "ud/many" }, opts());
      assert.equal(latest.secret?.id, second.secret?.id, "the most recently deleted comes back");
      assert.equal(latest.secret?.deletedAt, undefined);
      assert.equal((await rpc.secrets.getSecret({ name: "ud/many" }, opts())).value, "many-second");

      // The first one cannot come back while the name is taken.
      const taken = await rpcFails(
        rpc.secrets.undeleteSecret({ name: "ud/many", id: first.secret?.id ?? "" }, opts()),
        Code.AlreadyExists,
        "undelete onto a taken name",
      );
      assertReason(taken, "SECRET_EXISTS");
      const restTaken = await r("POST", "/v1/secrets/ud/many/undelete", { id: first.secret?.id });
      restFails(restTaken, 409, "already_exists", "SECRET_EXISTS", "REST undelete onto a taken name");
      connectFails(await cj("UndeleteSecret", { name: "ud/many", id: first.secret?.id }), 409, "already_exists", "SECRET_EXISTS");
      await grpcFails(g.secrets, "UndeleteSecret", { name: "ud/many", id: first.secret?.id }, grpc.status.ALREADY_EXISTS);
      assert.equal((await rpc.secrets.getSecret({ name: "ud/many" }, opts())).value, "many-second", "the live one is untouched");
      assert.deepEqual(await deletedNames("ud/many"), ["ud/many"], "the first is still deleted and restorable");

      // Once the name is free again, the first one comes back by id.
      await rpc.secrets.deleteSecret({ name: "ud/many" }, opts());
      const byId = await cj("UndeleteSecret", { name: "ud/many", id: first.secret?.id });
      assert.equal(byId.status, 200, JSON.stringify(byId.body));
      assert.equal(byId.body.secret.id, first.secret?.id);
      assert.equal((await rpc.secrets.getSecret({ name: "ud/many" }, opts())).value, "many-first");

      // An id that is not a deleted secret of that name is not found.
      restFails(await r("POST", "/v1/secrets/ud/many/undelete", { id: "no-such-id" }), 404, "not_found", "DELETED_SECRET_NOT_FOUND");
      await rpc.secrets.storeSecret({ name: "ud/other", value: "other" }, opts());
      await rpc.secrets.deleteSecret({ name: "ud/other" }, opts());
      const otherId = (await rpc.secrets.listSecrets({ namePrefix: "ud/other", state: SecretListState.DELETED }, opts())).secrets[0]?.id;
      assertReason(
        await rpcFails(rpc.secrets.undeleteSecret({ name: "ud/many", id: otherId ?? "" }, opts()), Code.NotFound, "id of another name"),
        "DELETED_SECRET_NOT_FOUND",
      );
      // grpc-js restores by name.
      const viaGrpcJs = await grpcOk(g.secrets, "UndeleteSecret", { name: "ud/other" });
      assert.equal(viaGrpcJs.secret.id, otherId);
    });

    it("refuses a restore onto a name created again after the delete (409), keeping both", async () => {
      await r("POST", "/v1/secrets", { name: "ud/clash", value: "clash-old" });
      await r("DELETE", "/v1/secrets/ud/clash");
      await r("POST", "/v1/secrets", { name: "ud/clash", value: "clash-new" });
      restFails(await r("POST", "/v1/secrets/ud/clash/undelete"), 409, "already_exists", "SECRET_EXISTS");
      assertReason(
        await rpcFails(rpc.secrets.undeleteSecret({ name: "ud/clash" }, opts()), Code.AlreadyExists, "rpc"),
        "SECRET_EXISTS",
      );
      assert.equal((await r("GET", "/v1/secrets/ud/clash")).body.value, "clash-new");
      assert.deepEqual(await deletedNames("ud/clash"), ["ud/clash"]);
    });
  });

  describe("WatchSecrets", () => {
    it("reports DELETED and RESTORED over gRPC, Connect JSON and grpc-js", async () => {
      const viaRpc = rpcStream<WatchSecretsResponse>((signal) => rpc.secrets.watchSecrets({ namePrefix: "sdw/" }, { ...opts(), signal }));
      const viaJson = connectJsonStream(s.url, "SecretService/WatchSecrets", { namePrefix: "sdw/" });
      const viaGrpcJs = grpcStream(g.secrets, "WatchSecrets", { namePrefix: "sdw/" });
      try {
        await viaRpc.waitFor((m) => m.length >= 1, 3000, "rpc STARTED");
        await viaJson.waitFor((m) => m.length >= 1, 3000, "json STARTED");
        await viaGrpcJs.waitFor((m) => m.length >= 1, 3000, "grpc-js STARTED");

        await rpc.secrets.storeSecret({ name: "sdw/a", value: "watched-value" }, opts());
        await rpc.secrets.deleteSecret({ name: "sdw/a" }, opts());
        await rpc.secrets.undeleteSecret({ name: "sdw/a" }, opts());
        await rpc.secrets.deleteSecret({ name: "sdw/a", purge: true }, opts());

        const expected = ["CREATED", "DELETED", "RESTORED", "DELETED"];
        await viaRpc.waitFor((m) => m.length >= 5, 3000, "rpc events");
        assert.deepEqual(viaRpc.messages.map((e) => SecretEventType[e.type]), ["STARTED", ...expected]);
        assert.ok(viaRpc.messages.slice(1).every((e) => e.name === "sdw/a" && e.id !== ""));
        const revs = viaRpc.messages.slice(1).map((e) => e.revision);
        assert.deepEqual(revs, [1n, 2n, 3n, 3n], "revisions: created 1, deleted 2, restored 3, purged at 3");

        await viaJson.waitFor((m) => m.length >= 5, 3000, "json events");
        assert.deepEqual(
          viaJson.messages.map((e) => e.type),
          ["SECRET_EVENT_TYPE_STARTED", ...expected.map((t) => `SECRET_EVENT_TYPE_${t}`)],
        );
        await viaGrpcJs.waitFor((m) => m.length >= 5, 3000, "grpc-js events");
        assert.deepEqual(
          viaGrpcJs.messages.map((e) => e.type),
          ["SECRET_EVENT_TYPE_STARTED", ...expected.map((t) => `SECRET_EVENT_TYPE_${t}`)],
        );
        const text = JSON.stringify([viaJson.messages, viaGrpcJs.messages]);
        assert.equal(text.includes("watched-value"), false, "no value in events");
      } finally {
        viaRpc.cancel();
        viaJson.cancel();
        viaGrpcJs.cancel();
        await viaRpc.done;
        await viaJson.done.catch(() => undefined);
        await viaGrpcJs.done;
      }
    });
  });

  describe("usage", () => {
    it("drops on delete, comes back on undelete, and stays down after a purge", async () => {
      assert.equal((await r("POST", "/v1/stores", { name: "sd-usage" })).status, 201);
      const usage = async () => {
        const res = await r("GET", "/v1/stores/sd-usage/usage");
        assert.equal(res.status, 200);
        return { secrets: Number(res.body.usage.secrets), versions: Number(res.body.usage.versions), bytes: Number(res.body.usage.bytes) };
      };
      await r("POST", "/v1/stores/sd-usage/secrets", { name: "u/a", value: "usage-a" });
      await r("PUT", "/v1/stores/sd-usage/secrets/u/a", { value: "usage-a2" });
      await r("POST", "/v1/stores/sd-usage/secrets", { name: "u/b", value: "usage-b" });
      const full = await usage();
      assert.deepEqual([full.secrets, full.versions], [2, 3]);

      assert.equal((await r("DELETE", "/v1/stores/sd-usage/secrets/u/a")).status, 204);
      const afterDelete = await usage();
      assert.deepEqual([afterDelete.secrets, afterDelete.versions], [1, 1], "a deleted secret does not count");
      assert.ok(afterDelete.bytes < full.bytes, "its bytes do not count");
      const viaRpc = await rpc.stores.getUsage({ store: "sd-usage" }, opts());
      assert.equal(viaRpc.usage?.secrets, 1n);
      const viaJson = await connectJson(s.url, "StoreService/GetUsage", { store: "sd-usage" });
      assert.equal(viaJson.body.usage.secrets, "1", "uint64 as a JSON string");
      const viaGrpcJs = await grpcOk(g.stores, "GetUsage", { store: "sd-usage" });
      assert.equal(viaGrpcJs.usage.versions, "1");

      assert.equal((await r("POST", "/v1/stores/sd-usage/secrets/u/a/undelete")).status, 200);
      assert.deepEqual(await usage(), full, "counts again once restored");

      await rpc.secrets.deleteSecret({ store: "sd-usage", name: "u/b", purge: true }, opts());
      const afterPurge = await usage();
      assert.deepEqual([afterPurge.secrets, afterPurge.versions], [1, 2]);

      await rpc.secrets.deleteSecret({ store: "sd-usage", name: "u/a" }, opts());
      const none = await usage();
      assert.deepEqual([none.secrets, none.versions, none.bytes], [0, 0, 0]);
      // A deleted secret cannot be changed until it is restored.
      await rpcFails(
        rpc.secrets.setVersionState({ store: "sd-usage", name: "u/a", version: 1, state: VersionState.SUSPENDED }, opts()),
        Code.NotFound,
        "change a deleted secret",
      );
    });
  });
});

describe("soft delete with LATCHKEY_DELETE_RETENTION=1", () => {
  let s: TestServer;
  let rpc: RpcClients;
  let g: GrpcClients;

  before(async () => {
    s = await startTestServer({ LATCHKEY_DELETE_RETENTION: "1" });
    rpc = rpcClients(s.url);
    g = grpcClients(s.port);
  });
  after(async () => {
    rpc?.close();
    g?.close();
    await s?.stop();
  });

  it("purges a deleted secret after about a second; it is then not restorable, and the purge is not reported", async () => {
    const watch = rpcStream<WatchSecretsResponse>((signal) => rpc.secrets.watchSecrets({ namePrefix: "ret/" }, { ...opts(), signal }), 8000);
    try {
      await watch.waitFor((m) => m.length >= 1, 3000, "STARTED");
      await rpc.secrets.storeSecret({ name: "ret/rpc", value: "r1" }, opts());
      await rest(s.url, "POST", "/v1/secrets", { name: "ret/rest", value: "r2" });
      await grpcOk(g.secrets, "StoreSecret", { name: "ret/grpcjs", value: "r3" });
      await connectJson(s.url, "SecretService/StoreSecret", { name: "ret/json", value: "r4" });
      const ids = (await rpc.secrets.listSecrets({ namePrefix: "ret/" }, opts())).secrets.map((x) => x.id);
      assert.equal(ids.length, 4);

      const t0 = Date.now();
      await rpc.secrets.deleteSecret({ name: "ret/rpc" }, opts());
      assert.equal((await rest(s.url, "DELETE", "/v1/secrets/ret/rest")).status, 204);
      await grpcOk(g.secrets, "DeleteSecret", { name: "ret/grpcjs" });
      assert.equal((await connectJson(s.url, "SecretService/DeleteSecret", { name: "ret/json" })).status, 200);

      const listed = await rpc.secrets.listSecrets({ namePrefix: "ret/", state: SecretListState.DELETED }, opts());
      assert.equal(listed.secrets.length, 4, "restorable at first");
      for (const x of listed.secrets) assert.equal((tsMs(x.purgeAt) ?? 0) - (tsMs(x.deletedAt) ?? 0), 1000, "purge_at = deleted_at + 1 s");

      // Restorable within the window: undelete one and delete it again (a fresh window).
      await rpc.secrets.undeleteSecret({ name: "ret/rpc" }, opts());
      await rpc.secrets.deleteSecret({ name: "ret/rpc" }, opts());

      await waitUntil(
        async () => (await rpc.secrets.listSecrets({ namePrefix: "ret/", state: SecretListState.DELETED }, opts())).secrets.length === 0,
        4000,
        "the scheduler to purge the deleted secrets",
      );
      assert.ok(Date.now() - t0 >= 900, "not purged before the retention is over");
      for (const id of ids) assert.equal(await s.app.storage.findSecretById(id), undefined, "gone from storage");
      assertReason(
        await rpcFails(rpc.secrets.undeleteSecret({ name: "ret/rpc" }, opts()), Code.NotFound, "undelete after purge"),
        "DELETED_SECRET_NOT_FOUND",
      );
      restFails(await rest(s.url, "POST", "/v1/secrets/ret/rest/undelete"), 404, "not_found", "DELETED_SECRET_NOT_FOUND");
      await grpcFails(g.secrets, "UndeleteSecret", { name: "ret/grpcjs" }, grpc.status.NOT_FOUND);
      connectFails(await connectJson(s.url, "SecretService/UndeleteSecret", { name: "ret/json" }), 404, "not_found", "DELETED_SECRET_NOT_FOUND");

      await new Promise((res) => setTimeout(res, 100));
      const types = watch.messages.map((e) => SecretEventType[e.type]);
      assert.deepEqual(
        types,
        ["STARTED", "CREATED", "CREATED", "CREATED", "CREATED", "DELETED", "DELETED", "DELETED", "DELETED", "RESTORED", "DELETED"],
        "the scheduled purge of a deleted secret is not reported again",
      );
    } finally {
      watch.cancel();
      await watch.done;
    }
  });

  it("does not restore a deleted secret once its retention window is over, even before the scheduler purges it", async () => {
    // With the scheduler stopped nothing is purged: only the window itself can refuse the restore.
    await s.app.scheduler.stop();
    await rpc.secrets.storeSecret({ name: "ret/late", value: "late" }, opts());
    await rpc.secrets.deleteSecret({ name: "ret/late" }, opts());
    const deleted = (await rpc.secrets.listSecrets({ namePrefix: "ret/late", state: SecretListState.DELETED }, opts())).secrets[0];
    const purgeAt = tsMs(deleted?.purgeAt) ?? 0;
    await waitUntil(async () => Date.now() > purgeAt + 50, 3000, "the end of the retention window", 20);
    assertReason(
      await rpcFails(rpc.secrets.undeleteSecret({ name: "ret/late" }, opts()), Code.NotFound, "undelete after the window"),
      "DELETED_SECRET_NOT_FOUND",
    );
    restFails(await rest(s.url, "POST", "/v1/secrets/ret/late/undelete"), 404, "not_found", "DELETED_SECRET_NOT_FOUND");
  });
});

describe("soft delete with LATCHKEY_DELETE_RETENTION=0", () => {
  let s: TestServer;

  before(async () => {
    s = await startTestServer({ LATCHKEY_DELETE_RETENTION: "0" });
  });
  after(async () => {
    await s?.stop();
  });

  it("deletes for good at once: nothing is listed as deleted or restorable", async () => {
    assert.equal((await rest(s.url, "POST", "/v1/secrets", { name: "zero/a", value: "z" })).status, 201);
    assert.equal((await rest(s.url, "DELETE", "/v1/secrets/zero/a")).status, 204);
    const deleted = await rest(s.url, "GET", "/v1/secrets?state=deleted");
    assert.deepEqual(deleted.body, []);
    restFails(await rest(s.url, "POST", "/v1/secrets/zero/a/undelete"), 404, "not_found", "DELETED_SECRET_NOT_FOUND");
    const batch = await rest(s.url, "POST", "/v1/secrets", { name: "zero/b", value: "z" });
    assert.equal(batch.status, 201);
    const bd = await rest(s.url, "POST", "/v1/secrets:batchDelete", { names: ["zero/b"] });
    assert.equal(bd.status, 200);
    assert.deepEqual((await rest(s.url, "GET", "/v1/secrets?state=deleted")).body, [], "batch deletes are for good too");
  });
});
