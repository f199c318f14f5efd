import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type AccessOptions, createAccessControl, tokenId } from "../../src/auth/access.js";
import type { Action } from "../../src/auth/policy.js";
import { ConfigError, loadConfig } from "../../src/config/config.js";
import { type ErrorCode, LatchkeyError } from "../../src/domain/errors.js";
import { ANONYMOUS, type Principal, type TokenPrincipal } from "../../src/domain/principal.js";

/** Who a caller is: admin, service or anonymous principals from tokens, and the configuration that lists them. */

const ADMIN_TOKEN = "admin-token-aaaaaaaaaaaa";
const BILLING_TOKEN = "billing-token-bbbbbbbbbb";
const BILLING_TOKEN_2 = "billing-token-next-cccc";
const SEARCH_TOKEN = "search-token-dddddddddd";
const KEY_A = Buffer.alloc(32, 1);
const KEY_B = Buffer.alloc(32, 2);

const OPTIONS: AccessOptions = {
  adminTokens: [ADMIN_TOKEN],
  serviceTokens: [
    { service: "billing", token: BILLING_TOKEN },
    { service: "billing", token: BILLING_TOKEN_2 },
    { service: "search", token: SEARCH_TOKEN },
  ],
  allowedIps: ["127.0.0.0/8"],
  trustedProxies: [],
};

const access = (over: Partial<AccessOptions> = {}) => createAccessControl({ ...OPTIONS, ...over });
const LOCAL = "127.0.0.1";
const FAR = "203.0.113.9";
const bearer = (token: string) => `Bearer ${token}`;
type Access = ReturnType<typeof access>;

/** Authenticates the header, then authorizes `action` from `ip`: the principal the call runs as. */
async function principalFor(ac: Access, action: Action, authorization: string | undefined, ip: string | undefined = LOCAL): Promise<Principal> {
  const p = await ac.authenticate(authorization);
  ac.authorize(action, p, ip);
  return p;
}

/** The principal of a token, asserting it is one. */
async function tokenPrincipal(ac: Access, authorization: string): Promise<TokenPrincipal> {
  const p = await ac.authenticate(authorization);
  assert.equal(p.kind, "token");
  return p as TokenPrincipal;
}

function isRefusal(err: unknown, code: ErrorCode): true {
  assert.ok(err instanceof LatchkeyError, `a LatchkeyError, got ${String(err)}`);
  assert.equal(err.code, code, err.message);
  for (const t of [ADMIN_TOKEN, BILLING_TOKEN, SEARCH_TOKEN]) assert.ok(!err.message.includes(t), "no token in the message");
  return true;
}

async function assertRefused(fn: () => Promise<unknown>, code: ErrorCode): Promise<void> {
  await assert.rejects(fn(), (err: unknown) => isRefusal(err, code));
}

function problemsOf(env: Record<string, string>): readonly string[] {
  try {
    loadConfig(env);
  } catch (err) {
    assert.ok(err instanceof ConfigError, `a ConfigError, got ${String(err)}`);
    return err.problems;
  }
  assert.fail(`expected a ConfigError for ${JSON.stringify(env)}`);
}

function assertOneProblem(env: Record<string, string>, variable: string, message?: RegExp): void {
  const problems = problemsOf(env);
  assert.equal(problems.length, 1, `one problem for ${JSON.stringify(env)}: ${problems.join(" | ")}`);
  assert.ok(problems[0]?.startsWith(`${variable}:`), `problem names ${variable}: ${problems[0]}`);
  if (message) assert.match(problems[0] as string, message);
}

