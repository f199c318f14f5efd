import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type Action, can, IP_FENCED_ACTIONS, REST_POLICY, RPC_POLICY } from "../../src/auth/policy.js";
import { LatchkeyError } from "../../src/domain/errors.js";
import {
  ANONYMOUS,
  adminPrincipal,
  canSee,
  checkPrefixScope,
  checkScope,
  isAdmin,
  ownerFor,
  type Principal,
  ROLES,
  type Role,
  type TokenPrincipal,
} from "../../src/domain/principal.js";
import { newStoreRecord, type StoreRecord } from "../../src/domain/store.js";

/** The access policy as pure rules: which role may do what, which actions are fenced by IP, and token scopes. */

const T0 = Date.UTC(2030, 0, 1);

/** Every action there is; the policy tables may use no other. */
const ACTIONS: readonly Action[] = [
  "public",
  "secrets.read",
  "secrets.verify",
  "secrets.list",
  "secrets.write",
  "vars.read",
  "vars.write",
  "stores.read",
  "stores.write",
  "tokens.manage",
  "audit.read",
];

function token(role: Role, over: Partial<Omit<TokenPrincipal, "kind" | "role">> = {}): TokenPrincipal {
  return { kind: "token", tokenId: `tok_${role}`, role, service: null, stores: null, prefixes: null, ...over };
}

/** What each role may do, bound to a service or not. */
const EXPECTED: Record<Role, { unbound: readonly Action[]; bound: readonly Action[] }> = {
  // An admin bound to a service (or scoped) may not manage tokens or read the whole audit log: that would let it
  // mint itself an unlimited token.
  admin: { unbound: ACTIONS, bound: ACTIONS.filter((a) => a !== "tokens.manage" && a !== "audit.read") },
  writer: {
    unbound: ["public", "secrets.read", "secrets.verify", "secrets.list", "secrets.write", "vars.read", "vars.write", "stores.read"],
    bound: [
      "public",
      "secrets.read",
      "secrets.verify",
      "secrets.list",
      "secrets.write",
      "vars.read",
      "vars.write",
      "stores.read",
      "stores.write",
    ],
  },
  reader: {
    unbound: ["public", "secrets.read", "secrets.verify", "secrets.list", "vars.read", "stores.read"],
    bound: ["public", "secrets.read", "secrets.verify", "secrets.list", "vars.read", "stores.read"],
  },
  verifier: { unbound: ["public", "secrets.verify"], bound: ["public", "secrets.verify"] },
};

const allowed = (p: Principal) => ACTIONS.filter((a) => can(p, a));

function isOutOfScope(err: unknown, message?: RegExp): true {
  assert.ok(err instanceof LatchkeyError, `a LatchkeyError, got ${String(err)}`);
  assert.equal(err.code, "permission_denied", err.message);
  assert.equal(err.reason, "OUT_OF_SCOPE");
  if (message) assert.match(err.message, message);
  return true;
}

function store(name: string, managedBy: string | null, state: StoreRecord["state"] = "active"): StoreRecord {
  return { ...newStoreRecord({ name, description: "", managedBy }, T0), state };
}

