import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { LatchkeyError } from "../../src/domain/errors.js";
import {
  appendVersion,
  applyMetadataPatch,
  currentVersion,
  DEFAULTS,
  findVersion,
  isRotationDue,
  isVersionValid,
  LIMITS,
  newSecretDocument,
  nextVersionNumber,
  type NewSecret,
  type SecretDocument,
  validateDescription,
  validateGrace,
  validateInterval,
  validateName,
  validateValue,
  validVersions,
  type VersionRecord,
  latestVersion,
} from "../../src/domain/secret.js";

/** The pure rules of a secret: validation, the first document, new versions, grace windows, schedules. */

const T0 = Date.UTC(2030, 0, 1);
const SEC = 1000;

/** Asserts that `fn` throws an invalid_argument LatchkeyError about `field` with `reason`. */
function assertInvalid(fn: () => unknown, field: string, reason: string): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof LatchkeyError, "a LatchkeyError");
    assert.equal(err.code, "invalid_argument");
    assert.equal(err.violations.length, 1);
    assert.equal(err.violations[0]?.field, field);
    assert.equal(err.violations[0]?.reason, reason);
    return true;
  });
}

function input(over: Partial<NewSecret> = {}): NewSecret {
  return { id: "id-1", store: "default", name: "db/password", kind: "manual", description: "", ...over };
}

const manual = (over: Partial<NewSecret> = {}, now = T0) => newSecretDocument(input(over), "sealed-1", now);
const automatic = (over: Partial<NewSecret> = {}, now = T0) =>
  newSecretDocument(input({ kind: "automatic", ...over }), "sealed-1", now);

/** Appends versions sealed "sealed-2", "sealed-3", … at the given times. */
function withVersions(doc: SecretDocument, times: number[], maxVersions = 100): SecretDocument {
  let d = doc;
  for (const t of times) d = appendVersion(d, `sealed-${nextVersionNumber(d)}`, t, maxVersions);
  return d;
}

const numbers = (versions: readonly VersionRecord[]) => versions.map((v) => v.version);

describe("validateName", () => {
  it("accepts names made of segments joined by slashes", () => {
    for (const name of ["a", "db/password", "svc/api-key", "A.b_c-9/x/y", "v1.2/..x", "...", "a".repeat(LIMITS.nameMax)]) {
      assert.equal(validateName(name), name);
    }
  });

  it("rejects an empty name as required", () => {
    assertInvalid(() => validateName(""), "name", "required");
  });

  it("rejects a name longer than 256 characters", () => {
    assertInvalid(() => validateName("a".repeat(LIMITS.nameMax + 1)), "name", "too_long");
  });

  it("rejects characters outside the pattern, empty segments and dot segments", () => {
    for (const name of ["bad name", "a//b", "/a", "a/", "a/./b", "a/../b", "..", ".", "ü", "a\u0000b", "a\\b", "a:b"]) {
      assertInvalid(() => validateName(name), "name", "pattern");
    }
  });

  it("names the field it was given in the violation", () => {
    assertInvalid(() => validateName("", "secret_name"), "secret_name", "required");
  });
});

describe("validateValue", () => {
  it("rejects an empty value", () => {
    assertInvalid(() => validateValue(""), "value", "required");
  });

  it("accepts exactly 10,240 characters and rejects 10,241", () => {
    assert.equal(validateValue("x".repeat(LIMITS.valueMax)).length, 10_240);
    assertInvalid(() => validateValue("x".repeat(LIMITS.valueMax + 1)), "value", "too_long");
  });

  it("counts code points, not UTF-16 units: 10,240 emoji are accepted", () => {
    const emoji = "😀".repeat(LIMITS.valueMax);
    assert.equal(emoji.length, 2 * LIMITS.valueMax, "each emoji is a surrogate pair");
    assert.equal(validateValue(emoji), emoji);
  });

  it("rejects 10,241 code points made of surrogate pairs", () => {
    assertInvalid(() => validateValue("😀".repeat(LIMITS.valueMax + 1)), "value", "too_long");
  });

  it("never puts the value in the error message", () => {
    const value = `hunter2-${"x".repeat(LIMITS.valueMax)}`;
    assert.throws(
      () => validateValue(value),
      (err: unknown) => err instanceof LatchkeyError && !err.message.includes("hunter2"),
    );
  });
});

describe("validateDescription", () => {
  it("accepts up to 1024 characters and rejects more", () => {
    assert.equal(validateDescription(""), "");
    assert.equal(validateDescription("d".repeat(LIMITS.descriptionMax)).length, 1024);
    assertInvalid(() => validateDescription("d".repeat(LIMITS.descriptionMax + 1)), "description", "too_long");
  });
});

