import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Code } from "@connectrpc/connect";
import { VersionState } from "../../gen/latchkey/v1/secret_pb.js";
import { SecretListState } from "../../gen/latchkey/v1/secret_service_pb.js";
import {
  connectJson,
  connectViolations,
  grpc,
  grpcClients,
  type GrpcClients,
  grpcFails,
  grpcOk,
  grpcStatusDetails,
  opts,
  rest,
  restViolations,
  rpcClients,
  type RpcClients,
  rpcFails,
  violationsOf,
} from "../support/clients.js";
import { restFails } from "../support/lifecycle.js";
import { startTestServer, type TestServer } from "../support/server.js";

/**
 * BatchUpsertSecrets, BatchDeleteSecrets and BatchGetSecrets end to end, over gRPC (Connect client and grpc-js),
 * Connect JSON and REST: atomic batches write all or nothing and say, per item, why; non-atomic ones report each
 * item's outcome; upserts create or update; expected_revision is checked per item; at most 100 items; REST answers
 * 207 when some items failed.
 */
describe("batches", () => {
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

  async function exists(name: string, store = ""): Promise<boolean> {
    try {
      await rpc.secrets.listSecretVersions({ name, store }, opts());
      return true;
    } catch {
      return false;
    }
  }
  const value = async (name: string) => (await rpc.secrets.getSecret({ name }, opts())).value;
  const revision = async (name: string) => (await rpc.secrets.listSecretVersions({ name }, opts())).secret?.revision;

  describe("BatchUpsertSecrets, atomic (the default)", () => {
    it("REST: one invalid item -> nothing written; 207, the invalid item's error, BATCH_ABORTED for the others", async () => {
      await r("POST", "/v1/secrets", { name: "ba/existing", value: "existing-1" });
      const res = await r("POST", "/v1/secrets:batchSet", {
        items: [
          { name: "ba/one", value: "one" },
          { name: "ba/existing", value: "existing-2" },
          { name: "ba/bad name", value: "two" },
          { name: "ba/three", value: "three" },
        ],
      });
      assert.equal(res.status, 207, JSON.stringify(res.body));
      const results = res.body.results;
      assert.equal(results.length, 4);
      assert.ok(results.every((x: any) => x.ok === false), "every item reports ok=false");
      assert.deepEqual(
        results.map((x: any) => x.name),
        ["ba/one", "ba/existing", "ba/bad name", "ba/three"],
        "results in item order",
      );
      const bad = results[2].error;
      assert.deepEqual([bad.code, bad.field, bad.reason], ["invalid_argument", "name", "pattern"]);
      assert.equal(typeof bad.message, "string");
      for (const i of [0, 1, 3]) {
        assert.deepEqual([results[i].error.code, results[i].error.reason], ["aborted", "BATCH_ABORTED"], `item ${i}`);
        assert.equal("version" in results[i], false);
      }
      assert.equal(await exists("ba/one"), false, "nothing created");
      assert.equal(await exists("ba/three"), false);
      assert.equal(await value("ba/existing"), "existing-1", "nothing updated");
      assert.equal(await revision("ba/existing"), 1n);
    });

    it("gRPC: a missing value and a duplicate name are reported by field and reason; nothing is written", async () => {
      const res = await rpc.secrets.batchUpsertSecrets(
        {
          items: [
            { name: "bg/a", value: "a" },
            { name: "bg/b" },
            { name: "bg/a", value: "again" },
            { name: "bg/c", value: "x".repeat(10_241) },
          ],
        },
        opts(),
      );
      assert.deepEqual(
        res.results.map((x) => [x.name, x.ok, x.error?.code, x.error?.field, x.error?.reason]),
        [
          ["bg/a", false, "aborted", "", "BATCH_ABORTED"],
          ["bg/b", false, "invalid_argument", "value", "required"],
          ["bg/a", false, "invalid_argument", "name", "duplicate"],
          ["bg/c", false, "invalid_argument", "value", "too_long"],
        ],
      );
      for (const n of ["bg/a", "bg/b", "bg/c"]) assert.equal(await exists(n), false, `${n} not written`);
    });

    it("Connect JSON and grpc-js: the same outcome on the wire (ok omitted when false, codes as names)", async () => {
      const json = await cj("BatchUpsertSecrets", { items: [{ name: "bj/a", value: "a" }, { name: "", value: "b" }] });
      assert.equal(json.status, 200, JSON.stringify(json.body));
      assert.equal(json.body.results.length, 2);
      assert.equal(json.body.results[0].ok ?? false, false);
      assert.deepEqual(json.body.results[0].error, {
        code: "aborted",
        reason: "BATCH_ABORTED",
        message: json.body.results[0].error.message,
      });
      assert.equal(json.body.results[1].error.code, "invalid_argument");
      assert.equal(json.body.results[1].error.field, "name");
      assert.equal(json.body.results[1].error.reason, "required");
      assert.equal(await exists("bj/a"), false);

      const viaGrpcJs = await grpcOk(g.secrets, "BatchUpsertSecrets", {
        items: [{ name: "bj/b", value: "b" }, { name: "bj/c", value: "c", tags: { values: ["no spaces allowed"] } }],
      });
      assert.deepEqual(
        viaGrpcJs.results.map((x: any) => [x.ok, x.error?.code, x.error?.field, x.error?.reason]),
        [
          [false, "aborted", "", "BATCH_ABORTED"],
          [false, "invalid_argument", "tags[0]", "pattern"],
        ],
      );
      assert.equal(await exists("bj/b"), false);
    });

    it("writes every item when all are valid (200), creating and updating", async () => {
      await r("POST", "/v1/secrets", { name: "bok/existing", value: "old" });
      const res = await r("POST", "/v1/secrets:batchSet", {
        items: [
          { name: "bok/new", value: "new-value", tags: ["ci"], folder: "batch" },
          { name: "bok/existing", value: "updated" },
        ],
      });
      assert.equal(res.status, 200, JSON.stringify(res.body));
      assert.deepEqual(res.body.results, [
        { name: "bok/new", ok: true, created: true, version: 1, revision: 1 },
        { name: "bok/existing", ok: true, created: false, version: 2, revision: 2 },
      ]);
      assert.equal(await value("bok/new"), "new-value");
      assert.equal(await value("bok/existing"), "updated");
      const meta = (await r("GET", "/v1/secrets?prefix=bok/new")).body[0];
      assert.deepEqual([meta.tags, meta.folder], [["ci"], "batch"]);
    });
  });

  describe("BatchUpsertSecrets, non-atomic", () => {
    it("REST: per-item results (version, revision, created) and errors; 207", async () => {
      await r("POST", "/v1/secrets", { name: "bn/existing", value: "v1" });
      const res = await r("POST", "/v1/secrets:batchSet", {
        atomic: false,
        items: [
          { name: "bn/new", value: "fresh" },
          { name: "bn/existing", value: "v2" },
          { name: "bn/bad//name", value: "x" },
          { name: "bn/meta-only", value: "m1" },
        ],
      });
      assert.equal(res.status, 207, JSON.stringify(res.body));
      const [a, b, c, d] = res.body.results;
      assert.deepEqual(a, { name: "bn/new", ok: true, created: true, version: 1, revision: 1 });
      assert.deepEqual(b, { name: "bn/existing", ok: true, created: false, version: 2, revision: 2 });
      assert.equal(c.ok, false);
      assert.deepEqual([c.error.code, c.error.field, c.error.reason], ["invalid_argument", "name", "pattern"]);
      assert.equal(d.ok, true);
      assert.equal(await value("bn/new"), "fresh");
      assert.equal(await value("bn/existing"), "v2");
      assert.equal((await r("GET", "/v1/secrets/bn/existing?version=1")).body.value, "v1", "the old version is kept");

      // Metadata only: no new version, one more revision.
      const meta = await r("POST", "/v1/secrets:batchSet", {
        atomic: false,
        items: [{ name: "bn/meta-only", description: "described", metadata: { a: "b" } }],
      });
      assert.equal(meta.status, 200);
      assert.deepEqual(meta.body.results, [{ name: "bn/meta-only", ok: true, created: false, version: 1, revision: 2 }]);
      const listed = (await r("GET", "/v1/secrets?prefix=bn/meta-only")).body[0];
      assert.deepEqual([listed.description, listed.metadata, listed.version], ["described", { a: "b" }, 1]);
      assert.equal(await value("bn/meta-only"), "m1");

      // A new item without a value cannot be created (manual), on its own.
      const noValue = await r("POST", "/v1/secrets:batchSet", { atomic: false, items: [{ name: "bn/no-value", description: "x" }] });
      assert.equal(noValue.status, 207);
      assert.deepEqual(
        [noValue.body.results[0].ok, noValue.body.results[0].error.field, noValue.body.results[0].error.reason],
        [false, "value", "required"],
      );
    });

    it("gRPC, Connect JSON and grpc-js: create-or-update with binary values; uint64 revisions as JSON strings", async () => {
      const bytes = Buffer.from([0, 159, 146, 150, 255]);
      const viaRpc = await rpc.secrets.batchUpsertSecrets(
        {
          atomic: false,
          items: [
            { name: "bx/text", value: "text-1" },
            { name: "bx/bin", binaryValue: bytes },
            { name: "bx/both", value: "x", binaryValue: bytes },
          ],
        },
        opts(),
      );
      assert.deepEqual(
        viaRpc.results.map((x) => [x.name, x.ok, x.created, x.version, x.revision]),
        [
          ["bx/text", true, true, 1, 1n],
          ["bx/bin", true, true, 1, 1n],
          ["bx/both", false, false, 0, 0n],
        ],
      );
      assert.deepEqual([viaRpc.results[2]?.error?.field, viaRpc.results[2]?.error?.reason], ["binary_value", "exclusive"]);
      assert.deepEqual(Buffer.from((await rpc.secrets.getSecret({ name: "bx/bin" }, opts())).binaryValue), bytes);

      const json = await cj("BatchUpsertSecrets", {
        atomic: false,
        items: [
          { name: "bx/text", value: "text-2" },
          { name: "bx/bin", binaryValue: Buffer.from("new bytes").toString("base64") },
        ],
      });
      assert.equal(json.status, 200, JSON.stringify(json.body));
      assert.deepEqual(json.body.results, [
        { name: "bx/text", ok: true, version: 2, revision: "2" },
        { name: "bx/bin", ok: true, version: 2, revision: "2" },
      ]);
      assert.equal(await value("bx/text"), "text-2");
      assert.equal(Buffer.from((await rpc.secrets.getSecret({ name: "bx/bin" }, opts())).binaryValue).toString(), "new bytes");

      const viaGrpcJs = await grpcOk(g.secrets, "BatchUpsertSecrets", {
        atomic: false,
        items: [{ name: "bx/text", value: "text-3" }, { name: "bx/grpcjs", value: "gj" }],
      });
      assert.deepEqual(
        viaGrpcJs.results.map((x: any) => [x.name, x.ok, x.created, x.version, x.revision]),
        [
          ["bx/text", true, false, 3, "3"],
          ["bx/grpcjs", true, true, 1, "1"],
        ],
      );
    });

    it("checks expected_revision per item", async () => {
      await rpc.secrets.storeSecret({ name: "bcas/a", value: "a1" }, opts());
      await rpc.secrets.storeSecret({ name: "bcas/b", value: "b1" }, opts());
      await rpc.secrets.updateSecret({ name: "bcas/b", value: "b2" }, opts()); // revision 2
      const res = await rpc.secrets.batchUpsertSecrets(
        {
          atomic: false,
          items: [
            { name: "bcas/a", value: "a2", expectedRevision: 1n },
            { name: "bcas/b", value: "b3", expectedRevision: 1n },
            { name: "bcas/missing", value: "m", expectedRevision: 1n },
          ],
        },
        opts(),
      );
      assert.deepEqual(
        res.results.map((x) => [x.name, x.ok, x.revision, x.error?.code, x.error?.reason]),
        [
          ["bcas/a", true, 2n, undefined, undefined],
          ["bcas/b", false, 0n, "failed_precondition", "REVISION_MISMATCH"],
          ["bcas/missing", false, 0n, "not_found", "SECRET_NOT_FOUND"],
        ],
      );
      assert.equal(await value("bcas/a"), "a2");
      assert.equal(await value("bcas/b"), "b2", "a mismatched item changes nothing");
      assert.equal(await exists("bcas/missing"), false, "expected_revision on a missing secret does not create it");

      // Atomic: the mismatch aborts the whole batch.
      const atomic = await r("POST", "/v1/secrets:batchSet", {
        items: [
          { name: "bcas/a", value: "a3", expected_revision: 2 },
          { name: "bcas/b", value: "b3", expected_revision: 1 },
        ],
      });
      assert.equal(atomic.status, 207);
      assert.deepEqual(
        atomic.body.results.map((x: any) => [x.ok, x.error.code, x.error.reason]),
        [
          [false, "aborted", "BATCH_ABORTED"],
          [false, "failed_precondition", "REVISION_MISMATCH"],
        ],
      );
      assert.equal(await value("bcas/a"), "a2");
      const ok = await cj("BatchUpsertSecrets", { items: [{ name: "bcas/b", value: "b3", expectedRevision: "2" }] });
      assert.equal(ok.status, 200);
      assert.equal(ok.body.results[0].ok, true);
      assert.equal(await value("bcas/b"), "b3");
    });
  });

  describe("BatchDeleteSecrets", () => {
    it("atomic: a missing name -> nothing deleted, the reason per item; 207", async () => {
      for (const n of ["bd/a", "bd/b"]) await rpc.secrets.storeSecret({ name: n, value: n }, opts());
      const res = await r("POST", "/v1/secrets:batchDelete", { names: ["bd/a", "bd/missing", "bd/b"] });
      assert.equal(res.status, 207, JSON.stringify(res.body));
      assert.deepEqual(
        res.body.results.map((x: any) => [x.name, x.ok, x.error.code, x.error.reason]),
        [
          ["bd/a", false, "aborted", "BATCH_ABORTED"],
          ["bd/missing", false, "not_found", "SECRET_NOT_FOUND"],
          ["bd/b", false, "aborted", "BATCH_ABORTED"],
        ],
      );
      assert.equal(await value("bd/a"), "bd/a");
      assert.equal(await value("bd/b"), "bd/b");

      const viaRpc = await rpc.secrets.batchDeleteSecrets({ names: ["bd/a", "bd/a"] }, opts());
      assert.deepEqual(
        viaRpc.results.map((x) => [x.ok, x.error?.code, x.error?.reason]),
        [
          [false, "aborted", "BATCH_ABORTED"],
          [false, "invalid_argument", "duplicate"],
        ],
      );
      assert.equal(await exists("bd/a"), true);

      const all = await rpc.secrets.batchDeleteSecrets({ names: ["bd/a", "bd/b"] }, opts());
      assert.deepEqual(all.results.map((x) => [x.name, x.ok, x.revision]), [
        ["bd/a", true, 2n],
        ["bd/b", true, 2n],
      ]);
      assert.equal(await exists("bd/a"), false);
      const deleted = await rpc.secrets.listSecrets({ namePrefix: "bd/", state: SecretListState.DELETED }, opts());
      assert.deepEqual(deleted.secrets.map((x) => x.name), ["bd/a", "bd/b"], "soft-deleted: restorable");
    });

    it("non-atomic: each name on its own; purge deletes for good (Connect JSON, grpc-js)", async () => {
      for (const n of ["bdn/a", "bdn/b", "bdn/c"]) await rpc.secrets.storeSecret({ name: n, value: n }, opts());
      const json = await cj("BatchDeleteSecrets", { names: ["bdn/a", "bdn/nope", "bdn/b"], atomic: false });
      assert.equal(json.status, 200, JSON.stringify(json.body));
      assert.deepEqual(
        json.body.results.map((x: any) => [x.name, x.ok ?? false, x.error?.code]),
        [
          ["bdn/a", true, undefined],
          ["bdn/nope", false, "not_found"],
          ["bdn/b", true, undefined],
        ],
      );
      assert.equal(await exists("bdn/a"), false);
      assert.equal(await exists("bdn/b"), false);
      assert.equal(await exists("bdn/c"), true);

      const purged = await grpcOk(g.secrets, "BatchDeleteSecrets", { names: ["bdn/c"], atomic: false, purge: true });
      assert.equal(purged.results[0].ok, true);
      const deleted = await rpc.secrets.listSecrets({ namePrefix: "bdn/", state: SecretListState.DELETED }, opts());
      assert.deepEqual(deleted.secrets.map((x) => x.name), ["bdn/a", "bdn/b"], "the purged one is not restorable");

      const viaRest = await r("POST", "/v1/secrets:batchDelete", { names: ["bdn/gone"], atomic: false });
      assert.equal(viaRest.status, 207);
      assert.equal(viaRest.body.results[0].error.reason, "SECRET_NOT_FOUND");
    });
  });

  describe("BatchGetSecrets", () => {
    it("returns per-item values and errors over gRPC, Connect JSON and grpc-js", async () => {
      const bytes = Buffer.from([9, 8, 7, 0, 255]);
      await rpc.secrets.storeSecret({ name: "bget/text", value: "get-text" }, opts());
      await rpc.secrets.updateSecret({ name: "bget/text", value: "get-text-2" }, opts());
      await rpc.secrets.storeSecret({ name: "bget/bin", binaryValue: bytes }, opts());
      await rpc.secrets.storeSecret({ name: "bget/off", value: "off" }, opts());
      await rpc.secrets.setVersionState({ name: "bget/off", version: 1, state: VersionState.SUSPENDED }, opts());
      const names = ["bget/text", "bget/missing", "bget/bin", "bad name", "bget/off"];

      const viaRpc = await rpc.secrets.batchGetSecrets({ names }, opts());
      assert.deepEqual(
        viaRpc.results.map((x) => [x.name, x.value, x.version?.version, x.error?.code, x.error?.reason]),
        [
          ["bget/text", "get-text-2", 2, undefined, undefined],
          ["bget/missing", "", undefined, "not_found", "SECRET_NOT_FOUND"],
          ["bget/bin", "", 1, undefined, undefined],
          ["bad name", "", undefined, "invalid_argument", "pattern"],
          ["bget/off", "", undefined, "failed_precondition", "NO_ACTIVE_VERSION"],
        ],
      );
      assert.deepEqual(Buffer.from(viaRpc.results[2]?.binaryValue ?? []), bytes);
      assert.equal(viaRpc.results[3]?.error?.field, "name");

      const json = await cj("BatchGetSecrets", { names });
      assert.equal(json.status, 200);
      assert.equal(json.body.results[0].value, "get-text-2");
      assert.equal(json.body.results[0].secret.revision, "2");
      assert.equal(json.body.results[1].error.code, "not_found");
      assert.equal(json.body.results[2].binaryValue, bytes.toString("base64"));
      assert.equal(json.body.results[4].error.reason, "NO_ACTIVE_VERSION");

      const viaGrpcJs = await grpcOk(g.secrets, "BatchGetSecrets", { names: ["bget/bin", "bget/missing"] });
      assert.deepEqual(Buffer.from(viaGrpcJs.results[0].binaryValue), bytes);
      assert.equal(viaGrpcJs.results[1].error.reason, "SECRET_NOT_FOUND");
    });

    it("REST: values in order; 200 when every item was read", async () => {
      await r("POST", "/v1/secrets", { name: "bgr/a", value: "rest-a" });
      await r("POST", "/v1/secrets", { name: "bgr/b", value_base64: Buffer.from([1, 2, 3]).toString("base64") });
      const res = await r("POST", "/v1/secrets:batchGet", { names: ["bgr/b", "bgr/a"] });
      assert.equal(res.status, 200, JSON.stringify(res.body));
      assert.deepEqual(
        res.body.results.map((x: any) => [x.name, x.ok, x.value, x.value_base64, x.version]),
        [
          ["bgr/b", true, undefined, "AQID", 1],
          ["bgr/a", true, "rest-a", undefined, 1],
        ],
      );
    });

    it("REST: 207 with per-item errors when some items failed", async () => {
      await r("POST", "/v1/secrets", { name: "bgr/c", value: "rest-c" });
      const res = await r("POST", "/v1/secrets:batchGet", { names: ["bgr/c", "bgr/none"] });
      assert.deepEqual(
        res.body.results.map((x: any) => [x.name, x.ok, x.value, x.error?.code, x.error?.reason]),
        [
          ["bgr/c", true, "rest-c", undefined, undefined],
          ["bgr/none", false, undefined, "not_found", "SECRET_NOT_FOUND"],
        ],
      );
      assert.equal(res.status, 207, "a partly failed batch answers 207, like batchSet and batchDelete");
    });
  });

  describe("bounds", () => {
    const many = (n: number, prefix: string) => Array.from({ length: n }, (_, i) => `${prefix}/${String(i).padStart(3, "0")}`);

    it("accepts 100 items", async () => {
      const names = many(100, "bound100");
      const set = await r("POST", "/v1/secrets:batchSet", { items: names.map((name) => ({ name, value: `v-${name}` })) });
      assert.equal(set.status, 200);
      assert.equal(set.body.results.length, 100);
      assert.ok(set.body.results.every((x: any) => x.ok && x.created));
      const got = await rpc.secrets.batchGetSecrets({ names }, opts());
      assert.ok(got.results.every((x, i) => x.value === `v-${names[i]}`));
      const del = await rpc.secrets.batchDeleteSecrets({ names, purge: true }, opts());
      assert.ok(del.results.every((x) => x.ok));
    });

    it("refuses 101 items (and none) with INVALID_ARGUMENT, over every protocol, writing nothing", async () => {
      const names = many(101, "bound101");
      const items = names.map((name) => ({ name, value: "v" }));

      const restSet = restFails(await r("POST", "/v1/secrets:batchSet", { items }), 400, "invalid_argument");
      assert.deepEqual(restViolations(restSet), [["items", "too_many"]]);
      const restGet = restFails(await r("POST", "/v1/secrets:batchGet", { names }), 400, "invalid_argument");
      assert.deepEqual(restViolations(restGet), [["names", "too_many"]]);
      const restDel = restFails(await r("POST", "/v1/secrets:batchDelete", { names }), 400, "invalid_argument");
      assert.deepEqual(restViolations(restDel), [["names", "too_many"]]);
      const restEmpty = restFails(await r("POST", "/v1/secrets:batchSet", { items: [] }), 400, "invalid_argument");
      assert.deepEqual(restViolations(restEmpty), [["items", "required"]]);

      const ce = await rpcFails(rpc.secrets.batchUpsertSecrets({ items }, opts()), Code.InvalidArgument, "rpc upsert");
      assert.deepEqual(violationsOf(ce), [["items", "too_many"]]);
      await rpcFails(rpc.secrets.batchGetSecrets({ names }, opts()), Code.InvalidArgument, "rpc get");
      await rpcFails(rpc.secrets.batchDeleteSecrets({ names }, opts()), Code.InvalidArgument, "rpc delete");
      await rpcFails(rpc.secrets.batchGetSecrets({ names: [] }, opts()), Code.InvalidArgument, "rpc get none");

      const json = await cj("BatchUpsertSecrets", { items, atomic: false });
      assert.equal(json.status, 400);
      assert.equal(json.body.code, "invalid_argument");
      assert.deepEqual(connectViolations(json.body), [["items", "too_many"]]);

      const gf = await grpcFails(g.secrets, "BatchGetSecrets", { names }, grpc.status.INVALID_ARGUMENT);
      assert.deepEqual(
        grpcStatusDetails(gf.trailers)?.badRequest?.fieldViolations.map((v) => [v.field, v.reason]),
        [["names", "too_many"]],
      );
      const listed = await rpc.secrets.listSecrets({ namePrefix: "bound101/" }, opts());
      assert.equal(listed.secrets.length, 0, "nothing written");
    });
  });
});