describe("authenticate and authorize: principals", () => {
  const ac = access();

  it("an admin token is the admin principal with its token id", async () => {
    for (const action of ["tokens.manage", "secrets.write", "secrets.read"] as const) {
      assert.deepEqual(await principalFor(ac, action, bearer(ADMIN_TOKEN)), {
        kind: "token",
        tokenId: tokenId("admin", ADMIN_TOKEN),
        role: "admin",
        service: null,
        stores: null,
        prefixes: null,
      });
    }
  });

  it("a service token is a writer principal bound to that service, with its token id", async () => {
    for (const action of ["secrets.write", "stores.write", "secrets.read"] as const) {
      assert.deepEqual(await principalFor(ac, action, bearer(BILLING_TOKEN)), {
        kind: "token",
        tokenId: tokenId("service:billing", BILLING_TOKEN),
        role: "writer",
        service: "billing",
        stores: null,
        prefixes: null,
      });
      assert.deepEqual(await principalFor(ac, action, bearer(SEARCH_TOKEN)), {
        kind: "token",
        tokenId: tokenId("service:search", SEARCH_TOKEN),
        role: "writer",
        service: "search",
        stores: null,
        prefixes: null,
      });
    }
  });

  it("a service token may not manage tokens or read the audit log", async () => {
    const p = await ac.authenticate(bearer(BILLING_TOKEN));
    for (const action of ["tokens.manage", "audit.read"] as const) {
      assert.throws(() => ac.authorize(action, p, LOCAL), (err: unknown) => isRefusal(err, "permission_denied"));
    }
  });

  it("a service may have several tokens (rotation): each is the same service, with its own token id", async () => {
    const one = await tokenPrincipal(ac, bearer(BILLING_TOKEN));
    const two = await tokenPrincipal(ac, bearer(BILLING_TOKEN_2));
    assert.equal(one.service, "billing");
    assert.equal(two.service, "billing");
    assert.notEqual(one.tokenId, two.tokenId);
  });

  it("a read without a token, from an allowed IP, is anonymous", async () => {
    assert.deepEqual(await principalFor(ac, "secrets.read", undefined), { kind: "anonymous" });
    assert.equal(await principalFor(ac, "secrets.read", undefined), ANONYMOUS);
    assert.equal(await principalFor(ac, "secrets.read", ""), ANONYMOUS, "an empty header counts as none");
  });

  it("a read with a token that is not valid is unauthenticated, not anonymous", async () => {
    for (const header of [
      bearer("not-a-known-token-000000"),
      bearer(ADMIN_TOKEN.slice(0, -1)),
      bearer(`${ADMIN_TOKEN}x`),
      ADMIN_TOKEN,
      `Basic ${ADMIN_TOKEN}`,
      "Bearer",
      "Bearer ",
      `Bearer ${ADMIN_TOKEN} extra`,
    ]) {
      await assertRefused(() => principalFor(ac, "secrets.read", header), "unauthenticated");
    }
  });

  it("a read from an IP outside the allowlist is refused whatever the token", async () => {
    await assertRefused(() => principalFor(ac, "secrets.read", bearer(ADMIN_TOKEN), FAR), "permission_denied");
    await assertRefused(() => principalFor(ac, "secrets.read", undefined, FAR), "permission_denied");
    await assertRefused(async () => ac.authorize("secrets.read", await ac.authenticate(bearer(BILLING_TOKEN)), undefined), "permission_denied");
  });

  it("writes need a valid token, admin or service, from any IP", async () => {
    await assertRefused(() => principalFor(ac, "secrets.write", undefined), "unauthenticated");
    await assertRefused(() => principalFor(ac, "secrets.write", ""), "unauthenticated");
    await assertRefused(() => principalFor(ac, "secrets.write", bearer("unknown-token-0000000000")), "unauthenticated");
    const admin = await principalFor(ac, "secrets.write", bearer(ADMIN_TOKEN), FAR);
    assert.ok(admin.kind === "token" && admin.role === "admin");
    const service = await principalFor(ac, "secrets.write", bearer(SEARCH_TOKEN), FAR);
    assert.ok(service.kind === "token" && service.service === "search");
  });

  it("accepts the bearer scheme in any case with surrounding blanks", async () => {
    assert.equal((await tokenPrincipal(ac, `bearer ${BILLING_TOKEN}`)).service, "billing");
    assert.equal((await tokenPrincipal(ac, `BEARER \t${ADMIN_TOKEN} `)).role, "admin");
  });

  it("public calls need neither a token nor an allowed IP", async () => {
    ac.authorize("public", ANONYMOUS, undefined);
    ac.authorize("public", ANONYMOUS, FAR);
    ac.authorize("public", await ac.authenticate(bearer(SEARCH_TOKEN)), FAR);
  });

  it("works with no service tokens configured", async () => {
    const adminOnly = access({ serviceTokens: undefined });
    assert.equal((await tokenPrincipal(adminOnly, bearer(ADMIN_TOKEN))).role, "admin");
    await assertRefused(() => adminOnly.authenticate(bearer(BILLING_TOKEN)), "unauthenticated");
  });
});