describe("validateInterval", () => {
  it("accepts whole seconds from 1 to ten years", () => {
    for (const s of [1, 60, 86_400, LIMITS.durationMaxSeconds]) assert.equal(validateInterval(s), s);
  });

  it("rejects zero, negatives, fractions, non-finite numbers and more than ten years", () => {
    for (const s of [0, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, LIMITS.durationMaxSeconds + 1]) {
      assertInvalid(() => validateInterval(s), "rotation_interval", "out_of_range");
    }
  });
});

describe("validateGrace", () => {
  it("accepts zero and whole seconds up to ten years", () => {
    for (const s of [0, 1, 3600, LIMITS.durationMaxSeconds]) assert.equal(validateGrace(s), s);
  });

  it("rejects negatives, fractions, NaN and more than ten years", () => {
    for (const s of [-1, 0.5, Number.NaN, LIMITS.durationMaxSeconds + 1]) {
      assertInvalid(() => validateGrace(s), "grace_period", "out_of_range");
    }
  });
});

describe("newSecretDocument", () => {
  it("makes a manual secret with version 1, no schedule and no grace period by default", () => {
    const doc = manual({ description: "primary" });
    assert.equal(doc.kind, "manual");
    assert.equal(doc.description, "primary");
    assert.equal(doc.gracePeriodSeconds, DEFAULTS.manualGraceSeconds);
    assert.equal(doc.gracePeriodSeconds, 0);
    assert.equal(doc.rotation, null);
    assert.deepEqual(doc.versions, [
      { version: 1, createdAt: T0, validUntil: null, sealed: "sealed-1", state: "active", binary: false },
    ]);
    assert.equal(doc.type, "secret");
    assert.equal(doc.folder, "");
    assert.deepEqual(doc.tags, []);
    assert.deepEqual(doc.metadata, {});
    assert.equal(doc.expiresAt, null);
    assert.equal(doc.deletion, null);
    assert.equal(doc.lastChange, "created");
    assert.equal(doc.createdAt, T0);
    assert.equal(doc.updatedAt, T0);
    assert.equal(doc.revision, 1);
  });

  it("gives an automatic secret a one-hour grace period and a daily schedule by default", () => {
    const doc = automatic();
    assert.equal(doc.gracePeriodSeconds, 3600);
    assert.deepEqual(doc.rotation, { intervalSeconds: 86_400, nextRotationAt: T0 + 86_400 * SEC });
  });

  it("uses the interval and grace period given", () => {
    const doc = automatic({ rotationIntervalSeconds: 60, gracePeriodSeconds: 5 });
    assert.equal(doc.gracePeriodSeconds, 5);
    assert.deepEqual(doc.rotation, { intervalSeconds: 60, nextRotationAt: T0 + 60 * SEC });
    assert.equal(manual({ gracePeriodSeconds: 30 }).gracePeriodSeconds, 30);
  });

  it("keeps an explicit grace period of zero for an automatic secret", () => {
    assert.equal(automatic({ gracePeriodSeconds: 0 }).gracePeriodSeconds, 0);
  });

  it("rejects a rotation interval on a manual secret", () => {
    assertInvalid(() => manual({ rotationIntervalSeconds: 60 }), "rotation_interval", "not_applicable");
  });
});

