import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Code } from "@connectrpc/connect";
import { SecretKind, SecretType, VersionState } from "../../gen/latchkey/v1/secret_pb.js";
import {
  connectJson,
  grpc,
  grpcClients,
  type GrpcClients,
  grpcFails,
  grpcOk,
  opts,
  rest,
  restViolations,
  rpcClients,
  type RpcClients,
  rpcFails,
  violationsOf,
} from "../support/clients.js";
import { assertNoValue, assertReason, connectFails, grpcReason, restFails, tsMs } from "../support/lifecycle.js";
import { startTestServer, type TestServer } from "../support/server.js";

/**
 * CopySecret, RenameSecret and MoveSecret end to end, over gRPC (Connect client and grpc-js), Connect JSON and REST:
 * a copy has the current value and the metadata of its source under a new id, in the same or another store; a
 * rename keeps id, versions and values; a move takes every version (re-sealed) to another store; a missing store
 * is NOT_FOUND, a taken name ALREADY_EXISTS; and no response ever carries a value.
 */
describe("copy, rename and move", () => {
  let s: TestServer;
  let rpc: RpcClients;
  let g: GrpcClients;
  /** Every response body of a copy, rename or move, to check that none carries a value. */
  const responses: unknown[] = [];
  /** Every value written in this file. */
  const values: string[] = [];

  before(async () => {
    s = await startTestServer();
    rpc = rpcClients(s.url);
    g = grpcClients(s.port);
    for (const name of ["cm-target", "mv-target", "mv-other"]) {
      assert.equal((await rest(s.url, "POST", "/v1/stores", { name })).status, 201);
    }
  });
  after(async () => {
    rpc?.close();
    g?.close();
    await s?.stop();
  });

  const cj = async (procedure: string, body: unknown) => {
    const res = await connectJson(s.url, `SecretService/${procedure}`, body);
    responses.push(res.body);
    return res;
  };
  const r = async (method: string, path: string, body?: unknown, headers: Record<string, string> = {}) => {
    const res = await rest(s.url, method, path, body, undefined, headers);
    if (/\/(copy|rename|move)$/.test(path)) responses.push(res.body);
    return res;
  };
  const kept = <T>(x: T): T => {
    responses.push(x);
    return x;
  };
  const v = (x: string) => {
    values.push(x);
    return x;
  };

  /** A manual secret with the given values as versions 1..n. */
  async function manual(name: string, vals: string[], extra: Record<string, unknown> = {}, store = ""): Promise<void> {
    const [first, ...more] = vals.map(v);
    await rpc.secrets.storeSecret({ name, store, value: first, ...extra }, opts());
    for (const x of more) await rpc.secrets.updateSecret({ name, store, value: x }, opts());
  }

  describe("CopySecret", () => {
    it("REST: within a store, keeps the current value and every piece of metadata under a new id", async () => {
      const expires = new Date(Date.now() + 86_400_000).toISOString();
      const created = await r("POST", "/v1/secrets", {
        name: "cp/src",
        value: v("copy-src-v1"),
        description: "the source",
        type: "token",
        folder: "team/a",
        tags: ["b", "a"],
        metadata: { owner: "ops", env: "prod" },
        expires_at: expires,
        grace_period_secs: 120,
      });
      assert.equal(created.status, 201, JSON.stringify(created.body));
      await r("PUT", "/v1/secrets/cp/src", { value: v("copy-src-v2") });
      const src = (await r("GET", "/v1/secrets?prefix=cp/src")).body[0];

      const copied = await r("POST", "/v1/secrets/cp/src/copy", { to_name: "cp/dst" });
      assert.equal(copied.status, 201, JSON.stringify(copied.body));
      const c = copied.body;
      assert.equal(c.name, "cp/dst");
      assert.equal(c.store, "default");
      assert.notEqual(c.id, src.id, "a copy has its own id");
      assert.equal(c.version, 1, "a copy starts at version 1");
      for (const k of ["kind", "type", "description", "folder", "tags", "metadata", "expires_at", "grace_period_secs"]) {
        assert.deepEqual(c[k], src[k], `${k} copied`);
      }
      assert.equal(c.type, "token");
      assert.deepEqual(c.tags, ["a", "b"]);
      assert.equal("value" in c, false);

      const got = await r("GET", "/v1/secrets/cp/dst");
      assert.deepEqual([got.body.value, got.body.version], ["copy-src-v2", 1], "the current value is copied");
      const srcAfter = await r("GET", "/v1/secrets/cp/src");
      assert.deepEqual([srcAfter.body.value, srcAfter.body.version], ["copy-src-v2", 2], "the source is untouched");

      restFails(await r("POST", "/v1/secrets/cp/src/copy", { to_name: "cp/dst" }), 409, "already_exists", "SECRET_EXISTS", "copy onto a taken name");
      restFails(await r("POST", "/v1/secrets/cp/missing/copy", { to_name: "cp/x" }), 404, "not_found", "SECRET_NOT_FOUND");
      const noName = restFails(await r("POST", "/v1/secrets/cp/src/copy", {}), 400, "invalid_argument");
      assert.deepEqual(restViolations(noName), [["to_name", "required"]]);
      restFails(await r("POST", "/v1/secrets/cp/src/copy", { to_name: "bad name!" }), 400, "invalid_argument");
      assert.equal((await r("GET", "/v1/secrets/cp/x")).status, 404, "failed copies create nothing");
    });

    it("gRPC: across stores, with kind, interval and grace; into a missing store -> NOT_FOUND", async () => {
      const src = await rpc.secrets.storeSecret(
        {
          name: "cp/auto",
          kind: SecretKind.AUTOMATIC,
          rotationInterval: { seconds: 7200n },
          gracePeriod: { seconds: 60n },
          type: SecretType.TOKEN,
          tags: ["t1"],
          metadata: { k: "v" },
          folder: "auto",
        },
        opts(),
      );
      v(src.value);
      const copied = kept(await rpc.secrets.copySecret({ name: "cp/auto", toStore: "cm-target", toName: "copied/auto" }, opts()));
      const c = copied.secret;
      assert.ok(c);
      assert.equal(c.store, "cm-target");
      assert.equal(c.name, "copied/auto");
      assert.notEqual(c.id, src.secret?.id);
      assert.equal(c.kind, SecretKind.AUTOMATIC);
      assert.equal(c.rotationInterval?.seconds, 7200n);
      assert.equal(c.gracePeriod?.seconds, 60n);
      assert.equal(c.type, SecretType.TOKEN);
      assert.equal(c.folder, "auto");
      assert.deepEqual(c.tags, ["t1"]);
      assert.deepEqual(c.metadata, { k: "v" });
      assert.equal(c.currentVersion, 1);
      const got = await rpc.secrets.getSecret({ store: "cm-target", name: "copied/auto" }, opts());
      assert.equal(got.value, src.value, "the value is copied, not regenerated");

      // Without to_store: the same store.
      const same = kept(await rpc.secrets.copySecret({ name: "cp/auto", toName: "cp/auto-2" }, opts()));
      assert.equal(same.secret?.store, "default");
      assert.equal((await rpc.secrets.getSecret({ name: "cp/auto-2" }, opts())).value, src.value);

      assertReason(
        await rpcFails(rpc.secrets.copySecret({ name: "cp/auto", toStore: "no-such-store", toName: "x" }, opts()), Code.NotFound, "missing store"),
        "STORE_NOT_FOUND",
      );
      assertReason(
        await rpcFails(rpc.secrets.copySecret({ name: "cp/auto", toStore: "cm-target", toName: "copied/auto" }, opts()), Code.AlreadyExists, "taken"),
        "SECRET_EXISTS",
      );
      await rpcFails(rpc.secrets.copySecret({ name: "cp/auto" }, opts()), Code.InvalidArgument, "no to_name");
    });

    it("reports a bad or missing target name against to_name, over every protocol", async () => {
      await manual("cp/named", ["named-value"]);
      const viaRest = restFails(await r("POST", "/v1/secrets/cp/named/copy", { to_name: "bad name!" }), 400, "invalid_argument");
      assert.deepEqual(restViolations(viaRest), [["to_name", "pattern"]], "REST");
      const empty = await rpcFails(rpc.secrets.copySecret({ name: "cp/named" }, opts()), Code.InvalidArgument, "no to_name");
      assert.deepEqual(violationsOf(empty), [["to_name", "required"]], "gRPC, empty");
      const bad = await rpcFails(rpc.secrets.copySecret({ name: "cp/named", toName: "a//b" }, opts()), Code.InvalidArgument, "bad to_name");
      assert.deepEqual(violationsOf(bad), [["to_name", "pattern"]], "gRPC, bad");
    });

    it("Connect JSON and grpc-js: copies the served (newest active) value, and binary values as bytes", async () => {
      await manual("cp/served", ["served-1", "served-2"]);
      await rpc.secrets.setVersionState({ name: "cp/served", version: 2, state: VersionState.SUSPENDED }, opts());
      const viaJson = await cj("CopySecret", { name: "cp/served", toStore: "cm-target", toName: "served" });
      assert.equal(viaJson.status, 200, JSON.stringify(viaJson.body));
      assert.equal(viaJson.body.secret.store, "cm-target");
      assert.equal(viaJson.body.secret.currentVersion, 1);
      assert.equal((await rpc.secrets.getSecret({ store: "cm-target", name: "served" }, opts())).value, "served-1");
      connectFails(await cj("CopySecret", { name: "cp/served", toStore: "nope", toName: "x" }), 404, "not_found", "STORE_NOT_FOUND");

      const bytes = Buffer.from([0, 1, 2, 250, 251, 252, 255, 10, 13]);
      values.push(bytes.toString("base64"));
      await rpc.secrets.storeSecret({ name: "cp/binary", binaryValue: bytes }, opts());
      const viaGrpcJs = kept(await grpcOk(g.secrets, "CopySecret", { name: "cp/binary", toStore: "cm-target", toName: "binary" }));
      assert.equal(viaGrpcJs.secret.binary, true);
      const got = await rpc.secrets.getSecret({ store: "cm-target", name: "binary" }, opts());
      assert.deepEqual(Buffer.from(got.binaryValue), bytes);
      assert.equal(got.value, "");
      const gf = await grpcFails(g.secrets, "CopySecret", { name: "cp/binary", toStore: "nope", toName: "x" }, grpc.status.NOT_FOUND);
      assert.equal(grpcReason(gf.trailers), "STORE_NOT_FOUND");
    });
  });

  describe("RenameSecret", () => {
    it("REST: keeps id, versions, states and values; the old name is gone and free", async () => {
      await manual("rn/old", ["rn-1", "rn-2", "rn-3"], { gracePeriod: { seconds: 3600n } });
      await r("PUT", "/v1/secrets/rn/old/versions/1", { state: "deactivated" });
      const before = await r("GET", "/v1/secrets/rn/old/versions");
      const meta = (await r("GET", "/v1/secrets?prefix=rn/old")).body[0];

      const renamed = await r("POST", "/v1/secrets/rn/old/rename", { new_name: "rn/new" });
      assert.equal(renamed.status, 200, JSON.stringify(renamed.body));
      assert.equal(renamed.body.name, "rn/new");
      assert.equal(renamed.body.id, meta.id, "same id");
      assert.equal(renamed.body.version, 3);
      assert.ok(renamed.body.revision > meta.revision);

      restFails(await r("GET", "/v1/secrets/rn/old"), 404, "not_found", "SECRET_NOT_FOUND", "old name");
      for (const [n, val] of [
        [1, "rn-1"],
        [2, "rn-2"],
        [3, "rn-3"],
      ] as const) {
        assert.equal((await r("GET", `/v1/secrets/rn/new?version=${n}`)).body.value, val, `version ${n} kept`);
      }
      const after = await r("GET", "/v1/secrets/rn/new/versions");
      assert.deepEqual(
        after.body.versions.map((x: any) => [x.version, x.state, x.valid_until]),
        before.body.versions.map((x: any) => [x.version, x.state, x.valid_until]),
        "versions kept as they were",
      );
      const vr = await r("POST", "/v1/secrets/rn/new/verify", { value: "rn-2" });
      assert.deepEqual(vr.body, { valid: true, version: 2 }, "grace windows kept");

      // The old name is free again.
      assert.equal((await r("POST", "/v1/secrets", { name: "rn/old", value: v("rn-reborn") })).status, 201);
      // ...so renaming onto it is now refused, and changes nothing.
      restFails(await r("POST", "/v1/secrets/rn/new/rename", { new_name: "rn/old" }), 409, "already_exists", "SECRET_EXISTS");
      assert.equal((await r("GET", "/v1/secrets/rn/new")).body.value, "rn-3");
      assert.equal((await r("GET", "/v1/secrets/rn/old")).body.value, "rn-reborn");
      const bad = restFails(await r("POST", "/v1/secrets/rn/new/rename", { new_name: "../x" }), 400, "invalid_argument");
      assert.equal(restViolations(bad)[0]?.[0], "new_name");
      restFails(await r("POST", "/v1/secrets/rn/missing/rename", { new_name: "rn/y" }), 404, "not_found", "SECRET_NOT_FOUND");
    });

    it("gRPC, Connect JSON and grpc-js: rename, and a taken name -> ALREADY_EXISTS", async () => {
      await manual("rn/a", ["rn-a-1", "rn-a-2"]);
      await manual("rn/b", ["rn-b-1"]);
      const res = kept(await rpc.secrets.renameSecret({ name: "rn/a", newName: "rn/a2" }, opts()));
      assert.equal(res.secret?.name, "rn/a2");
      assert.equal(res.secret?.currentVersion, 2);
      assert.equal((await rpc.secrets.getSecret({ name: "rn/a2", version: 1 }, opts())).value, "rn-a-1");
      assertReason(await rpcFails(rpc.secrets.getSecret({ name: "rn/a" }, opts()), Code.NotFound, "old name"), "SECRET_NOT_FOUND");

      assertReason(
        await rpcFails(rpc.secrets.renameSecret({ name: "rn/a2", newName: "rn/b" }, opts()), Code.AlreadyExists, "taken"),
        "SECRET_EXISTS",
      );
      connectFails(await cj("RenameSecret", { name: "rn/a2", newName: "rn/b" }), 409, "already_exists", "SECRET_EXISTS");
      const gf = await grpcFails(g.secrets, "RenameSecret", { name: "rn/a2", newName: "rn/b" }, grpc.status.ALREADY_EXISTS);
      assert.equal(grpcReason(gf.trailers), "SECRET_EXISTS");
      assert.equal((await rpc.secrets.getSecret({ name: "rn/b" }, opts())).value, "rn-b-1", "the holder of the name is untouched");
      assert.equal((await rpc.secrets.getSecret({ name: "rn/a2" }, opts())).value, "rn-a-2");

      const viaJson = await cj("RenameSecret", { name: "rn/a2", newName: "rn/a3" });
      assert.equal(viaJson.status, 200, JSON.stringify(viaJson.body));
      assert.equal(viaJson.body.secret.name, "rn/a3");
      const viaGrpcJs = kept(await grpcOk(g.secrets, "RenameSecret", { name: "rn/a3", newName: "rn/a4" }));
      assert.equal(viaGrpcJs.secret.name, "rn/a4");
      assert.equal((await rpc.secrets.getSecret({ name: "rn/a4", version: 1 }, opts())).value, "rn-a-1");

      const ce = await rpcFails(rpc.secrets.renameSecret({ name: "rn/a4", newName: "" }, opts()), Code.InvalidArgument, "empty new name");
      assert.deepEqual(violationsOf(ce), [["new_name", "required"]]);

      // A name held only by a deleted (restorable) secret is free.
      await rpc.secrets.deleteSecret({ name: "rn/b" }, opts());
      const onto = kept(await rpc.secrets.renameSecret({ name: "rn/a4", newName: "rn/b" }, opts()));
      assert.equal(onto.secret?.name, "rn/b");
    });
  });

  describe("MoveSecret", () => {
    it("REST: moves every version, value and state to another store (GET ?version=1 there)", async () => {
      await manual("mv/rest", ["mv-1", "mv-2", "mv-3", "mv-4"], { gracePeriod: { seconds: 3600n } });
      await r("PUT", "/v1/secrets/mv/rest/versions/2", { state: "destroyed" });
      await r("PUT", "/v1/secrets/mv/rest/versions/3", { state: "deactivated" });
      const meta = (await r("GET", "/v1/secrets?prefix=mv/rest")).body[0];
      const before = await r("GET", "/v1/secrets/mv/rest/versions");

      const moved = await r("POST", "/v1/secrets/mv/rest/move", { to_store: "mv-target" });
      assert.equal(moved.status, 200, JSON.stringify(moved.body));
      assert.equal(moved.body.store, "mv-target");
      assert.equal(moved.body.name, "mv/rest", "the name is kept without to_name");
      assert.equal(moved.body.id, meta.id, "same id");

      restFails(await r("GET", "/v1/secrets/mv/rest"), 404, "not_found", "SECRET_NOT_FOUND", "gone from the old store");
      const base = "/v1/stores/mv-target/secrets/mv/rest";
      assert.equal((await r("GET", `${base}?version=1`)).body.value, "mv-1");
      restFails(await r("GET", `${base}?version=2`), [400, 410], "failed_precondition", "VERSION_DESTROYED", "destroyed stays destroyed");
      assert.equal((await r("GET", `${base}?version=3`)).body.value, "mv-3", "deactivated, still readable");
      const cur = await r("GET", base);
      assert.deepEqual([cur.body.value, cur.body.version], ["mv-4", 4]);
      const after = await r("GET", `${base}/versions`);
      assert.deepEqual(
        after.body.versions.map((x: any) => [x.version, x.state, x.valid_until]),
        before.body.versions.map((x: any) => [x.version, x.state, x.valid_until]),
      );
      assert.deepEqual((await r("POST", `${base}/verify`, { value: "mv-1" })).body, { valid: true, version: 1 });

      // Re-sealed for the new store: the stored ciphertext changed (bound to it), except the destroyed one.
      const stored = await s.app.storage.findSecret("mv-target", "mv/rest");
      assert.equal(stored?.versions[1]?.sealed, "");
      assert.ok(stored?.versions.filter((x) => x.sealed !== "").length === 3);

      // And on, with a new name.
      const again = await r("POST", `${base}/move`, { to_store: "mv-other", to_name: "renamed/too" });
      assert.equal(again.status, 200, JSON.stringify(again.body));
      assert.deepEqual([again.body.store, again.body.name], ["mv-other", "renamed/too"]);
      assert.equal((await r("GET", "/v1/stores/mv-other/secrets/renamed/too?version=1")).body.value, "mv-1");
      assert.equal((await r("GET", `${base}`)).status, 404);

      restFails(await r("POST", "/v1/stores/mv-other/secrets/renamed/too/move", { to_store: "nowhere" }), 404, "not_found", "STORE_NOT_FOUND");
      const noStore = restFails(await r("POST", "/v1/stores/mv-other/secrets/renamed/too/move", {}), 400, "invalid_argument");
      assert.deepEqual(restViolations(noStore), [["to_store", "required"]]);
      assert.equal((await r("GET", "/v1/stores/mv-other/secrets/renamed/too")).body.value, "mv-4", "failed moves change nothing");
    });

    it("gRPC, Connect JSON and grpc-js: move, missing store -> NOT_FOUND, taken name -> ALREADY_EXISTS", async () => {
      await manual("mv/rpc", ["mvr-1", "mvr-2"]);
      const moved = kept(await rpc.secrets.moveSecret({ name: "mv/rpc", toStore: "mv-target", toName: "mv/rpc-moved" }, opts()));
      assert.deepEqual([moved.secret?.store, moved.secret?.name, moved.secret?.currentVersion], ["mv-target", "mv/rpc-moved", 2]);
      assert.equal((await rpc.secrets.getSecret({ store: "mv-target", name: "mv/rpc-moved", version: 1 }, opts())).value, "mvr-1");
      assert.equal((await rpc.secrets.getSecret({ store: "mv-target", name: "mv/rpc-moved" }, opts())).value, "mvr-2");
      await rpcFails(rpc.secrets.getSecret({ name: "mv/rpc" }, opts()), Code.NotFound, "old place");

      assertReason(
        await rpcFails(rpc.secrets.moveSecret({ store: "mv-target", name: "mv/rpc-moved", toStore: "nowhere" }, opts()), Code.NotFound, "missing store"),
        "STORE_NOT_FOUND",
      );
      const noStore = await rpcFails(rpc.secrets.moveSecret({ store: "mv-target", name: "mv/rpc-moved" }, opts()), Code.InvalidArgument, "no to_store");
      assert.deepEqual(violationsOf(noStore), [["to_store", "required"]]);

      await manual("mv/rpc-moved", ["holder"], {}, "mv-other");
      assertReason(
        await rpcFails(rpc.secrets.moveSecret({ store: "mv-target", name: "mv/rpc-moved", toStore: "mv-other" }, opts()), Code.AlreadyExists, "taken"),
        "SECRET_EXISTS",
      );
      assert.equal((await rpc.secrets.getSecret({ store: "mv-other", name: "mv/rpc-moved" }, opts())).value, "holder");
      assert.equal((await rpc.secrets.getSecret({ store: "mv-target", name: "mv/rpc-moved" }, opts())).value, "mvr-2", "not moved");

      const viaJson = await cj("MoveSecret", { store: "mv-target", name: "mv/rpc-moved", toStore: "default", toName: "mv/json" });
      assert.equal(viaJson.status, 200, JSON.stringify(viaJson.body));
      assert.equal(viaJson.body.secret.store, "default");
      connectFails(await cj("MoveSecret", { name: "mv/json", toStore: "nowhere" }), 404, "not_found", "STORE_NOT_FOUND");
      assert.equal((await rpc.secrets.getSecret({ name: "mv/json", version: 1 }, opts())).value, "mvr-1");

      const viaGrpcJs = kept(await grpcOk(g.secrets, "MoveSecret", { name: "mv/json", toStore: "mv-target" }));
      assert.deepEqual([viaGrpcJs.secret.store, viaGrpcJs.secret.name], ["mv-target", "mv/json"]);
      const gf = await grpcFails(g.secrets, "MoveSecret", { store: "mv-target", name: "mv/json", toStore: "nowhere" }, grpc.status.NOT_FOUND);
      assert.equal(grpcReason(gf.trailers), "STORE_NOT_FOUND");
      const got = await grpcOk(g.secrets, "GetSecret", { store: "mv-target", name: "mv/json", version: 1 });
      assert.equal(got.value, "mvr-1");
    });

    it("moves binary versions and automatic secrets intact", async () => {
      const b1 = Buffer.from([1, 2, 3, 0, 255]);
      const b2 = Buffer.from("second binary \u00ff", "utf8");
      values.push(b1.toString("base64"), b2.toString("base64"));
      await rpc.secrets.storeSecret({ name: "mv/bin", binaryValue: b1 }, opts());
      await rpc.secrets.updateSecret({ name: "mv/bin", binaryValue: b2 }, opts());
      kept(await rpc.secrets.moveSecret({ name: "mv/bin", toStore: "mv-target" }, opts()));
      const v1 = await rpc.secrets.getSecret({ store: "mv-target", name: "mv/bin", version: 1 }, opts());
      const v2 = await rpc.secrets.getSecret({ store: "mv-target", name: "mv/bin" }, opts());
      assert.deepEqual(Buffer.from(v1.binaryValue), b1);
      assert.deepEqual(Buffer.from(v2.binaryValue), b2);
      assert.equal(v2.secret?.binary, true);

      const auto = await rpc.secrets.storeSecret({ name: "mv/auto", kind: SecretKind.AUTOMATIC, rotationInterval: { seconds: 3600n } }, opts());
      v(auto.value);
      const next = tsMs(auto.secret?.nextRotationAt);
      const moved = kept(await rpc.secrets.moveSecret({ name: "mv/auto", toStore: "mv-target" }, opts()));
      assert.equal(moved.secret?.kind, SecretKind.AUTOMATIC);
      assert.equal(tsMs(moved.secret?.nextRotationAt), next, "the schedule is kept");
      const rotated = await rpc.secrets.rotateSecret({ store: "mv-target", name: "mv/auto" }, opts());
      v(rotated.value);
      assert.equal(rotated.version?.version, 2);
      assert.equal((await rpc.secrets.getSecret({ store: "mv-target", name: "mv/auto", version: 1 }, opts())).value, auto.value);
    });
  });

  it("no response of copy, rename or move ever carries a value", () => {
    assert.ok(responses.length >= 15, `responses collected (${responses.length})`);
    assert.ok(values.length >= 10);
    assertNoValue(responses, values, "copy/rename/move responses");
  });
});
