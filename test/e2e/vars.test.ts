import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Code } from "@connectrpc/connect";
import {
  assertConnectError,
  assertRestError,
  connectJson,
  connectReason,
  connectViolations,
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
  violationsOf,
} from "../support/clients.js";
import { ADMIN_TOKEN, startTestServer, type TestServer } from "../support/server.js";

/**
 * Vars (non-sensitive name/value pairs in a store) end to end over REST, gRPC (Connect client and grpc-js) and
 * Connect JSON: set one, set many all-or-nothing with every invalid item listed, get, list with values and paging,
 * delete, and the access rules (reads by IP like GetSecret, writes with a token).
 */
describe("vars", () => {
  let s: TestServer;
  let rpc: RpcClients;
  let g: GrpcClients;

  before(async () => {
    s = await startTestServer();
    rpc = rpcClients(s.url);
    g = grpcClients(s.port);
    for (const name of ["cfg", "paged", "batch"]) {
      assert.equal((await rest(s.url, "POST", "/v1/stores", { name })).status, 201);
    }
  });
  after(async () => {
    rpc?.close();
    g?.close();
    await s?.stop();
  });

  const cj = (procedure: string, body: unknown, token?: string | null) => connectJson(s.url, procedure, body, token);
  const r = (method: string, path: string, body?: unknown, token?: string | null) => rest(s.url, method, path, body, token);

  describe("set one and get", () => {
    it("REST PUT creates then replaces a var; GET returns it with its value", async () => {
      const created = await r("PUT", "/v1/stores/cfg/vars/log_level", { value: "debug" });
      assert.equal(created.status, 200);
      assert.equal(created.body.name, "log_level");
      assert.equal(created.body.value, "debug");
      assert.match(created.body.created_at, /^\d{4}-\d\d-\d\dT.*\+00:00$/);
      assert.equal(created.body.updated_at, created.body.created_at);

      await new Promise((res) => setTimeout(res, 5));
      const replaced = await r("PUT", "/v1/stores/cfg/vars/log_level", { value: "info" });
      assert.equal(replaced.status, 200);
      assert.equal(replaced.body.value, "info");
      assert.equal(replaced.body.created_at, created.body.created_at, "created_at is kept");
      assert.ok(Date.parse(replaced.body.updated_at) > Date.parse(created.body.created_at), "updated_at moves");

      const got = await r("GET", "/v1/stores/cfg/vars/log_level");
      assert.equal(got.status, 200);
      assert.deepEqual(got.body, replaced.body);
    });

    it("names with '/' and unicode values round-trip on every protocol", async () => {
      const value = "héllo wörld ✓ = a&b";
      const put = await r("PUT", "/v1/stores/cfg/vars/app/feature/flag.x", { value });
      assert.equal(put.status, 200);
      assert.equal(put.body.name, "app/feature/flag.x");

      assert.equal((await r("GET", "/v1/stores/cfg/vars/app/feature/flag.x")).body.value, value);
      assert.equal((await r("GET", "/v1/stores/cfg/vars/app%2Ffeature%2Fflag.x")).body.value, value, "percent-encoded");

      const viaRpc = await rpc.vars.getVar({ store: "cfg", name: "app/feature/flag.x" }, opts());
      assert.equal(viaRpc.var?.value, value);
      assert.equal(viaRpc.var?.store, "cfg");
      assert.equal(viaRpc.var?.name, "app/feature/flag.x");
      assert.ok(viaRpc.var?.createdAt && viaRpc.var.createdAt.seconds > 1_600_000_000n);

      const viaJson = await cj("VarService/GetVar", { store: "cfg", name: "app/feature/flag.x" });
      assert.equal(viaJson.status, 200);
      assert.equal(viaJson.body.var.value, value);
      assert.equal(viaJson.body.var.store, "cfg");

      const viaGrpcJs = await grpcOk(g.vars, "GetVar", { store: "cfg", name: "app/feature/flag.x" });
      assert.equal(viaGrpcJs.var.value, value);
    });

    it("the longest value is accepted; one character more is too_long", async () => {
      const max = "v".repeat(10_240);
      assert.equal((await r("PUT", "/v1/stores/cfg/vars/big", { value: max })).status, 200);
      assert.equal((await rpc.vars.getVar({ store: "cfg", name: "big" }, opts())).var?.value, max);
      const over = await r("PUT", "/v1/stores/cfg/vars/big", { value: `${max}v` });
      assertRestError(over, 400, "invalid_argument");
      assert.deepEqual(
        restViolations(over.body).map(([, reason]) => reason),
        ["too_long"],
      );
      assert.equal((await r("GET", "/v1/stores/cfg/vars/big")).body.value, max, "unchanged");
    });

    it("the empty store in an RPC means the default store", async () => {
      const set = await rpc.vars.setVars({ vars: [{ name: "in-default", value: "d" }] }, opts());
      assert.equal(set.vars[0]?.store, "default");
      assert.equal((await r("GET", "/v1/stores/default/vars/in-default")).body.value, "d");
      assert.equal((await cj("VarService/GetVar", { name: "in-default" })).body.var.value, "d");
      await rpcFails(rpc.vars.getVar({ store: "cfg", name: "in-default" }, opts()), Code.NotFound, "not in cfg");
    });
  });

  describe("set many", () => {
    it("REST POST {vars: [...]} sets every var, in the order given", async () => {
      const res = await r("POST", "/v1/stores/batch/vars", {
        vars: [
          { name: "db/host", value: "db.internal" },
          { name: "db/port", value: "5432" },
          { name: "app/name", value: "latchkey" },
        ],
      });
      assert.equal(res.status, 200);
      assert.deepEqual(
        res.body.vars.map((v: { name: string; value: string }) => [v.name, v.value]),
        [
          ["db/host", "db.internal"],
          ["db/port", "5432"],
          ["app/name", "latchkey"],
        ],
      );
      assert.equal((await r("GET", "/v1/stores/batch/vars/db/port")).body.value, "5432");
    });

    it("SetVars over gRPC, Connect JSON and grpc-js creates and replaces in one call", async () => {
      const viaRpc = await rpc.vars.setVars(
        {
          store: "batch",
          vars: [
            { name: "db/port", value: "6432" },
            { name: "rpc/new", value: "n" },
          ],
        },
        opts(),
      );
      assert.deepEqual(
        viaRpc.vars.map((v) => [v.store, v.name, v.value]),
        [
          ["batch", "db/port", "6432"],
          ["batch", "rpc/new", "n"],
        ],
      );

      const viaJson = await cj("VarService/SetVars", {
        store: "batch",
        vars: [
          { name: "json/a", value: "1" },
          { name: "json/b", value: "2" },
        ],
      });
      assert.equal(viaJson.status, 200);
      assert.deepEqual(
        viaJson.body.vars.map((v: { name: string; value: string }) => [v.name, v.value]),
        [
          ["json/a", "1"],
          ["json/b", "2"],
        ],
      );

      const viaGrpcJs = await grpcOk(g.vars, "SetVars", { store: "batch", vars: [{ name: "grpcjs/a", value: "ga" }] });
      assert.deepEqual(
        viaGrpcJs.vars.map((v: { store: string; name: string; value: string }) => [v.store, v.name, v.value]),
        [["batch", "grpcjs/a", "ga"]],
      );

      const list = await r("GET", "/v1/stores/batch/vars");
      assert.deepEqual(
        list.body.map((v: { name: string; value: string }) => `${v.name}=${v.value}`),
        ["app/name=latchkey", "db/host=db.internal", "db/port=6432", "grpcjs/a=ga", "json/a=1", "json/b=2", "rpc/new=n"],
      );
    });

    it("an empty list is invalid_argument (vars required)", async () => {
      const viaRest = await r("POST", "/v1/stores/batch/vars", { vars: [] });
      assert.deepEqual(restViolations(assertRestError(viaRest, 400, "invalid_argument")), [["vars", "required"]]);
      const ce = await rpcFails(rpc.vars.setVars({ store: "batch", vars: [] }, opts()), Code.InvalidArgument, "rpc");
      assert.deepEqual(violationsOf(ce), [["vars", "required"]]);
    });
  });

  describe("all or nothing", () => {
    const batch = [
      { name: "ok/new", value: "would be created" },
      { name: "db/host", value: "would replace" },
      { name: "empty", value: "" },
      { name: "bad name!", value: "x" },
      { name: "ok/new", value: "given twice" },
      { name: "a/../b", value: "x" },
      { name: "long", value: "x".repeat(10_241) },
    ];
    const expected: [string, string][] = [
      ["vars[2].value", "empty"],
      ["vars[3].name", "pattern"],
      ["vars[4].name", "duplicate"],
      ["vars[5].name", "pattern"],
      ["vars[6].value", "too_long"],
    ];

    async function unchanged(what: string) {
      const missing = await r("GET", "/v1/stores/batch/vars/ok/new");
      assert.equal(assertRestError(missing, 404, "not_found", what).reason, "VAR_NOT_FOUND");
      assert.equal((await r("GET", "/v1/stores/batch/vars/db/host")).body.value, "db.internal", `${what}: not replaced`);
    }

    it("REST: 400 listing every invalid item (field, reason); nothing is written", async () => {
      const res = await r("POST", "/v1/stores/batch/vars", { vars: batch });
      const body = assertRestError(res, 400, "invalid_argument");
      assert.deepEqual(restViolations(body), expected);
      for (const v of body.violations) assert.equal(typeof v.message, "string");
      assert.ok(!JSON.stringify(body).includes("would replace"), "values are not echoed");
      await unchanged("REST");
    });

    it("gRPC (Connect client): INVALID_ARGUMENT with a google.rpc.BadRequest listing every invalid item", async () => {
      const ce = await rpcFails(rpc.vars.setVars({ store: "batch", vars: batch }, opts()), Code.InvalidArgument, "rpc");
      assert.deepEqual(violationsOf(ce), expected);
      await unchanged("rpc");
    });

    it("Connect JSON: 400 invalid_argument with the BadRequest detail", async () => {
      const res = await cj("VarService/SetVars", { store: "batch", vars: batch });
      assertConnectError(res, 400, "invalid_argument");
      assert.deepEqual(connectViolations(res.body), expected);
      await unchanged("Connect JSON");
    });

    it("grpc-js: INVALID_ARGUMENT with the BadRequest in grpc-status-details-bin", async () => {
      const out = await grpcFails(g.vars, "SetVars", { store: "batch", vars: batch }, grpc.status.INVALID_ARGUMENT);
      const details = grpcStatusDetails(out.trailers);
      assert.deepEqual(
        details?.badRequest?.fieldViolations.map((v) => [v.field, v.reason]),
        expected,
      );
      await unchanged("grpc-js");
    });

    it("REST: items the body cannot even type-check are listed together with the rest", async () => {
      // An empty name, a missing value and a non-string value are invalid items like any other: every one is
      // listed, not only the first.
      const res = await r("POST", "/v1/stores/batch/vars", {
        vars: [
          { name: "", value: "x" },
          { name: "fine", value: "" },
          { name: "no-value" },
          { name: "not-a-string", value: 5 },
        ],
      });
      const body = assertRestError(res, 400, "invalid_argument");
      assert.deepEqual(
        restViolations(body).map(([field]) => field),
        ["vars[0].name", "vars[1].value", "vars[2].value", "vars[3].value"],
      );
      assert.deepEqual(restViolations(body)[1], ["vars[1].value", "empty"]);
      assert.equal((await r("GET", "/v1/stores/batch/vars/fine")).status, 404);
    });

    it("a batch in a store that does not exist is store not_found and writes nothing", async () => {
      const res = await r("POST", "/v1/stores/nowhere/vars", { vars: [{ name: "a", value: "b" }] });
      assert.equal(assertRestError(res, 404, "not_found").reason, "STORE_NOT_FOUND");
      const ce = await rpcFails(rpc.vars.setVars({ store: "nowhere", vars: [{ name: "a", value: "b" }] }, opts()), Code.NotFound, "rpc");
      assert.equal(reasonOf(ce), "STORE_NOT_FOUND");
    });
  });

  describe("an empty value", () => {
    it("is invalid_argument with reason \"empty\" on every protocol", async () => {
      const put = await r("PUT", "/v1/stores/cfg/vars/blank", { value: "" });
      const body = assertRestError(put, 400, "invalid_argument");
      assert.equal(body.violations.length, 1);
      assert.equal(body.violations[0].reason, "empty");
      assert.match(body.violations[0].field, /(^|\.)value$/);

      const post = await r("POST", "/v1/stores/cfg/vars", { vars: [{ name: "blank", value: "" }] });
      assert.deepEqual(restViolations(assertRestError(post, 400, "invalid_argument")), [["vars[0].value", "empty"]]);

      const ce = await rpcFails(rpc.vars.setVars({ store: "cfg", vars: [{ name: "blank", value: "" }] }, opts()), Code.InvalidArgument, "rpc");
      assert.deepEqual(violationsOf(ce), [["vars[0].value", "empty"]]);

      const json = await cj("VarService/SetVars", { store: "cfg", vars: [{ name: "blank" }] });
      assertConnectError(json, 400, "invalid_argument");
      assert.deepEqual(connectViolations(json.body), [["vars[0].value", "empty"]]);

      const gf = await grpcFails(g.vars, "SetVars", { store: "cfg", vars: [{ name: "blank", value: "" }] }, grpc.status.INVALID_ARGUMENT);
      assert.deepEqual(
        grpcStatusDetails(gf.trailers)?.badRequest?.fieldViolations.map((v) => [v.field, v.reason]),
        [["vars[0].value", "empty"]],
      );

      assert.equal((await r("GET", "/v1/stores/cfg/vars/blank")).status, 404, "nothing written");
    });
  });

  describe("list", () => {
    const names = ["page/01", "page/02", "page/03", "page/04", "page/05", "zz-other"];
    before(async () => {
      const res = await r("POST", "/v1/stores/paged/vars", { vars: names.map((name) => ({ name, value: `value of ${name}` })) });
      assert.equal(res.status, 200);
    });

    it("REST: values included; limit and cursor page through; prefix filters", async () => {
      const all = await r("GET", "/v1/stores/paged/vars");
      assert.equal(all.status, 200);
      assert.deepEqual(
        all.body.map((v: { name: string; value: string }) => [v.name, v.value]),
        names.map((n) => [n, `value of ${n}`]),
      );
      assert.equal(all.headers.get("x-next-cursor"), null);
      for (const v of all.body) assert.match(v.created_at, /\+00:00$/);

      const seen: string[] = [];
      let cursor: string | null = null;
      let pages = 0;
      do {
        const page: Awaited<ReturnType<typeof r>> = await r(
          "GET",
          `/v1/stores/paged/vars?prefix=page/&limit=2${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`,
        );
        assert.equal(page.status, 200);
        assert.ok(page.body.length <= 2);
        for (const v of page.body) assert.equal(v.value, `value of ${v.name}`);
        seen.push(...page.body.map((v: { name: string }) => v.name));
        cursor = page.headers.get("x-next-cursor");
        pages++;
      } while (cursor && pages < 10);
      assert.equal(pages, 3);
      assert.deepEqual(seen, names.slice(0, 5));

      assert.deepEqual(restViolations(assertRestError(await r("GET", "/v1/stores/paged/vars?limit=0"), 400, "invalid_argument")), [
        ["limit", "out_of_range"],
      ]);
      assert.deepEqual(
        restViolations(assertRestError(await r("GET", "/v1/stores/paged/vars?cursor=garbage"), 400, "invalid_argument")),
        [["page_token", "malformed"]],
      );
    });

    it("gRPC (Connect client): page_size and page_token", async () => {
      const seen: [string, string][] = [];
      let pageToken = "";
      let pages = 0;
      do {
        const page = await rpc.vars.listVars({ store: "paged", namePrefix: "page/", pageSize: 2, pageToken }, opts());
        assert.ok(page.vars.length <= 2);
        seen.push(...page.vars.map((v): [string, string] => [v.name, v.value]));
        for (const v of page.vars) assert.equal(v.store, "paged");
        pageToken = page.nextPageToken;
        pages++;
      } while (pageToken && pages < 10);
      assert.equal(pages, 3);
      assert.deepEqual(
        seen,
        names.slice(0, 5).map((n) => [n, `value of ${n}`]),
      );
      const bad = await rpcFails(rpc.vars.listVars({ store: "paged", pageToken: "garbage" }, opts()), Code.InvalidArgument, "bad token");
      assert.deepEqual(violationsOf(bad), [["page_token", "malformed"]]);
    });

    it("Connect JSON and grpc-js: page_size and page_token", async () => {
      const first = await cj("VarService/ListVars", { store: "paged", pageSize: 4 });
      assert.equal(first.status, 200);
      assert.deepEqual(
        first.body.vars.map((v: { name: string; value: string }) => [v.name, v.value]),
        names.slice(0, 4).map((n) => [n, `value of ${n}`]),
      );
      assert.ok(first.body.nextPageToken);
      const second = await cj("VarService/ListVars", { store: "paged", pageSize: 4, pageToken: first.body.nextPageToken });
      assert.deepEqual(
        second.body.vars.map((v: { name: string }) => v.name),
        names.slice(4),
      );
      assert.equal(second.body.nextPageToken ?? "", "");

      const g1 = await grpcOk(g.vars, "ListVars", { store: "paged", pageSize: 5 });
      assert.equal(g1.vars.length, 5);
      assert.equal(g1.vars[0].value, "value of page/01");
      const g2 = await grpcOk(g.vars, "ListVars", { store: "paged", pageSize: 5, pageToken: g1.nextPageToken });
      assert.deepEqual(
        g2.vars.map((v: { name: string }) => v.name),
        ["zz-other"],
      );
      assert.equal(g2.nextPageToken, "");
    });
  });

  describe("delete", () => {
    it("REST DELETE (204), then not_found; over gRPC, Connect JSON and grpc-js likewise", async () => {
      await r("POST", "/v1/stores/cfg/vars", {
        vars: ["del/rest", "del/rpc", "del/json", "del/grpcjs"].map((name) => ({ name, value: "x" })),
      });

      const del = await r("DELETE", "/v1/stores/cfg/vars/del/rest");
      assert.equal(del.status, 204);
      assert.equal(assertRestError(await r("GET", "/v1/stores/cfg/vars/del/rest"), 404, "not_found").reason, "VAR_NOT_FOUND");
      assert.equal(assertRestError(await r("DELETE", "/v1/stores/cfg/vars/del/rest"), 404, "not_found").reason, "VAR_NOT_FOUND");

      await rpc.vars.deleteVar({ store: "cfg", name: "del/rpc" }, opts());
      assert.equal(reasonOf(await rpcFails(rpc.vars.getVar({ store: "cfg", name: "del/rpc" }, opts()), Code.NotFound, "get")), "VAR_NOT_FOUND");
      assert.equal(
        reasonOf(await rpcFails(rpc.vars.deleteVar({ store: "cfg", name: "del/rpc" }, opts()), Code.NotFound, "delete again")),
        "VAR_NOT_FOUND",
      );

      const json = await cj("VarService/DeleteVar", { store: "cfg", name: "del/json" });
      assert.equal(json.status, 200);
      assert.deepEqual(json.body, {});
      const jsonGone = await cj("VarService/GetVar", { store: "cfg", name: "del/json" });
      assertConnectError(jsonGone, 404, "not_found");
      assert.equal(connectReason(jsonGone.body), "VAR_NOT_FOUND");

      await grpcOk(g.vars, "DeleteVar", { store: "cfg", name: "del/grpcjs" });
      const gf = await grpcFails(g.vars, "GetVar", { store: "cfg", name: "del/grpcjs" }, grpc.status.NOT_FOUND);
      assert.equal(grpcStatusDetails(gf.trailers)?.errorInfo?.reason, "VAR_NOT_FOUND");

      const left = await r("GET", "/v1/stores/cfg/vars?prefix=del/");
      assert.deepEqual(left.body, []);
    });

    it("a var that never existed is not_found (VAR_NOT_FOUND); in a missing store STORE_NOT_FOUND", async () => {
      assert.equal(assertRestError(await r("GET", "/v1/stores/cfg/vars/never"), 404, "not_found").reason, "VAR_NOT_FOUND");
      assert.equal(assertRestError(await r("GET", "/v1/stores/nowhere/vars/never"), 404, "not_found").reason, "STORE_NOT_FOUND");
      assert.equal(assertRestError(await r("GET", "/v1/stores/nowhere/vars"), 404, "not_found").reason, "STORE_NOT_FOUND");
      const ce = await rpcFails(rpc.vars.listVars({ store: "nowhere" }, opts()), Code.NotFound, "list in missing store");
      assert.equal(reasonOf(ce), "STORE_NOT_FOUND");
    });
  });

  describe("access", () => {
    before(async () => {
      assert.equal((await r("PUT", "/v1/stores/cfg/vars/public/read", { value: "readable" })).status, 200);
    });

    it("reads need no token from an allowed IP (like GetSecret), on every protocol", async () => {
      const one = await r("GET", "/v1/stores/cfg/vars/public/read", undefined, null);
      assert.equal(one.status, 200);
      assert.equal(one.body.value, "readable");
      const list = await r("GET", "/v1/stores/cfg/vars?prefix=public/", undefined, null);
      assert.equal(list.status, 200);
      assert.equal(list.body.length, 1);

      assert.equal((await rpc.vars.getVar({ store: "cfg", name: "public/read" }, opts(null))).var?.value, "readable");
      assert.equal((await rpc.vars.listVars({ store: "cfg", namePrefix: "public/" }, opts(null))).vars.length, 1);
      assert.equal((await cj("VarService/GetVar", { store: "cfg", name: "public/read" }, null)).body.var.value, "readable");
      assert.equal((await grpcOk(g.vars, "GetVar", { store: "cfg", name: "public/read" }, grpcMd(null))).var.value, "readable");
    });

    it("a token sent on a read must be valid", async () => {
      assertRestError(await r("GET", "/v1/stores/cfg/vars/public/read", undefined, "not-a-valid-token-at-all"), 401, "unauthenticated");
      await rpcFails(rpc.vars.getVar({ store: "cfg", name: "public/read" }, opts("not-a-valid-token-at-all")), Code.Unauthenticated, "rpc");
    });

    it("writes need a token: 401 / UNAUTHENTICATED, nothing written", async () => {
      assertRestError(await r("PUT", "/v1/stores/cfg/vars/public/read", { value: "anon" }, null), 401, "unauthenticated");
      assertRestError(await r("POST", "/v1/stores/cfg/vars", { vars: [{ name: "anon", value: "x" }] }, null), 401, "unauthenticated");
      assertRestError(await r("DELETE", "/v1/stores/cfg/vars/public/read", undefined, null), 401, "unauthenticated");
      await rpcFails(rpc.vars.setVars({ store: "cfg", vars: [{ name: "anon", value: "x" }] }, opts(null)), Code.Unauthenticated, "SetVars");
      await rpcFails(rpc.vars.deleteVar({ store: "cfg", name: "public/read" }, opts(null)), Code.Unauthenticated, "DeleteVar");
      assertConnectError(await cj("VarService/SetVars", { store: "cfg", vars: [{ name: "anon", value: "x" }] }, null), 401, "unauthenticated");
      await grpcFails(g.vars, "DeleteVar", { store: "cfg", name: "public/read" }, grpc.status.UNAUTHENTICATED, grpcMd(null));

      assert.equal((await r("GET", "/v1/stores/cfg/vars/public/read")).body.value, "readable");
      assert.equal((await r("GET", "/v1/stores/cfg/vars/anon")).status, 404);
    });

    it("reads from an IP outside the allowlist are refused (403 / PERMISSION_DENIED)", async () => {
      const other = await startTestServer({ LATCHKEY_ALLOWED_IPS: "10.254.254.254" });
      const c = rpcClients(other.url);
      try {
        assert.equal((await rest(other.url, "PUT", "/v1/stores/default/vars/x", { value: "y" })).status, 200, "writes need a token, not an IP");
        assertRestError(await rest(other.url, "GET", "/v1/stores/default/vars/x", undefined, null), 403, "permission_denied");
        assertRestError(await rest(other.url, "GET", "/v1/stores/default/vars", undefined, null), 403, "permission_denied");
        await rpcFails(c.vars.getVar({ name: "x" }, opts(null)), Code.PermissionDenied, "GetVar");
        await rpcFails(c.vars.listVars({}, opts(null)), Code.PermissionDenied, "ListVars");
        assertConnectError(await connectJson(other.url, "VarService/GetVar", { name: "x" }, null), 403, "permission_denied");
        // The same rule as GetSecret.
        assertRestError(await rest(other.url, "GET", "/v1/secrets/anything", undefined, null), 403, "permission_denied");
      } finally {
        c.close();
        await other.stop();
      }
    });

    it("an admin token works for reads too", async () => {
      const res = await r("GET", "/v1/stores/cfg/vars/public/read", undefined, ADMIN_TOKEN);
      assert.equal(res.status, 200);
    });
  });
});
