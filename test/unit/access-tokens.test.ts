import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, afterEach, beforeEach, describe, it } from "node:test";
import { type AccessControl, type AccessOptions, createAccessControl, tokenHash } from "../../src/auth/access.js";
import { type ErrorCode, LatchkeyError } from "../../src/domain/errors.js";
import { adminPrincipal, type Principal, type TokenPrincipal } from "../../src/domain/principal.js";
import type { NewToken } from "../../src/domain/token.js";
import { createTokenManager, type TokenManager } from "../../src/service/tokens.js";
import { createSqliteStorage } from "../../src/storage/sqlite/sqlite-storage.js";
import type { Storage } from "../../src/storage/storage.js";

/** Tokens made with CreateToken, end to end through real SQLite storage: stored as hashes, revoked, expired, fenced. */

const T0 = Date.UTC(2030, 0, 1);
const SEC = 1000;
const CACHE_MS = 5000;
const ADMIN = adminPrincipal("admin:aaaaaaaaaaaa");
const LOCAL = "127.0.0.1";

const root = mkdtempSync(join(tmpdir(), "latchkey-tokens-"));
after(() => rmSync(root, { recursive: true, force: true }));

let counter = 0;
let t = T0;
const clock = { now: () => t };
let file: string;
let storage: Storage;
let opened: Storage[] = [];
let access: AccessControl;
let tokens: TokenManager;

function accessOver(tokensFrom: Storage, over: Partial<AccessOptions> = {}): AccessControl {
  return createAccessControl({
    adminTokens: ["bootstrap-admin-token-0000"],
    allowedIps: ["127.0.0.0/8", "10.0.0.0/8"],
    trustedProxies: [],
    tokens: tokensFrom,
    clock,
    tokenCacheMs: CACHE_MS,
    ...over,
  });
}

function open(): Storage {
  const s = createSqliteStorage(file);
  opened.push(s);
  return s;
}

const bearer = (secret: string) => `Bearer ${secret}`;

function isError(err: unknown, code: ErrorCode, reason?: string): true {
  assert.ok(err instanceof LatchkeyError, `a LatchkeyError, got ${String(err)}`);
  assert.equal(err.code, code, err.message);
  if (reason !== undefined) assert.equal(err.reason, reason, err.message);
  return true;
}

async function assertViolation(p: Promise<unknown>, field: string, reason: string): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    isError(err, "invalid_argument");
    const e = err as LatchkeyError;
    assert.deepEqual(
      e.violations.map((v) => [v.field, v.reason]),
      [[field, reason]],
    );
    return true;
  });
}

async function make(input: Partial<NewToken> = {}, maker: Principal = ADMIN) {
  return tokens.create(maker, { label: "test", role: "reader", ...input });
}

beforeEach(() => {
  t = T0;
  file = join(root, `db-${++counter}`, "latchkey.db");
  storage = open();
  access = accessOver(storage);
  tokens = createTokenManager({ storage, clock, onRevoke: (hash) => access.forgetToken(hash) });
});

afterEach(async () => {
  for (const s of opened.splice(0)) await s.close();
});

