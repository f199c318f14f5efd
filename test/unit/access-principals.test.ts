import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type AccessOptions, type Caller, createAccessControl, tokenId } from "../../src/auth/access.js";
import { ConfigError, loadConfig } from "../../src/config/config.js";
import { type ErrorCode, LatchkeyError } from "../../src/domain/errors.js";
import { ANONYMOUS, type Principal } from "../../src/domain/principal.js";

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
const caller = (authorization: string | undefined, ip: string | undefined = LOCAL): Caller => ({ authorization, ip });
const bearer = (token: string) => `Bearer ${token}`;

function assertRefused(fn: () => unknown, code: ErrorCode): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof LatchkeyError, `a LatchkeyError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    for (const t of [ADMIN_TOKEN, BILLING_TOKEN, SEARCH_TOKEN]) assert.ok(!err.message.includes(t), "no token in the message");
    return true;
  });
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

describe("authorize: principals", () => {
  const ac = access();

  it("an admin token is the admin principal with its token id", () => {
    for (const permission of ["manage", "read"] as const) {
      assert.deepEqual(ac.authorize(permission, caller(bearer(ADMIN_TOKEN))), {
        kind: "admin",
        tokenId: tokenId("admin", ADMIN_TOKEN),
      });
    }
  });

  it("a service token is that service's principal with its token id", () => {
    for (const permission of ["manage", "read"] as const) {
      assert.deepEqual(ac.authorize(permission, caller(bearer(BILLING_TOKEN))), {
        kind: "service",
        service: "billing",
        tokenId: tokenId("service:billing", BILLING_TOKEN),
      });
      assert.deepEqual(ac.authorize(permission, caller(bearer(SEARCH_TOKEN))), {
        kind: "service",
        service: "search",
        tokenId: tokenId("service:search", SEARCH_TOKEN),
      });
    }
  });

  it("a service may have several tokens (rotation): each is the same service, with its own token id", () => {
    const one = ac.authorize("manage", caller(bearer(BILLING_TOKEN))) as Extract<Principal, { kind: "service" }>;
    const two = ac.authorize("manage", caller(bearer(BILLING_TOKEN_2))) as Extract<Principal, { kind: "service" }>;
    assert.equal(one.service, "billing");
    assert.equal(two.service, "billing");
    assert.notEqual(one.tokenId, two.tokenId);
  });

  it("a read without a token, from an allowed IP, is anonymous", () => {
    assert.deepEqual(ac.authorize("read", caller(undefined)), { kind: "anonymous" });
    assert.equal(ac.authorize("read", caller(undefined)), ANONYMOUS);
    assert.equal(ac.authorize("read", caller("")), ANONYMOUS, "an empty header counts as none");
  });

  it("a read with a token that is not valid is unauthenticated, not anonymous", () => {
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
      assertRefused(() => ac.authorize("read", caller(header)), "unauthenticated");
    }
  });

  it("a read from an IP outside the allowlist is refused whatever the token", () => {
    assertRefused(() => ac.authorize("read", caller(bearer(ADMIN_TOKEN), FAR)), "permission_denied");
    assertRefused(() => ac.authorize("read", caller(undefined, FAR)), "permission_denied");
    assertRefused(() => ac.authorize("read", { authorization: bearer(BILLING_TOKEN), ip: undefined }), "permission_denied");
  });

  it("manage needs a valid token, admin or service, from any IP", () => {
    assertRefused(() => ac.authorize("manage", caller(undefined)), "unauthenticated");
    assertRefused(() => ac.authorize("manage", caller("")), "unauthenticated");
    assertRefused(() => ac.authorize("manage", caller(bearer("unknown-token-0000000000"))), "unauthenticated");
    assert.equal(ac.authorize("manage", caller(bearer(ADMIN_TOKEN), FAR)).kind, "admin");
    assert.equal(ac.authorize("manage", caller(bearer(SEARCH_TOKEN), FAR)).kind, "service");
  });

  it("accepts the bearer scheme in any case with surrounding blanks", () => {
    assert.equal(ac.authorize("manage", caller(`bearer ${BILLING_TOKEN}`)).kind, "service");
    assert.equal(ac.authorize("manage", caller(`BEARER \t${ADMIN_TOKEN} `)).kind, "admin");
  });

  it("public calls are anonymous without looking at the token", () => {
    assert.equal(ac.authorize("public", { authorization: undefined, ip: undefined }), ANONYMOUS);
    assert.equal(ac.authorize("public", caller(bearer("garbage"), FAR)), ANONYMOUS);
  });

  it("works with no service tokens configured", () => {
    const adminOnly = access({ serviceTokens: undefined });
    assert.equal(adminOnly.authorize("manage", caller(bearer(ADMIN_TOKEN))).kind, "admin");
    assertRefused(() => adminOnly.authorize("manage", caller(bearer(BILLING_TOKEN))), "unauthenticated");
  });
});

describe("token ids", () => {
  it("never contain the token, and say what kind of token it is", () => {
    const ac = access();
    const admin = ac.authorize("manage", caller(bearer(ADMIN_TOKEN)));
    const service = ac.authorize("manage", caller(bearer(BILLING_TOKEN)));
    assert.ok(admin.kind === "admin" && service.kind === "service");
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

  it("are stable across access controls and restarts, and differ between tokens", () => {
    const first = access().authorize("manage", caller(bearer(SEARCH_TOKEN)));
    const second = access({ adminTokens: ["another-admin-token-0000"] }).authorize("manage", caller(bearer(SEARCH_TOKEN)));
    assert.ok(first.kind === "service" && second.kind === "service");
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