describe("token ids", () => {
  it("never contain the token, and say what kind of token it is", async () => {
    const ac = access();
    const admin = await tokenPrincipal(ac, bearer(ADMIN_TOKEN));
    const service = await tokenPrincipal(ac, bearer(BILLING_TOKEN));
    assert.match(admin.tokenId, /^admin:[0-9a-f]{12}$/);
    assert.match(service.tokenId, /^service:billing:[0-9a-f]{12}$/);
    for (const [id, token] of [
      [admin.tokenId, ADMIN_TOKEN],
      [service.tokenId, BILLING_TOKEN],
    ] as const) {
      assert.ok(!id.includes(token));
      assert.ok(!id.includes(token.slice(0, 8)), "not even a prefix");
      assert.ok(!id.includes(token.slice(-8)), "nor a suffix");
    }
  });

  it("are stable across access controls and restarts, and differ between tokens", async () => {
    const first = await tokenPrincipal(access(), bearer(SEARCH_TOKEN));
    const second = await tokenPrincipal(access({ adminTokens: ["another-admin-token-0000"] }), bearer(SEARCH_TOKEN));
    assert.equal(first.service, "search");
    assert.equal(first.tokenId, second.tokenId);
    assert.equal(tokenId("admin", ADMIN_TOKEN), tokenId("admin", ADMIN_TOKEN));
    assert.notEqual(tokenId("admin", ADMIN_TOKEN), tokenId("admin", `${ADMIN_TOKEN}x`));
    const ids = new Set([ADMIN_TOKEN, BILLING_TOKEN, BILLING_TOKEN_2, SEARCH_TOKEN].map((t) => tokenId("x", t)));
    assert.equal(ids.size, 4);
  });
});