describe("tokens made with CreateToken", () => {
  it("authenticate to their principal: role, service, stores and prefixes", async () => {
    const { token, secret } = await make({
      label: "payments ci",
      role: "writer",
      service: "billing",
      stores: ["payments", "payments-eu"],
      prefixes: ["ci/", "deploy/"],
    });
    assert.match(secret, /^lkt_[A-Za-z0-9_-]{43}$/);
    assert.match(token.id, /^tok_[0-9a-f]{16}$/);
    assert.equal(token.createdBy, ADMIN.tokenId);
    assert.equal(token.createdAt, T0);
    assert.equal(token.hash, tokenHash(secret));

    const p = await access.authenticate(bearer(secret));
    assert.deepEqual(p, {
      kind: "token",
      tokenId: token.id,
      role: "writer",
      service: "billing",
      stores: ["payments", "payments-eu"],
      prefixes: ["ci/", "deploy/"],
      allowedIps: null,
    });
    access.authorize("secrets.write", p, LOCAL);
    access.authorize("stores.write", p, LOCAL);
    assert.throws(() => access.authorize("tokens.manage", p, LOCAL), (err: unknown) => isError(err, "permission_denied", "ROLE_NOT_ALLOWED"));
  });

  it("leave unset scopes as null (everything), and empty lists count as unset", async () => {
    const { token, secret } = await make({ role: "verifier", stores: [], prefixes: [], allowedIps: [] });
    assert.deepEqual(await access.authenticate(bearer(secret)), {
      kind: "token",
      tokenId: token.id,
      role: "verifier",
      service: null,
      stores: null,
      prefixes: null,
      allowedIps: null,
    });
  });

  it("are found by any access control on the same data file", async () => {
    const { token, secret } = await make({ role: "reader" });
    const elsewhere = accessOver(open());
    assert.equal(((await elsewhere.authenticate(bearer(secret))) as TokenPrincipal).tokenId, token.id);
  });

  it("an unknown token, or one with a character changed, is unauthenticated", async () => {
    const { secret } = await make();
    for (const wrong of [`${secret}x`, secret.slice(0, -1), `lkt_${"A".repeat(43)}`]) {
      await assert.rejects(access.authenticate(bearer(wrong)), (err: unknown) => isError(err, "unauthenticated"));
    }
  });

  it("never store the secret: the data file holds only its hash", async () => {
    const made = await make({ role: "admin" });
    const second = await make({ role: "writer", service: "billing" });
    const files = () => [file, `${file}-wal`, `${file}-shm`].filter((f) => existsSync(f)).map((f) => readFileSync(f));
    const search = (needle: string) => files().filter((bytes) => bytes.includes(needle)).length;

    // While open (the rows may still be in the WAL) and after a checkpoint on close.
    for (const phase of ["open", "closed"]) {
      if (phase === "closed") for (const s of opened.splice(0)) await s.close();
      for (const { secret, token } of [made, second]) {
        assert.equal(search(secret), 0, `${phase}: the secret is not in the data files`);
        assert.equal(search(secret.slice(4)), 0, `${phase}: nor its random part`);
        assert.equal(search(Buffer.from(secret).toString("base64")), 0, `${phase}: nor its base64`);
        assert.ok(search(token.hash) > 0, `${phase}: its hash is`);
      }
    }
    // What the API lists never carries it either.
    const reopened = open();
    const listed = JSON.stringify(await reopened.listTokens({ limit: 10 }));
    assert.ok(!listed.includes(made.secret) && !listed.includes(second.secret));
    assert.equal((await reopened.findTokenByHash(tokenHash(made.secret)))?.id, made.token.id);
  });

  it("a revoked token stops working at once in the process that revoked it", async () => {
    const { token, secret } = await make({ role: "writer" });
    await access.authenticate(bearer(secret)); // cached now
    const revoked = await tokens.revoke(token.id);
    assert.equal(revoked.revokedAt, T0);
    await assert.rejects(access.authenticate(bearer(secret)), (err: unknown) => isError(err, "unauthenticated", "TOKEN_REVOKED"));
    // Revoking again is fine; revoking a token that never existed is not.
    assert.equal((await tokens.revoke(token.id)).revokedAt, T0);
    await assert.rejects(tokens.revoke("tok_0000000000000000"), (err: unknown) => isError(err, "not_found", "TOKEN_NOT_FOUND"));
  });

  it("a revoked token stops working elsewhere within the token cache time", async () => {
    const { token, secret } = await make({ role: "writer" });
    const elsewhere = accessOver(open());
    await elsewhere.authenticate(bearer(secret)); // looked up and cached at T0
    t += SEC;
    await tokens.revoke(token.id);

    // The other process trusts what it read for at most CACHE_MS...
    t = T0 + CACHE_MS - 1;
    await elsewhere.authenticate(bearer(secret));
    // ...then reads the token again.
    t = T0 + CACHE_MS;
    await assert.rejects(elsewhere.authenticate(bearer(secret)), (err: unknown) => isError(err, "unauthenticated", "TOKEN_REVOKED"));
    // A process that never saw the token refuses it at once.
    await assert.rejects(accessOver(open()).authenticate(bearer(secret)), (err: unknown) => isError(err, "unauthenticated", "TOKEN_REVOKED"));
  });

  it("an expired token is unauthenticated TOKEN_EXPIRED, from the moment it expires", async () => {
    const { secret } = await make({ role: "reader", expiresAt: T0 + 60 * SEC });
    await access.authenticate(bearer(secret));
    t = T0 + 60 * SEC - 1;
    await access.authenticate(bearer(secret));
    t = T0 + 60 * SEC;
    await assert.rejects(access.authenticate(bearer(secret)), (err: unknown) => isError(err, "unauthenticated", "TOKEN_EXPIRED"));
    t += 3600 * SEC;
    await assert.rejects(access.authenticate(bearer(secret)), (err: unknown) => isError(err, "unauthenticated", "TOKEN_EXPIRED"));
  });

  it("a token's own allowed IPs: permission_denied TOKEN_IP_NOT_ALLOWED from anywhere else", async () => {
    const { secret } = await make({ role: "writer", allowedIps: ["10.1.0.0/16", "2001:db8::1"] });
    const p = await access.authenticate(bearer(secret));
    access.authorize("secrets.write", p, "10.1.2.3");
    access.authorize("secrets.write", p, "2001:db8::1");
    access.authorize("secrets.read", p, "10.1.255.255");
    for (const ip of ["10.2.0.1", "192.0.2.1", "2001:db8::2", undefined]) {
      assert.throws(
        () => access.authorize("secrets.write", p, ip),
        (err: unknown) => isError(err, "permission_denied", "TOKEN_IP_NOT_ALLOWED"),
        String(ip),
      );
    }
    // Inside LATCHKEY_ALLOWED_IPS but outside the token's own list: still refused.
    assert.throws(() => access.authorize("secrets.read", p, LOCAL), (err: unknown) => isError(err, "permission_denied", "TOKEN_IP_NOT_ALLOWED"));
    // Public calls ignore both lists.
    access.authorize("public", p, "192.0.2.1");
  });

  it("a token's allowed IPs do not widen the read allowlist", async () => {
    const { secret } = await make({ role: "reader", allowedIps: ["192.0.2.0/24"] });
    const p = await access.authenticate(bearer(secret));
    access.authorize("secrets.list", p, "192.0.2.7");
    assert.throws(() => access.authorize("secrets.read", p, "192.0.2.7"), (err: unknown) => isError(err, "permission_denied", "IP_NOT_ALLOWED"));
  });

  it("bootstrap tokens still work beside stored ones", async () => {
    const p = await access.authenticate(bearer("bootstrap-admin-token-0000"));
    assert.equal((p as TokenPrincipal).role, "admin");
  });

  it("without a token store, only bootstrap tokens work", async () => {
    const { secret } = await make();
    const bootstrapOnly = accessOver(storage, { tokens: undefined });
    await assert.rejects(bootstrapOnly.authenticate(bearer(secret)), (err: unknown) => isError(err, "unauthenticated"));
  });
});

