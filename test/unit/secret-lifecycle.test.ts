import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, afterEach, beforeEach, describe, it } from "node:test";
import { createEnvelope, type Envelope, masterKeyFrom, sealedKeyId } from "../../src/crypto/envelope.js";
import { type ErrorCode, LatchkeyError } from "../../src/domain/errors.js";
import { findVersion, latestVersion, type SecretDocument } from "../../src/domain/secret.js";
import { createLogger } from "../../src/log/logger.js";
import {
  type BatchItem,
  type BatchResult,
  createSecretManager,
  MAX_BATCH,
  type SecretManager,
  type SecretRef,
} from "../../src/service/secret-manager.js";
import { createSqliteStorage } from "../../src/storage/sqlite/sqlite-storage.js";
import type { Storage, WriteOp } from "../../src/storage/storage.js";

/**
 * The lifecycle of a secret in depth, over real SQLite storage and real envelope encryption, with a clock the
 * tests move: soft deletion and purges, copy/rename/move, batches, binary values, paging both ways, check-and-set,
 * expiry and version states as served.
 */

const T0 = Date.UTC(2030, 0, 1);
const SEC = 1000;
const MAX_VERSIONS = 10;
const STORE = "default";
const RETENTION = 3600;

const root = mkdtempSync(join(tmpdir(), "latchkey-lifecycle-"));
after(() => rmSync(root, { recursive: true, force: true }));

let counter = 0;
let t = T0;
const clock = { now: () => t };
let real: Storage;
let storage: Storage;
let envelope: Envelope;
let manager: SecretManager;
/** Runs (once) just before the next applyWrites / replaceSecret reaches storage: a writer racing the manager. */
let beforeApplyWrites: (() => Promise<void>) | undefined;
let beforeReplace: (() => Promise<void>) | undefined;

const ref = (name: string, store = STORE): SecretRef => ({ store, name });

function managerWith(deleteRetentionSeconds: number): SecretManager {
  return createSecretManager({ storage, envelope, clock, logger: createLogger("silent"), maxVersions: MAX_VERSIONS, deleteRetentionSeconds });
}