describe("appendVersion", () => {
  it("makes the new version current and gives the previous one validUntil = now + grace", () => {
    const doc = automatic({ gracePeriodSeconds: 600 });
    const t1 = T0 + 10 * SEC;
    const next = appendVersion(doc, "sealed-2", t1, 10);
    assert.deepEqual(next.versions, [
      { version: 1, createdAt: T0, validUntil: t1 + 600 * SEC, sealed: "sealed-1", state: "active", binary: false },
      { version: 2, createdAt: t1, validUntil: null, sealed: "sealed-2", state: "active", binary: false },
    ]);
    assert.equal(next.lastChange, "rotated");
    assert.equal(currentVersion(next)?.version, 2);
    assert.equal(next.updatedAt, t1);
    assert.equal(next.createdAt, T0);
  });

  it("increments the revision by exactly one", () => {
    const doc = manual();
    assert.equal(appendVersion(doc, "s", T0 + 1, 10).revision, doc.revision + 1);
    assert.equal(appendVersion({ ...doc, revision: 41 }, "s", T0 + 1, 10).revision, 42);
  });

  it("leaves versions already superseded with their own validUntil", () => {
    const doc = automatic({ gracePeriodSeconds: 100 });
    const t1 = T0 + 1000 * SEC;
    const t2 = T0 + 1050 * SEC;
    const next = withVersions(doc, [t1, t2]);
    assert.equal(findVersion(next, 1)?.validUntil, t1 + 100 * SEC, "v1 keeps the window it got at t1");
    assert.equal(findVersion(next, 2)?.validUntil, t2 + 100 * SEC);
    assert.equal(findVersion(next, 3)?.validUntil, null);
  });

  it("expires the previous version at once for a manual secret (grace 0)", () => {
    const t1 = T0 + 5 * SEC;
    const next = appendVersion(manual(), "sealed-2", t1, 10);
    assert.equal(findVersion(next, 1)?.validUntil, t1);
    assert.equal(isVersionValid(findVersion(next, 1) as VersionRecord, t1), false);
  });

  it("drops the oldest versions beyond maxVersions", () => {
    const doc = withVersions(manual(), [T0 + 1, T0 + 2, T0 + 3, T0 + 4], 3);
    assert.deepEqual(numbers(doc.versions), [3, 4, 5]);
    assert.equal(doc.versions.some((v) => v.sealed === "sealed-1" || v.sealed === "sealed-2"), false, "ciphertext gone");
    assert.equal(nextVersionNumber(doc), 6, "numbers keep counting after pruning");
  });

  it("keeps every version while at or under maxVersions", () => {
    const doc = withVersions(manual(), [T0 + 1, T0 + 2], 3);
    assert.deepEqual(numbers(doc.versions), [1, 2, 3]);
  });

  it("restarts an automatic secret's schedule from now", () => {
    const doc = automatic({ rotationIntervalSeconds: 60 });
    const t1 = T0 + 45 * SEC;
    const next = appendVersion(doc, "sealed-2", t1, 10);
    assert.deepEqual(next.rotation, { intervalSeconds: 60, nextRotationAt: t1 + 60 * SEC });
  });

  it("keeps a manual secret without a schedule", () => {
    assert.equal(appendVersion(manual(), "sealed-2", T0 + 1, 10).rotation, null);
  });

  it("does not modify the document it was given", () => {
    const doc = automatic();
    const snapshot = structuredClone(doc);
    appendVersion(doc, "sealed-2", T0 + 1, 1);
    assert.deepEqual(doc, snapshot);
  });
});

describe("applyMetadataPatch", () => {
  it("changes the description and grace period and bumps revision and updatedAt", () => {
    const doc = manual({ description: "old" });
    const t1 = T0 + 7 * SEC;
    const next = applyMetadataPatch(doc, { description: "new", gracePeriodSeconds: 30 }, t1);
    assert.equal(next.description, "new");
    assert.equal(next.gracePeriodSeconds, 30);
    assert.equal(next.revision, doc.revision + 1);
    assert.equal(next.updatedAt, t1);
    assert.deepEqual(next.versions, doc.versions);
  });

  it("keeps fields that the patch leaves out, including an empty description given explicitly", () => {
    const doc = automatic({ description: "keep", gracePeriodSeconds: 9, rotationIntervalSeconds: 60 });
    const next = applyMetadataPatch(doc, {}, T0 + 1);
    assert.equal(next.description, "keep");
    assert.equal(next.gracePeriodSeconds, 9);
    assert.deepEqual(next.rotation, doc.rotation);
    assert.equal(applyMetadataPatch(doc, { description: "" }, T0 + 1).description, "");
  });

  it("starts a schedule from the current version when a manual secret turns automatic", () => {
    const t1 = T0 + 100 * SEC;
    const doc = appendVersion(manual(), "sealed-2", t1, 10);
    const next = applyMetadataPatch(doc, { kind: "automatic", rotationIntervalSeconds: 300 }, T0 + 200 * SEC);
    assert.equal(next.kind, "automatic");
    assert.deepEqual(next.rotation, { intervalSeconds: 300, nextRotationAt: t1 + 300 * SEC });
  });

  it("uses the default daily interval when a secret turns automatic without one", () => {
    const next = applyMetadataPatch(manual(), { kind: "automatic" }, T0 + 1);
    assert.deepEqual(next.rotation, { intervalSeconds: 86_400, nextRotationAt: T0 + 86_400 * SEC });
  });

  it("drops the schedule when an automatic secret turns manual", () => {
    const next = applyMetadataPatch(automatic(), { kind: "manual" }, T0 + 1);
    assert.equal(next.kind, "manual");
    assert.equal(next.rotation, null);
  });

  it("reschedules a changed interval from the last rotation, not from now", () => {
    const t1 = T0 + 1000 * SEC;
    const doc = appendVersion(automatic({ rotationIntervalSeconds: 3600 }), "sealed-2", t1, 10);
    const next = applyMetadataPatch(doc, { rotationIntervalSeconds: 600 }, t1 + 500 * SEC);
    assert.deepEqual(next.rotation, { intervalSeconds: 600, nextRotationAt: t1 + 600 * SEC });
  });

  it("can make a secret due at once when the new interval is shorter than the time since the last rotation", () => {
    const doc = automatic({ rotationIntervalSeconds: 3600 });
    const now = T0 + 120 * SEC;
    const next = applyMetadataPatch(doc, { rotationIntervalSeconds: 60 }, now);
    assert.equal(next.rotation?.nextRotationAt, T0 + 60 * SEC);
    assert.equal(isRotationDue(next, now), true);
  });

  it("keeps the schedule when the interval given equals the current one", () => {
    const doc = { ...automatic({ rotationIntervalSeconds: 60 }), rotation: { intervalSeconds: 60, nextRotationAt: T0 + 999 } };
    assert.deepEqual(applyMetadataPatch(doc, { rotationIntervalSeconds: 60 }, T0 + 5).rotation, doc.rotation);
  });

  it("rejects an interval for a secret that is or becomes manual", () => {
    assertInvalid(() => applyMetadataPatch(manual(), { rotationIntervalSeconds: 60 }, T0), "rotation_interval", "not_applicable");
    assertInvalid(
      () => applyMetadataPatch(automatic(), { kind: "manual", rotationIntervalSeconds: 60 }, T0),
      "rotation_interval",
      "not_applicable",
    );
  });

  it("applies a new grace period only to versions superseded afterwards", () => {
    const t1 = T0 + 10 * SEC;
    const doc = appendVersion(automatic({ gracePeriodSeconds: 100 }), "sealed-2", t1, 10);
    const patched = applyMetadataPatch(doc, { gracePeriodSeconds: 5 }, t1 + SEC);
    assert.equal(findVersion(patched, 1)?.validUntil, t1 + 100 * SEC, "already superseded: unchanged");
    const t2 = t1 + 2 * SEC;
    const next = appendVersion(patched, "sealed-3", t2, 10);
    assert.equal(findVersion(next, 2)?.validUntil, t2 + 5 * SEC);
  });
});

