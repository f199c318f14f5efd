import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { Role } from "../../gen/latchkey/v1/token_service_pb.js";
import { tokenHash, tokenId } from "../../src/auth/access.js";
import { type AllClients, auditEntries, callOpts, grpcAll, leaks, type MadeToken, makeToken } from "../support/access.js";
import { connectJson, connectReason, type JsonReply, reasonOf, rest, rpcFails } from "../support/clients.js";
import { connectFails, jsonText, restFails } from "../support/lifecycle.js";
import { ADMIN_TOKEN, startTestServer, type TestServer } from "../support/server.js";

/**
 * Tokens end to end, over gRPC (a Connect client on h2c), Connect JSON and REST: created and shown once, used within
 * their role, listed without their secret, revoked (at once), expired, fenced to IPs, scoped to stores and name
 * prefixes, bound to a service; only admins manage them; 401 for no or a bad token, 403 for a valid one that is
 * not allowed.
 */

const BILLING = "billing-service-token-0123456789";
const ADMIN_ID = tokenId("admin", ADMIN_TOKEN);
const DB_VALUE = "db-value-7f3a9c1e";

describe("tokens", () => {
  let s: TestServer;
  let g: AllClients;
  let offset = 0;
  /** Every token secret seen in this file: none may appear in a listing, a log line or the audit log. */
  const secrets: string[] = [];

  const r = (method: string, path: string, body?: unknown, token: string | null = ADMIN_TOKEN, headers: Record<string, string> = {}) =>
    rest(s.url, method, path, body, token, headers);
  const cj = (procedure: string, body: unknown, token: string | null = ADMIN_TOKEN) => connectJson(s.url, procedure, body, token);
  const o = (token: string | null, extra: Record<string, string> = {}) => callOpts(token, extra);
  const token = async (settings: Record<string, unknown>): Promise<MadeToken> => {
    const t = await makeToken(s.url, settings);
    secrets.push(t.secret);
    return t;
  };
  const ok = (reply: JsonReply, status: number, what: string) =>
    assert.equal(reply.status, status, `${what}: ${reply.status} ${JSON.stringify(reply.body)}`);

  before(async () => {
    s = await startTestServer(
      {
        LATCHKEY_TRUSTED_PROXIES: "127.0.0.1",
        // Loopback and 10/8 may read values, so per-token IP rules can be told apart from the global fence.
        LATCHKEY_ALLOWED_IPS: "127.0.0.0/8,::1,10.0.0.0/8",
        LATCHKEY_SERVICE_TOKENS: `billing=${BILLING}`,
      },
      { clock: { now: () => Date.now() + offset } },
    );
    g = grpcAll(s.url);
    ok(await r("POST", "/v1/stores", { name: "team-a" }), 201, "create team-a");
    ok(await r("POST", "/v1/secrets", { name: "app/db", value: DB_VALUE }), 201, "create app/db");
    ok(await r("POST", "/v1/secrets", { name: "app/cache", value: "cache-value-1" }), 201, "create app/cache");
    ok(await r("POST", "/v1/secrets", { name: "other/key", value: "other-value-1" }), 201, "create other/key");
    ok(await r("POST", "/v1/stores/team-a/secrets", { name: "app/db", value: "team-a-db-value" }), 201, "create team-a app/db");
  });
  after(async () => {
    g?.close();
    await s?.stop();
  });

  it("creates tokens over gRPC, Connect JSON and REST, and shows each secret only at creation", async () => {
    const viaGrpc = await g.tokens.createToken({ label: "grpc-reader", role: Role.READER }, o(ADMIN_TOKEN));
    secrets.push(viaGrpc.secret);
    assert.match(viaGrpc.secret, /^lkt_[A-Za-z0-9_-]{43}$/);
    assert.match(viaGrpc.token?.id ?? "", /^tok_[0-9a-f]{16}$/);
    assert.equal(viaGrpc.token?.role, Role.READER);
    assert.equal(viaGrpc.token?.label, "grpc-reader");
    assert.equal(viaGrpc.token?.createdBy, ADMIN_ID);
    assert.ok(viaGrpc.token?.createdAt, "created_at is set");
    assert.equal(viaGrpc.token?.revokedAt, undefined);

    const viaConnect = await cj("TokenService/CreateToken", { label: "connect-writer", role: "ROLE_WRITER" });
    ok(viaConnect, 200, "Connect JSON CreateToken");
    secrets.push(viaConnect.body.secret);
    assert.match(viaConnect.body.secret, /^lkt_/);
    assert.equal(viaConnect.body.token.role, "ROLE_WRITER");
    assert.equal(viaConnect.body.token.createdBy, ADMIN_ID);

    const viaRest = await r("POST", "/v1/tokens", { label: "rest-verifier", role: "verifier" });
    ok(viaRest, 201, "REST POST /v1/tokens");
    secrets.push(viaRest.body.secret);
    assert.match(viaRest.body.secret, /^lkt_/);
    assert.deepEqual(
      { role: viaRest.body.token.role, label: viaRest.body.token.label, created_by: viaRest.body.token.created_by, revoked_at: viaRest.body.token.revoked_at },
      { role: "verifier", label: "rest-verifier", created_by: ADMIN_ID, revoked_at: null },
    );
    assert.equal(new Set([viaGrpc.secret, viaConnect.body.secret, viaRest.body.secret]).size, 3, "every token is new");

    // Each works at once, within its role.
    ok(await r("GET", "/v1/secrets/app/db", undefined, viaGrpc.secret), 200, "the gRPC-made reader reads");
    ok(await r("POST", "/v1/secrets", { name: "app/by-connect-writer", value: "v-cw-1" }, viaConnect.body.secret), 201, "the Connect-made writer writes");
    const verified = await r("POST", "/v1/secrets/app/db/verify", { value: DB_VALUE }, viaRest.body.secret);
    ok(verified, 200, "the REST-made verifier verifies");
    assert.equal(verified.body.valid, true);

    // Listed on every protocol, never with the secret (nor its hash).
    const ids = [viaGrpc.token?.id, viaConnect.body.token.id, viaRest.body.token.id];
    const listedGrpc = await g.tokens.listTokens({ pageSize: 1000 }, o(ADMIN_TOKEN));
    const listedConnect = await cj("TokenService/ListTokens", {});
    const listedRest = await r("GET", "/v1/tokens");
    ok(listedConnect, 200, "Connect JSON ListTokens");
    ok(listedRest, 200, "REST GET /v1/tokens");
    for (const id of ids) {
      assert.ok(listedGrpc.tokens.some((t) => t.id === id), `gRPC ListTokens has ${id}`);
      assert.ok(listedConnect.body.tokens.some((t: { id: string }) => t.id === id), `Connect ListTokens has ${id}`);
      assert.ok(listedRest.body.some((t: { id: string }) => t.id === id), `REST GET /v1/tokens has ${id}`);
    }
    const restView = listedRest.body.find((t: { id: string }) => t.id === viaRest.body.token.id);
    for (const key of ["secret", "hash", "token"]) assert.equal(key in restView, false, `a listed token has no "${key}"`);
    assert.deepEqual([restView.role, restView.label, restView.revoked_at], ["verifier", "rest-verifier", null]);
    const listings = jsonText([listedGrpc, listedConnect.body, listedRest.body]);
    const hashes = secrets.map(tokenHash);
    assert.deepEqual(leaks(listings, secrets), [], "ListTokens never shows a token");
    assert.deepEqual(leaks(listings, hashes), [], "ListTokens never shows a token's hash");

    // Paging through the list over gRPC gives every token once.
    const paged: string[] = [];
    let pageToken = "";
    for (let i = 0; i < 50; i++) {
      const page = await g.tokens.listTokens({ pageSize: 1, pageToken }, o(ADMIN_TOKEN));
      assert.ok(page.tokens.length <= 1);
      paged.push(...page.tokens.map((t) => t.id));
      pageToken = page.nextPageToken;
      if (!pageToken) break;
    }
    assert.deepEqual(paged, listedGrpc.tokens.map((t) => t.id));

    // A bad role is refused, with the field named.
    const bad = restFails(await r("POST", "/v1/tokens", { label: "x", role: "root" }), 400, "invalid_argument");
    assert.deepEqual(bad.violations.map((v: { field: string }) => v.field), ["role"]);
    await rpcFails(g.tokens.createToken({ label: "x" }, o(ADMIN_TOKEN)), Code.InvalidArgument, "CreateToken without a role");
  });

  it("lets a reader read, a writer write and a verifier only verify, on every protocol", async () => {
    const reader = await token({ role: "reader" });
    const writer = await token({ role: "writer" });
    const verifier = await token({ role: "verifier" });

    // REST
    ok(await r("POST", "/v1/secrets", { name: "app/w1", value: "w1-value" }, writer.secret), 201, "writer creates");
    ok(await r("PUT", "/v1/secrets/app/w1", { value: "w1-value-2" }, writer.secret), 200, "writer updates");
    const read = await r("GET", "/v1/secrets/app/w1", undefined, reader.secret);
    ok(read, 200, "reader reads");
    assert.equal(read.body.value, "w1-value-2");
    ok(await r("GET", "/v1/secrets?prefix=app/", undefined, reader.secret), 200, "reader lists");
    restFails(await r("POST", "/v1/secrets", { name: "app/r1", value: "x" }, reader.secret), 403, "permission_denied", "ROLE_NOT_ALLOWED", "reader writes");
    restFails(await r("DELETE", "/v1/secrets/app/w1", undefined, reader.secret), 403, "permission_denied", "ROLE_NOT_ALLOWED", "reader deletes");
    const vr = await r("POST", "/v1/secrets/app/w1/verify", { value: "w1-value-2" }, verifier.secret);
    ok(vr, 200, "verifier verifies");
    assert.deepEqual(vr.body, { valid: true, version: 2 });
    const wrong = await r("POST", "/v1/secrets/app/w1/verify", { value: "nope" }, verifier.secret);
    ok(wrong, 200, "verifier verifies a wrong value");
    assert.deepEqual(wrong.body, { valid: false, version: null });
    for (const [method, path, body] of [
      ["GET", "/v1/secrets/app/w1", undefined],
      ["GET", "/v1/secrets?prefix=app/", undefined],
      ["GET", "/v1/secrets/app/w1/versions", undefined],
      ["PUT", "/v1/secrets/app/w1", { value: "x" }],
      ["POST", "/v1/secrets", { name: "app/v1", value: "x" }],
      ["GET", "/v1/stores", undefined],
      ["GET", "/v1/stores/default/vars", undefined],
    ] as const) {
      restFails(await r(method, path, body, verifier.secret), 403, "permission_denied", "ROLE_NOT_ALLOWED", `verifier ${method} ${path}`);
    }

    // gRPC
    const made = await g.secrets.storeSecret({ name: "app/w2", value: "w2-value" }, o(writer.secret));
    assert.equal(made.version?.version, 1);
    const got = await g.secrets.getSecret({ name: "app/w2" }, o(reader.secret));
    assert.equal(got.value, "w2-value");
    assert.equal(reasonOf(await rpcFails(g.secrets.storeSecret({ name: "app/r2", value: "x" }, o(reader.secret)), Code.PermissionDenied)), "ROLE_NOT_ALLOWED");
    assert.equal((await g.secrets.verifySecret({ name: "app/w2", value: "w2-value" }, o(verifier.secret))).valid, true);
    assert.equal(reasonOf(await rpcFails(g.secrets.getSecret({ name: "app/w2" }, o(verifier.secret)), Code.PermissionDenied)), "ROLE_NOT_ALLOWED");
    assert.equal(reasonOf(await rpcFails(g.secrets.listSecrets({}, o(verifier.secret)), Code.PermissionDenied)), "ROLE_NOT_ALLOWED");
    assert.equal(reasonOf(await rpcFails(g.vars.setVars({ vars: [{ name: "X", value: "1" }] }, o(reader.secret)), Code.PermissionDenied)), "ROLE_NOT_ALLOWED");
    await g.vars.setVars({ vars: [{ name: "X", value: "1" }] }, o(writer.secret));
    assert.equal((await g.vars.getVar({ name: "X" }, o(reader.secret))).var?.value, "1");

    // Connect JSON
    ok(await cj("SecretService/StoreSecret", { name: "app/w3", value: "w3-value" }, writer.secret), 200, "writer stores over Connect");
    const cjRead = await cj("SecretService/GetSecret", { name: "app/w3" }, reader.secret);
    ok(cjRead, 200, "reader reads over Connect");
    assert.equal(cjRead.body.value, "w3-value");
    connectFails(await cj("SecretService/GetSecret", { name: "app/w3" }, verifier.secret), 403, "permission_denied", "ROLE_NOT_ALLOWED");
    const cjVerify = await cj("SecretService/VerifySecret", { name: "app/w3", value: "w3-value" }, verifier.secret);
    ok(cjVerify, 200, "verifier verifies over Connect");
    assert.equal(cjVerify.body.valid, true);
  });

  it("stops a revoked token at once, on every protocol", async () => {
    const t1 = await token({ role: "reader" });
    const t2 = await token({ role: "reader" });
    const t3 = await token({ role: "writer" });
    // Used first, so any cache of the token is warm.
    for (const t of [t1, t2, t3]) {
      ok(await r("GET", "/v1/secrets/app/db", undefined, t.secret), 200, "before revocation (REST)");
      assert.equal((await g.secrets.getSecret({ name: "app/db" }, o(t.secret))).value, DB_VALUE);
    }

    const revoked = await r("DELETE", `/v1/tokens/${t1.id}`);
    ok(revoked, 200, "REST revoke");
    assert.equal(revoked.body.id, t1.id);
    assert.notEqual(revoked.body.revoked_at, null);
    // Reads are open to anonymous callers on loopback: a revoked token must not fall back to that.
    restFails(await r("GET", "/v1/secrets/app/db", undefined, t1.secret), 401, "unauthenticated", "TOKEN_REVOKED", "revoked (REST)");
    assert.equal(reasonOf(await rpcFails(g.secrets.getSecret({ name: "app/db" }, o(t1.secret)), Code.Unauthenticated)), "TOKEN_REVOKED");
    connectFails(await cj("SecretService/GetSecret", { name: "app/db" }, t1.secret), 401, "unauthenticated", "TOKEN_REVOKED");

    const viaGrpc = await g.tokens.revokeToken({ id: t2.id }, o(ADMIN_TOKEN));
    assert.equal(viaGrpc.token?.id, t2.id);
    assert.ok(viaGrpc.token?.revokedAt, "revoked_at is set");
    restFails(await r("GET", "/v1/secrets/app/db", undefined, t2.secret), 401, "unauthenticated", "TOKEN_REVOKED", "revoked over gRPC, used over REST");

    ok(await cj("TokenService/RevokeToken", { id: t3.id }), 200, "Connect JSON revoke");
    assert.equal(reasonOf(await rpcFails(g.secrets.storeSecret({ name: "app/t3", value: "x" }, o(t3.secret)), Code.Unauthenticated)), "TOKEN_REVOKED");

    // Revoking again is fine and changes nothing; an unknown id is not found.
    const again = await r("DELETE", `/v1/tokens/${t1.id}`);
    ok(again, 200, "revoke twice");
    assert.equal(again.body.revoked_at, revoked.body.revoked_at);
    restFails(await r("DELETE", "/v1/tokens/tok_0000000000000000"), 404, "not_found", "TOKEN_NOT_FOUND");
    assert.equal(reasonOf(await rpcFails(g.tokens.revokeToken({ id: "tok_0000000000000000" }, o(ADMIN_TOKEN)), Code.NotFound)), "TOKEN_NOT_FOUND");

    const listed = await r("GET", "/v1/tokens");
    for (const t of [t1, t2, t3]) {
      assert.notEqual(listed.body.find((x: { id: string }) => x.id === t.id)?.revoked_at, null, `${t.id} listed as revoked`);
    }
  });

  it("stops an expired token, and refuses an expiry in the past", async () => {
    const now = Date.now() + offset;
    const viaRest = await token({ role: "reader", expires_at: new Date(now + 60_000).toISOString() });
    const viaGrpc = await g.tokens.createToken({ label: "expiring", role: Role.READER, expiresAt: timestampFromMs(now + 60_000) }, o(ADMIN_TOKEN));
    secrets.push(viaGrpc.secret);
    assert.equal(Number(viaGrpc.token?.expiresAt?.seconds), Math.floor((now + 60_000) / 1000));
    ok(await r("GET", "/v1/secrets/app/db", undefined, viaRest.secret), 200, "before expiry (REST)");
    assert.equal((await g.secrets.getSecret({ name: "app/db" }, o(viaGrpc.secret))).value, DB_VALUE);
    const listed = (await r("GET", "/v1/tokens")).body.find((t: { id: string }) => t.id === viaRest.id);
    assert.equal(Date.parse(listed.expires_at), now + 60_000);

    offset += 61_000;
    restFails(await r("GET", "/v1/secrets/app/db", undefined, viaRest.secret), 401, "unauthenticated", "TOKEN_EXPIRED", "expired (REST)");
    assert.equal(reasonOf(await rpcFails(g.secrets.getSecret({ name: "app/db" }, o(viaGrpc.secret)), Code.Unauthenticated)), "TOKEN_EXPIRED");
    connectFails(await cj("SecretService/GetSecret", { name: "app/db" }, viaRest.secret), 401, "unauthenticated", "TOKEN_EXPIRED");

    const past = restFails(
      await r("POST", "/v1/tokens", { role: "reader", expires_at: new Date(Date.now() + offset - 1000).toISOString() }),
      400,
      "invalid_argument",
    );
    assert.deepEqual(past.violations.map((v: { field: string; reason: string }) => [v.field, v.reason]), [["expires_at", "in_past"]]);
    await rpcFails(
      g.tokens.createToken({ role: Role.READER, expiresAt: timestampFromMs(Date.now() + offset - 1000) }, o(ADMIN_TOKEN)),
      Code.InvalidArgument,
      "CreateToken expiring in the past",
    );
  });

  it("refuses a token from an IP outside its allowed_ips (403), on REST and gRPC", async () => {
    const fenced = await token({ role: "reader", allowed_ips: ["10.1.2.0/24"] });
    const xff = (ip: string) => ({ "x-forwarded-for": ip });

    ok(await r("GET", "/v1/secrets/app/db", undefined, fenced.secret, xff("10.1.2.3")), 200, "from an allowed IP");
    ok(await r("GET", "/v1/secrets?prefix=app/", undefined, fenced.secret, xff("10.1.2.200")), 200, "list from an allowed IP");
    restFails(await r("GET", "/v1/secrets/app/db", undefined, fenced.secret), 403, "permission_denied", "TOKEN_IP_NOT_ALLOWED", "from loopback");
    restFails(await r("GET", "/v1/secrets/app/db", undefined, fenced.secret, xff("10.9.9.9")), 403, "permission_denied", "TOKEN_IP_NOT_ALLOWED", "read from 10.9.9.9");
    // Not only reads: every call the token makes.
    restFails(await r("GET", "/v1/stores", undefined, fenced.secret, xff("10.9.9.9")), 403, "permission_denied", "TOKEN_IP_NOT_ALLOWED", "list stores from 10.9.9.9");

    assert.equal((await g.secrets.getSecret({ name: "app/db" }, o(fenced.secret, xff("10.1.2.3")))).value, DB_VALUE);
    assert.equal(reasonOf(await rpcFails(g.secrets.getSecret({ name: "app/db" }, o(fenced.secret, xff("10.9.9.9"))), Code.PermissionDenied)), "TOKEN_IP_NOT_ALLOWED");
    assert.equal(reasonOf(await rpcFails(g.secrets.getSecret({ name: "app/db" }, o(fenced.secret)), Code.PermissionDenied)), "TOKEN_IP_NOT_ALLOWED");
    assert.equal(reasonOf(await rpcFails(g.stores.listStores({}, o(fenced.secret, xff("10.9.9.9"))), Code.PermissionDenied)), "TOKEN_IP_NOT_ALLOWED");

    // A token's own list does not widen LATCHKEY_ALLOWED_IPS for reads of values.
    const wide = await token({ role: "reader", allowed_ips: ["192.0.2.0/24"] });
    restFails(await r("GET", "/v1/secrets/app/db", undefined, wide.secret, xff("192.0.2.7")), 403, "permission_denied", "IP_NOT_ALLOWED", "read outside LATCHKEY_ALLOWED_IPS");
    ok(await r("GET", "/v1/stores", undefined, wide.secret, xff("192.0.2.7")), 200, "non-read call from the token's IP");

    const bad = restFails(await r("POST", "/v1/tokens", { role: "reader", allowed_ips: ["10.0.0.0/8", "not-an-ip"] }), 400, "invalid_argument");
    assert.deepEqual(bad.violations.map((v: { field: string }) => v.field), ["allowed_ips[1]"]);
  });

  it("keeps a store-scoped token to its stores (OUT_OF_SCOPE 403 / PERMISSION_DENIED)", async () => {
    const scoped = await token({ role: "writer", stores: ["team-a"] });
    ok(await r("POST", "/v1/stores/team-a/secrets", { name: "app/s1", value: "s1-value" }, scoped.secret), 201, "write in scope");
    ok(await r("GET", "/v1/stores/team-a/secrets/app/db", undefined, scoped.secret), 200, "read in scope");
    restFails(await r("POST", "/v1/secrets", { name: "app/s2", value: "x" }, scoped.secret), 403, "permission_denied", "OUT_OF_SCOPE", "write to default");
    restFails(await r("GET", "/v1/secrets/app/db", undefined, scoped.secret), 403, "permission_denied", "OUT_OF_SCOPE", "read from default");
    restFails(await r("GET", "/v1/secrets?prefix=app/", undefined, scoped.secret), 403, "permission_denied", "OUT_OF_SCOPE", "list default");
    restFails(
      await r("POST", "/v1/stores/team-a/secrets/app/s1/copy", { to_store: "default", to_name: "app/s1" }, scoped.secret),
      403,
      "permission_denied",
      "OUT_OF_SCOPE",
      "copy out of scope",
    );
    const stores = await r("GET", "/v1/stores", undefined, scoped.secret);
    ok(stores, 200, "list stores");
    assert.deepEqual(stores.body.map((x: { name: string }) => x.name), ["team-a"]);

    assert.equal((await g.secrets.getSecret({ store: "team-a", name: "app/s1" }, o(scoped.secret))).value, "s1-value");
    assert.equal(reasonOf(await rpcFails(g.secrets.getSecret({ name: "app/db" }, o(scoped.secret)), Code.PermissionDenied)), "OUT_OF_SCOPE");
    assert.equal(reasonOf(await rpcFails(g.secrets.storeSecret({ name: "app/s3", value: "x" }, o(scoped.secret)), Code.PermissionDenied)), "OUT_OF_SCOPE");
    assert.deepEqual((await g.stores.listStores({}, o(scoped.secret))).stores.map((x) => x.name), ["team-a"]);
    connectFails(await cj("SecretService/GetSecret", { name: "app/db" }, scoped.secret), 403, "permission_denied", "OUT_OF_SCOPE");
  });

  it("keeps a prefix-scoped token to its names; listing needs a name_prefix within them", async () => {
    const scoped = await token({ role: "reader", prefixes: ["app/"] });
    ok(await r("GET", "/v1/secrets/app/db", undefined, scoped.secret), 200, "read in scope");
    restFails(await r("GET", "/v1/secrets/other/key", undefined, scoped.secret), 403, "permission_denied", "OUT_OF_SCOPE", "read out of scope");
    restFails(await r("POST", "/v1/secrets/other/key/verify", { value: "x" }, scoped.secret), 403, "permission_denied", "OUT_OF_SCOPE", "verify out of scope");
    restFails(await r("GET", "/v1/secrets", undefined, scoped.secret), 403, "permission_denied", "OUT_OF_SCOPE", "list without a prefix");
    restFails(await r("GET", "/v1/secrets?prefix=ap", undefined, scoped.secret), 403, "permission_denied", "OUT_OF_SCOPE", "list under a wider prefix");
    restFails(await r("GET", "/v1/secrets?prefix=other/", undefined, scoped.secret), 403, "permission_denied", "OUT_OF_SCOPE", "list under another prefix");
    for (const prefix of ["app/", "app/d"]) {
      const listed = await r("GET", `/v1/secrets?prefix=${encodeURIComponent(prefix)}`, undefined, scoped.secret);
      ok(listed, 200, `list under ${prefix}`);
      assert.ok(listed.body.length > 0);
      assert.ok(listed.body.every((x: { name: string }) => x.name.startsWith(prefix)), JSON.stringify(listed.body.map((x: { name: string }) => x.name)));
    }
    restFails(
      await r("POST", "/v1/secrets:batchGet", { names: ["app/db", "other/key"] }, scoped.secret),
      403,
      "permission_denied",
      "OUT_OF_SCOPE",
      "batchGet with a name out of scope",
    );

    assert.equal(reasonOf(await rpcFails(g.secrets.listSecrets({}, o(scoped.secret)), Code.PermissionDenied)), "OUT_OF_SCOPE");
    const page = await g.secrets.listSecrets({ namePrefix: "app/" }, o(scoped.secret));
    assert.ok(page.secrets.length > 0 && page.secrets.every((x) => x.name.startsWith("app/")));
    assert.equal(reasonOf(await rpcFails(g.secrets.getSecret({ name: "other/key" }, o(scoped.secret)), Code.PermissionDenied)), "OUT_OF_SCOPE");
    const cjList = await cj("SecretService/ListSecrets", {}, scoped.secret);
    assert.equal(connectReason(connectFails(cjList, 403, "permission_denied")), "OUT_OF_SCOPE");

    // A prefix-scoped writer cannot rename a secret out of its prefix.
    const writer = await token({ role: "writer", prefixes: ["app/"] });
    ok(await r("POST", "/v1/secrets", { name: "app/mv", value: "mv-value" }, writer.secret), 201, "writer creates in scope");
    restFails(await r("POST", "/v1/secrets/app/mv/rename", { new_name: "other/mv" }, writer.secret), 403, "permission_denied", "OUT_OF_SCOPE", "rename out of scope");
    restFails(
      await r("POST", "/v1/secrets:batchSet", { items: [{ name: "other/b", value: "x" }] }, writer.secret),
      403,
      "permission_denied",
      "OUT_OF_SCOPE",
      "batchSet out of scope",
    );
    restFails(await r("PUT", "/v1/secrets/other/key", { value: "x" }, writer.secret), 403, "permission_denied", "OUT_OF_SCOPE", "update out of scope");
  });

  it("does not let a prefix-scoped writer create a secret outside its prefixes", async () => {
    const writer = await token({ role: "writer", prefixes: ["app/"] });
    ok(await r("POST", "/v1/secrets", { name: "app/created-in-scope", value: "in-scope-1" }, writer.secret), 201, "create in scope");
    restFails(
      await r("POST", "/v1/secrets", { name: "other/created-by-app-writer", value: "x" }, writer.secret),
      403,
      "permission_denied",
      "OUT_OF_SCOPE",
      "REST create out of scope",
    );
    assert.equal(
      reasonOf(await rpcFails(g.secrets.storeSecret({ name: "other/created-by-app-writer-2", value: "x" }, o(writer.secret)), Code.PermissionDenied)),
      "OUT_OF_SCOPE",
    );
    connectFails(
      await cj("SecretService/StoreSecret", { name: "other/created-by-app-writer-3", value: "x" }, writer.secret),
      403,
      "permission_denied",
      "OUT_OF_SCOPE",
    );
    // Nothing outside the prefix was made.
    const listed = await r("GET", "/v1/secrets?prefix=other/created-by-app-writer");
    assert.deepEqual(listed.body.map((x: { name: string }) => x.name), []);
  });

  it("keeps creating and deleting stores within a token's store scope", async () => {
    ok(await r("POST", "/v1/stores", { name: "scope-keep" }), 201, "admin creates scope-keep");
    const scopedAdmin = await token({ role: "admin", stores: ["team-a"] });
    ok(await r("GET", "/v1/stores/team-a", undefined, scopedAdmin.secret), 200, "scoped admin in scope");
    restFails(await r("GET", "/v1/stores/scope-keep", undefined, scopedAdmin.secret), 403, "permission_denied", "OUT_OF_SCOPE", "scoped admin reads another store");
    restFails(await r("DELETE", "/v1/stores/scope-keep", undefined, scopedAdmin.secret), 403, "permission_denied", "OUT_OF_SCOPE", "scoped admin deletes another store");
    ok(await r("GET", "/v1/stores/scope-keep"), 200, "scope-keep is still there");

    const bound = await token({ role: "writer", service: "billing", stores: ["billing-a"] });
    ok(await r("POST", "/v1/stores", { name: "billing-a" }, bound.secret), 201, "bound writer creates its store");
    ok(await r("POST", "/v1/stores", { name: "billing-b" }, BILLING), 201, "the billing service creates another");
    restFails(await r("DELETE", "/v1/stores/billing-b", undefined, bound.secret), 403, "permission_denied", "OUT_OF_SCOPE", "bound writer deletes a store outside its scope");
    await rpcFails(g.stores.deleteStore({ name: "billing-b" }, o(bound.secret)), Code.PermissionDenied, "DeleteStore outside the scope");
    ok(await r("GET", "/v1/stores/billing-b", undefined, BILLING), 200, "billing-b is still there");
    restFails(await r("POST", "/v1/stores", { name: "billing-c" }, bound.secret), 403, "permission_denied", "OUT_OF_SCOPE", "bound writer creates a store outside its scope");
    ok(await r("DELETE", "/v1/stores/billing-a", undefined, bound.secret), 204, "bound writer deletes its own store");
  });

  it("does not let a prefix-scoped token purge the secrets of others along with their store", async () => {
    ok(await r("POST", "/v1/stores", { name: "billing-shared" }, BILLING), 201, "the billing service creates a store");
    ok(await r("POST", "/v1/stores/billing-shared/secrets", { name: "app/mine", value: "mine-value" }, BILLING), 201, "a secret under app/");
    ok(await r("POST", "/v1/stores/billing-shared/secrets", { name: "zzz/not-yours", value: "zzz-value" }, BILLING), 201, "a secret outside app/");
    const prefixed = await token({ role: "writer", service: "billing", prefixes: ["app/"] });
    restFails(await r("GET", "/v1/stores/billing-shared/secrets/zzz/not-yours", undefined, prefixed.secret), 403, "permission_denied", "OUT_OF_SCOPE", "it may not read zzz/");
    restFails(await r("DELETE", "/v1/stores/billing-shared/secrets/zzz/not-yours", undefined, prefixed.secret), 403, "permission_denied", "OUT_OF_SCOPE", "nor delete it");
    restFails(
      await r("DELETE", "/v1/stores/billing-shared?purge=true", undefined, prefixed.secret),
      403,
      "permission_denied",
      "OUT_OF_SCOPE",
      "so it may not purge the store that holds it",
    );
    ok(await r("GET", "/v1/stores/billing-shared/secrets/zzz/not-yours", undefined, BILLING), 200, "the secret outside app/ survives");
  });

  it("lets a service-bound token own stores as LATCHKEY_SERVICE_TOKENS do", async () => {
    const bound = await token({ role: "writer", service: "billing" });
    const search = await token({ role: "writer", service: "search" });
    const plainWriter = await token({ role: "writer" });
    const plainReader = await token({ role: "reader" });

    const created = await r("POST", "/v1/stores", { name: "billing-ledger" }, bound.secret);
    ok(created, 201, "bound writer creates a store");
    assert.equal(created.body.managed_by, "billing");
    ok(await r("POST", "/v1/stores/billing-ledger/secrets", { name: "card", value: "card-value-9" }, bound.secret), 201, "bound writer writes in it");
    // The environment's token of the same service sees it, and the other way round.
    const byEnv = await r("GET", "/v1/stores/billing-ledger/secrets/card", undefined, BILLING);
    ok(byEnv, 200, "LATCHKEY_SERVICE_TOKENS billing reads it");
    assert.equal(byEnv.body.value, "card-value-9");
    ok(await r("POST", "/v1/stores", { name: "billing-env" }, BILLING), 201, "env token creates a store");
    ok(await r("GET", "/v1/stores/billing-env", undefined, bound.secret), 200, "bound token sees the env token's store");
    const listed = await r("GET", "/v1/stores", undefined, bound.secret);
    const names: string[] = listed.body.map((x: { name: string }) => x.name);
    assert.ok(names.includes("billing-env") && names.includes("billing-ledger"), JSON.stringify(names));
    assert.ok(listed.body.every((x: { managed_by: string }) => x.managed_by === "billing"), `only billing's stores: ${JSON.stringify(listed.body)}`);
    assert.ok(!names.includes("default") && !names.includes("team-a"));

    // Everyone else but admins: not found, never forbidden.
    for (const [who, secret] of [
      ["unbound writer", plainWriter.secret],
      ["unbound reader", plainReader.secret],
      ["search writer", search.secret],
      ["anonymous", null],
    ] as const) {
      restFails(await r("GET", "/v1/stores/billing-ledger/secrets/card", undefined, secret), 404, "not_found", "STORE_NOT_FOUND", who);
    }
    restFails(await r("GET", "/v1/secrets/app/db", undefined, bound.secret), 404, "not_found", "STORE_NOT_FOUND", "bound token on the default store");
    const asAdmin = await r("GET", "/v1/stores/billing-ledger");
    ok(asAdmin, 200, "admin sees it");
    assert.equal(asAdmin.body.managed_by, "billing");

    const viaGrpc = await g.stores.createStore({ name: "billing-grpc" }, o(bound.secret));
    assert.equal(viaGrpc.store?.managedBy, "billing");
    assert.equal(reasonOf(await rpcFails(g.stores.getStore({ name: "billing-grpc" }, o(search.secret)), Code.NotFound)), "STORE_NOT_FOUND");
    assert.equal(reasonOf(await rpcFails(g.stores.createStore({ name: "plain-store" }, o(plainWriter.secret)), Code.PermissionDenied)), "ROLE_NOT_ALLOWED");
    await g.stores.deleteStore({ name: "billing-grpc" }, o(bound.secret));
    restFails(await r("POST", "/v1/stores", { name: "x-for-search", managed_by: "search" }, bound.secret), 400, "invalid_argument");
  });

  it("lets only unrestricted admins manage tokens (403 for other roles and limited admins, 401 without a token)", async () => {
    const writer = await token({ role: "writer" });
    const reader = await token({ role: "reader" });
    const verifier = await token({ role: "verifier" });
    // An admin limited to a service, stores or prefixes could otherwise mint itself an unlimited token.
    const boundAdmin = await token({ role: "admin", service: "billing" });
    const storeAdmin = await token({ role: "admin", stores: ["team-a"] });
    const prefixAdmin = await token({ role: "admin", prefixes: ["app/"] });
    const victim = await token({ role: "reader" });
    const before = (await r("GET", "/v1/tokens")).body.length;

    for (const [who, secret] of [
      ["writer", writer.secret],
      ["reader", reader.secret],
      ["verifier", verifier.secret],
      ["billing service", BILLING],
      ["service-bound admin", boundAdmin.secret],
      ["store-scoped admin", storeAdmin.secret],
      ["prefix-scoped admin", prefixAdmin.secret],
    ] as const) {
      restFails(await r("POST", "/v1/tokens", { role: "admin" }, secret), 403, "permission_denied", "ROLE_NOT_ALLOWED", `${who} creates`);
      restFails(await r("GET", "/v1/tokens", undefined, secret), 403, "permission_denied", "ROLE_NOT_ALLOWED", `${who} lists`);
      restFails(await r("DELETE", `/v1/tokens/${victim.id}`, undefined, secret), 403, "permission_denied", "ROLE_NOT_ALLOWED", `${who} revokes`);
      restFails(await r("GET", "/v1/audit", undefined, secret), 403, "permission_denied", "ROLE_NOT_ALLOWED", `${who} reads the audit log`);
      assert.equal(reasonOf(await rpcFails(g.tokens.createToken({ role: Role.ADMIN }, o(secret)), Code.PermissionDenied)), "ROLE_NOT_ALLOWED");
      assert.equal(reasonOf(await rpcFails(g.tokens.listTokens({}, o(secret)), Code.PermissionDenied)), "ROLE_NOT_ALLOWED");
      assert.equal(reasonOf(await rpcFails(g.tokens.revokeToken({ id: victim.id }, o(secret)), Code.PermissionDenied)), "ROLE_NOT_ALLOWED");
      assert.equal(reasonOf(await rpcFails(g.audit.listAuditEvents({}, o(secret)), Code.PermissionDenied)), "ROLE_NOT_ALLOWED");
      connectFails(await cj("TokenService/CreateToken", { role: "ROLE_ADMIN" }, secret), 403, "permission_denied", "ROLE_NOT_ALLOWED");
    }
    restFails(await r("POST", "/v1/tokens", { role: "admin" }, null), 401, "unauthenticated", undefined, "anonymous creates");
    restFails(await r("GET", "/v1/tokens", undefined, null), 401, "unauthenticated", undefined, "anonymous lists");
    await rpcFails(g.tokens.listTokens({}, o(null)), Code.Unauthenticated, "anonymous ListTokens");

    // Nothing was made, and the victim still works.
    assert.equal((await r("GET", "/v1/tokens")).body.length, before);
    ok(await r("GET", "/v1/secrets/app/db", undefined, victim.secret), 200, "the token others tried to revoke");
  });

  it("answers 401 / UNAUTHENTICATED for no or a bad token and 403 / PERMISSION_DENIED for a valid one not allowed", async () => {
    const verifier = await token({ role: "verifier" });
    const bad = "lkt_this-token-was-never-issued-0000000000000";

    // No token: anonymous may read on loopback, not write.
    ok(await r("GET", "/v1/secrets/app/db", undefined, null), 200, "anonymous read on loopback");
    restFails(await r("POST", "/v1/secrets", { name: "app/anon", value: "x" }, null), 401, "unauthenticated", undefined, "anonymous write");
    restFails(await r("GET", "/v1/stores", undefined, null), 401, "unauthenticated", undefined, "anonymous list stores");
    // A bad token is 401 even where no token would do.
    for (const [what, header] of [
      ["unknown bearer token", `Bearer ${bad}`],
      ["Basic scheme", "Basic dXNlcjpwYXNz"],
      ["empty bearer", "Bearer "],
      ["two words", `Bearer ${bad} extra`],
    ] as const) {
      const reply = await r("GET", "/v1/secrets/app/db", undefined, null, { authorization: header });
      restFails(reply, 401, "unauthenticated", undefined, what);
      assert.equal(reply.body.error.includes(bad), false, "the error does not echo the token");
    }
    restFails(await r("POST", "/v1/secrets", { name: "app/bad", value: "x" }, bad), 401, "unauthenticated", undefined, "bad token write");
    // Valid but not allowed.
    restFails(await r("GET", "/v1/secrets/app/db", undefined, verifier.secret), 403, "permission_denied", "ROLE_NOT_ALLOWED", "verifier reads");

    await rpcFails(g.secrets.storeSecret({ name: "app/anon", value: "x" }, o(null)), Code.Unauthenticated, "anonymous StoreSecret");
    await rpcFails(g.stores.listStores({}, o(null)), Code.Unauthenticated, "anonymous ListStores");
    await rpcFails(g.secrets.getSecret({ name: "app/db" }, o(bad)), Code.Unauthenticated, "bad token GetSecret");
    await rpcFails(g.secrets.getSecret({ name: "app/db" }, { ...o(null), headers: { authorization: "Basic dXNlcjpwYXNz" } }), Code.Unauthenticated, "Basic GetSecret");
    const denied = await rpcFails(g.secrets.getSecret({ name: "app/db" }, o(verifier.secret)), Code.PermissionDenied, "verifier GetSecret");
    assert.equal(reasonOf(denied), "ROLE_NOT_ALLOWED");
    assert.equal((await g.secrets.getSecret({ name: "app/db" }, o(null))).value, DB_VALUE, "anonymous GetSecret on loopback");

    connectFails(await cj("StoreService/ListStores", {}, null), 401, "unauthenticated");
    connectFails(await cj("StoreService/ListStores", {}, bad), 401, "unauthenticated");
    connectFails(await cj("SecretService/GetSecret", { name: "app/db" }, verifier.secret), 403, "permission_denied", "ROLE_NOT_ALLOWED");
  });

  it("never shows a token in a listing, a log line or the audit log", async () => {
    assert.ok(secrets.length >= 20, `tokens made in this file: ${secrets.length}`);
    const all = [...secrets, BILLING, ADMIN_TOKEN];
    const hashes = secrets.map(tokenHash);
    const listings = jsonText([
      await g.tokens.listTokens({ pageSize: 1000 }, o(ADMIN_TOKEN)),
      (await cj("TokenService/ListTokens", { pageSize: 1000 })).body,
      (await r("GET", "/v1/tokens")).body,
    ]);
    assert.deepEqual(leaks(listings, all), [], "listings");
    assert.deepEqual(leaks(listings, hashes), [], "listings (hashes)");
    assert.ok(s.logs.length > 50, "the log has lines");
    const logText = s.logs.join("\n");
    assert.deepEqual(leaks(logText, all), [], "log lines");
    assert.deepEqual(leaks(logText, hashes), [], "log lines (hashes)");
    const audit = await auditEntries(s.url);
    assert.ok(audit.some((e) => e.op === "POST /v1/tokens" && e.code === "ok"), "token creation is audited");
    const auditText = JSON.stringify(audit);
    assert.deepEqual(leaks(auditText, all), [], "audit log");
    assert.deepEqual(leaks(auditText, hashes), [], "audit log (hashes)");
  });
});