describe("validation of new tokens", () => {
  it("refuses a role that is not admin, writer, reader or verifier", async () => {
    for (const role of ["superuser", "", "Admin", "read"]) await assertViolation(make({ role }), "role", "enum");
  });

  it("refuses an allowed IP that is not an IP or CIDR, naming its index", async () => {
    for (const bad of ["10.0.0.0/33", "not-an-ip", "10.0.0.1/8/8", "2001:db8::/129", "10.0.0.0/", "10.0.0.0/x", ""]) {
      await assertViolation(make({ allowedIps: ["127.0.0.1", bad] }), "allowed_ips[1]", "pattern");
    }
  });

  it("refuses an expiry that is not in the future", async () => {
    await assertViolation(make({ expiresAt: T0 }), "expires_at", "in_past");
    await assertViolation(make({ expiresAt: T0 - 1 }), "expires_at", "in_past");
    await make({ expiresAt: T0 + 1 });
  });

  it("refuses more than 100 stores or prefixes, and bad store names", async () => {
    const many = (n: number) => Array.from({ length: n }, (_, i) => `s${i}`);
    await make({ stores: many(100), prefixes: many(100) });
    await assertViolation(make({ stores: many(101) }), "stores", "too_many");
    await assertViolation(make({ prefixes: many(101) }), "prefixes", "too_many");
    await assertViolation(make({ stores: ["ok", "-bad"] }), "stores[1]", "pattern");
    await assertViolation(make({ prefixes: ["x".repeat(257)] }), "prefixes[0]", "too_long");
  });

  it("refuses a long label and a bad service name", async () => {
    await assertViolation(make({ label: "l".repeat(129) }), "label", "too_long");
    await assertViolation(make({ service: "bill ing" }), "service", "pattern");
  });

  it("stores nothing when refused", async () => {
    await make({ role: "superuser" }).catch(() => undefined);
    await make({ allowedIps: ["nope"] }).catch(() => undefined);
    assert.deepEqual(await storage.listTokens({ limit: 10 }), []);
  });
});

describe("tokens made by a token that is itself limited", () => {
  // Only an admin may manage tokens (policy), but an admin token can be bound to a service or scoped; the tokens it
  // makes must not be wider than it is, or it could mint itself an unbound admin token.
  const BILLING_ADMIN: Principal = {
    kind: "token",
    tokenId: "tok_billingadmin0000",
    role: "admin",
    service: "billing",
    stores: null,
    prefixes: null,
  };
  const SCOPED_ADMIN: Principal = { ...adminPrincipal("tok_scopedadmin00000"), stores: ["payments"], prefixes: ["ci/"] };

  it("an admin bound to a service cannot make a token that is not bound to it", async () => {
    for (const input of [{ role: "admin" }, { role: "admin", service: "search" }, { role: "reader" }]) {
      await assert.rejects(make(input, BILLING_ADMIN), (err: unknown) => isError(err, "permission_denied"), JSON.stringify(input));
    }
    assert.deepEqual(await storage.listTokens({ limit: 10 }), [], "no token was made");
  });

  it("a scoped admin cannot make a token with wider scopes", async () => {
    for (const input of [{ role: "admin" }, { role: "reader", stores: ["payments"] }, { role: "reader", prefixes: ["ci/"] }]) {
      await assert.rejects(make(input, SCOPED_ADMIN), (err: unknown) => isError(err, "permission_denied"), JSON.stringify(input));
    }
    assert.deepEqual(await storage.listTokens({ limit: 10 }), [], "no token was made");
  });
});