async function assertCode(
  p: Promise<unknown>,
  code: ErrorCode,
  expect: { reason?: string; httpStatus?: number; field?: string; message?: RegExp } = {},
): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof LatchkeyError, `a LatchkeyError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    if (expect.reason !== undefined) assert.equal(err.reason ?? err.violations[0]?.reason, expect.reason, err.message);
    if (expect.httpStatus !== undefined) assert.equal(err.httpStatus, expect.httpStatus);
    if (expect.field !== undefined) assert.equal(err.violations[0]?.field, expect.field);
    if (expect.message) assert.match(err.message, expect.message);
    return true;
  });
}

async function stored(name: string, store = STORE): Promise<SecretDocument> {
  const doc = await storage.findSecret(store, name);
  assert.ok(doc, `secret ${store}/${name} is stored`);
  return doc;
}

async function byId(id: string): Promise<SecretDocument | undefined> {
  return storage.findSecretById(id);
}

const create = (name: string, value: string, extra: Partial<Parameters<SecretManager["create"]>[0]> = {}) =>
  manager.create({ ...ref(name), kind: "manual", value, ...extra });

const names = (docs: readonly SecretDocument[]) => docs.map((d) => d.name);

describe("secret lifecycle", () => {
  beforeEach(() => {
    t = T0;
    beforeApplyWrites = undefined;
    beforeReplace = undefined;
    real = createSqliteStorage(join(root, `db-${++counter}`, "latchkey.db"));
    storage = {
      ...real,
      async applyWrites(ops: readonly WriteOp[], atomic: boolean) {
        const hook = beforeApplyWrites;
        beforeApplyWrites = undefined;
        if (hook) await hook();
        return real.applyWrites(ops, atomic);
      },
      async replaceSecret(doc: SecretDocument, expectedRevision: number) {
        const hook = beforeReplace;
        beforeReplace = undefined;
        if (hook) await hook();
        return real.replaceSecret(doc, expectedRevision);
      },
    };
    envelope = createEnvelope({ masterKey: masterKeyFrom(Buffer.alloc(32, 7)), storage, clock });
    manager = managerWith(RETENTION);
  });
  afterEach(async () => {
    await real.close();
  });

  describe("soft delete, undelete and purge", () => {
    it("hides a deleted secret, frees its name, and restores it with every version and value", async () => {
      const created = await create("s", "one");
      t += SEC;
      await manager.update(ref("s"), { value: "two" });
      t += SEC;
      const deletedAt = t;
      await manager.delete(ref("s"));
      await assertCode(manager.get(ref("s")), "not_found", { reason: "SECRET_NOT_FOUND" });
      await assertCode(manager.verify(ref("s"), "two"), "not_found");
      assert.deepEqual(names((await manager.list({ store: STORE })).docs), []);
      assert.deepEqual(names((await manager.list({ store: STORE, state: "deleted" })).docs), ["s"]);
      const del = await byId(created.doc.id);
      assert.deepEqual(del?.deletion, { deletedAt, purgeAt: deletedAt + RETENTION * SEC });
      assert.equal(del?.lastChange, "deleted");
      assert.equal(del?.revision, 3);

      // The name is free meanwhile; a new secret there is a different one.
      t += SEC;
      const other = await create("s", "other");
      assert.notEqual(other.doc.id, created.doc.id);
      await assertCode(manager.undelete(ref("s")), "already_exists", { reason: "SECRET_EXISTS" });
      assert.deepEqual((await byId(created.doc.id))?.deletion, del?.deletion, "nothing written");
      await manager.delete(ref("s"), { purge: true });

      t += SEC;
      const back = await manager.undelete(ref("s"));
      assert.equal(back.id, created.doc.id);
      assert.equal(back.deletion, null);
      assert.equal(back.lastChange, "restored");
      assert.equal(back.revision, 4);
      assert.deepEqual(await stored("s"), back);
      assert.equal((await manager.get(ref("s"))).value, "two");
      assert.equal((await manager.get(ref("s"), 1)).value, "one");
      assert.deepEqual(await manager.verify(ref("s"), "two"), { valid: true, version: 2 });
      await assertCode(manager.undelete(ref("s")), "not_found", { reason: "DELETED_SECRET_NOT_FOUND" });
    });

    it("purges a deleted secret when runDue meets it after the retention window, not before", async () => {
      const m = managerWith(60);
      const created = await m.create({ ...ref("p"), kind: "manual", value: "v" });
      t = T0 + 10 * SEC;
      await m.delete(ref("p"));
      const del = await byId(created.doc.id);
      assert.ok(del);
      assert.equal(del.deletion?.purgeAt, T0 + 70 * SEC);
      assert.equal(await storage.nextRotationAt(), T0 + 70 * SEC);

      t = T0 + 70 * SEC - 1;
      assert.deepEqual(await storage.findDueSecrets(t, 10), []);
      assert.equal(await m.runDue(del), undefined, "not due yet");
      assert.ok(await byId(created.doc.id), "still kept");

      t = T0 + 70 * SEC;
      const due = await storage.findDueSecrets(t, 10);
      assert.deepEqual(due.map((d) => d.id), [created.doc.id]);
      assert.equal(await m.runDue(due[0] as SecretDocument), 0, "0: purged");
      assert.equal(await byId(created.doc.id), undefined);
      assert.equal(await storage.nextRotationAt(), undefined);
      assert.equal(await m.runDue(del), undefined, "already gone");
      await assertCode(m.undelete(ref("p")), "not_found", { reason: "DELETED_SECRET_NOT_FOUND" });
    });

    it("does not purge a document that was restored since it was read", async () => {
      const m = managerWith(60);
      const created = await m.create({ ...ref("p"), kind: "manual", value: "v" });
      await m.delete(ref("p"));
      const del = await byId(created.doc.id);
      assert.ok(del);
      await m.undelete(ref("p"));
      t = T0 + 100 * SEC;
      assert.equal(await m.runDue(del), undefined);
      assert.equal((await m.get(ref("p"))).value, "v");
    });

    it("no longer restores a deleted secret once its retention is over, even before the purge ran", async () => {
      const m = managerWith(60);
      await m.create({ ...ref("late"), kind: "manual", value: "v" });
      await m.delete(ref("late"));
      t = T0 + 59 * SEC;
      const early = await m.undelete(ref("late"));
      assert.equal(early.deletion, null, "restorable until purgeAt");
      await m.delete(ref("late"));
      t = T0 + 59 * SEC + 60 * SEC; // purgeAt of the second deletion; the scheduler has not run yet
      await assertCode(m.undelete(ref("late")), "not_found", { reason: "DELETED_SECRET_NOT_FOUND" });
    });

    it("neither rotates a deleted automatic secret nor forgets its rotation once restored", async () => {
      const created = await manager.create({ ...ref("auto"), kind: "automatic", rotationIntervalSeconds: 60 });
      t = T0 + 10 * SEC;
      await manager.delete(ref("auto"));
      t = T0 + 120 * SEC; // its rotation fell due while deleted
      const del = await byId(created.doc.id);
      assert.ok(del);
      assert.equal(await manager.runDue(del), undefined, "a deleted secret is not rotated");
      assert.deepEqual(await storage.findDueSecrets(t, 10), [], "only its purge is due, later");
      const back = await manager.undelete(ref("auto"));
      const due = await storage.findDueSecrets(t, 10);
      assert.deepEqual(due.map((d) => d.id), [created.doc.id], "due at once after the restore");
      assert.equal(await manager.runDue(due[0] as SecretDocument), 2);
      assert.equal((await stored("auto")).revision, back.revision + 1);
      assert.equal((await stored("auto")).rotation?.nextRotationAt, t + 60 * SEC);
    });

    it("deletes for good at once with a retention of 0, or with purge", async () => {
      const now = managerWith(0);
      const a = await now.create({ ...ref("a"), kind: "manual", value: "v" });
      await now.delete(ref("a"));
      assert.equal(await byId(a.doc.id), undefined);
      await assertCode(now.undelete(ref("a")), "not_found", { reason: "DELETED_SECRET_NOT_FOUND" });
      const b = await now.create({ ...ref("b"), kind: "manual", value: "v" });
      const c = await now.create({ ...ref("c"), kind: "manual", value: "v" });
      const res = await now.batchDelete(STORE, ["b", "c"], { atomic: true, purge: false });
      assert.ok(res.every((r) => r.ok));
      assert.equal(await byId(b.doc.id), undefined);
      assert.equal(await byId(c.doc.id), undefined);

      const d = await create("d", "v");
      await manager.delete(ref("d"), { purge: true });
      assert.equal(await byId(d.doc.id), undefined);
      assert.deepEqual((await manager.list({ store: STORE, state: "deleted" })).docs, []);
    });

    it("undeletes the most recently deleted secret of a name, or the one asked for by id", async () => {
      const first = await create("x", "first");
      t = T0 + 1 * SEC;
      await manager.delete(ref("x"));
      const second = await create("x", "second");
      t = T0 + 2 * SEC;
      await manager.delete(ref("x"));
      const third = await create("x", "third");
      t = T0 + 3 * SEC;
      await manager.delete(ref("x"));

      t = T0 + 10 * SEC;
      assert.equal((await manager.undelete(ref("x"))).id, third.doc.id, "the last one deleted");
      assert.equal((await manager.get(ref("x"))).value, "third");
      t = T0 + 11 * SEC;
      await manager.delete(ref("x"));

      t = T0 + 12 * SEC;
      assert.equal((await manager.undelete(ref("x"), { id: first.doc.id })).id, first.doc.id);
      assert.equal((await manager.get(ref("x"))).value, "first");
      await assertCode(manager.undelete(ref("x"), { id: second.doc.id }), "already_exists", { reason: "SECRET_EXISTS" });
      t = T0 + 13 * SEC;
      await manager.delete(ref("x"));

      // Last deleted is now the first one (at 13 s), not the third (11 s).
      t = T0 + 14 * SEC;
      assert.equal((await manager.undelete(ref("x"))).id, first.doc.id);
      // By id: only a deleted secret of that very store and name.
      await create("y", "y");
      const y = await stored("y");
      await assertCode(manager.undelete(ref("x"), { id: y.id }), "not_found", { reason: "DELETED_SECRET_NOT_FOUND" });
      await assertCode(manager.undelete(ref("y"), { id: second.doc.id }), "not_found", { reason: "DELETED_SECRET_NOT_FOUND" });
      await assertCode(manager.undelete(ref("x", "elsewhere"), { id: second.doc.id }), "not_found");
      await assertCode(manager.undelete(ref("x"), { id: first.doc.id }), "not_found", { reason: "DELETED_SECRET_NOT_FOUND" });
      await assertCode(manager.undelete(ref("never")), "not_found", { reason: "DELETED_SECRET_NOT_FOUND" });
      await assertCode(manager.undelete(ref("bad name")), "invalid_argument");
    });

    it("deletes with check-and-set", async () => {
      const created = await create("cas", "v");
      await assertCode(manager.delete(ref("cas"), { expectedRevision: 7 }), "failed_precondition", {
        reason: "REVISION_MISMATCH",
        httpStatus: 409,
      });
      assert.deepEqual(await stored("cas"), created.doc);
      await manager.delete(ref("cas"), { expectedRevision: 1 });
      assert.equal((await byId(created.doc.id))?.deletion?.deletedAt, T0);
    });
  });

  describe("copy, rename and move", () => {
    it("copies the current value and the metadata to a new secret, in the same store or another", async () => {
      await manager.create({
        ...ref("src"),
        kind: "automatic",
        value: "v1",
        description: "the source",
        type: "token",
        folder: "team/app",
        tags: ["prod", "db"],
        metadata: { owner: "alice" },
        expiresAt: T0 + 10_000 * SEC,
        rotationIntervalSeconds: 120,
        gracePeriodSeconds: 30,
      });
      t += SEC;
      const src = await manager.update(ref("src"), { value: "v2" });
      t += SEC;
      for (const to of [ref("copy"), ref("copy", "team")]) {
        const copied = await manager.copy(ref("src"), to);
        assert.equal(copied.value, "v2");
        const doc = await stored(to.name, to.store);
        assert.notEqual(doc.id, src.id);
        assert.deepEqual(doc.versions.map((v) => v.version), [1], "a new secret: one version");
        assert.equal(doc.revision, 1);
        assert.equal(doc.lastChange, "created");
        const same = ["kind", "type", "description", "folder", "tags", "metadata", "expiresAt", "gracePeriodSeconds"] as const;
        for (const k of same) assert.deepEqual(doc[k], src[k], k);
        assert.deepEqual(doc.rotation, { intervalSeconds: 120, nextRotationAt: t + 120 * SEC });
        assert.equal((await manager.get(to)).value, "v2");
      }
      assert.deepEqual(await stored("src"), src, "the source is untouched");
      await assertCode(manager.copy(ref("src"), ref("copy")), "already_exists", { reason: "SECRET_EXISTS" });
      await assertCode(manager.copy(ref("ghost"), ref("copy2")), "not_found");
    });

    it("copies a binary value as bytes, and refuses a source with no active version", async () => {
      const bytes = Buffer.from([0, 255, 1, 254, 0xc3]);
      await manager.create({ ...ref("bin"), kind: "manual", binaryValue: bytes });
      const copied = await manager.copy(ref("bin"), ref("bin2", "other"));
      assert.deepEqual(copied.binaryValue, bytes);
      assert.deepEqual((await manager.get(ref("bin2", "other"))).binaryValue, bytes);
      assert.equal((await stored("bin2", "other")).versions[0]?.binary, true);

      await manager.setVersionState(ref("bin"), 1, "suspended");
      await assertCode(manager.copy(ref("bin"), ref("bin3")), "failed_precondition", { reason: "NO_ACTIVE_VERSION" });
    });

    it("renames a secret with its id, versions and values, and frees the old name", async () => {
      const created = await create("old", "one");
      t += SEC;
      const v2 = await manager.update(ref("old"), { value: "two" });
      t += SEC;
      const renamed = await manager.rename(ref("old"), "new/name");
      assert.equal(renamed.id, created.doc.id);
      assert.equal(renamed.name, "new/name");
      assert.equal(renamed.lastChange, "renamed");
      assert.equal(renamed.revision, v2.revision + 1);
      assert.deepEqual(renamed.versions, v2.versions, "versions unchanged");
      await assertCode(manager.get(ref("old")), "not_found");
      assert.equal((await manager.get(ref("new/name"))).value, "two");
      assert.equal((await manager.get(ref("new/name"), 1)).value, "one");
      await create("old", "a new one");

      await assertCode(manager.rename(ref("new/name"), "old"), "already_exists", { reason: "SECRET_EXISTS" });
      await assertCode(manager.rename(ref("new/name"), "bad name"), "invalid_argument", { field: "new_name" });
      await assertCode(manager.rename(ref("new/name"), "x", 1), "failed_precondition", { reason: "REVISION_MISMATCH", httpStatus: 409 });
      assert.deepEqual(await stored("new/name"), renamed, "nothing written");

      // Onto the name of a deleted secret.
      await manager.delete(ref("old"));
      assert.equal((await manager.rename(ref("new/name"), "old", renamed.revision)).name, "old");
    });

    it("moves a secret to another store with every version re-sealed for it, destroyed ones staying empty", async () => {
      await create("mv", "one");
      t += SEC;
      await manager.update(ref("mv"), { binaryValue: Buffer.from([1, 2, 3]) });
      t += SEC;
      await manager.update(ref("mv"), { value: "three" });
      t += SEC;
      await manager.update(ref("mv"), { value: "four" });
      await manager.setVersionState(ref("mv"), 1, "deactivated");
      await manager.setVersionState(ref("mv"), 3, "destroyed");
      const before = await stored("mv");

      t += SEC;
      const moved = await manager.move(ref("mv"), ref("moved", "vault"));
      assert.equal(moved.id, before.id);
      assert.equal(moved.store, "vault");
      assert.equal(moved.name, "moved");
      assert.equal(moved.lastChange, "moved");
      assert.equal(moved.revision, before.revision + 1);
      assert.deepEqual(await stored("moved", "vault"), moved);
      await assertCode(manager.get(ref("mv")), "not_found");

      const vaultKeys = (await storage.listDataKeys("vault")).map((k) => k.id);
      const defaultKeys = (await storage.listDataKeys(STORE)).map((k) => k.id);
      assert.equal(vaultKeys.length, 1);
      assert.deepEqual(
        moved.versions.map((v) => [v.version, v.state, v.binary, v.createdAt, v.validUntil]),
        before.versions.map((v) => [v.version, v.state, v.binary, v.createdAt, v.validUntil]),
        "the same versions",
      );
      for (const v of moved.versions) {
        const old = findVersion(before, v.version);
        assert.ok(old);
        if (v.state === "destroyed") {
          assert.equal(v.sealed, "", "a destroyed version stays empty");
          continue;
        }
        assert.notEqual(v.sealed, old.sealed, `version ${v.version} re-sealed`);
        assert.ok(vaultKeys.includes(sealedKeyId(v.sealed) as string), "under the new store's key");
        assert.ok(!defaultKeys.includes(sealedKeyId(v.sealed) as string));
        const plain = await envelope.open("vault", moved.id, v.version, v.sealed);
        assert.deepEqual(plain, await envelope.open(STORE, before.id, v.version, old.sealed), `version ${v.version} intact`);
        await assert.rejects(envelope.open(STORE, moved.id, v.version, v.sealed), "bound to the new store");
      }
      assert.equal((await manager.get(ref("moved", "vault"))).value, "four");
      assert.equal((await manager.get(ref("moved", "vault"), 1)).value, "one", "deactivated, still readable");
      assert.deepEqual((await manager.get(ref("moved", "vault"), 2)).binaryValue, Buffer.from([1, 2, 3]));
      await assertCode(manager.get(ref("moved", "vault"), 3), "failed_precondition", { reason: "VERSION_DESTROYED" });
      assert.deepEqual(await manager.verify(ref("moved", "vault"), "four"), { valid: true, version: 4 });

      // New versions in the new store open too.
      t += SEC;
      await manager.update(ref("moved", "vault"), { value: "five" });
      assert.equal((await manager.get(ref("moved", "vault"))).value, "five");
    });

    it("moves within a store as a rename, and refuses a taken name or a stale revision, writing nothing", async () => {
      const a = await create("a", "va");
      await manager.create({ ...ref("taken", "vault"), kind: "manual", value: "t" });
      await assertCode(manager.move(ref("a"), ref("taken", "vault")), "already_exists", { reason: "SECRET_EXISTS" });
      await assertCode(manager.move(ref("a"), ref("b", "vault"), { expectedRevision: 5 }), "failed_precondition", {
        reason: "REVISION_MISMATCH",
        httpStatus: 409,
      });
      await assertCode(manager.move(ref("a"), ref("bad name", "vault")), "invalid_argument", { field: "to_name" });
      assert.deepEqual(await stored("a"), a.doc, "nothing written");
      assert.equal(await storage.findSecret("vault", "b"), undefined);

      const renamed = await manager.move(ref("a"), ref("b"));
      assert.equal(renamed.lastChange, "renamed");
      assert.deepEqual(renamed.versions, a.doc.versions, "same store: nothing re-sealed");
    });
  });

  describe("batches", () => {
    const ok = (r: BatchResult) => r.ok;
    const reasons = (rs: BatchResult[]) => rs.map((r) => (r.ok ? "ok" : r.error?.reason));

    it("upserts each item on its own when not atomic", async () => {
      await create("exists", "old");
      const res = await manager.batchUpsert(
        STORE,
        [
          { name: "new", value: "n" },
          { name: "exists", value: "updated" },
          { name: "bad name", value: "x" },
          { name: "new", value: "again" },
          { name: "auto", kind: "automatic" },
          { name: "empty", value: "" },
        ],
        false,
      );
      assert.deepEqual(reasons(res), ["ok", "ok", "pattern", "duplicate", "ok", "required"]);
      assert.deepEqual(
        res.filter(ok).map((r) => [r.name, r.created, r.version, r.revision]),
        [
          ["new", true, 1, 1],
          ["exists", false, 2, 2],
          ["auto", true, 1, 1],
        ],
      );
      assert.equal(res[3]?.error?.code, "invalid_argument");
      assert.equal((await manager.get(ref("new"))).value, "n", "the first of two items with one name");
      assert.equal((await manager.get(ref("exists"))).value, "updated");
      assert.equal((await stored("auto")).kind, "automatic");
      await assertCode(manager.get(ref("empty")), "not_found");
    });

    it("upserts all or nothing when atomic", async () => {
      const existing = await create("exists", "old");
      const items: BatchItem[] = [
        { name: "a", value: "a" },
        { name: "exists", value: "new" },
      ];
      const failed = await manager.batchUpsert(STORE, [...items, { name: "a", value: "dup" }], true);
      assert.deepEqual(reasons(failed), ["BATCH_ABORTED", "BATCH_ABORTED", "duplicate"]);
      assert.equal(failed[0]?.error?.code, "aborted");
      assert.equal(await storage.findSecret(STORE, "a"), undefined, "nothing written");
      assert.deepEqual(await stored("exists"), existing.doc);

      const done = await manager.batchUpsert(STORE, items, true);
      assert.deepEqual(reasons(done), ["ok", "ok"]);
      assert.equal((await manager.get(ref("a"))).value, "a");
      assert.equal((await manager.get(ref("exists"))).value, "new");
    });

    it("checks expected_revision per item", async () => {
      await create("x", "x1");
      await create("y", "y1");
      const res = await manager.batchUpsert(
        STORE,
        [
          { name: "x", value: "x2", expectedRevision: 1 },
          { name: "y", value: "y2", expectedRevision: 2 },
          { name: "z", value: "z1", expectedRevision: 1 },
          { name: "w", value: "w1", expectedRevision: 0 },
        ],
        false,
      );
      assert.deepEqual(reasons(res), ["ok", "REVISION_MISMATCH", "SECRET_NOT_FOUND", "ok"]);
      assert.equal(res[1]?.error?.code, "failed_precondition");
      assert.equal(res[2]?.error?.code, "not_found");
      assert.equal((await manager.get(ref("x"))).value, "x2");
      assert.equal((await manager.get(ref("y"))).value, "y1", "nothing written for a mismatch");
      await assertCode(manager.get(ref("z")), "not_found");

      const atomic = await manager.batchUpsert(
        STORE,
        [
          { name: "x", value: "x3", expectedRevision: 2 },
          { name: "y", value: "y3", expectedRevision: 5 },
        ],
        true,
      );
      assert.deepEqual(reasons(atomic), ["BATCH_ABORTED", "REVISION_MISMATCH"]);
      assert.equal((await manager.get(ref("x"))).value, "x2");
    });

    it("reports a change that lands between reading and writing a batch", async () => {
      await create("x", "x1");
      await create("y", "y1");
      beforeApplyWrites = async () => {
        await real.replaceSecret({ ...(await stored("y")), description: "raced", revision: 2 }, 1);
      };
      const atomic = await manager.batchUpsert(
        STORE,
        [
          { name: "x", value: "x2" },
          { name: "y", value: "y2" },
        ],
        true,
      );
      assert.deepEqual(reasons(atomic), ["BATCH_ABORTED", "CONCURRENT_CHANGE"]);
      assert.equal((await manager.get(ref("x"))).value, "x1", "rolled back");

      beforeApplyWrites = async () => {
        await real.replaceSecret({ ...(await stored("y")), description: "raced again", revision: 3 }, 2);
      };
      const loose = await manager.batchUpsert(
        STORE,
        [
          { name: "x", value: "x2" },
          { name: "y", value: "y2" },
        ],
        false,
      );
      assert.deepEqual(reasons(loose), ["ok", "CONCURRENT_CHANGE"]);
      assert.equal((await manager.get(ref("x"))).value, "x2");
      assert.equal((await stored("y")).description, "raced again");

      // A name created by someone else meanwhile.
      beforeApplyWrites = async () => {
        await manager.create({ ...ref("fresh"), kind: "manual", value: "theirs" });
      };
      const taken = await manager.batchUpsert(
        STORE,
        [
          { name: "x", value: "x3" },
          { name: "fresh", value: "ours" },
        ],
        true,
      );
      assert.deepEqual(reasons(taken), ["BATCH_ABORTED", "SECRET_EXISTS"]);
      assert.equal(taken[1]?.error?.code, "already_exists");
      assert.equal((await manager.get(ref("fresh"))).value, "theirs");
      assert.equal((await manager.get(ref("x"))).value, "x2");
    });

    it("deletes all or nothing when atomic, each on its own otherwise", async () => {
      for (const n of ["a", "b", "c"]) await create(n, n);
      const failed = await manager.batchDelete(STORE, ["a", "ghost", "b"], { atomic: true, purge: false });
      assert.deepEqual(reasons(failed), ["BATCH_ABORTED", "SECRET_NOT_FOUND", "BATCH_ABORTED"]);
      assert.deepEqual(names((await manager.list({ store: STORE })).docs), ["a", "b", "c"]);

      const dup = await manager.batchDelete(STORE, ["a", "a"], { atomic: true, purge: false });
      assert.deepEqual(reasons(dup), ["BATCH_ABORTED", "duplicate"]);

      const loose = await manager.batchDelete(STORE, ["a", "ghost", "b", "a"], { atomic: false, purge: false });
      assert.deepEqual(reasons(loose), ["ok", "SECRET_NOT_FOUND", "ok", "duplicate"]);
      assert.deepEqual(loose.filter(ok).map((r) => r.revision), [2, 2], "the revision of the deleted document");
      assert.deepEqual(names((await manager.list({ store: STORE })).docs), ["c"]);
      assert.deepEqual(names((await manager.list({ store: STORE, state: "deleted" })).docs), ["a", "b"], "soft-deleted");

      const c = await stored("c");
      const purged = await manager.batchDelete(STORE, ["c"], { atomic: true, purge: true });
      assert.deepEqual(reasons(purged), ["ok"]);
      assert.equal(await byId(c.id), undefined, "purged for good");
    });

    it("reads many secrets, each with its value or its error", async () => {
      await create("a", "va");
      await manager.create({ ...ref("b"), kind: "manual", binaryValue: Buffer.from([9, 8]) });
      await create("old", "vo", { expiresAt: T0 + 10 * SEC });
      t = T0 + 10 * SEC;
      const res = await manager.batchGet(STORE, ["a", "ghost", "b", "old", "bad name"]);
      assert.deepEqual(
        res.map((r) => [r.name, r.secret?.value ?? r.error?.reason]),
        [
          ["a", "va"],
          ["ghost", "SECRET_NOT_FOUND"],
          ["b", ""],
          ["old", "SECRET_EXPIRED"],
          ["bad name", "pattern"],
        ],
      );
      assert.deepEqual(res[2]?.secret?.binaryValue, Buffer.from([9, 8]));
    });

    it("takes 1 to 100 items per batch", async () => {
      const items = Array.from({ length: MAX_BATCH }, (_, i) => ({ name: `n${String(i).padStart(3, "0")}`, value: `v${i}` }));
      assert.equal(MAX_BATCH, 100);
      const res = await manager.batchUpsert(STORE, items, true);
      assert.equal(res.filter(ok).length, 100);
      const names100 = items.map((i) => i.name);
      const extra = [...names100, "n100"];
      await assertCode(manager.batchUpsert(STORE, [...items, { name: "n100", value: "v" }], false), "invalid_argument", { reason: "too_many", field: "items" });
      await assertCode(manager.batchUpsert(STORE, [], false), "invalid_argument", { reason: "required" });
      await assertCode(manager.batchGet(STORE, extra), "invalid_argument", { reason: "too_many" });
      await assertCode(manager.batchGet(STORE, []), "invalid_argument", { reason: "required" });
      await assertCode(manager.batchDelete(STORE, extra, { atomic: true, purge: false }), "invalid_argument", { reason: "too_many" });
      await assertCode(manager.batchDelete(STORE, [], { atomic: true, purge: false }), "invalid_argument", { reason: "required" });
      assert.equal(await storage.findSecret(STORE, "n100"), undefined);
      assert.equal((await manager.batchGet(STORE, names100)).filter((r) => r.secret).length, 100);
      assert.equal((await manager.batchDelete(STORE, names100, { atomic: true, purge: false })).filter(ok).length, 100);
      assert.deepEqual((await manager.list({ store: STORE })).docs, []);
    });
  });

  describe("binary values", () => {
    const bytes = Buffer.from([0x00, 0xff, 0xfe, 0x80, 0x0a, 0xc3, 0x28]); // not UTF-8

    it("creates, reads and verifies a binary value as bytes", async () => {
      const created = await manager.create({ ...ref("bin"), kind: "manual", binaryValue: bytes });
      assert.deepEqual(created.binaryValue, bytes);
      assert.equal(created.value, "");
      assert.equal(created.version.binary, true);
      const got = await manager.get(ref("bin"));
      assert.deepEqual(got.binaryValue, bytes);
      assert.equal(got.value, "");
      assert.equal(got.version.binary, true);
      assert.deepEqual(await manager.verify(ref("bin"), { binaryValue: bytes }), { valid: true, version: 1 });
      assert.deepEqual(await manager.verify(ref("bin"), { binaryValue: bytes.subarray(1) }), { valid: false, version: 0 });
      assert.deepEqual(await manager.verify(ref("bin"), { binaryValue: Buffer.concat([bytes, Buffer.from([0])]) }), { valid: false, version: 0 });
    });

    it("switches between text and bytes from version to version", async () => {
      await create("mix", "text one");
      t += SEC;
      const v2 = await manager.update(ref("mix"), { binaryValue: bytes });
      assert.equal(latestVersion(v2).binary, true);
      t += SEC;
      await manager.update(ref("mix"), { value: "text three" });
      assert.equal((await manager.get(ref("mix"), 1)).value, "text one");
      assert.equal((await manager.get(ref("mix"), 1)).binaryValue, undefined);
      assert.deepEqual((await manager.get(ref("mix"), 2)).binaryValue, bytes);
      const current = await manager.get(ref("mix"));
      assert.equal(current.value, "text three");
      assert.equal(current.version.binary, false);
      assert.deepEqual(
        (await stored("mix")).versions.map((v) => v.binary),
        [false, true, false],
      );
    });

    it("takes 1 to 65,536 bytes, and not a text value too", async () => {
      const max = Buffer.alloc(65_536, 0xab);
      const created = await manager.create({ ...ref("big"), kind: "manual", binaryValue: max });
      assert.deepEqual((await manager.get(ref("big"))).binaryValue, max);
      assert.equal(created.version.version, 1);
      await assertCode(manager.create({ ...ref("b1"), kind: "manual", binaryValue: Buffer.alloc(65_537) }), "invalid_argument", {
        reason: "too_long",
        field: "binary_value",
      });
      await assertCode(manager.create({ ...ref("b2"), kind: "manual", binaryValue: new Uint8Array(0) }), "invalid_argument", {
        reason: "required",
        field: "binary_value",
      });
      await assertCode(manager.create({ ...ref("b3"), kind: "manual", value: "t", binaryValue: bytes }), "invalid_argument", {
        reason: "exclusive",
      });
      await assertCode(manager.update(ref("big"), { value: "t", binaryValue: bytes }), "invalid_argument", { reason: "exclusive" });
      await assertCode(manager.update(ref("big"), { binaryValue: Buffer.alloc(65_537) }), "invalid_argument", { reason: "too_long" });
      assert.equal((await stored("big")).revision, 1, "nothing written");
      assert.deepEqual(names((await manager.list({ store: STORE })).docs), ["big"]);
    });
  });

  describe("paging and filters", () => {
    const all = Array.from({ length: 25 }, (_, i) => `s${String(i).padStart(2, "0")}`);

    async function walk(input: Omit<Parameters<SecretManager["list"]>[0], "pageToken">) {
      const forward: string[][] = [];
      let page = await manager.list(input);
      assert.equal(page.prevPageToken, "", "no way back from the first page");
      forward.push(names(page.docs));
      while (page.nextPageToken) {
        page = await manager.list({ ...input, pageToken: page.nextPageToken });
        assert.notEqual(page.prevPageToken, "", "a way back from every later page");
        forward.push(names(page.docs));
        assert.ok(forward.length < 100, "terminates");
      }
      const backward: string[][] = [names(page.docs)];
      while (page.prevPageToken) {
        page = await manager.list({ ...input, pageToken: page.prevPageToken });
        assert.notEqual(page.nextPageToken, "", "a way forward from every earlier page");
        backward.unshift(names(page.docs));
        assert.ok(backward.length < 100, "terminates");
      }
      return { forward, backward };
    }

    it("pages 25 secrets by 4 forward, then all the way back through the same pages", async () => {
      for (const n of [...all].reverse()) await create(n, n);
      const { forward, backward } = await walk({ store: STORE, pageSize: 4 });
      assert.deepEqual(forward.flat(), all);
      assert.deepEqual(forward.map((p) => p.length), [4, 4, 4, 4, 4, 4, 1]);
      assert.deepEqual(backward, forward, "the same pages, the same items");

      // A prev token goes back, a next token from a prev page goes forward again.
      const p1 = await manager.list({ store: STORE, pageSize: 4 });
      const p2 = await manager.list({ store: STORE, pageSize: 4, pageToken: p1.nextPageToken });
      const back = await manager.list({ store: STORE, pageSize: 4, pageToken: p2.prevPageToken });
      assert.deepEqual(names(back.docs), names(p1.docs));
      assert.equal(back.prevPageToken, "");
      const again = await manager.list({ store: STORE, pageSize: 4, pageToken: back.nextPageToken });
      assert.deepEqual(names(again.docs), names(p2.docs));
    });

    it("pages with filters both ways: tag, folder, prefix and state", async () => {
      for (const [i, n] of all.entries()) {
        await create(n, n, {
          folder: i % 2 === 0 ? "even" : "odd",
          tags: i % 3 === 0 ? ["three"] : [],
          expiresAt: i % 5 === 0 ? T0 + 100 * SEC : null,
        });
      }
      await create("t00", "other prefix", { folder: "even", tags: ["three"] });
      t = T0 + 100 * SEC; // s00, s05, s10, s15, s20 have expired

      const check = async (input: Omit<Parameters<SecretManager["list"]>[0], "pageToken" | "store">, expected: string[]) => {
        const { forward, backward } = await walk({ store: STORE, pageSize: 4, ...input });
        assert.deepEqual(forward.flat(), expected, JSON.stringify(input));
        assert.deepEqual(backward, forward, `back: ${JSON.stringify(input)}`);
      };
      const pick = (f: (i: number) => boolean) => all.filter((_, i) => f(i));
      await check({ tag: "three", prefix: "s" }, pick((i) => i % 3 === 0));
      await check({ folder: "even", prefix: "s" }, pick((i) => i % 2 === 0));
      await check({ folder: "even", tag: "three" }, [...pick((i) => i % 6 === 0), "t00"]);
      await check({ state: "expired" }, pick((i) => i % 5 === 0));
      await check({ state: "active", prefix: "s" }, pick((i) => i % 5 !== 0));
      await check({ state: "active", folder: "odd", tag: "three" }, pick((i) => i % 2 === 1 && i % 3 === 0 && i % 5 !== 0));
      await check({ prefix: "t" }, ["t00"]);

      for (const n of ["s01", "s02", "s03", "s04", "s06", "s07"]) await manager.delete(ref(n));
      await check({ state: "deleted" }, ["s01", "s02", "s03", "s04", "s06", "s07"]);
      await check({ state: "deleted", folder: "odd" }, ["s01", "s03", "s07"]);
      await check({ state: "live", prefix: "s0" }, ["s00", "s05", "s08", "s09"]);
      await assertCode(manager.list({ store: STORE, folder: "bad folder" }), "invalid_argument");
    });

    it("pages deleted secrets that share a name", async () => {
      for (let i = 0; i < 5; i++) {
        await create("same", `v${i}`);
        t += SEC;
        await manager.delete(ref("same"));
      }
      await create("same", "live");
      const { forward, backward } = await walk({ store: STORE, pageSize: 2, state: "deleted" });
      assert.deepEqual(forward.map((p) => p.length), [2, 2, 1]);
      assert.deepEqual(backward, forward);
      const page = await manager.list({ store: STORE, state: "deleted", pageSize: 10 });
      assert.equal(new Set(page.docs.map((d) => d.id)).size, 5, "five different secrets");
    });
  });

  describe("check-and-set", () => {
    it("refuses a stale expected revision with REVISION_MISMATCH and 409, writing nothing", async () => {
      const created = await manager.create({ ...ref("c"), kind: "automatic", value: "v1", rotationIntervalSeconds: 60 });
      const mismatch = { reason: "REVISION_MISMATCH", httpStatus: 409 };
      await assertCode(manager.update(ref("c"), { value: "v2", expectedRevision: 2 }), "failed_precondition", mismatch);
      await assertCode(manager.rotate(ref("c"), { expectedRevision: 3 }), "failed_precondition", mismatch);
      await assertCode(manager.setVersionState(ref("c"), 1, "suspended", 9), "failed_precondition", mismatch);
      await assertCode(manager.rename(ref("c"), "d", 2), "failed_precondition", mismatch);
      await assertCode(manager.move(ref("c"), ref("d", "other"), { expectedRevision: 2 }), "failed_precondition", mismatch);
      await assertCode(manager.delete(ref("c"), { expectedRevision: 2 }), "failed_precondition", mismatch);
      assert.deepEqual(await stored("c"), created.doc, "nothing written");

      const v2 = await manager.update(ref("c"), { value: "v2", expectedRevision: 1 });
      assert.equal(v2.revision, 2);
      assert.equal((await manager.rotate(ref("c"), { expectedRevision: 2 })).doc.revision, 3);
      assert.equal((await manager.update(ref("c"), { description: "no check", expectedRevision: 0 })).revision, 4);
    });

    it("refuses a pinned revision that another writer changed after it was read", async () => {
      await create("c", "v1");
      const raced = async () => {
        const doc = await stored("c");
        await real.replaceSecret({ ...doc, description: "raced", revision: doc.revision + 1 }, doc.revision);
      };
      beforeReplace = raced;
      await assertCode(manager.update(ref("c"), { value: "mine", expectedRevision: 1 }), "failed_precondition", {
        reason: "REVISION_MISMATCH",
        httpStatus: 409,
      });
      const doc = await stored("c");
      assert.equal(doc.description, "raced");
      assert.equal(latestVersion(doc).version, 1, "nothing of ours written");

      // Unpinned, the manager re-reads and applies the change on top.
      beforeReplace = raced;
      const mine = await manager.update(ref("c"), { value: "mine" });
      assert.equal(mine.revision, 4);
      assert.equal(mine.description, "raced");
      assert.equal((await manager.get(ref("c"))).value, "mine");
    });
  });

  describe("expiry and version states as served", () => {
    it("serves a secret until it expires, then refuses it with SECRET_EXPIRED and 410", async () => {
      await create("e", "v", { expiresAt: T0 + 60 * SEC });
      t = T0 + 60 * SEC - 1;
      assert.equal((await manager.get(ref("e"))).value, "v");
      t = T0 + 60 * SEC;
      const expired = { reason: "SECRET_EXPIRED", httpStatus: 410 };
      await assertCode(manager.get(ref("e")), "failed_precondition", expired);
      await assertCode(manager.get(ref("e"), 1), "failed_precondition", expired);
      await assertCode(manager.verify(ref("e"), "v"), "failed_precondition", expired);
      assert.deepEqual(names((await manager.list({ store: STORE, state: "expired" })).docs), ["e"]);
      assert.deepEqual(names((await manager.list({ store: STORE, state: "active" })).docs), []);
      // Lifting the expiry serves it again.
      await manager.update(ref("e"), { expiresAt: null });
      assert.equal((await manager.get(ref("e"))).value, "v");
    });

    it("serves an explicit version that is active or deactivated, and refuses the other states", async () => {
      await create("v", "one");
      for (const value of ["two", "three", "four", "five"]) {
        t += SEC;
        await manager.update(ref("v"), { value });
      }
      await manager.setVersionState(ref("v"), 1, "deactivated");
      await manager.setVersionState(ref("v"), 2, "suspended");
      await manager.setVersionState(ref("v"), 3, "compromised");
      await manager.setVersionState(ref("v"), 4, "destroyed");
      const doc = await stored("v");
      assert.deepEqual(doc.versions.map((v) => v.state), ["deactivated", "suspended", "compromised", "destroyed", "active"]);
      assert.equal(findVersion(doc, 4)?.sealed, "", "destroyed: no ciphertext");

      assert.equal((await manager.get(ref("v"), 1)).value, "one", "deactivated is served");
      await assertCode(manager.get(ref("v"), 2), "failed_precondition", { reason: "VERSION_SUSPENDED" });
      await assertCode(manager.get(ref("v"), 3), "failed_precondition", { reason: "VERSION_COMPROMISED" });
      await assertCode(manager.get(ref("v"), 4), "failed_precondition", { reason: "VERSION_DESTROYED" });
      assert.equal((await manager.get(ref("v"), 5)).value, "five");
      assert.equal((await manager.get(ref("v"))).value, "five");
      await assertCode(manager.get(ref("v"), 6), "not_found", { reason: "VERSION_NOT_FOUND" });
      assert.deepEqual(await manager.verify(ref("v"), "one"), { valid: false, version: 0 }, "deactivated is never valid");

      // With the current version suspended, the newest active one is served; with none, nothing is.
      await manager.setVersionState(ref("v"), 5, "suspended");
      await assertCode(manager.get(ref("v")), "failed_precondition", { reason: "NO_ACTIVE_VERSION" });
      await manager.setVersionState(ref("v"), 1, "active");
      assert.equal((await manager.get(ref("v"))).value, "one");
      await assertCode(manager.setVersionState(ref("v"), 3, "active"), "failed_precondition", { reason: "INVALID_STATE_TRANSITION" });
      await assertCode(manager.setVersionState(ref("v"), 4, "active"), "failed_precondition", { reason: "INVALID_STATE_TRANSITION" });
      await assertCode(manager.setVersionState(ref("v"), 9, "active"), "not_found", { reason: "VERSION_NOT_FOUND" });
    });

    it("rotates with a state for the superseded version, which is then not valid", async () => {
      const created = await manager.create({ ...ref("r"), kind: "automatic", gracePeriodSeconds: 3600 });
      t += SEC;
      const rotated = await manager.rotate(ref("r"), { previousState: "compromised" });
      assert.equal(findVersion(rotated.doc, 1)?.state, "compromised");
      assert.deepEqual(await manager.verify(ref("r"), created.value), { valid: false, version: 0 }, "no grace period");
      assert.deepEqual(await manager.verify(ref("r"), rotated.value), { valid: true, version: 2 });
      t += SEC;
      const again = await manager.rotate(ref("r"), { previousState: "destroyed" });
      assert.equal(findVersion(again.doc, 2)?.sealed, "");
      await assertCode(manager.get(ref("r"), 2), "failed_precondition", { reason: "VERSION_DESTROYED" });
    });

    it("does not let a version rotated out with a state be valid for ever once made active again", async () => {
      const created = await manager.create({ ...ref("r"), kind: "automatic", gracePeriodSeconds: 60 });
      t += SEC;
      await manager.rotate(ref("r"), { previousState: "suspended" });
      t += SEC;
      await manager.setVersionState(ref("r"), 1, "active");
      t += 10_000 * SEC; // long after any grace window
      assert.deepEqual(await manager.verify(ref("r"), created.value), { valid: false, version: 0 });
    });
  });
});
