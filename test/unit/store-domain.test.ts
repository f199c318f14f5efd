import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { LatchkeyError } from "../../src/domain/errors.js";
import { ANONYMOUS, adminPrincipal, canSee, ownerFor, type Principal } from "../../src/domain/principal.js";
import { LIMITS } from "../../src/domain/secret.js";
import { newStoreRecord, type StoreRecord, validateStoreName } from "../../src/domain/store.js";
import { addUsage, checkQuota, type Usage, ZERO_USAGE } from "../../src/domain/usage.js";
import { setVar, validateVar, type VarRecord } from "../../src/domain/vars.js";

/** The pure rules of stores, principals, vars and usage. */

const T0 = Date.UTC(2030, 0, 1);

const ADMIN: Principal = adminPrincipal("admin:000000000000");
/** A service's token, as LATCHKEY_SERVICE_TOKENS makes it: a writer bound to the service. */
const service = (name: string, tokenId = `service:${name}:000000000000`): Principal => ({
  kind: "token",
  tokenId,
  role: "writer",
  service: name,
  stores: null,
  prefixes: null,
});
const BILLING = service("billing");
const SEARCH = service("search");

/** Asserts `fn` throws one invalid_argument violation of `field` breaking `reason`. */
function assertViolation(fn: () => unknown, field: string, reason: string): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof LatchkeyError, `a LatchkeyError, got ${String(err)}`);
    assert.equal(err.code, "invalid_argument");
    assert.equal(err.violations.length, 1, JSON.stringify(err.violations));
    assert.equal(err.violations[0]?.field, field);
    assert.equal(err.violations[0]?.reason, reason);
    assert.equal(err.violations[0]?.message, err.message);
    return true;
  });
}

function store(over: Partial<StoreRecord> = {}): StoreRecord {
  return { ...newStoreRecord({ name: "payments", description: "", managedBy: null }, T0), ...over };
}

const usage = (u: Partial<Usage>): Usage => addUsage(ZERO_USAGE, u);

function assertQuotaExceeded(fn: () => unknown, message?: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof LatchkeyError, `a LatchkeyError, got ${String(err)}`);
    assert.equal(err.code, "resource_exhausted");
    assert.equal(err.reason, "QUOTA_EXCEEDED");
    if (message) assert.match(err.message, message);
    return true;
  });
}

describe("validateStoreName", () => {
  it("accepts 1 to 63 letters, digits, _ . - starting with a letter or digit, and returns the name", () => {
    for (const name of ["a", "Z", "7", "payments", "Prod_2.eu-west-1", "0abc", "a-", "a.", "a_", "x".repeat(63)]) {
      assert.equal(validateStoreName(name), name);
    }
  });

  it("requires a name, reporting the field it was given", () => {
    assertViolation(() => validateStoreName(""), "store", "required");
    assertViolation(() => validateStoreName("", "name"), "name", "required");
  });

  it("refuses more than 63 characters", () => {
    assertViolation(() => validateStoreName("x".repeat(64)), "store", "pattern");
    assertViolation(() => validateStoreName(`a${"b".repeat(63)}`, "name"), "name", "pattern");
  });

  it("refuses a leading _, . or -", () => {
    for (const name of ["_a", ".a", "-a", ".", "..", "-"]) assertViolation(() => validateStoreName(name), "store", "pattern");
  });

  it("refuses characters outside the pattern (they appear in URL paths)", () => {
    for (const name of ["a/b", "a b", "a:b", "a%2Fb", "ä", "a\n", "a?b", "a#b", "a+b"]) {
      assertViolation(() => validateStoreName(name), "store", "pattern");
    }
  });
});

describe("newStoreRecord", () => {
  it("makes an active store at revision 1, created and updated now", () => {
    const rec = newStoreRecord({ name: "payments", description: "card processing", managedBy: "billing" }, T0);
    assert.deepEqual(rec, {
      name: "payments",
      description: "card processing",
      managedBy: "billing",
      state: "active",
      createdAt: T0,
      updatedAt: T0,
      revision: 1,
    });
  });

  it("keeps an unowned store unowned", () => {
    assert.equal(newStoreRecord({ name: "a", description: "", managedBy: null }, T0).managedBy, null);
  });
});

