import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, afterEach, beforeEach, describe, it } from "node:test";
import { createEnvelope, masterKeyFrom } from "../../src/crypto/envelope.js";
import { type ErrorCode, LatchkeyError } from "../../src/domain/errors.js";
import { currentVersion,
  latestVersion, type SecretDocument } from "../../src/domain/secret.js";
import { createLogger } from "../../src/log/logger.js";
import { createSecretManager, type SecretManager, type SecretRef } from "../../src/service/secret-manager.js";
import { createSqliteStorage } from "../../src/storage/sqlite/sqlite-storage.js";
import type { ListQuery, Storage } from "../../src/storage/storage.js";

/** The use cases over real SQLite storage and real envelope encryption, with a clock the tests move. */

const T0 = Date.UTC(2030, 0, 1);
const SEC = 1000;
const MAX_VERSIONS = 4;
const STORE = "default";

const root = mkdtempSync(join(tmpdir(), "latchkey-manager-"));
after(() => rmSync(root, { recursive: true, force: true }));

let counter = 0;
let t = T0;
const clock = { now: () => t };
let storage: Storage;
let manager: SecretManager;
let listQueries: ListQuery[];

const ref = (name: string): SecretRef => ({ store: STORE, name });

async function assertCode(p: Promise<unknown>, code: ErrorCode, message?: RegExp): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof LatchkeyError, `a LatchkeyError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    if (message) assert.match(err.message, message);
    return true;
  });
}

async function stored(name: string): Promise<SecretDocument> {
  const doc = await storage.findSecret(STORE, name);
  assert.ok(doc, `secret ${name} is stored`);
  return doc;
}

describe("secret manager", () => {
  beforeEach(() => {
    t = T0;
    listQueries = [];
    const real = createSqliteStorage(join(root, `db-${++counter}`, "latchkey.db"));
    storage = {
      ...real,
      listSecrets(q) {
        listQueries.push(q);
        return real.listSecrets(q);
      },
    };
    manager = createSecretManager({
      storage,
      envelope: createEnvelope({ masterKey: masterKeyFrom(Buffer.alloc(32, 3)), storage, clock }),
      clock,
      logger: createLogger("silent"),
      maxVersions: MAX_VERSIONS,
    });
  });
  afterEach(async () => {
    await storage.close();
  });

  describe("create", () => {
    it("stores a manual secret as version 1 and returns its value", async () => {
      const created = await manager.create({ ...ref("db/password"), kind: "manual", value: "s3cret", description: "primary" });
      assert.equal(created.value, "s3cret");
      assert.equal(created.version.version, 1);
      assert.equal(created.version.createdAt, T0);
      assert.equal(created.doc.kind, "manual");
      assert.equal(created.doc.description, "primary");
      assert.equal(created.doc.revision, 1);
      assert.equal(created.doc.gracePeriodSeconds, 0);
      assert.deepEqual(await stored("db/password"), created.doc);
    });

    it("never stores the plaintext", async () => {
      await manager.create({ ...ref("db/password"), kind: "manual", value: "plaintext-marker" });
      const doc = await stored("db/password");
      assert.ok(!JSON.stringify(doc).includes("plaintext-marker"));
      assert.ok(!JSON.stringify(doc).includes(Buffer.from("plaintext-marker").toString("base64")));
    });

    it("generates a 43-character base64url value for an automatic secret without one", async () => {
      const created = await manager.create({ ...ref("svc/key"), kind: "automatic" });
      assert.match(created.value, /^[A-Za-z0-9_-]{43}$/);
      assert.equal(created.doc.gracePeriodSeconds, 3600);
      assert.deepEqual(created.doc.rotation, { intervalSeconds: 86_400, nextRotationAt: T0 + 86_400 * SEC });
      const other = await manager.create({ ...ref("svc/key2"), kind: "automatic" });
      assert.notEqual(other.value, created.value);
    });

    it("keeps a value given for an automatic secret", async () => {
      const created = await manager.create({ ...ref("svc/key"), kind: "automatic", value: "given", rotationIntervalSeconds: 60 });
      assert.equal(created.value, "given");
      assert.equal((await manager.get(ref("svc/key"))).value, "given");
    });

    it("schedules an automatic secret's first rotation, and not a manual one's", async () => {
      await manager.create({ ...ref("m"), kind: "manual", value: "v" });
      assert.equal((await stored("m")).rotation, null);
      await manager.create({ ...ref("a"), kind: "automatic", rotationIntervalSeconds: 60 });
      assert.equal((await stored("a")).rotation?.nextRotationAt, T0 + 60 * SEC);
    });

    it("requires a value for a manual secret", async () => {
      await assertCode(manager.create({ ...ref("m"), kind: "manual" }), "invalid_argument", /value is required/);
    });

    it("rejects invalid input and stores nothing", async () => {
      await assertCode(manager.create({ ...ref("bad name"), kind: "manual", value: "v" }), "invalid_argument");
      await assertCode(manager.create({ ...ref("m"), kind: "manual", value: "" }), "invalid_argument");
      await assertCode(manager.create({ ...ref("m"), kind: "manual", value: "v", rotationIntervalSeconds: 60 }), "invalid_argument");
      await assertCode(manager.create({ ...ref("a"), kind: "automatic", rotationIntervalSeconds: 0 }), "invalid_argument");
      await assertCode(manager.create({ ...ref("a"), kind: "automatic", gracePeriodSeconds: -1 }), "invalid_argument");
      await assertCode(manager.create({ ...ref("m"), kind: "manual", value: "v", description: "d".repeat(1025) }), "invalid_argument");
      assert.deepEqual(await storage.listSecrets({ store: STORE, prefix: "", limit: 10 }), []);
    });

    it("refuses a name that is taken with already_exists", async () => {
      await manager.create({ ...ref("dup"), kind: "manual", value: "first" });
      await assertCode(manager.create({ ...ref("dup"), kind: "manual", value: "second" }), "already_exists");
      assert.equal((await manager.get(ref("dup"))).value, "first");
    });

    it("allows the same name in another store", async () => {
      await manager.create({ ...ref("dup"), kind: "manual", value: "default-store" });
      await manager.create({ store: "team-a", name: "dup", kind: "manual", value: "team-store" });
      assert.equal((await manager.get({ store: "team-a", name: "dup" })).value, "team-store");
      assert.equal((await manager.get(ref("dup"))).value, "default-store");
    });
  });

  describe("get", () => {
    it("returns the current version or the version asked for", async () => {
      await manager.create({ ...ref("s"), kind: "manual", value: "one" });
      t += SEC;
      await manager.update(ref("s"), { value: "two" });
      const current = await manager.get(ref("s"));
      assert.equal(current.value, "two");
      assert.equal(current.version.version, 2);
      assert.equal((await manager.get(ref("s"), 1)).value, "one");
      assert.equal((await manager.get(ref("s"), 0)).value, "two", "0 means the current version");
    });

    it("answers not_found for a missing secret or version", async () => {
      await assertCode(manager.get(ref("nope")), "not_found", /secret "nope" not found/);
      await manager.create({ ...ref("s"), kind: "manual", value: "one" });
      await assertCode(manager.get(ref("s"), 2), "not_found", /version 2/);
    });

    it("rejects an invalid name", async () => {
      await assertCode(manager.get(ref("../etc")), "invalid_argument");
    });
  });

  describe("list", () => {
    beforeEach(async () => {
      for (const name of ["e", "c", "a", "d", "b", "x/1"]) await manager.create({ ...ref(name), kind: "manual", value: name });
    });

    it("pages in name order with tokens until an empty token", async () => {
      const first = await manager.list({ store: STORE, pageSize: 2 });
      assert.deepEqual(first.docs.map((d) => d.name), ["a", "b"]);
      assert.notEqual(first.nextPageToken, "");
      const second = await manager.list({ store: STORE, pageSize: 2, pageToken: first.nextPageToken });
      assert.deepEqual(second.docs.map((d) => d.name), ["c", "d"]);
      const third = await manager.list({ store: STORE, pageSize: 2, pageToken: second.nextPageToken });
      assert.deepEqual(third.docs.map((d) => d.name), ["e", "x/1"]);
      assert.equal(third.nextPageToken, "", "no token when nothing follows, even on a full page");
    });

    it("gives no token when everything fits", async () => {
      const page = await manager.list({ store: STORE, pageSize: 6 });
      assert.equal(page.docs.length, 6);
      assert.equal(page.nextPageToken, "");
    });

    it("keeps to the prefix across pages", async () => {
      await manager.create({ ...ref("x/2"), kind: "manual", value: "v" });
      const first = await manager.list({ store: STORE, prefix: "x/", pageSize: 1 });
      assert.deepEqual(first.docs.map((d) => d.name), ["x/1"]);
      const second = await manager.list({ store: STORE, prefix: "x/", pageSize: 1, pageToken: first.nextPageToken });
      assert.deepEqual(second.docs.map((d) => d.name), ["x/2"]);
      assert.equal(second.nextPageToken, "");
    });

    it("uses 100 for a page size of 0 or none, and clamps to 1000", async () => {
      await manager.list({ store: STORE });
      await manager.list({ store: STORE, pageSize: 0 });
      await manager.list({ store: STORE, pageSize: 5000 });
      assert.deepEqual(listQueries.map((q) => q.limit), [101, 101, 1001], "one extra row to learn whether more follow");
    });

    it("rejects a malformed page token with invalid_argument", async () => {
      for (const pageToken of ["garbage", "!!!", Buffer.from("null").toString("base64url"), Buffer.from('{"a":1}').toString("base64url")]) {
        await assertCode(manager.list({ store: STORE, pageToken }), "invalid_argument", /page_token/);
      }
    });

    it("rejects a prefix longer than 256 characters", async () => {
      await assertCode(manager.list({ store: STORE, prefix: "p".repeat(257) }), "invalid_argument");
    });

    it("lists an empty store as one empty page", async () => {
      assert.deepEqual(await manager.list({ store: "empty" }), { docs: [], nextPageToken: "", prevPageToken: "" });
    });
  });

  describe("update", () => {
    it("makes version 2 and keeps version 1 valid for exactly the grace period", async () => {
      await manager.create({ ...ref("s"), kind: "manual", value: "old", gracePeriodSeconds: 60 });
      t = T0 + 10 * SEC;
      const doc = await manager.update(ref("s"), { value: "new" });
      assert.equal(latestVersion(doc).version, 2);
      assert.equal(doc.revision, 2);
      assert.equal(doc.versions[0]?.validUntil, t + 60 * SEC);

      assert.deepEqual(await manager.verify(ref("s"), "new"), { valid: true, version: 2 });
      assert.deepEqual(await manager.verify(ref("s"), "old"), { valid: true, version: 1 });
      t = T0 + 70 * SEC - 1;
      assert.deepEqual(await manager.verify(ref("s"), "old"), { valid: true, version: 1 }, "1 ms before the end");
      t = T0 + 70 * SEC;
      assert.deepEqual(await manager.verify(ref("s"), "old"), { valid: false, version: 0 }, "at the end of the window");
      assert.deepEqual(await manager.verify(ref("s"), "new"), { valid: true, version: 2 });
      assert.equal((await manager.get(ref("s"), 1)).value, "old", "an expired version can still be read by number");
    });

    it("expires the old value of a manual secret at once by default", async () => {
      await manager.create({ ...ref("s"), kind: "manual", value: "old" });
      t += SEC;
      await manager.update(ref("s"), { value: "new" });
      assert.deepEqual(await manager.verify(ref("s"), "old"), { valid: false, version: 0 });
    });

    it("applies a grace period sent with a new value to the version it supersedes", async () => {
      await manager.create({ ...ref("s"), kind: "manual", value: "old" });
      t += SEC;
      const doc = await manager.update(ref("s"), { value: "new", gracePeriodSeconds: 30 });
      assert.equal(doc.versions[0]?.validUntil, t + 30 * SEC);
      assert.deepEqual(await manager.verify(ref("s"), "old"), { valid: true, version: 1 });
    });

    it("changes metadata alone without a new version", async () => {
      const created = await manager.create({ ...ref("s"), kind: "manual", value: "v", description: "before" });
      t += SEC;
      const doc = await manager.update(ref("s"), { description: "after" });
      assert.equal(doc.description, "after");
      assert.equal(doc.revision, 2);
      assert.equal(doc.updatedAt, t);
      assert.deepEqual(doc.versions, created.doc.versions);
      assert.deepEqual(await stored("s"), doc);
    });

    it("turns a manual secret automatic and schedules it", async () => {
      await manager.create({ ...ref("s"), kind: "manual", value: "v" });
      const doc = await manager.update(ref("s"), { kind: "automatic", rotationIntervalSeconds: 120 });
      assert.deepEqual(doc.rotation, { intervalSeconds: 120, nextRotationAt: T0 + 120 * SEC });
      assert.equal((await stored("s")).rotation?.nextRotationAt, T0 + 120 * SEC);
    });

    it("rejects invalid input and changes nothing", async () => {
      const created = await manager.create({ ...ref("s"), kind: "manual", value: "v" });
      await assertCode(manager.update(ref("s"), { value: "" }), "invalid_argument");
      await assertCode(manager.update(ref("s"), { gracePeriodSeconds: 1.5 }), "invalid_argument");
      await assertCode(manager.update(ref("s"), { rotationIntervalSeconds: 60 }), "invalid_argument", /automatic secrets only/);
      await assertCode(manager.update(ref("s"), { value: "x".repeat(10_241) }), "invalid_argument");
      assert.deepEqual(await stored("s"), created.doc);
    });

    it("answers not_found for a missing secret", async () => {
      await assertCode(manager.update(ref("ghost"), { description: "x" }), "not_found");
    });

    it("keeps at most maxVersions versions, dropping the oldest", async () => {
      await manager.create({ ...ref("s"), kind: "manual", value: "v1" });
      for (let i = 2; i <= 6; i++) {
        t += SEC;
        await manager.update(ref("s"), { value: `v${i}` });
      }
      const doc = await stored("s");
      assert.deepEqual(doc.versions.map((v) => v.version), [3, 4, 5, 6]);
      await assertCode(manager.get(ref("s"), 2), "not_found");
      assert.equal((await manager.get(ref("s"), 3)).value, "v3");
    });

    it("lands every one of 20 concurrent updates: no lost update, one revision each", async () => {
      await manager.create({ ...ref("hot"), kind: "manual", value: "v0", gracePeriodSeconds: 3600 });
      const results = await Promise.all(
        Array.from({ length: 20 }, (_, i) => manager.update(ref("hot"), { value: `value-${i}`, description: `desc-${i}` })),
      );
      const doc = await stored("hot");
      assert.equal(doc.revision, 21);
      assert.equal(latestVersion(doc).version, 21);
      assert.deepEqual(doc.versions.map((v) => v.version), [18, 19, 20, 21]);
      assert.deepEqual(
        results.map((r) => r.revision).sort((a, b) => a - b),
        Array.from({ length: 20 }, (_, i) => i + 2),
        "each update wrote its own revision",
      );
      // The last writer's description and value belong together.
      const last = results.find((r) => r.revision === 21);
      assert.ok(last);
      assert.equal(doc.description, last.description);
      const i = Number(last.description.slice("desc-".length));
      assert.equal((await manager.get(ref("hot"))).value, `value-${i}`);
      // Every version still kept opens to one of the values sent.
      for (const v of doc.versions) assert.match((await manager.get(ref("hot"), v.version)).value, /^value-\d+$/);
    });
  });

  describe("verify", () => {
    it("returns the version whose value matches", async () => {
      await manager.create({ ...ref("s"), kind: "automatic", value: "first", gracePeriodSeconds: 600 });
      t += SEC;
      await manager.update(ref("s"), { value: "second" });
      t += SEC;
      await manager.update(ref("s"), { value: "third" });
      assert.deepEqual(await manager.verify(ref("s"), "first"), { valid: true, version: 1 });
      assert.deepEqual(await manager.verify(ref("s"), "second"), { valid: true, version: 2 });
      assert.deepEqual(await manager.verify(ref("s"), "third"), { valid: true, version: 3 });
    });

    it("rejects a value that matches no version", async () => {
      await manager.create({ ...ref("s"), kind: "manual", value: "right" });
      assert.deepEqual(await manager.verify(ref("s"), "wrong"), { valid: false, version: 0 });
      assert.deepEqual(await manager.verify(ref("s"), "righ"), { valid: false, version: 0 });
      assert.deepEqual(await manager.verify(ref("s"), "right "), { valid: false, version: 0 });
    });

    it("requires a value and a known secret", async () => {
      await manager.create({ ...ref("s"), kind: "manual", value: "right" });
      await assertCode(manager.verify(ref("s"), ""), "invalid_argument");
      await assertCode(manager.verify(ref("ghost"), "x"), "not_found");
    });
  });

  describe("rotate", () => {
    it("gives an automatic secret a new generated version and keeps the old one for the grace period", async () => {
      const created = await manager.create({ ...ref("a"), kind: "automatic", rotationIntervalSeconds: 60, gracePeriodSeconds: 30 });
      t = T0 + 5 * SEC;
      const rotated = await manager.rotate(ref("a"));
      assert.equal(rotated.version.version, 2);
      assert.notEqual(rotated.value, created.value);
      assert.match(rotated.value, /^[A-Za-z0-9_-]{43}$/);
      assert.deepEqual(rotated.doc.rotation, { intervalSeconds: 60, nextRotationAt: t + 60 * SEC });
      assert.equal((await manager.get(ref("a"))).value, rotated.value);
      assert.deepEqual(await manager.verify(ref("a"), created.value), { valid: true, version: 1 });
      t += 30 * SEC;
      assert.deepEqual(await manager.verify(ref("a"), created.value), { valid: false, version: 0 });
    });

    it("refuses a manual secret with failed_precondition and changes nothing", async () => {
      const created = await manager.create({ ...ref("m"), kind: "manual", value: "v" });
      await assertCode(manager.rotate(ref("m")), "failed_precondition", /manual/);
      assert.deepEqual(await stored("m"), created.doc);
    });

    it("answers not_found for a missing secret", async () => {
      await assertCode(manager.rotate(ref("ghost")), "not_found");
    });
  });

  describe("delete", () => {
    it("deletes a secret with every version, then answers not_found", async () => {
      await manager.create({ ...ref("s"), kind: "manual", value: "v" });
      t += SEC;
      await manager.update(ref("s"), { value: "v2" });
      await manager.delete(ref("s"));
      await assertCode(manager.get(ref("s")), "not_found");
      await assertCode(manager.get(ref("s"), 1), "not_found");
      await assertCode(manager.verify(ref("s"), "v2"), "not_found");
      await assertCode(manager.delete(ref("s")), "not_found");
      assert.equal(await storage.findSecret(STORE, "s"), undefined);
    });

    it("frees the name for a new secret starting at version 1", async () => {
      await manager.create({ ...ref("s"), kind: "manual", value: "v" });
      await manager.delete(ref("s"));
      const again = await manager.create({ ...ref("s"), kind: "manual", value: "again" });
      assert.equal(again.version.version, 1);
    });
  });

  describe("rotateIfDue", () => {
    it("does nothing while the secret is not due", async () => {
      const created = await manager.create({ ...ref("a"), kind: "automatic", rotationIntervalSeconds: 60 });
      t = T0 + 60 * SEC - 1;
      assert.equal(await manager.rotateIfDue(created.doc), undefined);
      assert.deepEqual(await stored("a"), created.doc);
    });

    it("does nothing for a manual secret", async () => {
      const created = await manager.create({ ...ref("m"), kind: "manual", value: "v" });
      t = T0 + 10 ** 9;
      assert.equal(await manager.rotateIfDue(created.doc), undefined);
    });

    it("rotates a due secret and returns the new version number", async () => {
      const created = await manager.create({ ...ref("a"), kind: "automatic", rotationIntervalSeconds: 60 });
      t = T0 + 60 * SEC;
      assert.equal(await manager.rotateIfDue(created.doc), 2);
      const doc = await stored("a");
      assert.equal(latestVersion(doc).version, 2);
      assert.equal(doc.rotation?.nextRotationAt, t + 60 * SEC);
      assert.notEqual((await manager.get(ref("a"))).value, (await manager.get(ref("a"), 1)).value);
    });

    it("lets exactly one of two racing calls on the same stale document win", async () => {
      const created = await manager.create({ ...ref("a"), kind: "automatic", rotationIntervalSeconds: 60 });
      t = T0 + 61 * SEC;
      const results = await Promise.all([manager.rotateIfDue(created.doc), manager.rotateIfDue(created.doc)]);
      assert.deepEqual(results.filter((r) => r !== undefined), [2]);
      const doc = await stored("a");
      assert.equal(doc.revision, 2);
      assert.deepEqual(doc.versions.map((v) => v.version), [1, 2]);
    });

    it("does not rotate a document that changed since it was read", async () => {
      const created = await manager.create({ ...ref("a"), kind: "automatic", rotationIntervalSeconds: 60 });
      t = T0 + 61 * SEC;
      await manager.update(ref("a"), { description: "touched" });
      assert.equal(await manager.rotateIfDue(created.doc), undefined);
      const doc = await stored("a");
      assert.equal(doc.description, "touched");
      assert.equal(latestVersion(doc).version, 1);
    });

    it("does not resurrect a deleted secret", async () => {
      const created = await manager.create({ ...ref("a"), kind: "automatic", rotationIntervalSeconds: 60 });
      await manager.delete(ref("a"));
      t = T0 + 61 * SEC;
      assert.equal(await manager.rotateIfDue(created.doc), undefined);
      assert.equal(await storage.findSecret(STORE, "a"), undefined);
    });
  });
});
