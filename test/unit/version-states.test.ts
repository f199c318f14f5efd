import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { LatchkeyError } from "../../src/domain/errors.js";
import {
  appendVersion,
  checkRevision,
  currentVersion,
  findVersion,
  LIMITS,
  latestVersion,
  newSecretDocument,
  nextVersionNumber,
  type NewSecret,
  requireCurrentVersion,
  type SecretDocument,
  setVersionState,
  upgradeDocument,
  validateBinaryValue,
  validateFolder,
  validateMetadata,
  validateTags,
  validateValue,
  VERSION_STATES,
  type VersionRecord,
  type VersionState,
  validVersions,
} from "../../src/domain/secret.js";

/**
 * Version states and the rules around them: the transition table, destroying, superseding with a state, which
 * version is current and which are valid; upgrading old documents; the newer validators; check-and-set.
 */

const T0 = Date.UTC(2030, 0, 1);
const SEC = 1000;

/** The transition table as specified: from each state, the states a version may move to. */
const ALLOWED: Record<VersionState, readonly VersionState[]> = {
  active: ["deactivated", "suspended", "compromised", "destroyed"],
  deactivated: ["active", "suspended", "compromised", "destroyed"],
  suspended: ["active", "deactivated", "compromised", "destroyed"],
  compromised: ["destroyed"],
  destroyed: [],
};

function input(over: Partial<NewSecret> = {}): NewSecret {
  return { id: "id-1", store: "default", name: "db/password", kind: "manual", description: "", ...over };
}

const manual = (over: Partial<NewSecret> = {}) => newSecretDocument(input(over), "sealed-1", T0);
const automatic = (over: Partial<NewSecret> = {}) =>
  newSecretDocument(input({ kind: "automatic", rotationIntervalSeconds: 60, ...over }), "sealed-1", T0);

/** Appends versions sealed "sealed-2", "sealed-3", … one second apart. */
function withVersions(doc: SecretDocument, count: number, maxVersions = 100): SecretDocument {
  let d = doc;
  for (let i = 0; i < count; i++) d = appendVersion(d, `sealed-${nextVersionNumber(d)}`, d.updatedAt + SEC, maxVersions);
  return d;
}

/** A document whose version 1 is in `state` (reached from active, which allows every other state). */
function inState(state: VersionState, base: SecretDocument = manual()): SecretDocument {
  return state === "active" ? base : setVersionState(base, 1, state, T0 + SEC);
}

function version(doc: SecretDocument, n: number): VersionRecord {
  const v = findVersion(doc, n);
  assert.ok(v, `version ${n} exists`);
  return v;
}

const numbers = (versions: readonly VersionRecord[]) => versions.map((v) => v.version);

function assertError(fn: () => unknown, code: string, reason: string): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof LatchkeyError, `a LatchkeyError, got ${String(err)}`);
    assert.equal(err.code, code);
    assert.equal(err.reason, reason);
    return true;
  });
}

/** Asserts that `fn` throws an invalid_argument LatchkeyError about `field` with `reason`. */
function assertInvalid(fn: () => unknown, field: string, reason: string): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof LatchkeyError, `a LatchkeyError, got ${String(err)}`);
    assert.equal(err.code, "invalid_argument");
    assert.equal(err.violations.length, 1);
    assert.equal(err.violations[0]?.field, field);
    assert.equal(err.violations[0]?.reason, reason);
    return true;
  });
}

