import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { ChangeStreamDocument, Document } from "mongodb";
import { appendVersion, newSecretDocument, softDelete } from "../../src/domain/secret.js";
import {
  casFilter,
  changeStreamPipeline,
  dueQuery,
  escapeRegex,
  fromMongoDataKey,
  fromMongoSecret,
  listQuery,
  SECRET_INDEXES,
  SECRETS_VALIDATOR,
  toMongoDataKey,
  toMongoSecret,
} from "../../src/storage/mongodb/mongo-documents.js";
import { decodePosition, encodeResumeToken, resumeOptions, toChangeEvent } from "../../src/storage/mongodb/mongo-storage.js";

/** The MongoDB adapter's pure parts: document mapping, filters, indexes, validator, change events. */

const T0 = Date.UTC(2030, 0, 1);
const auto = newSecretDocument(
  { id: "id-1", store: "default", name: "svc/key", kind: "automatic", description: "d", rotationIntervalSeconds: 60 },
  "v1.k.AAAA",
  T0,
);

describe("MongoDB documents", () => {
  it("maps a secret to BSON-friendly fields and back unchanged", () => {
    const doc = appendVersion(auto, "v1.k.BBBB", T0 + 1000, 10);
    const m = toMongoSecret(doc);
    assert.equal(m._id, "id-1");
    assert.ok(m.createdAt instanceof Date);
    assert.ok(m.rotation?.nextRotationAt instanceof Date);
    assert.equal(m.currentVersion, 2, "derived current version");
    assert.ok(m.versions[0]?.validUntil instanceof Date);
    assert.equal(m.versions[1]?.validUntil, null);
    assert.deepEqual(fromMongoSecret(m), doc);
    const manual = newSecretDocument({ id: "id-2", store: "s", name: "m", kind: "manual", description: "" }, "v1.k.C", T0);
    assert.equal(toMongoSecret(manual).rotation, null);
    assert.deepEqual(fromMongoSecret(toMongoSecret(manual)), manual);
  });

  it("keys data keys by store and id", () => {
    const k = { store: "s1", id: "k1", kekId: "kek", wrapped: "w", createdAt: T0 };
    const m = toMongoDataKey(k);
    assert.equal(m._id, "s1\u0000k1");
    assert.deepEqual(fromMongoDataKey(m), k);
  });

  it("writes by compare-and-set on id and revision", () => {
    assert.deepEqual(casFilter("id-1", 7), { _id: "id-1", revision: 7 });
  });

  it("pages forward after a (name, id) position, with an anchored, escaped prefix", () => {
    const q = listQuery({ store: "default", prefix: "db.(x)/", after: { name: "db.(x)/a", id: "i1" }, limit: 5 });
    assert.deepEqual(q.filter, {
      $and: [
        { store: "default", live: true },
        { name: { $regex: "^db\\.\\(x\\)\\/" } },
        { $or: [{ name: { $gt: "db.(x)/a" } }, { name: "db.(x)/a", _id: { $gt: "i1" } }] },
      ],
    });
    assert.deepEqual(q.sort, { name: 1, _id: 1 });
    assert.equal(q.reverse, false);
    assert.equal(new RegExp("^db\\.\\(x\\)\\/").test("db.(x)/b"), true);
  });

  it("pages backward by sorting descending and reversing", () => {
    const q = listQuery({ store: "s", prefix: "", before: { name: "m", id: "i9" }, limit: 3 });
    assert.deepEqual(q.filter, {
      $and: [{ store: "s", live: true }, { $or: [{ name: { $lt: "m" } }, { name: "m", _id: { $lt: "i9" } }] }],
    });
    assert.deepEqual(q.sort, { name: -1, _id: -1 });
    assert.equal(q.reverse, true);
    assert.deepEqual(listQuery({ store: "s", prefix: "", limit: 3 }).filter, { store: "s", live: true });
  });

  it("filters by folder, tag, expiry and deletion", () => {
    const now = Date.UTC(2030, 0, 1);
    const deleted = listQuery({ store: "s", prefix: "", limit: 3, state: "deleted", folder: "team/a", tag: "pci", now });
    assert.deepEqual(deleted.filter, { $and: [{ store: "s", live: false }, { folder: "team/a" }, { tags: "pci" }] });
    const expired = listQuery({ store: "s", prefix: "", limit: 3, state: "expired", now });
    assert.deepEqual(expired.filter, { $and: [{ store: "s", live: true }, { expiresAt: { $ne: null, $lte: new Date(now) } }] });
  });

  it("escapes every regex metacharacter", () => {
    const nasty = "a.b*c+d?e^f$g{h}i(j)k|l[m]n\\o/p";
    assert.equal(new RegExp(`^${escapeRegex(nasty)}$`).test(nasty), true);
  });

  it("asks for due secrets (rotations and purges) by due time, earliest first", () => {
    const q = dueQuery(T0);
    assert.deepEqual(q.filter, { dueAt: { $lte: new Date(T0) } });
    assert.deepEqual(q.sort, { dueAt: 1 });
    const deleted = softDelete(auto, T0 + 5, 3600);
    assert.deepEqual(toMongoSecret(deleted).dueAt, new Date(T0 + 5 + 3_600_000), "a deleted secret is due for its purge");
    assert.equal(toMongoSecret(deleted).live, false);
    assert.deepEqual(toMongoSecret(auto).dueAt, new Date(T0 + 60_000), "a live one for its rotation");
  });

  it("declares a unique index on live names and a partial index serving the due query", () => {
    const unique = SECRET_INDEXES.find((i) => i.name === "store_live_name_unique");
    assert.deepEqual(unique?.key, { store: 1, name: 1 });
    assert.equal(unique?.unique, true);
    assert.deepEqual(unique?.partialFilterExpression, { live: true }, "deleted secrets give their name up");
    const due = SECRET_INDEXES.find((i) => i.name === "due");
    assert.deepEqual(due?.key, { dueAt: 1 });
    assert.deepEqual(due?.partialFilterExpression, { dueAt: { $type: "date" } });
    assert.deepEqual(Object.keys(dueQuery(T0).filter), Object.keys(due?.key ?? {}), "the due query uses the indexed field");
  });

  it("validates exactly the fields the adapter writes", () => {
    const schema = SECRETS_VALIDATOR.$jsonSchema as { required: string[]; properties: Record<string, unknown> };
    const written = Object.keys(toMongoSecret(auto)).sort();
    assert.deepEqual([...schema.required].sort(), written);
    assert.deepEqual(Object.keys(schema.properties).sort(), written);
  });

  it("projects change events without the sealed versions", () => {
    const [match, project] = changeStreamPipeline() as [Document, Document];
    assert.deepEqual(match.$match.operationType.$in.sort(), ["delete", "insert", "replace", "update"]);
    const fields = Object.keys(project.$project);
    assert.ok(fields.includes("fullDocument.name"));
    assert.ok(fields.includes("fullDocumentBeforeChange.name"), "deletes are named from the pre-image");
    assert.equal(fields.some((f) => f.includes("versions")), false);
  });

  it("maps change-stream events to the port's events", () => {
    const after = {
      store: "default",
      name: "svc/key",
      revision: 3,
      currentVersion: 2,
      lastChange: "created",
      updatedAt: new Date(T0 - 5),
      live: true,
      dueAt: new Date(T0 + 5000),
      rotation: { nextRotationAt: new Date(T0 + 5000) },
    };
    const base = { _id: { _data: "826" }, documentKey: { _id: "id-1" }, wallTime: new Date(T0) };
    const ins = toChangeEvent({ ...base, operationType: "insert", fullDocument: after } as unknown as ChangeStreamDocument<Document>, "tok");
    assert.deepEqual(ins, {
      token: "tok",
      op: "insert",
      id: "id-1",
      store: "default",
      name: "svc/key",
      revision: 3,
      version: 2,
      change: "created",
      nextRotationAt: T0 + 5000,
      dueAt: T0 + 5000,
      at: T0 - 5,
    });
    const rep = toChangeEvent({ ...base, operationType: "replace", fullDocument: after } as unknown as ChangeStreamDocument<Document>, "t2");
    assert.equal(rep?.op, "update");
    const del = toChangeEvent(
      { ...base, operationType: "delete", fullDocumentBeforeChange: after } as unknown as ChangeStreamDocument<Document>,
      "t3",
    );
    assert.equal(del?.op, "delete");
    assert.equal(del?.name, "svc/key");
    assert.equal(del?.nextRotationAt, null);
    assert.equal(del?.change, "deleted", "a live secret deleted for good");
    const purged = toChangeEvent(
      { ...base, operationType: "delete", fullDocumentBeforeChange: { ...after, live: false } } as unknown as ChangeStreamDocument<Document>,
      "t5",
    );
    assert.equal(purged?.change, "purged", "the purge of a soft-deleted secret");
    const other = toChangeEvent({ ...base, operationType: "drop" } as unknown as ChangeStreamDocument<Document>, "t4");
    assert.equal(other, undefined);
  });

  it("round-trips resume tokens as opaque strings and resumes after them", () => {
    const t = { _data: "8263A1B2C3000000012B022C0100296E5A1004" };
    const s = encodeResumeToken(t);
    assert.match(s, /^[A-Za-z0-9_-]+$/);
    assert.deepEqual(decodePosition(s), { r: t });
    assert.deepEqual(resumeOptions(decodePosition(s)), { startAfter: t });
  });

  it("starts a fresh feed at a cluster time, and rejects tokens it did not issue", () => {
    const start = Buffer.from(JSON.stringify({ t: [1_900_000_000, 3] })).toString("base64url");
    const opts = resumeOptions(decodePosition(start));
    assert.equal(opts.startAtOperationTime?.t, 1_900_000_000);
    assert.equal(opts.startAtOperationTime?.i, 3);
    assert.equal(decodePosition("garbage"), undefined);
    assert.equal(decodePosition(Buffer.from('{"t":[1]}').toString("base64url")), undefined);
    assert.deepEqual(resumeOptions(undefined), {});
  });
});