describe("config: LATCHKEY_SERVICE_TOKENS", () => {
  it("defaults to none", () => {
    assert.deepEqual(loadConfig({}).serviceTokens, []);
    assert.deepEqual(loadConfig({ LATCHKEY_SERVICE_TOKENS: " , " }).serviceTokens, []);
  });

  it("reads service=token pairs, trimmed, in order, frozen", () => {
    const c = loadConfig({
      LATCHKEY_ADMIN_TOKEN: ADMIN_TOKEN,
      LATCHKEY_SERVICE_TOKENS: ` billing=${BILLING_TOKEN} ,search=${SEARCH_TOKEN},billing=${BILLING_TOKEN_2}`,
    });
    assert.deepEqual(c.serviceTokens, [
      { service: "billing", token: BILLING_TOKEN },
      { service: "search", token: SEARCH_TOKEN },
      { service: "billing", token: BILLING_TOKEN_2 },
    ]);
    assert.ok(Object.isFrozen(c.serviceTokens));
  });

  it("splits at the first '=', so a token may contain '='", () => {
    assert.deepEqual(loadConfig({ LATCHKEY_SERVICE_TOKENS: "svc.v2_a-b=abc=def=0123456789xyz" }).serviceTokens, [
      { service: "svc.v2_a-b", token: "abc=def=0123456789xyz" },
    ]);
  });

  it("reports an entry that is not service=token, or names a bad service", () => {
    for (const entry of [
      "billing",
      `=${BILLING_TOKEN}`,
      `-billing=${BILLING_TOKEN}`,
      `bill ing=${BILLING_TOKEN}`,
      `bill/ing=${BILLING_TOKEN}`,
      `${"s".repeat(64)}=${BILLING_TOKEN}`,
    ]) {
      assertOneProblem({ LATCHKEY_SERVICE_TOKENS: entry }, "LATCHKEY_SERVICE_TOKENS", /service=token/);
    }
  });

  it("reports a short or unprintable token, naming the service but not the token", () => {
    for (const token of ["short", "x".repeat(15), "", "token with spaces 01234", "tökén-0123456789abcdef"]) {
      const problems = problemsOf({ LATCHKEY_SERVICE_TOKENS: `billing=${token}` });
      assert.equal(problems.length, 1, problems.join(" | "));
      assert.match(problems[0] as string, /^LATCHKEY_SERVICE_TOKENS: the token of "billing" must be at least 16 printable/);
      if (token.length > 0) assert.ok(!(problems[0] as string).includes(token), "the token is not echoed");
    }
    assert.equal(loadConfig({ LATCHKEY_SERVICE_TOKENS: `billing=${"x".repeat(16)}` }).serviceTokens.length, 1);
  });

  it("reports duplicate tokens between services, and between a service and an admin", () => {
    assertOneProblem(
      { LATCHKEY_SERVICE_TOKENS: `billing=${BILLING_TOKEN},search=${BILLING_TOKEN}` },
      "LATCHKEY_SERVICE_TOKENS",
      /distinct/,
    );
    assertOneProblem(
      { LATCHKEY_SERVICE_TOKENS: `billing=${BILLING_TOKEN},billing=${BILLING_TOKEN}` },
      "LATCHKEY_SERVICE_TOKENS",
      /distinct/,
    );
    assertOneProblem(
      { LATCHKEY_ADMIN_TOKEN: ADMIN_TOKEN, LATCHKEY_SERVICE_TOKENS: `billing=${ADMIN_TOKEN}` },
      "LATCHKEY_SERVICE_TOKENS",
      /distinct/,
    );
  });

  it("does not blame LATCHKEY_SERVICE_TOKENS for an admin token listed twice when it is unset", () => {
    let problems: readonly string[] = [];
    try {
      loadConfig({ LATCHKEY_ADMIN_TOKEN: `${ADMIN_TOKEN},${ADMIN_TOKEN}` });
    } catch (err) {
      assert.ok(err instanceof ConfigError);
      problems = err.problems;
    }
    for (const p of problems) assert.ok(p.startsWith("LATCHKEY_ADMIN_TOKEN:"), `the problem names the variable at fault: ${p}`);
  });

  it("reports every bad entry", () => {
    const problems = problemsOf({
      LATCHKEY_SERVICE_TOKENS: `nope,billing=short,search=${SEARCH_TOKEN}`,
      LATCHKEY_PREVIOUS_MASTER_KEYS: "c2hvcnQ=",
      LATCHKEY_QUOTAS: "widgets=1",
    });
    assert.deepEqual(
      problems.map((p) => p.slice(0, p.indexOf(":"))),
      ["LATCHKEY_SERVICE_TOKENS", "LATCHKEY_SERVICE_TOKENS", "LATCHKEY_PREVIOUS_MASTER_KEYS", "LATCHKEY_QUOTAS"],
    );
  });
});