describe("version state transitions", () => {
  it("lists the five states", () => {
    assert.deepEqual([...VERSION_STATES].sort(), ["active", "compromised", "deactivated", "destroyed", "suspended"]);
  });

  for (const from of VERSION_STATES) {
    for (const to of VERSION_STATES) {
      const verdict = from === to ? "is a no-op" : ALLOWED[from].includes(to) ? "is allowed" : "is refused";
      it(`${from} -> ${to} ${verdict}`, () => {
        const doc = withVersions(inState(from), 1); // version 1 in `from`, version 2 active and current
        const at = T0 + 100 * SEC;
        if (from === to) {
          assert.equal(setVersionState(doc, 1, to, at), doc, "the very same document: nothing to write");
          return;
        }
        if (!ALLOWED[from].includes(to)) {
          assertError(() => setVersionState(doc, 1, to, at), "failed_precondition", "INVALID_STATE_TRANSITION");
          assert.throws(() => setVersionState(doc, 1, to, at), new RegExp(`version 1 is ${from} and cannot become ${to}`));
          return;
        }
        const next = setVersionState(doc, 1, to, at);
        const v1 = version(next, 1);
        assert.equal(v1.state, to);
        assert.equal(next.revision, doc.revision + 1);
        assert.equal(next.updatedAt, at);
        assert.equal(next.lastChange, "state_changed");
        assert.equal(v1.validUntil, version(doc, 1).validUntil, "the grace window does not restart");
        assert.equal(v1.sealed, to === "destroyed" ? "" : version(doc, 1).sealed);
        assert.deepEqual(version(next, 2), version(doc, 2), "other versions untouched");
        assert.equal(doc.versions[0]?.state, from, "the input document is not mutated");
      });
    }
  }

  it("refuses every change of a destroyed version and allows only destroying a compromised one", () => {
    const destroyed = inState("destroyed");
    for (const to of VERSION_STATES.filter((s) => s !== "destroyed")) {
      assertError(() => setVersionState(destroyed, 1, to, T0), "failed_precondition", "INVALID_STATE_TRANSITION");
    }
    const compromised = inState("compromised");
    for (const to of ["active", "deactivated", "suspended"] as const) {
      assertError(() => setVersionState(compromised, 1, to, T0), "failed_precondition", "INVALID_STATE_TRANSITION");
    }
    assert.equal(version(setVersionState(compromised, 1, "destroyed", T0), 1).state, "destroyed");
  });

  it("answers not_found for a version the secret does not have", () => {
    const doc = withVersions(manual(), 2);
    assertError(() => setVersionState(doc, 4, "suspended", T0), "not_found", "VERSION_NOT_FOUND");
    assertError(() => setVersionState(doc, 0, "suspended", T0), "not_found", "VERSION_NOT_FOUND");
  });

  it("destroying empties the ciphertext of that version only, for good", () => {
    const doc = withVersions(manual(), 2);
    const next = setVersionState(doc, 2, "destroyed", T0 + 10 * SEC);
    assert.deepEqual(
      next.versions.map((v) => [v.version, v.state, v.sealed]),
      [
        [1, "active", "sealed-1"],
        [2, "destroyed", ""],
        [3, "active", "sealed-3"],
      ],
    );
    // Destroying from every state that allows it leaves nothing behind.
    for (const from of ["active", "deactivated", "suspended", "compromised"] as const) {
      const gone = setVersionState(inState(from), 1, "destroyed", T0 + 10 * SEC);
      assert.equal(version(gone, 1).sealed, "", `destroyed from ${from}`);
    }
    assertError(() => setVersionState(next, 2, "active", T0 + 11 * SEC), "failed_precondition", "INVALID_STATE_TRANSITION");
  });

  it("keeps the version number sequence past disabled and destroyed versions", () => {
    const doc = setVersionState(withVersions(manual(), 1), 2, "destroyed", T0 + 5 * SEC);
    assert.equal(latestVersion(doc).version, 2, "the latest version whatever its state");
    assert.equal(nextVersionNumber(doc), 3);
    assert.equal(latestVersion(appendVersion(doc, "sealed-3", T0 + 6 * SEC, 10)).version, 3);
  });
});