describe("canSee", () => {
  const unmanaged = store();
  const billings = store({ name: "billing-prod", managedBy: "billing" });

  it("lets an admin see every active store", () => {
    assert.equal(canSee(ADMIN, unmanaged), true);
    assert.equal(canSee(ADMIN, billings), true);
  });

  it("lets a service see only the stores it owns", () => {
    assert.equal(canSee(BILLING, billings), true);
    assert.equal(canSee(SEARCH, billings), false);
    assert.equal(canSee(BILLING, unmanaged), false, "not even unowned stores such as default");
  });

  it("lets an anonymous reader see only stores no service owns", () => {
    assert.equal(canSee(ANONYMOUS, unmanaged), true);
    assert.equal(canSee(ANONYMOUS, billings), false);
  });

  it("hides a purging store from everyone, admins included", () => {
    const everyone: Principal[] = [ADMIN, BILLING, SEARCH, ANONYMOUS];
    const purging: StoreRecord[] = [store({ state: "purging" }), store({ state: "purging", managedBy: "billing" })];
    for (const rec of purging) {
      for (const who of everyone) {
        const label = who.kind === "token" ? `${who.role} ${String(who.service)}` : who.kind;
        assert.equal(canSee(who, rec), false, `${label} ${String(rec.managedBy)}`);
      }
    }
  });

  it("does not treat a service named like another principal's fields specially", () => {
    const odd = store({ managedBy: "admin" });
    assert.equal(canSee(service("admin", "x"), odd), true);
    assert.equal(canSee(ADMIN, odd), true, "an admin sees it as it sees every store");
    assert.equal(canSee(ANONYMOUS, odd), false);
  });
});

describe("ownerFor", () => {
  it("gives a service's store to that service, whatever was asked", () => {
    assert.equal(ownerFor(BILLING, undefined), "billing");
    assert.equal(ownerFor(BILLING, ""), "billing");
    assert.equal(ownerFor(BILLING, "search"), "billing");
  });

  it("gives an admin's store to the service asked for, or to no one", () => {
    assert.equal(ownerFor(ADMIN, "billing"), "billing");
    assert.equal(ownerFor(ADMIN, undefined), null);
    assert.equal(ownerFor(ADMIN, ""), null);
  });

  it("leaves an anonymous caller's store unowned unless asked", () => {
    assert.equal(ownerFor(ANONYMOUS, undefined), null);
    assert.equal(ownerFor(ANONYMOUS, ""), null);
  });
});

describe("validateVar", () => {
  it("accepts a valid name and value", () => {
    validateVar("feature/flags.beta", "on");
    validateVar("a", "x".repeat(LIMITS.valueMax));
  });

  it("refuses an empty value with reason empty, never echoing a value", () => {
    assertViolation(() => validateVar("region", ""), "vars.value", "empty");
    assertViolation(() => validateVar("region", "", "vars[2]"), "vars[2].value", "empty");
  });

  it("refuses a value over 10,240 characters", () => {
    assertViolation(() => validateVar("big", "x".repeat(LIMITS.valueMax + 1), "vars[0]"), "vars[0].value", "too_long");
  });

  it("counts the value's length in code points, not UTF-16 units", () => {
    const emoji = "\u{1F600}";
    assert.equal(emoji.length, 2);
    validateVar("smiles", emoji.repeat(LIMITS.valueMax));
    assertViolation(() => validateVar("smiles", emoji.repeat(LIMITS.valueMax + 1), "vars[1]"), "vars[1].value", "too_long");
    validateVar("mixed", `${"x".repeat(LIMITS.valueMax - 1)}${emoji}`);
  });

  it("applies the secret-name rules to the name, reporting field paths like vars[2].name", () => {
    assertViolation(() => validateVar("", "v", "vars[2]"), "vars[2].name", "required");
    assertViolation(() => validateVar("a/../b", "v", "vars[2]"), "vars[2].name", "pattern");
    assertViolation(() => validateVar("./a", "v", "vars[2]"), "vars[2].name", "pattern");
    assertViolation(() => validateVar("a b", "v", "vars[2]"), "vars[2].name", "pattern");
    assertViolation(() => validateVar("a//b", "v", "vars[2]"), "vars[2].name", "pattern");
    assertViolation(() => validateVar("/a", "v", "vars[2]"), "vars[2].name", "pattern");
    assertViolation(() => validateVar("n".repeat(LIMITS.nameMax + 1), "v", "vars[2]"), "vars[2].name", "too_long");
    validateVar("n".repeat(LIMITS.nameMax), "v");
    assertViolation(() => validateVar("", "v"), "vars.name", "required");
  });

  it("checks the name before the value", () => {
    assertViolation(() => validateVar("", "", "vars[0]"), "vars[0].name", "required");
  });
});