describe("can: roles × actions", () => {
  it("knows every action the policy tables use", () => {
    const used = new Set([...Object.values(RPC_POLICY), ...Object.values(REST_POLICY)]);
    assert.deepEqual([...used].filter((a) => !ACTIONS.includes(a)), []);
    for (const a of ACTIONS) if (a !== "public") assert.ok(used.has(a), `${a} guards some call`);
    assert.deepEqual([...ROLES], ["admin", "writer", "reader", "verifier"]);
  });

  for (const role of ROLES) {
    it(`${role}: unbound and bound to a service`, () => {
      assert.deepEqual(allowed(token(role)), EXPECTED[role].unbound, `${role}, no service`);
      assert.deepEqual(allowed(token(role, { service: "billing" })), EXPECTED[role].bound, `${role} of billing`);
    });
  }

  it("admin may do everything, the bootstrap admin included", () => {
    assert.deepEqual(allowed(adminPrincipal("admin:000000000000")), ACTIONS);
  });

  it("writer may do all but manage tokens and read the audit log; stores.write only when bound to a service", () => {
    for (const service of [null, "billing"]) {
      const w = token("writer", { service });
      assert.equal(can(w, "tokens.manage"), false);
      assert.equal(can(w, "audit.read"), false);
      assert.equal(can(w, "secrets.write"), true);
      assert.equal(can(w, "vars.write"), true);
    }
    assert.equal(can(token("writer"), "stores.write"), false);
    assert.equal(can(token("writer", { service: "billing" }), "stores.write"), true);
  });

  it("a scoped admin may not manage tokens or read the audit log", () => {
    for (const t of [token("admin", { stores: ["a"] }), token("admin", { prefixes: ["ci/"] })]) {
      assert.equal(can(t, "tokens.manage"), false);
      assert.equal(can(t, "audit.read"), false);
      assert.equal(can(t, "secrets.write"), true);
    }
  });

  it("scopes do not change what a role may do (they are checked per store and name)", () => {
    const scoped = token("writer", { service: "billing", stores: ["a"], prefixes: ["ci/"] });
    assert.deepEqual(allowed(scoped), EXPECTED.writer.bound);
  });

  it("reader may read, list and verify, never change anything", () => {
    for (const a of ["secrets.write", "vars.write", "stores.write", "tokens.manage", "audit.read"] as const) {
      assert.equal(can(token("reader", { service: "billing" }), a), false, a);
    }
  });

  it("verifier may only verify", () => {
    assert.deepEqual(allowed(token("verifier")), ["public", "secrets.verify"]);
    assert.equal(can(token("verifier"), "secrets.read"), false);
  });

  it("anonymous may call public, read and verify secrets and read vars; nothing else", () => {
    assert.deepEqual(allowed(ANONYMOUS), ["public", "secrets.read", "secrets.verify", "vars.read"]);
  });
});

describe("IP-fenced actions", () => {
  it("are the reads of values: secrets.read, secrets.verify, vars.read", () => {
    assert.deepEqual([...IP_FENCED_ACTIONS].sort(), ["secrets.read", "secrets.verify", "vars.read"]);
  });

  it("are exactly what anonymous callers may do besides public", () => {
    assert.deepEqual(
      allowed(ANONYMOUS).filter((a) => a !== "public"),
      ACTIONS.filter((a) => IP_FENCED_ACTIONS.has(a)),
    );
  });

  it("guard GetSecret, VerifySecret, WatchSecrets, BatchGetSecrets, GetVar and ListVars", () => {
    for (const m of ["SecretService.GetSecret", "SecretService.VerifySecret", "SecretService.WatchSecrets", "SecretService.BatchGetSecrets", "VarService.GetVar", "VarService.ListVars"]) {
      const action = RPC_POLICY[`latchkey.v1.${m}`];
      assert.ok(action && IP_FENCED_ACTIONS.has(action), m);
    }
    for (const m of ["SecretService.ListSecrets", "SecretService.StoreSecret", "StoreService.GetStore", "TokenService.CreateToken"]) {
      const action = RPC_POLICY[`latchkey.v1.${m}`];
      assert.ok(action && !IP_FENCED_ACTIONS.has(action), m);
    }
  });
});