describe("appendVersion with a state for the superseded version", () => {
  for (const previousState of ["deactivated", "suspended", "compromised", "destroyed"] as const) {
    it(`sets the previous current version ${previousState} at once`, () => {
      const doc = manual({ gracePeriodSeconds: 600 });
      const at = T0 + 10 * SEC;
      const next = appendVersion(doc, "sealed-2", at, 10, { previousState });
      const v1 = version(next, 1);
      assert.equal(v1.state, previousState);
      assert.equal(v1.sealed, previousState === "destroyed" ? "" : "sealed-1");
      assert.deepEqual(version(next, 2), { version: 2, createdAt: at, validUntil: null, sealed: "sealed-2", state: "active", binary: false });
      assert.equal(currentVersion(next)?.version, 2);
      assert.deepEqual(numbers(validVersions(next, at)), [2], "not valid during the grace period");
      assert.equal(next.lastChange, "rotated");
      assert.equal(next.revision, doc.revision + 1);
    });
  }

  it("without one keeps the previous version active for the grace period", () => {
    const doc = manual({ gracePeriodSeconds: 600 });
    const at = T0 + 10 * SEC;
    const next = appendVersion(doc, "sealed-2", at, 10);
    assert.equal(version(next, 1).state, "active");
    assert.equal(version(next, 1).validUntil, at + 600 * SEC);
    assert.deepEqual(numbers(validVersions(next, at + 600 * SEC - 1)), [1, 2]);
    assert.deepEqual(numbers(validVersions(next, at + 600 * SEC)), [2]);
  });

  it("touches only the current version: older ones keep their state and window", () => {
    let doc = withVersions(manual({ gracePeriodSeconds: 60 }), 2); // v1, v2 in grace; v3 current
    doc = setVersionState(doc, 1, "suspended", T0 + 10 * SEC);
    const before1 = version(doc, 1);
    const before2 = version(doc, 2);
    const next = appendVersion(doc, "sealed-4", T0 + 20 * SEC, 10, { previousState: "deactivated" });
    assert.deepEqual(version(next, 1), before1);
    assert.deepEqual(version(next, 2), before2);
    assert.equal(version(next, 3).state, "deactivated");
    assert.equal(version(next, 4).state, "active");
  });

  it("supersedes the newest active version when the latest one is disabled", () => {
    let doc = withVersions(manual(), 1); // v1, v2
    doc = setVersionState(doc, 2, "suspended", T0 + 10 * SEC); // current is v1 again
    assert.equal(currentVersion(doc)?.version, 1);
    const next = appendVersion(doc, "sealed-3", T0 + 20 * SEC, 10, { previousState: "compromised" });
    assert.deepEqual(
      next.versions.map((v) => [v.version, v.state]),
      [
        [1, "compromised"],
        [2, "suspended"],
        [3, "active"],
      ],
    );
  });

  it("appends to a secret with no active version without changing the others", () => {
    const doc = setVersionState(manual(), 1, "suspended", T0 + SEC);
    assert.equal(currentVersion(doc), undefined);
    const next = appendVersion(doc, "sealed-2", T0 + 2 * SEC, 10, { previousState: "destroyed" });
    assert.deepEqual(version(next, 1), version(doc, 1), "nothing was current, so nothing is destroyed");
    assert.equal(currentVersion(next)?.version, 2);
  });

  it("marks a binary version and drops the oldest beyond maxVersions", () => {
    const doc = withVersions(manual(), 2, 3); // v1..v3
    const next = appendVersion(doc, "sealed-4", T0 + 10 * SEC, 3, { binary: true, previousState: "deactivated" });
    assert.deepEqual(numbers(next.versions), [2, 3, 4]);
    assert.equal(version(next, 4).binary, true);
    assert.equal(version(next, 3).binary, false);
  });

  it("restarts an automatic secret's schedule from now", () => {
    const doc = automatic();
    const next = appendVersion(doc, "sealed-2", T0 + 7 * SEC, 10, { previousState: "suspended" });
    assert.deepEqual(next.rotation, { intervalSeconds: 60, nextRotationAt: T0 + 67 * SEC });
  });
});

