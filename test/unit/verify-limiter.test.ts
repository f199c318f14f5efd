import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, afterEach, beforeEach, describe, it } from "node:test";
import { createEnvelope, masterKeyFrom } from "../../src/crypto/envelope.js";
import { LatchkeyError } from "../../src/domain/errors.js";
import { ANONYMOUS, adminPrincipal, type Principal } from "../../src/domain/principal.js";
import { createLogger } from "../../src/log/logger.js";
import { createLatchkey, type Latchkey } from "../../src/service/latchkey.js";
import { createQuotaGuard } from "../../src/service/quotas.js";
import { createSecretManager, type SecretManager, type SecretRef } from "../../src/service/secret-manager.js";
import { createVerifyLimiter, type VerifyLimiter } from "../../src/service/verify-limiter.js";
import { createSqliteStorage } from "../../src/storage/sqlite/sqlite-storage.js";
import type { Storage } from "../../src/storage/storage.js";

/** Limits on failed verifications: token buckets per secret and per caller, and where the service checks them. */

const T0 = Date.UTC(2030, 0, 1);
const SEC = 1000;
const MIN = 60 * SEC;

let t = T0;
const clock = { now: () => t };

function isLimited(err: unknown, what?: "secret" | "caller", retryAfterSeconds?: number): true {
  assert.ok(err instanceof LatchkeyError, `a LatchkeyError, got ${String(err)}`);
  assert.equal(err.code, "resource_exhausted", err.message);
  assert.equal(err.reason, "VERIFY_RATE_LIMITED");
  if (what) assert.match(err.message, new RegExp(`for this ${what}`));
  assert.ok(err.retryAfterSeconds !== undefined && err.retryAfterSeconds >= 1, `a retry hint: ${String(err.retryAfterSeconds)}`);
  if (retryAfterSeconds !== undefined) assert.equal(err.retryAfterSeconds, retryAfterSeconds);
  assert.match(err.message, new RegExp(`retry in ${err.retryAfterSeconds} s`));
  return true;
}

function assertLimited(fn: () => void, what?: "secret" | "caller", retryAfterSeconds?: number): void {
  assert.throws(fn, (err: unknown) => isLimited(err, what, retryAfterSeconds));
}

/** Spends `n` failures of `secret` by `caller`, each after a passing check, as the service does. */
function fail(limiter: VerifyLimiter, secret: string, caller: string, n: number): void {
  for (let i = 0; i < n; i++) {
    limiter.check(secret, caller);
    limiter.failed(secret, caller);
  }
}

describe("createVerifyLimiter", () => {
  let limiter: VerifyLimiter;
  beforeEach(() => {
    t = T0;
    limiter = createVerifyLimiter({ perSecret: 5, perCaller: 3 }, clock);
  });

  it("lets a caller fail perCaller times a minute, then refuses it on every secret", () => {
    fail(limiter, "s1", "alice", 3);
    assertLimited(() => limiter.check("s1", "alice"), "caller");
    assertLimited(() => limiter.check("s2", "alice"), "caller");
    limiter.check("s1", "bob");
  });

  it("lets a secret take perSecret failures a minute, whoever makes them, then refuses everyone on it", () => {
    for (const caller of ["a", "b", "c", "d", "e"]) fail(limiter, "s1", caller, 1);
    assertLimited(() => limiter.check("s1", "newcomer"), "secret");
    limiter.check("s2", "newcomer");
    limiter.check("s2", "a");
  });

  it("checks the secret before the caller", () => {
    fail(limiter, "s1", "alice", 3);
    fail(limiter, "s1", "bob", 2);
    assertLimited(() => limiter.check("s1", "alice"), "secret");
  });

  it("refills evenly over a minute", () => {
    fail(limiter, "s1", "alice", 3);
    // One failure comes back every 20 s (3 a minute).
    t = T0 + 20 * SEC - 1;
    assertLimited(() => limiter.check("s1", "alice"), "caller");
    t = T0 + 20 * SEC + 1; // (a millisecond over: refills are floating-point fractions)
    fail(limiter, "s1", "alice", 1);
    assertLimited(() => limiter.check("s1", "alice"), "caller");
    // A full minute later the bucket is full again, and no fuller.
    t += 10 * MIN;
    fail(limiter, "s1", "alice", 3);
    assertLimited(() => limiter.check("s1", "alice"), "caller");
  });

  it("says when to retry: the time until one failure is back, at least 1 s", () => {
    fail(limiter, "s1", "alice", 3);
    assertLimited(() => limiter.check("s1", "alice"), "caller", 20);
    t = T0 + 5 * SEC;
    assertLimited(() => limiter.check("s1", "alice"), "caller", 15);
    t = T0 + 19 * SEC + 500;
    assertLimited(() => limiter.check("s1", "alice"), "caller", 1);

    const secret = createVerifyLimiter({ perSecret: 60, perCaller: 1000 }, clock);
    t = T0;
    for (let i = 0; i < 60; i++) fail(secret, "s1", `c${i}`, 1);
    assertLimited(() => secret.check("s1", "x"), "secret", 1);
  });

  it("successful verifications cost nothing", () => {
    for (let i = 0; i < 1000; i++) limiter.check("s1", "alice");
    fail(limiter, "s1", "alice", 3);
  });

  it("keeps each limiter's buckets to itself", () => {
    fail(limiter, "s1", "alice", 3);
    createVerifyLimiter({ perSecret: 5, perCaller: 3 }, clock).check("s1", "alice");
  });
});

