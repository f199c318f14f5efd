import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Code } from "@connectrpc/connect";
import { SecretKind, SecretType, VersionState } from "../../gen/latchkey/v1/secret_pb.js";
import { SecretListState } from "../../gen/latchkey/v1/secret_service_pb.js";
import {
  connectJson,
  connectViolations,
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
import { assertReason, connectFails, grpcReason, restFails, ts, tsMs, waitUntil } from "../support/lifecycle.js";
import { startTestServer, type TestServer } from "../support/server.js";

/**
 * Metadata, expiry, binary values, paging and check-and-set end to end, over gRPC (Connect client and grpc-js),
 * Connect JSON and REST: type/folder/tags/metadata/expires_at round-trip; an expired secret is not served but is
 * listed as expired; binary values come back as they went in; text values hold up to 10,240 characters; lists
 * page forward and backward with filters, stable while secrets are written between pages; writes with a stale
 * revision (If-Match or expected_revision) fail with REVISION_MISMATCH and change nothing; ETag is the revision.
 */
describe("metadata, expiry, binary values, paging and check-and-set", () => {
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
  const r = (method: string, path: string, body?: unknown, headers: Record<string, string> = {}) =>
    rest(s.url, method, path, body, undefined, headers);
  const listed = async (name: string) => {
    const res = await r("GET", `/v1/secrets?prefix=${encodeURIComponent(name)}`);
    return res.body.find((x: any) => x.name === name);
  };

  describe("metadata", () => {
    it("REST: type, folder, tags, metadata and expires_at are stored, returned, replaced and cleared", async () => {
      const expires = new Date(Date.now() + 3_600_000);
      const created = await r("POST", "/v1/secrets", {
        name: "md/rest",
        value: "md-rest-value",
        type: "token",
        folder: "team/payments",
        tags: ["pci", "beta", "pci"],
        metadata: { owner: "ops", "k8s.io/ns": "prod" },
        expires_at: expires.toISOString(),
        description: "a token",
      });
      assert.equal(created.status, 201, JSON.stringify(created.body));
      const m = await listed("md/rest");
      assert.equal(m.type, "token");
      assert.equal(m.folder, "team/payments");
      assert.deepEqual(m.tags, ["beta", "pci"], "tags sorted, duplicates dropped");
      assert.deepEqual(m.metadata, { "k8s.io/ns": "prod", owner: "ops" });
      assert.equal(Date.parse(m.expires_at), expires.getTime());
      assert.match(m.expires_at, /\+00:00$/);
      assert.equal(m.expired, false);
      assert.equal(m.description, "a token");

      const replaced = await r("PUT", "/v1/secrets/md/rest", { tags: ["new"], metadata: { only: "this" }, folder: "other", type: "secret" });
      assert.equal(replaced.status, 200, JSON.stringify(replaced.body));
      assert.deepEqual([replaced.body.tags, replaced.body.metadata, replaced.body.folder, replaced.body.type], [["new"], { only: "this" }, "other", "secret"]);
      assert.equal(replaced.body.expires_at, m.expires_at, "untouched fields stay");
      assert.equal(replaced.body.version, 1, "metadata changes make no new version");

      const cleared = await r("PUT", "/v1/secrets/md/rest", { tags: [], metadata: {}, folder: "", expires_at: null });
      assert.equal(cleared.status, 200);
      assert.deepEqual([cleared.body.tags, cleared.body.metadata, cleared.body.folder, cleared.body.expires_at], [[], {}, "", null]);

      const badTag = restFails(await r("PUT", "/v1/secrets/md/rest", { tags: ["ok", "not ok"] }), 400, "invalid_argument");
      assert.deepEqual(restViolations(badTag), [["tags[1]", "pattern"]]);
      const tooMany = restFails(
        await r("PUT", "/v1/secrets/md/rest", { tags: Array.from({ length: 33 }, (_, i) => `t${i}`) }),
        400,
        "invalid_argument",
      );
      assert.deepEqual(restViolations(tooMany), [["tags", "too_many"]]);
      const badKey = restFails(await r("PUT", "/v1/secrets/md/rest", { metadata: { "bad key": "v" } }), 400, "invalid_argument");
      assert.equal(restViolations(badKey)[0]?.[1], "pattern");
      restFails(await r("PUT", "/v1/secrets/md/rest", { type: "password" }), 400, "invalid_argument");
      restFails(await r("PUT", "/v1/secrets/md/rest", { expires_at: "tomorrow" }), 400, "invalid_argument");
      const bad = restFails(await r("PUT", "/v1/secrets/md/rest", { folder: "a/../b" }), 400, "invalid_argument");
      assert.equal(restViolations(bad)[0]?.[0], "folder");
    });

    it("gRPC, Connect JSON and grpc-js: the same fields, enum names and RFC 3339 times on the wire", async () => {
      const expiresMs = Date.now() + 7_200_000;
      const viaRpc = await rpc.secrets.storeSecret(
        {
          name: "md/rpc",
          value: "md-rpc-value",
          type: SecretType.TOKEN,
          folder: "f/rpc",
          tags: ["z", "a"],
          metadata: { a: "1", b: "2" },
          expiresAt: ts(expiresMs),
        },
        opts(),
      );
      const sec = viaRpc.secret;
      assert.ok(sec);
      assert.deepEqual([sec.type, sec.folder, sec.tags, sec.metadata, sec.expired], [SecretType.TOKEN, "f/rpc", ["a", "z"], { a: "1", b: "2" }, false]);
      assert.equal(tsMs(sec.expiresAt), expiresMs);
      const got = await rpc.secrets.getSecret({ name: "md/rpc" }, opts());
      assert.deepEqual(got.secret?.tags, ["a", "z"]);

      const upd = await rpc.secrets.updateSecret(
        { name: "md/rpc", tags: { values: [] }, metadata: { entries: { c: "3" } }, clearExpiresAt: true },
        opts(),
      );
      assert.deepEqual([upd.secret?.tags, upd.secret?.metadata, upd.secret?.expiresAt, upd.secret?.folder], [[], { c: "3" }, undefined, "f/rpc"]);
      const untouched = await rpc.secrets.updateSecret({ name: "md/rpc", description: "only this" }, opts());
      assert.deepEqual([untouched.secret?.metadata, untouched.secret?.folder], [{ c: "3" }, "f/rpc"], "unset TagList/MetadataMap leave them as is");

      const json = await cj("StoreSecret", {
        name: "md/json",
        value: "md-json-value",
        type: "SECRET_TYPE_TOKEN",
        folder: "f/json",
        tags: ["j"],
        metadata: { x: "y" },
        expiresAt: new Date(expiresMs).toISOString(),
      });
      assert.equal(json.status, 200, JSON.stringify(json.body));
      const js = json.body.secret;
      assert.deepEqual([js.type, js.folder, js.tags, js.metadata], ["SECRET_TYPE_TOKEN", "f/json", ["j"], { x: "y" }]);
      assert.equal(Date.parse(js.expiresAt), expiresMs);
      assert.match(js.expiresAt, /Z$/);
      const jsonUpd = await cj("UpdateSecret", { name: "md/json", tags: { values: ["k", "j"] }, folder: "" });
      assert.equal(jsonUpd.status, 200);
      assert.deepEqual(jsonUpd.body.secret.tags, ["j", "k"]);
      assert.equal(jsonUpd.body.secret.folder ?? "", "");
      const badJson = await cj("UpdateSecret", { name: "md/json", metadata: { entries: { "": "v" } } });
      connectFails(badJson, 400, "invalid_argument");
      assert.equal(connectViolations(badJson.body)[0]?.[1], "pattern");

      const viaGrpcJs = await grpcOk(g.secrets, "StoreSecret", {
        name: "md/grpcjs",
        value: "md-grpcjs-value",
        type: "SECRET_TYPE_TOKEN",
        folder: "f/gj",
        tags: ["g"],
        metadata: { m: "n" },
        expiresAt: { seconds: String(Math.floor(expiresMs / 1000)), nanos: 0 },
      });
      assert.deepEqual(
        [viaGrpcJs.secret.type, viaGrpcJs.secret.folder, viaGrpcJs.secret.tags, viaGrpcJs.secret.metadata],
        ["SECRET_TYPE_TOKEN", "f/gj", ["g"], { m: "n" }],
      );
      assert.equal(viaGrpcJs.secret.expiresAt.seconds, String(Math.floor(expiresMs / 1000)));
      const restView = await listed("md/grpcjs");
      assert.deepEqual([restView.type, restView.folder, restView.tags, restView.metadata], ["token", "f/gj", ["g"], { m: "n" }]);

      const ce = await rpcFails(rpc.secrets.updateSecret({ name: "md/rpc", tags: { values: ["a b"] } }, opts()), Code.InvalidArgument, "bad tag");
      assert.deepEqual(violationsOf(ce), [["tags[0]", "pattern"]]);
    });
  });

  describe("expiry", () => {
    it("an expired secret is not served (REST 410, FAILED_PRECONDITION SECRET_EXPIRED) but is listed as expired", async () => {
      const soon = Date.now() + 600;
      await rpc.secrets.storeSecret({ name: "exp/soon", value: "expiring", folder: "exp", expiresAt: ts(soon) }, opts());
      await rpc.secrets.storeSecret({ name: "exp/never", value: "lasting", folder: "exp" }, opts());
      assert.equal((await r("GET", "/v1/secrets/exp/soon")).status, 200, "served before it expires");
      const activeBefore = await r("GET", "/v1/secrets?folder=exp&state=active");
      assert.deepEqual(activeBefore.body.map((x: any) => x.name), ["exp/never", "exp/soon"]);

      await waitUntil(async () => Date.now() > soon + 20, 2000, "expiry", 20);
      restFails(await r("GET", "/v1/secrets/exp/soon"), 410, "failed_precondition", "SECRET_EXPIRED", "REST get");
      restFails(await r("POST", "/v1/secrets/exp/soon/verify", { value: "expiring" }), 410, "failed_precondition", "SECRET_EXPIRED");
      assertReason(
        await rpcFails(rpc.secrets.getSecret({ name: "exp/soon" }, opts()), Code.FailedPrecondition, "rpc get"),
        "SECRET_EXPIRED",
      );
      assertReason(
        await rpcFails(rpc.secrets.getSecret({ name: "exp/soon", version: 1 }, opts()), Code.FailedPrecondition, "rpc get v1"),
        "SECRET_EXPIRED",
      );
      assertReason(
        await rpcFails(rpc.secrets.verifySecret({ name: "exp/soon", value: "expiring" }, opts()), Code.FailedPrecondition, "verify"),
        "SECRET_EXPIRED",
      );
      connectFails(await cj("GetSecret", { name: "exp/soon" }), 400, "failed_precondition", "SECRET_EXPIRED");
      const gf = await grpcFails(g.secrets, "GetSecret", { name: "exp/soon" }, grpc.status.FAILED_PRECONDITION);
      assert.equal(grpcReason(gf.trailers), "SECRET_EXPIRED");
      const batch = await rpc.secrets.batchGetSecrets({ names: ["exp/soon", "exp/never"] }, opts());
      assert.deepEqual(batch.results.map((x) => [x.error?.reason, x.value]), [
        ["SECRET_EXPIRED", ""],
        [undefined, "lasting"],
      ]);

      const live = await r("GET", "/v1/secrets?folder=exp");
      assert.deepEqual(live.body.map((x: any) => [x.name, x.expired]), [
        ["exp/never", false],
        ["exp/soon", true],
      ]);
      assert.deepEqual((await r("GET", "/v1/secrets?folder=exp&state=expired")).body.map((x: any) => x.name), ["exp/soon"]);
      assert.deepEqual((await r("GET", "/v1/secrets?folder=exp&state=active")).body.map((x: any) => x.name), ["exp/never"]);
      const viaRpc = await rpc.secrets.listSecrets({ folder: "exp", state: SecretListState.EXPIRED }, opts());
      assert.deepEqual(viaRpc.secrets.map((x) => [x.name, x.expired]), [["exp/soon", true]]);
      const viaJson = await cj("ListSecrets", { folder: "exp", state: "SECRET_LIST_STATE_ACTIVE" });
      assert.deepEqual(viaJson.body.secrets.map((x: any) => x.name), ["exp/never"]);
      const viaGrpcJs = await grpcOk(g.secrets, "ListSecrets", { folder: "exp" });
      assert.deepEqual(viaGrpcJs.secrets.map((x: any) => [x.name, x.expired]), [
        ["exp/never", false],
        ["exp/soon", true],
      ]);
      // Metadata stays readable.
      assert.equal((await rpc.secrets.listSecretVersions({ name: "exp/soon" }, opts())).secret?.expired, true);

      // Removing the expiration serves it again.
      const cleared = await r("PUT", "/v1/secrets/exp/soon", { expires_at: null });
      assert.equal(cleared.status, 200);
      assert.equal(cleared.body.expired, false);
      assert.equal((await r("GET", "/v1/secrets/exp/soon")).body.value, "expiring");
    });
  });

  describe("binary values", () => {
    const all = Buffer.from(Array.from({ length: 256 }, (_, i) => i));

    it("round-trip over REST (value_base64), Connect JSON (base64 bytes) and gRPC (raw bytes), and verify as bytes", async () => {
      const created = await r("POST", "/v1/secrets", { name: "bin/rest", value_base64: all.toString("base64") });
      assert.equal(created.status, 201, JSON.stringify(created.body));
      assert.equal(created.body.value_base64, all.toString("base64"));
      assert.equal("value" in created.body, false);
      const got = await r("GET", "/v1/secrets/bin/rest");
      assert.equal(got.body.value_base64, all.toString("base64"));
      assert.equal("value" in got.body, false);
      assert.equal((await listed("bin/rest")).binary, true);
      // ...read over gRPC as raw bytes, and over Connect JSON as base64.
      const viaRpc = await rpc.secrets.getSecret({ name: "bin/rest" }, opts());
      assert.deepEqual(Buffer.from(viaRpc.binaryValue), all);
      assert.equal(viaRpc.value, "");
      assert.equal(viaRpc.secret?.binary, true);
      assert.equal(viaRpc.version?.binary, true);
      const viaJson = await cj("GetSecret", { name: "bin/rest" });
      assert.equal(viaJson.body.binaryValue, all.toString("base64"));
      assert.equal(viaJson.body.value, undefined);
      const viaGrpcJs = await grpcOk(g.secrets, "GetSecret", { name: "bin/rest" });
      assert.ok(Buffer.isBuffer(viaGrpcJs.binaryValue));
      assert.deepEqual(viaGrpcJs.binaryValue, all);

      // Written over Connect JSON, read over REST.
      const jsonBytes = Buffer.from([255, 254, 0, 0, 1]);
      const stored = await cj("StoreSecret", { name: "bin/json", binaryValue: jsonBytes.toString("base64") });
      assert.equal(stored.status, 200, JSON.stringify(stored.body));
      assert.equal(stored.body.binaryValue, jsonBytes.toString("base64"));
      assert.equal(stored.body.secret.binary, true);
      assert.equal((await r("GET", "/v1/secrets/bin/json")).body.value_base64, jsonBytes.toString("base64"));

      // Written over gRPC, a new binary version over grpc-js, read back everywhere.
      const rpcBytes = new Uint8Array([0, 0, 0, 7]);
      await rpc.secrets.storeSecret({ name: "bin/rpc", binaryValue: rpcBytes }, opts());
      await grpcOk(g.secrets, "UpdateSecret", { name: "bin/rpc", binaryValue: Buffer.from([8, 9]) });
      assert.equal((await r("GET", "/v1/secrets/bin/rpc?version=1")).body.value_base64, Buffer.from(rpcBytes).toString("base64"));
      assert.equal((await r("GET", "/v1/secrets/bin/rpc")).body.value_base64, Buffer.from([8, 9]).toString("base64"));

      // Verify with bytes, over every protocol.
      const vRest = await r("POST", "/v1/secrets/bin/rest/verify", { value_base64: all.toString("base64") });
      assert.deepEqual(vRest.body, { valid: true, version: 1 });
      const vRestBad = await r("POST", "/v1/secrets/bin/rest/verify", { value_base64: Buffer.from([1]).toString("base64") });
      assert.equal(vRestBad.body.valid, false);
      const vRpc = await rpc.secrets.verifySecret({ name: "bin/json", binaryValue: jsonBytes }, opts());
      assert.deepEqual([vRpc.valid, vRpc.version], [true, 1]);
      const vJson = await cj("VerifySecret", { name: "bin/rpc", binaryValue: Buffer.from([8, 9]).toString("base64") });
      assert.deepEqual([vJson.body.valid, vJson.body.version], [true, 2]);
      const vGrpcJs = await grpcOk(g.secrets, "VerifySecret", { name: "bin/rpc", binaryValue: Buffer.from(rpcBytes) });
      assert.equal(vGrpcJs.valid, false, "version 1, superseded with no grace, is not valid");

      const versions = await r("GET", "/v1/secrets/bin/rpc/versions");
      assert.deepEqual(versions.body.versions.map((x: any) => x.binary), [true, true]);
      // A text version after binary ones is text again.
      await r("PUT", "/v1/secrets/bin/rpc", { value: "now text" });
      const text = await r("GET", "/v1/secrets/bin/rpc");
      assert.deepEqual([text.body.value, text.body.value_base64], ["now text", undefined]);
      assert.equal((await listed("bin/rpc")).binary, false);
    });

    it("binary limits: 65,536 bytes accepted, more or none refused; value and value_base64 are exclusive", async () => {
      const max = Buffer.alloc(65_536, 0xab);
      const ok = await rpc.secrets.storeSecret({ name: "bin/max", binaryValue: max }, opts());
      assert.equal(ok.secret?.binary, true);
      assert.equal((await rpc.secrets.getSecret({ name: "bin/max" }, opts())).binaryValue.length, 65_536);
      const big = await rpcFails(
        rpc.secrets.storeSecret({ name: "bin/big", binaryValue: Buffer.alloc(65_537) }, opts()),
        Code.InvalidArgument,
        "too big",
      );
      assert.deepEqual(violationsOf(big), [["binary_value", "too_long"]]);
      const empty = await rpcFails(rpc.secrets.storeSecret({ name: "bin/empty", binaryValue: new Uint8Array() }, opts()), Code.InvalidArgument, "empty");
      assert.deepEqual(violationsOf(empty), [["binary_value", "required"]]);
      const both = restFails(await r("POST", "/v1/secrets", { name: "bin/both", value: "x", value_base64: "eA==" }), 400, "invalid_argument");
      assert.deepEqual(restViolations(both), [["value_base64", "exclusive"]]);
      const badB64 = restFails(await r("POST", "/v1/secrets", { name: "bin/b64", value_base64: "not base64!" }), 400, "invalid_argument");
      assert.deepEqual(restViolations(badB64), [["value_base64", "encoding"]]);
      assert.equal((await r("GET", "/v1/secrets/bin/big")).status, 404);
    });

    it("REST reports a too-large or empty binary value against value_base64, the field it was sent in", async () => {
      const big = restFails(
        await r("POST", "/v1/secrets", { name: "bin/big-rest", value_base64: Buffer.alloc(65_537).toString("base64") }),
        400,
        "invalid_argument",
      );
      assert.deepEqual(restViolations(big), [["value_base64", "too_long"]]);
      const empty = restFails(await r("POST", "/v1/secrets", { name: "bin/empty-rest", value_base64: "" }), 400, "invalid_argument");
      assert.deepEqual(restViolations(empty), [["value_base64", "required"]]);
    });
  });

  describe("text limit", () => {
    it("holds up to 10,240 characters (not bytes); 10,241 is refused over every protocol", async () => {
      const ascii = "a".repeat(10_240);
      const emoji = "\u{1F511}".repeat(10_240); // 10,240 characters, 40,960 UTF-8 bytes
      assert.equal((await r("POST", "/v1/secrets", { name: "txt/ascii", value: ascii })).status, 201);
      assert.equal((await r("GET", "/v1/secrets/txt/ascii")).body.value, ascii);
      await rpc.secrets.storeSecret({ name: "txt/emoji", value: emoji }, opts());
      assert.equal((await rpc.secrets.getSecret({ name: "txt/emoji" }, opts())).value, emoji);
      assert.equal((await cj("GetSecret", { name: "txt/emoji" })).body.value, emoji);
      assert.equal((await rpc.secrets.verifySecret({ name: "txt/emoji", value: emoji }, opts())).valid, true);

      const tooLong = "b".repeat(10_241);
      const viaRest = restFails(await r("POST", "/v1/secrets", { name: "txt/long", value: tooLong }), 400, "invalid_argument");
      assert.deepEqual(restViolations(viaRest), [["value", "too_long"]]);
      const restUpdate = restFails(await r("PUT", "/v1/secrets/txt/ascii", { value: `${ascii}x` }), 400, "invalid_argument");
      assert.deepEqual(restViolations(restUpdate), [["value", "too_long"]]);
      const ce = await rpcFails(rpc.secrets.storeSecret({ name: "txt/long", value: `${emoji}\u{1F511}` }, opts()), Code.InvalidArgument, "rpc");
      assert.deepEqual(violationsOf(ce), [["value", "too_long"]]);
      const json = await cj("StoreSecret", { name: "txt/long", value: tooLong });
      connectFails(json, 400, "invalid_argument");
      assert.deepEqual(connectViolations(json.body), [["value", "too_long"]]);
      await grpcFails(g.secrets, "StoreSecret", { name: "txt/long", value: tooLong }, grpc.status.INVALID_ARGUMENT);
      assert.equal((await r("GET", "/v1/secrets/txt/long")).status, 404);
      assert.equal((await r("GET", "/v1/secrets/txt/ascii")).body.version, 1, "the refused update made no version");
    });
  });

  describe("paging", () => {
    interface Page {
      readonly items: { name: string; id: string }[];
      readonly next: string;
      readonly prev: string;
    }
    interface Filter {
      readonly store: string;
      readonly prefix: string;
      readonly folder?: string;
      readonly tag?: string;
      readonly state?: "active" | "expired" | "deleted";
    }
    type Pager = (token: string) => Promise<Page>;

    const STATES = { active: SecretListState.ACTIVE, expired: SecretListState.EXPIRED, deleted: SecretListState.DELETED } as const;

    function rpcPager(f: Filter, size: number): Pager {
      return async (token) => {
        const res = await rpc.secrets.listSecrets(
          {
            store: f.store,
            namePrefix: f.prefix,
            folder: f.folder ?? "",
            tag: f.tag ?? "",
            state: f.state ? STATES[f.state] : SecretListState.UNSPECIFIED,
            pageSize: size,
            pageToken: token,
          },
          opts(),
        );
        return { items: res.secrets.map((x) => ({ name: x.name, id: x.id })), next: res.nextPageToken, prev: res.prevPageToken };
      };
    }
    function restPager(f: Filter, size: number): Pager {
      return async (token) => {
        const q = new URLSearchParams({ prefix: f.prefix, limit: String(size) });
        if (f.folder) q.set("folder", f.folder);
        if (f.tag) q.set("tag", f.tag);
        if (f.state) q.set("state", f.state);
        if (token) q.set("cursor", token);
        const res = await r("GET", `/v1/stores/${f.store}/secrets?${q}`);
        assert.equal(res.status, 200, JSON.stringify(res.body));
        return {
          items: res.body.map((x: any) => ({ name: x.name, id: x.id })),
          next: res.headers.get("x-next-cursor") ?? "",
          prev: res.headers.get("x-prev-cursor") ?? "",
        };
      };
    }
    function jsonPager(f: Filter, size: number): Pager {
      return async (token) => {
        const res = await cj("ListSecrets", {
          store: f.store,
          namePrefix: f.prefix,
          ...(f.folder ? { folder: f.folder } : {}),
          ...(f.tag ? { tag: f.tag } : {}),
          ...(f.state ? { state: `SECRET_LIST_STATE_${f.state.toUpperCase()}` } : {}),
          pageSize: size,
          ...(token ? { pageToken: token } : {}),
        });
        assert.equal(res.status, 200, JSON.stringify(res.body));
        return {
          items: (res.body.secrets ?? []).map((x: any) => ({ name: x.name, id: x.id })),
          next: res.body.nextPageToken ?? "",
          prev: res.body.prevPageToken ?? "",
        };
      };
    }

    const key = (x: { name: string; id: string }) => `${x.name}\u0000${x.id}`;

    /** Every page forward from the start, calling `between` after each page; bounded. */
    async function forward(pager: Pager, between: (i: number) => Promise<void>): Promise<{ items: Page["items"]; pages: Page[] }> {
      const pages: Page[] = [];
      let token = "";
      for (let i = 0; i < 100; i++) {
        const p = await pager(token);
        pages.push(p);
        if (!p.next) return { items: pages.flatMap((x) => x.items), pages };
        await between(i);
        token = p.next;
      }
      assert.fail("paging forward did not end");
    }

    /** Every page backward from the page `token` names, calling `between` after each page; bounded. */
    async function backward(pager: Pager, token: string, between: (i: number) => Promise<void>): Promise<Page["items"]> {
      const pages: Page[] = [];
      for (let i = 0; i < 100; i++) {
        const p = await pager(token);
        pages.unshift(p);
        if (!p.prev) return pages.flatMap((x) => x.items);
        await between(i);
        token = p.prev;
      }
      assert.fail("paging backward did not end");
    }

    /** Nothing repeated, everything in (name, id) order, and every secret that existed throughout seen. */
    function assertStable(items: Page["items"], stable: readonly string[], what: string): void {
      const keys = items.map(key);
      assert.equal(new Set(keys).size, keys.length, `${what}: no item repeated`);
      assert.deepEqual(keys, [...keys].sort(), `${what}: (name, id) order`);
      const names = new Set(items.map((x) => x.name));
      const missing = stable.filter((n) => !names.has(n));
      assert.deepEqual(missing, [], `${what}: no item that existed throughout skipped`);
    }

    const pad = (i: number) => String(i).padStart(3, "0");

    /**
     * A store with, under `prefix`: 20 matching secrets (folder "f1", tag "keep") that live throughout, 8 matching
     * ones deleted while paging, and noise that must never be listed (another folder, no tag, another prefix).
     */
    async function seed(store: string, prefix: string) {
      await rest(s.url, "POST", "/v1/stores", { name: store });
      const stable = Array.from({ length: 20 }, (_, i) => `${prefix}${pad(i * 10)}`);
      const doomed = Array.from({ length: 8 }, (_, i) => `${prefix}${pad(i * 25 + 8)}`);
      const items = [
        ...stable.map((name) => ({ name, value: "v", folder: "f1", tags: { values: ["keep", "x"] } })),
        ...doomed.map((name) => ({ name, value: "v", folder: "f1", tags: { values: ["keep"] } })),
        ...Array.from({ length: 5 }, (_, i) => ({ name: `${prefix}${pad(i * 40 + 1)}`, value: "v", folder: "f2", tags: { values: ["keep"] } })),
        ...Array.from({ length: 5 }, (_, i) => ({ name: `${prefix}${pad(i * 40 + 2)}`, value: "v", folder: "f1" })),
        ...Array.from({ length: 3 }, (_, i) => ({ name: `zz-${prefix}${pad(i)}`, value: "v", folder: "f1", tags: { values: ["keep"] } })),
      ];
      const res = await rpc.secrets.batchUpsertSecrets({ store, items }, opts());
      assert.ok(res.results.every((x) => x.ok), "seeded");
      let created = 0;
      /** Between pages: delete one doomed secret and create two new matching ones (one early, one late in order). */
      const churn = async () => {
        const gone = doomed.shift();
        if (gone) await rpc.secrets.deleteSecret({ store, name: gone }, opts());
        created++;
        await rpc.secrets.batchUpsertSecrets(
          {
            store,
            items: [
              { name: `${prefix}${pad(created)}a`, value: "n", folder: "f1", tags: { values: ["keep"] } },
              { name: `${prefix}${pad(300 - created)}`, value: "n", folder: "f1", tags: { values: ["keep"] } },
            ],
          },
          opts(),
        );
      };
      return { stable, churn };
    }

    for (const [protocol, make] of [
      ["gRPC", rpcPager],
      ["REST", restPager],
      ["Connect JSON", jsonPager],
    ] as const) {
      it(`${protocol}: forward and backward with folder, name prefix and tag, stable while secrets are created and deleted`, async () => {
        const store = `pg-${protocol.toLowerCase().replace(/\W/g, "")}`;
        const { stable, churn } = await seed(store, "p/");
        const pager = make({ store, prefix: "p/", folder: "f1", tag: "keep" }, 4);

        const fwd = await forward(pager, churn);
        assertStable(fwd.items, stable, `${protocol} forward`);
        assert.equal(fwd.pages[0]?.prev, "", "no previous page before the first");
        assert.ok(fwd.items.every((x) => x.name.startsWith("p/")), "prefix filter");
        assert.ok(!fwd.items.some((x) => ["p/001", "p/002"].includes(x.name)), "folder and tag filters");

        // Backward from the last page, still churning.
        const lastPage = fwd.pages[fwd.pages.length - 1] as Page;
        assert.ok(lastPage.prev, "the last page has a previous page");
        const lastToken = fwd.pages.length > 1 ? (fwd.pages[fwd.pages.length - 2] as Page).next : "";
        const bwd = await backward(pager, lastToken, churn);
        assertStable(bwd, stable, `${protocol} backward`);
      });
    }

    it("a previous page is exactly the page before; next and previous pages chain both ways", async () => {
      const store = "pg-exact";
      await rest(s.url, "POST", "/v1/stores", { name: store });
      const names = Array.from({ length: 10 }, (_, i) => `e/${pad(i)}`);
      await rpc.secrets.batchUpsertSecrets({ store, items: names.map((name) => ({ name, value: "v" })) }, opts());
      for (const pager of [rpcPager({ store, prefix: "e/" }, 3), restPager({ store, prefix: "e/" }, 3), jsonPager({ store, prefix: "e/" }, 3)]) {
        const p1 = await pager("");
        const p2 = await pager(p1.next);
        const p3 = await pager(p2.next);
        const p4 = await pager(p3.next);
        assert.deepEqual([p1, p2, p3, p4].map((p) => p.items.map((x) => x.name)), [
          names.slice(0, 3),
          names.slice(3, 6),
          names.slice(6, 9),
          names.slice(9),
        ]);
        assert.equal(p4.next, "", "no next page after the last");
        assert.equal(p1.prev, "");
        const back3 = await pager(p4.prev);
        assert.deepEqual(back3.items.map((x) => x.name), names.slice(6, 9));
        const back2 = await pager(back3.prev);
        assert.deepEqual(back2.items.map((x) => x.name), names.slice(3, 6));
        const back1 = await pager(back2.prev);
        assert.deepEqual(back1.items.map((x) => x.name), names.slice(0, 3));
        assert.equal(back1.prev, "", "back at the first page");
        const again2 = await pager(back1.next);
        assert.deepEqual(again2.items.map((x) => x.name), names.slice(3, 6), "forward again from a page reached backward");
      }
      restFails(await r("GET", `/v1/stores/${store}/secrets?limit=3&cursor=garbage`), 400, "invalid_argument");
      await rpcFails(rpc.secrets.listSecrets({ store, pageToken: "garbage" }, opts()), Code.InvalidArgument, "bad token");
    });

    it("state filters page too: deleted incarnations of one name each once (by id), active vs expired", async () => {
      const store = "pg-state";
      await rest(s.url, "POST", "/v1/stores", { name: store });
      const ids: string[] = [];
      for (let i = 0; i < 5; i++) {
        const res = await rpc.secrets.storeSecret({ store, name: "d/same", value: `incarnation-${i}` }, opts());
        ids.push(res.secret?.id ?? "");
        await rpc.secrets.deleteSecret({ store, name: "d/same" }, opts());
      }
      await rpc.secrets.storeSecret({ store, name: "d/live", value: "live" }, opts());
      for (const pager of [rpcPager({ store, prefix: "d/", state: "deleted" }, 2), restPager({ store, prefix: "d/", state: "deleted" }, 2)]) {
        const fwd = await forward(pager, async () => {});
        assert.deepEqual(fwd.items.map((x) => x.id).sort(), [...ids].sort(), "every deleted incarnation once");
        assert.ok(fwd.items.every((x) => x.name === "d/same"));
        const last = fwd.pages.length > 1 ? (fwd.pages[fwd.pages.length - 2] as Page).next : "";
        const bwd = await backward(pager, last, async () => {});
        assert.deepEqual(bwd.map(key), fwd.items.map(key), "the same both ways");
      }

      const past = Date.now() - 1000;
      const items = Array.from({ length: 7 }, (_, i) => ({
        name: `x/${pad(i)}`,
        value: "v",
        ...(i % 2 === 0 ? { expiresAt: ts(past) } : {}),
      }));
      await rpc.secrets.batchUpsertSecrets({ store, items }, opts());
      const expired = await forward(jsonPager({ store, prefix: "x/", state: "expired" }, 2), async () => {});
      assert.deepEqual(expired.items.map((x) => x.name), ["x/000", "x/002", "x/004", "x/006"]);
      const active = await forward(rpcPager({ store, prefix: "x/", state: "active" }, 2), async () => {});
      assert.deepEqual(active.items.map((x) => x.name), ["x/001", "x/003", "x/005"]);
      const liveAll = await forward(restPager({ store, prefix: "x/" }, 3), async () => {});
      assert.equal(liveAll.items.length, 7, "live: expired or not");
    });

    /** A store with six secrets m/000..m/005, paged by two: the three pages, read forward. */
    async function sixByTwo(store: string) {
      await rest(s.url, "POST", "/v1/stores", { name: store });
      const names = Array.from({ length: 6 }, (_, i) => `m/${pad(i)}`);
      await rpc.secrets.batchUpsertSecrets({ store, items: names.map((name) => ({ name, value: "v" })) }, opts());
      const pager = rpcPager({ store, prefix: "m/" }, 2);
      const p1 = await pager("");
      const p2 = await pager(p1.next);
      const p3 = await pager(p2.next);
      assert.deepEqual([p1, p2, p3].map((p) => p.items.map((x) => x.name)), [names.slice(0, 2), names.slice(2, 4), names.slice(4)]);
      return { pager, p1, p2, p3 };
    }

    it("a next page emptied by deletions still offers the way back (prev_page_token)", async () => {
      const store = "pg-empty-next";
      const { pager, p2 } = await sixByTwo(store);
      // Everything after page 2 is deleted: the (empty) next page is not the first page, so it has a previous one.
      await rpc.secrets.batchDeleteSecrets({ store, names: ["m/004", "m/005"] }, opts());
      const empty = await pager(p2.next);
      assert.deepEqual(empty.items, []);
      assert.equal(empty.next, "", "nothing after it");
      assert.notEqual(empty.prev, "", "an empty page after the first still has a previous page");
      assert.deepEqual((await pager(empty.prev)).items.map((x) => x.name), ["m/002", "m/003"]);
    });

    it("a previous page emptied by deletions still offers the way on (next_page_token)", async () => {
      const store = "pg-empty-prev";
      const { pager, p2 } = await sixByTwo(store);
      // Everything before page 2 is deleted: the (empty) previous page is not the last page, so it has a next one.
      await rpc.secrets.batchDeleteSecrets({ store, names: ["m/000", "m/001"] }, opts());
      const empty = await pager(p2.prev);
      assert.deepEqual(empty.items, []);
      assert.equal(empty.prev, "", "nothing before it");
      assert.notEqual(empty.next, "", "an empty page reached backward still has a next page");
      assert.deepEqual((await pager(empty.next)).items.map((x) => x.name), ["m/002", "m/003"]);
    });
  });

  describe("check-and-set", () => {
    it("REST: ETag is the revision; If-Match / expected_revision on update, rotate, rename and delete; 409 and nothing changes", async () => {
      const created = await r("POST", "/v1/secrets", { name: "cas/rest", kind: "automatic" });
      assert.equal(created.status, 201);
      assert.equal(created.headers.get("etag"), '"1"');
      const read = await r("GET", "/v1/secrets/cas/rest");
      assert.equal(read.headers.get("etag"), '"1"');
      assert.equal((await listed("cas/rest")).revision, 1);

      // Update.
      const upd = await r("PUT", "/v1/secrets/cas/rest", { description: "one" }, { "if-match": '"1"' });
      assert.equal(upd.status, 200, JSON.stringify(upd.body));
      assert.equal(upd.headers.get("etag"), '"2"');
      assert.equal(upd.body.revision, 2);
      restFails(await r("PUT", "/v1/secrets/cas/rest", { description: "stale" }, { "if-match": '"1"' }), 409, "failed_precondition", "REVISION_MISMATCH");
      restFails(await r("PUT", "/v1/secrets/cas/rest", { description: "stale", expected_revision: 1 }), 409, "failed_precondition", "REVISION_MISMATCH");
      const weak = await r("PUT", "/v1/secrets/cas/rest", { description: "two" }, { "if-match": 'W/"2"' });
      assert.equal(weak.status, 200);
      const body = await r("PUT", "/v1/secrets/cas/rest", { description: "three", expected_revision: 3 });
      assert.equal(body.status, 200);
      assert.equal(body.headers.get("etag"), '"4"');
      const m = await listed("cas/rest");
      assert.deepEqual([m.description, m.revision], ["three", 4], "stale updates changed nothing");
      restFails(await r("PUT", "/v1/secrets/cas/rest", { description: "x", expected_revision: 3 }, { "if-match": '"4"' }), 400, "invalid_argument");
      restFails(await r("PUT", "/v1/secrets/cas/rest", { description: "x" }, { "if-match": "*garbage*" }), 400, "invalid_argument");

      // Rotate.
      restFails(await r("POST", "/v1/secrets/cas/rest/rotate", { expected_revision: 3 }), 409, "failed_precondition", "REVISION_MISMATCH");
      restFails(await r("POST", "/v1/secrets/cas/rest/rotate", undefined, { "if-match": '"3"' }), 409, "failed_precondition", "REVISION_MISMATCH");
      assert.equal((await listed("cas/rest")).version, 1, "no rotation happened");
      const rot = await r("POST", "/v1/secrets/cas/rest/rotate", undefined, { "if-match": '"4"' });
      assert.equal(rot.status, 200);
      assert.equal(rot.headers.get("etag"), '"5"');
      assert.equal((await r("GET", "/v1/secrets/cas/rest")).headers.get("etag"), '"5"');
      assert.equal((await r("GET", "/v1/secrets/cas/rest?version=1")).headers.get("etag"), '"5"', "the secret's revision, whatever the version");

      // Version state.
      restFails(await r("PUT", "/v1/secrets/cas/rest/versions/1", { state: "deactivated" }, { "if-match": '"4"' }), 409, "failed_precondition", "REVISION_MISMATCH");
      const st = await r("PUT", "/v1/secrets/cas/rest/versions/1", { state: "deactivated", expected_revision: 5 });
      assert.equal(st.status, 200);
      assert.equal(st.headers.get("etag"), '"6"');

      // Rename.
      restFails(await r("POST", "/v1/secrets/cas/rest/rename", { new_name: "cas/renamed", expected_revision: 5 }), 409, "failed_precondition", "REVISION_MISMATCH");
      assert.equal((await r("GET", "/v1/secrets/cas/renamed")).status, 404, "not renamed");
      const ren = await r("POST", "/v1/secrets/cas/rest/rename", { new_name: "cas/renamed" }, { "if-match": '"6"' });
      assert.equal(ren.status, 200);
      assert.equal(ren.body.revision, 7);

      // Move.
      await r("POST", "/v1/stores", { name: "cas-store" });
      restFails(await r("POST", "/v1/secrets/cas/renamed/move", { to_store: "cas-store", expected_revision: 6 }), 409, "failed_precondition", "REVISION_MISMATCH");
      assert.equal((await r("GET", "/v1/stores/cas-store/secrets/cas/renamed")).status, 404, "not moved");

      // Delete.
      restFails(await r("DELETE", "/v1/secrets/cas/renamed", undefined, { "if-match": '"6"' }), 409, "failed_precondition", "REVISION_MISMATCH");
      assert.equal((await r("GET", "/v1/secrets/cas/renamed")).status, 200, "not deleted");
      const del = await r("DELETE", "/v1/secrets/cas/renamed", undefined, { "if-match": '"7"' });
      assert.equal(del.status, 204);
    });

    it("gRPC, Connect JSON and grpc-js: expected_revision on every write; mismatch -> FAILED_PRECONDITION REVISION_MISMATCH", async () => {
      const created = await rpc.secrets.storeSecret({ name: "cas/rpc", kind: SecretKind.AUTOMATIC }, opts());
      assert.equal(created.secret?.revision, 1n);
      const stale = 99n;
      const calls: [string, () => Promise<unknown>][] = [
        ["update", () => rpc.secrets.updateSecret({ name: "cas/rpc", description: "x", expectedRevision: stale }, opts())],
        ["rotate", () => rpc.secrets.rotateSecret({ name: "cas/rpc", expectedRevision: stale }, opts())],
        ["rename", () => rpc.secrets.renameSecret({ name: "cas/rpc", newName: "cas/rpc2", expectedRevision: stale }, opts())],
        ["move", () => rpc.secrets.moveSecret({ name: "cas/rpc", toStore: "cas-store", expectedRevision: stale }, opts())],
        ["set state", () => rpc.secrets.setVersionState({ name: "cas/rpc", version: 1, state: VersionState.SUSPENDED, expectedRevision: stale }, opts())],
        ["delete", () => rpc.secrets.deleteSecret({ name: "cas/rpc", expectedRevision: stale }, opts())],
      ];
      for (const [what, call] of calls) {
        assertReason(await rpcFails(call(), Code.FailedPrecondition, what), "REVISION_MISMATCH", what);
      }
      const after = await rpc.secrets.getSecret({ name: "cas/rpc" }, opts());
      assert.equal(after.secret?.revision, 1n, "nothing changed");
      assert.equal(after.value, created.value);
      assert.equal(after.secret?.description, "");

      const ok = await rpc.secrets.updateSecret({ name: "cas/rpc", description: "one", expectedRevision: 1n }, opts());
      assert.equal(ok.secret?.revision, 2n);
      const rot = await rpc.secrets.rotateSecret({ name: "cas/rpc", expectedRevision: 2n }, opts());
      assert.equal(rot.secret?.revision, 3n);

      // Connect JSON: uint64 as a string.
      const staleJson = await cj("UpdateSecret", { name: "cas/rpc", description: "json", expectedRevision: "2" });
      connectFails(staleJson, 400, "failed_precondition", "REVISION_MISMATCH");
      const okJson = await cj("UpdateSecret", { name: "cas/rpc", description: "json", expectedRevision: "3" });
      assert.equal(okJson.status, 200, JSON.stringify(okJson.body));
      assert.equal(okJson.body.secret.revision, "4");
      connectFails(await cj("DeleteSecret", { name: "cas/rpc", expectedRevision: "3" }), 400, "failed_precondition", "REVISION_MISMATCH");

      // grpc-js.
      const gf = await grpcFails(g.secrets, "RenameSecret", { name: "cas/rpc", newName: "cas/gj", expectedRevision: "3" }, grpc.status.FAILED_PRECONDITION);
      assert.equal(grpcReason(gf.trailers), "REVISION_MISMATCH");
      const renamed = await grpcOk(g.secrets, "RenameSecret", { name: "cas/rpc", newName: "cas/gj", expectedRevision: "4" });
      assert.equal(renamed.secret.revision, "5");
      const moved = await grpcOk(g.secrets, "MoveSecret", { name: "cas/gj", toStore: "cas-store", expectedRevision: "5" });
      assert.equal(moved.secret.store, "cas-store");
      await grpcOk(g.secrets, "DeleteSecret", { store: "cas-store", name: "cas/gj", expectedRevision: moved.secret.revision });
    });
  });
});