describe("current and valid versions", () => {
  it("serves the newest active version, skipping every other state", () => {
    const base = withVersions(manual({ gracePeriodSeconds: 60 }), 2); // v1, v2, v3
    assert.equal(currentVersion(base)?.version, 3);
    for (const state of ["deactivated", "suspended", "compromised", "destroyed"] as const) {
      const doc = setVersionState(base, 3, state, T0 + 10 * SEC);
      assert.equal(currentVersion(doc)?.version, 2, `v3 ${state}`);
      assert.equal(latestVersion(doc).version, 3, "latest is by number");
      const both = setVersionState(doc, 2, state, T0 + 11 * SEC);
      assert.equal(currentVersion(both)?.version, 1, `v3 and v2 ${state}`);
    }
  });

  it("has no current version when none is active, and says so", () => {
    let doc = withVersions(manual(), 1);
    doc = setVersionState(doc, 1, "deactivated", T0 + 10 * SEC);
    doc = setVersionState(doc, 2, "suspended", T0 + 10 * SEC);
    assert.equal(currentVersion(doc), undefined);
    assert.deepEqual(validVersions(doc, T0 + 10 * SEC), []);
    assertError(() => requireCurrentVersion(doc), "failed_precondition", "NO_ACTIVE_VERSION");
    const back = setVersionState(doc, 2, "active", T0 + 11 * SEC);
    assert.equal(requireCurrentVersion(back).version, 2);
  });

  it("accepts the current version and active ones inside their grace window", () => {
    // v1 superseded at T0+1s, v2 at T0+2s, v3 at T0+3s; v4 current. Grace 60 s.
    const doc = withVersions(manual({ gracePeriodSeconds: 60 }), 3);
    assert.deepEqual(numbers(validVersions(doc, T0 + 3 * SEC)), [1, 2, 3, 4]);
    assert.deepEqual(numbers(validVersions(doc, T0 + 61 * SEC)), [2, 3, 4], "v1's window ended");
    assert.deepEqual(numbers(validVersions(doc, T0 + 10_000 * SEC)), [4], "only the current one at last");
    // Disabled versions are never valid, even inside their window.
    for (const state of ["deactivated", "suspended", "compromised", "destroyed"] as const) {
      const off = setVersionState(doc, 2, state, T0 + 4 * SEC);
      assert.deepEqual(numbers(validVersions(off, T0 + 4 * SEC)), [1, 3, 4], `v2 ${state}`);
    }
  });

  it("accepts an older version that became current again, whatever its old window said", () => {
    const doc = withVersions(manual({ gracePeriodSeconds: 60 }), 1); // v1 valid until T0 + 61 s
    const later = T0 + 1000 * SEC;
    assert.deepEqual(numbers(validVersions(doc, later)), [2]);
    const v2off = setVersionState(doc, 2, "suspended", later);
    assert.equal(currentVersion(v2off)?.version, 1);
    assert.deepEqual(numbers(validVersions(v2off, later)), [1], "the current version is always valid");
  });

  it("does not accept a superseded version made active again after its grace window", () => {
    const doc = withVersions(manual({ gracePeriodSeconds: 60 }), 1); // v1 valid until T0 + 61 s
    const off = setVersionState(doc, 1, "suspended", T0 + 10 * SEC);
    const on = setVersionState(off, 1, "active", T0 + 100 * SEC);
    assert.equal(version(on, 1).validUntil, T0 + 61 * SEC, "its window did not restart");
    assert.deepEqual(numbers(validVersions(on, T0 + 100 * SEC)), [2]);
    const onEarly = setVersionState(off, 1, "active", T0 + 20 * SEC);
    assert.deepEqual(numbers(validVersions(onEarly, T0 + 20 * SEC)), [1, 2], "inside its window it is valid again");
  });

  it("does not accept a version superseded with a state and made active again later", () => {
    // Superseded with previousState, v1 never had a grace window: reactivated, it must not be valid for ever.
    const doc = appendVersion(manual({ gracePeriodSeconds: 60 }), "sealed-2", T0 + 10 * SEC, 10, { previousState: "suspended" });
    const on = setVersionState(doc, 1, "active", T0 + 20 * SEC);
    assert.equal(currentVersion(on)?.version, 2);
    assert.deepEqual(numbers(validVersions(on, T0 + 20 * SEC)), [2], "only the current version");
    assert.deepEqual(numbers(validVersions(on, T0 + 10_000 * SEC)), [2]);
  });

  it("does not accept a current version disabled, superseded meanwhile, and made active again", () => {
    // v2 current; disabled directly (no window set), v3 appended, v2 made active again: v3 is current, v2 had no grace.
    let doc = withVersions(manual({ gracePeriodSeconds: 60 }), 1);
    doc = setVersionState(doc, 2, "deactivated", T0 + 10 * SEC);
    doc = appendVersion(doc, "sealed-3", T0 + 20 * SEC, 10);
    doc = setVersionState(doc, 2, "active", T0 + 10_000 * SEC);
    assert.equal(currentVersion(doc)?.version, 3);
    assert.deepEqual(numbers(validVersions(doc, T0 + 10_000 * SEC)), [3], "v1's window is over and v2 never had one");
  });
});