describe("checkScope", () => {
  it("lets unscoped tokens and anonymous callers through", () => {
    checkScope(token("writer"), "any", "thing");
    checkScope(adminPrincipal("admin:x"), "any", "thing");
    checkScope(ANONYMOUS, "any", "thing");
  });

  it("confines a store-scoped token to its stores", () => {
    const p = token("reader", { stores: ["payments", "search"] });
    checkScope(p, "payments");
    checkScope(p, "search", "any/name");
    for (const s of ["default", "payment", "payments2", "PAYMENTS"]) {
      assert.throws(() => checkScope(p, s), (err: unknown) => isOutOfScope(err, new RegExp(`store "${s}"`)));
    }
  });

  it("confines a prefix-scoped token to names under its prefixes", () => {
    const p = token("writer", { prefixes: ["ci/", "deploy/"] });
    checkScope(p, "default", "ci/token");
    checkScope(p, "default", "deploy/key");
    checkScope(p, "default", "ci/");
    checkScope(p, "default"); // without a name, only the store is checked
    for (const n of ["ci", "c", "prod/ci/token", "Ci/token", "deployment"]) {
      assert.throws(() => checkScope(p, "default", n), (err: unknown) => isOutOfScope(err, new RegExp(`"${n}"`)));
    }
  });

  it("checks the store before the name", () => {
    const p = token("writer", { stores: ["a"], prefixes: ["ci/"] });
    checkScope(p, "a", "ci/x");
    assert.throws(() => checkScope(p, "b", "ci/x"), (err: unknown) => isOutOfScope(err, /store "b"/));
    assert.throws(() => checkScope(p, "a", "prod/x"), (err: unknown) => isOutOfScope(err, /"prod\/x"/));
  });
});

describe("checkPrefixScope", () => {
  const p = token("reader", { stores: ["a"], prefixes: ["ci/", "deploy/"] });

  it("lets a list under one of the token's prefixes through", () => {
    checkPrefixScope(p, "a", "ci/");
    checkPrefixScope(p, "a", "ci/sub/");
    checkPrefixScope(p, "a", "deploy/x");
  });

  it("refuses a list wider than the token's prefixes, telling it which to pass", () => {
    for (const prefix of ["", "c", "ci", "prod/"]) {
      assert.throws(() => checkPrefixScope(p, "a", prefix), (err: unknown) => isOutOfScope(err, /"ci\/", "deploy\/"/));
    }
  });

  it("checks the store scope too", () => {
    assert.throws(() => checkPrefixScope(p, "b", "ci/"), (err: unknown) => isOutOfScope(err, /store "b"/));
  });

  it("lets an unscoped token and anonymous callers list anything", () => {
    checkPrefixScope(token("reader"), "any", "");
    checkPrefixScope(ANONYMOUS, "any", "");
    checkPrefixScope(token("reader", { stores: ["any"] }), "any", "");
  });
});

describe("canSee and ownerFor: service-bound and unbound admins", () => {
  const unowned = store("default", null);
  const billing = store("billing-prod", "billing");
  const search = store("search-idx", "search");
  const ADMIN = adminPrincipal("admin:000000000000");
  const BILLING_ADMIN = token("admin", { service: "billing" });

  it("an unbound admin is an admin and sees every active store", () => {
    assert.equal(isAdmin(ADMIN), true);
    for (const s of [unowned, billing, search]) assert.equal(canSee(ADMIN, s), true, s.name);
  });

  it("an admin bound to a service is not an admin of everything: it sees only that service's stores", () => {
    assert.equal(isAdmin(BILLING_ADMIN), false);
    assert.equal(canSee(BILLING_ADMIN, billing), true);
    assert.equal(canSee(BILLING_ADMIN, search), false);
    assert.equal(canSee(BILLING_ADMIN, unowned), false, "not even unowned stores such as default");
  });

  it("nobody sees a purging store", () => {
    for (const p of [ADMIN, BILLING_ADMIN, token("writer", { service: "billing" }), ANONYMOUS]) {
      assert.equal(canSee(p, store("billing-prod", "billing", "purging")), false);
      assert.equal(canSee(p, store("default", null, "purging")), false);
    }
  });

  it("unbound tokens of other roles see only unowned stores, like anonymous callers", () => {
    for (const role of ["writer", "reader", "verifier"] as const) {
      assert.equal(canSee(token(role), unowned), true, role);
      assert.equal(canSee(token(role), billing), false, role);
    }
  });

  it("a bound admin's stores go to its service; an unbound admin's to whichever it names", () => {
    assert.equal(ownerFor(BILLING_ADMIN, undefined), "billing");
    assert.equal(ownerFor(BILLING_ADMIN, "search"), "billing");
    assert.equal(ownerFor(ADMIN, "search"), "search");
    assert.equal(ownerFor(ADMIN, undefined), null);
  });
});