describe("config: LATCHKEY_PREVIOUS_MASTER_KEYS", () => {
  it("defaults to none", () => {
    assert.deepEqual(loadConfig({}).previousMasterKeys, []);
  });

  it("reads comma-separated base64 keys in order", () => {
    const c = loadConfig({ LATCHKEY_PREVIOUS_MASTER_KEYS: ` ${KEY_A.toString("base64")} , ${KEY_B.toString("base64url")} ` });
    assert.equal(c.previousMasterKeys.length, 2);
    assert.ok(c.previousMasterKeys[0]?.equals(KEY_A));
    assert.ok(c.previousMasterKeys[1]?.equals(KEY_B), "base64url is accepted too");
    assert.ok(Object.isFrozen(c.previousMasterKeys));
  });

  it("reports a key that is not 32 bytes of base64, without echoing it", () => {
    for (const text of [Buffer.alloc(16, 1).toString("base64"), Buffer.alloc(33, 1).toString("base64"), "not base64 at all!"]) {
      assertOneProblem({ LATCHKEY_PREVIOUS_MASTER_KEYS: `${KEY_A.toString("base64")},${text}` }, "LATCHKEY_PREVIOUS_MASTER_KEYS", /32 bytes/);
      assert.ok(!(problemsOf({ LATCHKEY_PREVIOUS_MASTER_KEYS: text })[0] as string).includes(text));
    }
  });
});

describe("config: LATCHKEY_QUOTAS and LATCHKEY_STORE_QUOTAS", () => {
  it("default to no limits", () => {
    const c = loadConfig({});
    assert.deepEqual(c.quotas, { global: {}, perStore: {} });
    assert.ok(Object.isFrozen(c.quotas) && Object.isFrozen(c.quotas.global) && Object.isFrozen(c.quotas.perStore));
  });

  it("read dimension=number pairs", () => {
    const c = loadConfig({
      LATCHKEY_QUOTAS: " stores=10, secrets=1000,versions=5000 ,vars=100,bytes=10485760",
      LATCHKEY_STORE_QUOTAS: "secrets=50,versions=0,vars=7,bytes=999999999999999",
    });
    assert.deepEqual(c.quotas.global, { stores: 10, secrets: 1000, versions: 5000, vars: 100, bytes: 10485760 });
    assert.deepEqual(c.quotas.perStore, { secrets: 50, versions: 0, vars: 7, bytes: 999999999999999 });
  });

  it("report an unknown dimension", () => {
    assertOneProblem({ LATCHKEY_QUOTAS: "widgets=1" }, "LATCHKEY_QUOTAS", /"widgets" is not one of stores, secrets, versions, vars, bytes/);
    assertOneProblem({ LATCHKEY_QUOTAS: "Secrets=1" }, "LATCHKEY_QUOTAS", /"Secrets"/);
    assertOneProblem({ LATCHKEY_STORE_QUOTAS: "widgets=1" }, "LATCHKEY_STORE_QUOTAS", /"widgets"/);
  });

  it("do not allow a per-store limit on stores", () => {
    assertOneProblem({ LATCHKEY_STORE_QUOTAS: "stores=1" }, "LATCHKEY_STORE_QUOTAS", /"stores" is not one of secrets, versions, vars, bytes/);
  });

  it("report a limit that is not a whole number", () => {
    for (const pair of ["secrets=ten", "secrets=-1", "secrets=1.5", "secrets=", "secrets", "secrets=1e3", "secrets=1234567890123456"]) {
      assertOneProblem({ LATCHKEY_QUOTAS: pair }, "LATCHKEY_QUOTAS", /secrets must be a whole number/);
      assertOneProblem({ LATCHKEY_STORE_QUOTAS: pair }, "LATCHKEY_STORE_QUOTAS", /secrets must be a whole number/);
    }
  });

  it("report a pair with more than one '='", () => {
    assertOneProblem({ LATCHKEY_QUOTAS: "secrets=10=20" }, "LATCHKEY_QUOTAS");
    assertOneProblem({ LATCHKEY_STORE_QUOTAS: "bytes=1=" }, "LATCHKEY_STORE_QUOTAS");
  });

  it("report every bad pair of both variables", () => {
    const problems = problemsOf({ LATCHKEY_QUOTAS: "a=1,secrets=x,vars=3", LATCHKEY_STORE_QUOTAS: "stores=2,bytes=1" });
    assert.deepEqual(
      problems.map((p) => p.slice(0, p.indexOf(":"))),
      ["LATCHKEY_QUOTAS", "LATCHKEY_QUOTAS", "LATCHKEY_STORE_QUOTAS"],
    );
  });
});