describe("upgradeDocument", () => {
  /** A document as the first Latchkey stored it: no type, folder, tags, metadata, expiry, deletion, change or states. */
  const old = {
    id: "old-1",
    store: "default",
    name: "legacy/secret",
    kind: "automatic",
    description: "from long ago",
    gracePeriodSeconds: 3600,
    rotation: { intervalSeconds: 60, nextRotationAt: T0 + 60 * SEC },
    versions: [
      { version: 1, createdAt: T0, validUntil: T0 + 10 * SEC, sealed: "sealed-1" },
      { version: 2, createdAt: T0 + SEC, validUntil: null, sealed: "sealed-2" },
    ],
    createdAt: T0,
    updatedAt: T0 + SEC,
    revision: 2,
  } as unknown as SecretDocument;

  it("fills the defaults a document of an earlier Latchkey lacks", () => {
    const doc = upgradeDocument(old);
    assert.deepEqual(doc, {
      ...old,
      type: "secret",
      folder: "",
      tags: [],
      metadata: {},
      expiresAt: null,
      deletion: null,
      lastChange: "updated",
      versions: [
        { version: 1, createdAt: T0, validUntil: T0 + 10 * SEC, sealed: "sealed-1", state: "active", binary: false },
        { version: 2, createdAt: T0 + SEC, validUntil: null, sealed: "sealed-2", state: "active", binary: false },
      ],
    });
    assert.equal(currentVersion(doc)?.version, 2, "the upgraded document works with the rules");
    assert.equal((old as { type?: unknown }).type, undefined, "the input is not mutated");
  });

  it("returns a current document as it is", () => {
    const doc = withVersions(manual({ folder: "f", tags: ["t"], metadata: { k: "v" }, expiresAt: T0 + 99 }), 1);
    assert.equal(upgradeDocument(doc), doc);
  });

  it("keeps the values an older document has", () => {
    const partial = { ...old, type: "token", tags: ["a"], versions: [{ ...old.versions[0], state: "suspended", binary: true }] } as unknown as SecretDocument;
    const doc = upgradeDocument(partial);
    assert.equal(doc.type, "token");
    assert.deepEqual(doc.tags, ["a"]);
    assert.equal(doc.lastChange, "updated");
    assert.equal(version(doc, 1).state, "suspended");
    assert.equal(version(doc, 1).binary, true);
  });
});