describe("verifySecret with limits", () => {
  const root = mkdtempSync(join(tmpdir(), "latchkey-verify-"));
  after(() => rmSync(root, { recursive: true, force: true }));
  let counter = 0;

  const ADMIN = adminPrincipal("admin:aaaaaaaaaaaa");
  const reader = (id: string): Principal => ({ kind: "token", tokenId: id, role: "reader", service: null, stores: null, prefixes: null });
  const ALICE = reader("tok_alice");
  const BOB = reader("tok_bob");
  const S1: SecretRef = { store: "default", name: "db/password" };
  const S2: SecretRef = { store: "default", name: "api/key" };

  let storage: Storage;
  let lk: Latchkey;
  /** How many times the manager compared a value. */
  let compared: number;

  beforeEach(async () => {
    t = T0;
    compared = 0;
    storage = createSqliteStorage(join(root, `db-${++counter}`, "latchkey.db"));
    const logger = createLogger("silent");
    const envelope = createEnvelope({ masterKey: masterKeyFrom(Buffer.alloc(32, 7)), storage, clock });
    const real = createSecretManager({ storage, envelope, clock, logger, maxVersions: 5 });
    const manager: SecretManager = {
      ...real,
      verify: (ref, value) => {
        compared++;
        return real.verify(ref, value);
      },
    };
    lk = createLatchkey({
      storage,
      manager,
      envelope,
      quotas: createQuotaGuard(storage, { global: {}, perStore: {} }),
      clock,
      logger,
      maxVersions: 5,
      verifyLimiter: createVerifyLimiter({ perSecret: 6, perCaller: 3 }, clock),
    });
    await lk.ensureDefaultStore();
    await lk.createSecret(ADMIN, { ...S1, kind: "manual", value: "correct-1" });
    await lk.createSecret(ADMIN, { ...S2, kind: "manual", value: "correct-2" });
  });
  afterEach(async () => {
    await storage.close();
  });

  async function assertRefused(p: Promise<unknown>, what?: "secret" | "caller"): Promise<void> {
    await assert.rejects(p, (err: unknown) => isLimited(err, what));
  }

  it("refuses a caller past its limit before comparing, even with the correct value", async () => {
    for (let i = 0; i < 3; i++) assert.deepEqual(await lk.verifySecret(ALICE, S1, "wrong"), { valid: false, version: 0 });
    assert.equal(compared, 3);
    await assertRefused(lk.verifySecret(ALICE, S1, "correct-1"), "caller");
    await assertRefused(lk.verifySecret(ALICE, S1, "wrong"), "caller");
    await assertRefused(lk.verifySecret(ALICE, S2, "correct-2"), "caller");
    assert.equal(compared, 3, "no value was compared while limited");

    // Others are unaffected.
    assert.deepEqual(await lk.verifySecret(BOB, S1, "correct-1"), { valid: true, version: 1 });
    assert.deepEqual(await lk.verifySecret(ANONYMOUS, S1, "correct-1", "10.0.0.1"), { valid: true, version: 1 });

    // The limit lifts as the bucket refills.
    t += 20 * SEC;
    assert.deepEqual(await lk.verifySecret(ALICE, S1, "correct-1"), { valid: true, version: 1 });
  });

  it("successful verifications do not count", async () => {
    for (let i = 0; i < 20; i++) assert.equal((await lk.verifySecret(ALICE, S1, "correct-1")).valid, true);
    for (let i = 0; i < 3; i++) assert.equal((await lk.verifySecret(ALICE, S1, "wrong")).valid, false);
    await assertRefused(lk.verifySecret(ALICE, S1, "correct-1"), "caller");
  });

  it("limits anonymous callers by IP", async () => {
    for (let i = 0; i < 3; i++) await lk.verifySecret(ANONYMOUS, S1, "wrong", "10.0.0.1");
    await assertRefused(lk.verifySecret(ANONYMOUS, S1, "correct-1", "10.0.0.1"), "caller");
    assert.equal((await lk.verifySecret(ANONYMOUS, S1, "correct-1", "10.0.0.2")).valid, true);
    assert.equal((await lk.verifySecret(ALICE, S1, "correct-1")).valid, true, "a token is a caller of its own");
  });

  it("refuses everyone on a secret past its limit, and leaves other secrets alone", async () => {
    for (let i = 0; i < 6; i++) await lk.verifySecret(ANONYMOUS, S1, "wrong", `10.0.1.${i}`);
    const before = compared;
    await assertRefused(lk.verifySecret(BOB, S1, "correct-1"), "secret");
    await assertRefused(lk.verifySecret(ANONYMOUS, S1, "correct-1", "10.0.9.9"), "secret");
    assert.equal(compared, before, "no value was compared while limited");
    assert.deepEqual(await lk.verifySecret(BOB, S2, "correct-2"), { valid: true, version: 1 });
    assert.equal((await lk.verifySecret(BOB, S2, "wrong")).valid, false);
  });

  it("does not spend the limit on secrets that are not there", async () => {
    for (let i = 0; i < 5; i++) {
      await assert.rejects(lk.verifySecret(ALICE, { store: "default", name: "nope" }, "x"), (err: unknown) => {
        assert.ok(err instanceof LatchkeyError && err.code === "not_found");
        return true;
      });
    }
    assert.equal((await lk.verifySecret(ALICE, S1, "correct-1")).valid, true);
  });
});