describe("version validity", () => {
  const t1 = T0 + 10 * SEC;
  const doc = appendVersion(automatic({ gracePeriodSeconds: 60 }), "sealed-2", t1, 10);
  const graceEnd = t1 + 60 * SEC;

  it("treats the current version as valid at any time", () => {
    assert.equal(isVersionValid(currentVersion(doc) as VersionRecord, Number.MAX_SAFE_INTEGER), true);
  });

  it("keeps a superseded version valid until just before validUntil", () => {
    const v1 = findVersion(doc, 1) as VersionRecord;
    assert.equal(isVersionValid(v1, graceEnd - 1), true);
    assert.equal(isVersionValid(v1, graceEnd), false, "validUntil === now is already invalid");
    assert.equal(isVersionValid(v1, graceEnd + 1), false);
  });

  it("lists the valid versions at a time, boundary included", () => {
    assert.deepEqual(numbers(validVersions(doc, t1)), [1, 2]);
    assert.deepEqual(numbers(validVersions(doc, graceEnd - 1)), [1, 2]);
    assert.deepEqual(numbers(validVersions(doc, graceEnd)), [2]);
  });

  it("finds versions by number and reports a missing one as undefined", () => {
    assert.equal(findVersion(doc, 2)?.sealed, "sealed-2");
    assert.equal(findVersion(doc, 3), undefined);
  });
});

describe("isRotationDue", () => {
  it("is due at and after nextRotationAt, not before", () => {
    const doc = automatic({ rotationIntervalSeconds: 60 });
    const at = T0 + 60 * SEC;
    assert.equal(isRotationDue(doc, at - 1), false);
    assert.equal(isRotationDue(doc, at), true);
    assert.equal(isRotationDue(doc, at + 1), true);
  });

  it("is never due for a manual secret", () => {
    assert.equal(isRotationDue(manual(), Number.MAX_SAFE_INTEGER), false);
  });

  it("is no longer due after a new version restarts the schedule", () => {
    const doc = automatic({ rotationIntervalSeconds: 60 });
    const at = T0 + 61 * SEC;
    assert.equal(isRotationDue(appendVersion(doc, "sealed-2", at, 10), at), false);
  });
});

describe("currentVersion", () => {
  it("has no current version when no version is active, and latestVersion throws for none at all", () => {
    assert.equal(currentVersion({ ...manual(), versions: [] }), undefined);
    assert.throws(
      () => latestVersion({ ...manual(), versions: [] }),
      (err: unknown) => err instanceof LatchkeyError && err.code === "internal",
    );
  });
});