describe("validators", () => {
  describe("tags", () => {
    it("sorts and de-duplicates valid tags", () => {
      assert.deepEqual(validateTags(["prod", "db", "prod", "a:b=c", "x_y.z-1"]), ["a:b=c", "db", "prod", "x_y.z-1"]);
      assert.deepEqual(validateTags([]), []);
    });

    it("allows 32 tags of 64 characters, and no more", () => {
      const many = Array.from({ length: LIMITS.tagsMax }, (_, i) => `t${i}`);
      assert.equal(validateTags(many).length, 32);
      assertInvalid(() => validateTags([...many, "one-more"]), "tags", "too_many");
      assert.deepEqual(validateTags(["t".repeat(LIMITS.tagMax)]), ["t".repeat(64)]);
      assertInvalid(() => validateTags(["ok", "t".repeat(LIMITS.tagMax + 1)]), "tags[1]", "pattern");
    });

    it("refuses an empty tag or one with other characters, naming its index", () => {
      assertInvalid(() => validateTags([""]), "tags[0]", "pattern");
      for (const bad of ["has space", "slash/no", "comma,", "ümlaut", "star*"]) {
        assertInvalid(() => validateTags(["fine", bad]), "tags[1]", "pattern");
      }
      assertInvalid(() => validateTags(["x y"], "labels"), "labels[0]", "pattern");
    });
  });

  describe("metadata", () => {
    it("sorts valid entries by key", () => {
      const out = validateMetadata({ zeta: "1", "a/b:c.d_e-f": "", alpha: "x".repeat(LIMITS.metadataValueMax) });
      assert.deepEqual(Object.keys(out), ["a/b:c.d_e-f", "alpha", "zeta"]);
      assert.equal(out.zeta, "1");
      assert.deepEqual(validateMetadata({}), {});
    });

    it("allows 64 entries, keys of 128 and values of 1024 characters, and no more", () => {
      const many = Object.fromEntries(Array.from({ length: LIMITS.metadataMax }, (_, i) => [`k${i}`, "v"]));
      assert.equal(Object.keys(validateMetadata(many)).length, 64);
      assertInvalid(() => validateMetadata({ ...many, extra: "v" }), "metadata", "too_many");
      assert.ok(validateMetadata({ ["k".repeat(LIMITS.metadataKeyMax)]: "v" }));
      assertInvalid(() => validateMetadata({ ["k".repeat(129)]: "v" }), `metadata.${"k".repeat(64)}`, "pattern");
      assertInvalid(() => validateMetadata({ big: "x".repeat(LIMITS.metadataValueMax + 1) }), "metadata.big", "too_long");
    });

    it("refuses an empty key, a key with other characters, and a value that is not a string", () => {
      assertInvalid(() => validateMetadata({ "": "v" }), "metadata.", "pattern");
      assertInvalid(() => validateMetadata({ "has space": "v" }), "metadata.has space", "pattern");
      assertInvalid(() => validateMetadata({ "a=b": "v" }), "metadata.a=b", "pattern");
      assertInvalid(() => validateMetadata({ n: 5 as unknown as string }), "metadata.n", "too_long");
      assertInvalid(() => validateMetadata({ "bad key": "v" }, "labels"), "labels.bad key", "pattern");
    });
  });

  describe("folder", () => {
    it("accepts no folder or a name-like path", () => {
      assert.equal(validateFolder(""), "");
      assert.equal(validateFolder("team/app.prod"), "team/app.prod");
      assert.equal(validateFolder("f".repeat(LIMITS.nameMax)), "f".repeat(256));
    });

    it("refuses what a name refuses, under the folder field", () => {
      assertInvalid(() => validateFolder("f".repeat(LIMITS.nameMax + 1)), "folder", "too_long");
      for (const bad of ["/lead", "trail/", "a//b", "a/../b", ".", "sp ace"]) {
        assertInvalid(() => validateFolder(bad), "folder", "pattern");
      }
      assertInvalid(() => validateFolder("x y", "to_folder"), "to_folder", "pattern");
    });
  });

  describe("values", () => {
    it("accepts 1 to 65,536 bytes of binary value", () => {
      const one = new Uint8Array([0]);
      assert.equal(validateBinaryValue(one), one);
      assert.equal(validateBinaryValue(new Uint8Array(LIMITS.binaryValueMax)).length, 65_536);
      assertInvalid(() => validateBinaryValue(new Uint8Array(0)), "binary_value", "required");
      assertInvalid(() => validateBinaryValue(new Uint8Array(LIMITS.binaryValueMax + 1)), "binary_value", "too_long");
      assertInvalid(() => validateBinaryValue(Buffer.alloc(0), "value"), "value", "required");
    });

    it("counts a text value in characters, not UTF-16 units", () => {
      assert.equal(validateValue("😀".repeat(LIMITS.valueMax)).length, 20_480);
      assertInvalid(() => validateValue("😀".repeat(LIMITS.valueMax + 1)), "value", "too_long");
      assertInvalid(() => validateValue(""), "value", "required");
    });
  });
});

describe("checkRevision", () => {
  const doc = withVersions(manual(), 2); // revision 3

  it("passes without an expected revision, with 0, or with the stored one", () => {
    assert.equal(doc.revision, 3);
    checkRevision(doc, undefined);
    checkRevision(doc, 0);
    checkRevision(doc, 3);
  });

  it("refuses any other revision with REVISION_MISMATCH and HTTP 409", () => {
    for (const expected of [1, 2, 4, 99]) {
      assert.throws(
        () => checkRevision(doc, expected),
        (err: unknown) => {
          assert.ok(err instanceof LatchkeyError);
          assert.equal(err.code, "failed_precondition");
          assert.equal(err.reason, "REVISION_MISMATCH");
          assert.equal(err.httpStatus, 409);
          assert.match(err.message, new RegExp(`at revision 3, not ${expected}`));
          return true;
        },
      );
    }
  });
});