describe("setVar", () => {
  it("makes a new var at revision 1", () => {
    assert.deepEqual(setVar(undefined, "default", "region", "eu", T0), {
      store: "default",
      name: "region",
      value: "eu",
      createdAt: T0,
      updatedAt: T0,
      revision: 1,
    });
  });

  it("updates an existing var: value and updatedAt change, createdAt kept, revision + 1", () => {
    const existing: VarRecord = { store: "default", name: "region", value: "eu", createdAt: T0, updatedAt: T0 + 5, revision: 4 };
    const next = setVar(existing, "default", "region", "us", T0 + 1000);
    assert.deepEqual(next, { store: "default", name: "region", value: "us", createdAt: T0, updatedAt: T0 + 1000, revision: 5 });
    assert.equal(existing.value, "eu", "the existing record is not changed");
    assert.equal(existing.revision, 4);
  });
});

describe("addUsage", () => {
  it("adds the dimensions given, leaving the others", () => {
    const a: Usage = { stores: 1, secrets: 2, versions: 3, vars: 4, bytes: 5 };
    assert.deepEqual(addUsage(a, { secrets: 1, bytes: -2 }), { stores: 1, secrets: 3, versions: 3, vars: 4, bytes: 3 });
    assert.deepEqual(addUsage(a, {}), a);
    assert.deepEqual(a, { stores: 1, secrets: 2, versions: 3, vars: 4, bytes: 5 }, "the input is not changed");
  });

  it("starts from a frozen zero", () => {
    assert.deepEqual(ZERO_USAGE, { stores: 0, secrets: 0, versions: 0, vars: 0, bytes: 0 });
    assert.ok(Object.isFrozen(ZERO_USAGE));
    assert.deepEqual(addUsage(ZERO_USAGE, { stores: 2, versions: 7 }), { stores: 2, secrets: 0, versions: 7, vars: 0, bytes: 0 });
  });
});

describe("checkQuota", () => {
  it("allows a write that reaches a limit exactly", () => {
    checkQuota('store "a"', usage({ secrets: 2 }), { secrets: 1 }, { secrets: 3 });
    checkQuota('store "a"', usage({ bytes: 90 }), { bytes: 10 }, { bytes: 100 });
  });

  it("refuses a write that would go over a limit, with resource_exhausted and reason QUOTA_EXCEEDED", () => {
    assertQuotaExceeded(() => checkQuota('store "a"', usage({ secrets: 3 }), { secrets: 1 }, { secrets: 3 }), /store "a".*4 secrets.*limit 3/);
    assertQuotaExceeded(() => checkQuota("the service", usage({ bytes: 90 }), { bytes: 11 }, { bytes: 100 }), /the service/);
    assertQuotaExceeded(() => checkQuota("x", ZERO_USAGE, { vars: 1 }, { vars: 0 }), /limit 0/);
  });

  it("checks every growing dimension against its limit", () => {
    assertQuotaExceeded(
      () => checkQuota("x", usage({ secrets: 1, versions: 9 }), { secrets: 1, versions: 2 }, { secrets: 10, versions: 10 }),
      /versions/,
    );
  });

  it("treats a dimension without a limit as unlimited", () => {
    checkQuota("x", usage({ secrets: 1_000_000 }), { secrets: 1, bytes: 1_000_000 }, { vars: 1 });
    checkQuota("x", usage({ secrets: 5 }), { vars: 1 }, { secrets: 5 });
    checkQuota("x", usage({ secrets: 5 }), { secrets: 1 }, {});
  });

  it("checks only the dimensions the write grows", () => {
    // bytes are already over the limit, but this write does not add any.
    checkQuota("x", usage({ secrets: 1, bytes: 1000 }), { secrets: 1, bytes: 0 }, { secrets: 10, bytes: 500 });
    checkQuota("x", usage({ secrets: 1, bytes: 1000 }), { secrets: 1, bytes: -10 }, { secrets: 10, bytes: 500 });
    checkQuota("x", usage({ versions: 50 }), { versions: 0, bytes: 3 }, { versions: 10 });
  });

  it("lets a shrinking write pass even when usage is over a lowered limit", () => {
    checkQuota("x", usage({ secrets: 10, versions: 30, bytes: 9000 }), { secrets: -1, versions: -3, bytes: -900 }, { secrets: 5, versions: 5, bytes: 10 });
    checkQuota("x", usage({ vars: 10 }), {}, { vars: 5 });
  });

  it("still refuses any growth of a dimension already over its limit", () => {
    assertQuotaExceeded(() => checkQuota("x", usage({ secrets: 10 }), { secrets: 1, bytes: -100 }, { secrets: 5 }));
  });
});
