import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, afterEach, beforeEach, describe, it } from "node:test";
import {
  appendVersion,
  applyMetadataPatch,
  newSecretDocument,
  type SecretDocument,
  type SecretKind,
} from "../../src/domain/secret.js";
import { createSqliteStorage } from "../../src/storage/sqlite/sqlite-storage.js";
import type { DataKeyRecord, Storage } from "../../src/storage/storage.js";

/** The SQLite adapter: uniqueness, compare-and-set writes, listing, due queries, data keys and durability. */

const T0 = Date.UTC(2030, 0, 1);
const SEC = 1000;

const root = mkdtempSync(join(tmpdir(), "latchkey-sqlite-"));
after(() => rmSync(root, { recursive: true, force: true }));

let counter = 0;
let file: string;
let storage: Storage;
const extra: Storage[] = [];

function doc(
  name: string,
  opts: { store?: string; kind?: SecretKind; interval?: number; now?: number; id?: string } = {},
): SecretDocument {
  const kind = opts.kind ?? "manual";
  return newSecretDocument(
    {
      id: opts.id ?? randomUUID(),
      store: opts.store ?? "default",
      name,
      kind,
      description: `about ${name}`,
      rotationIntervalSeconds: kind === "automatic" ? (opts.interval ?? 60) : undefined,
    },
    `v1.k.${Buffer.from(name).toString("base64")}`,
    opts.now ?? T0,
  );
}

const names = (docs: readonly SecretDocument[]) => docs.map((d) => d.name);

async function insertAll(...docs: SecretDocument[]): Promise<void> {
  for (const d of docs) assert.equal(await storage.insertSecret(d), true, `insert ${d.store}/${d.name}`);
}

function reopen(): Storage {
  const s = createSqliteStorage(file);
  extra.push(s);
  return s;
}

describe("SQLite storage", () => {
  beforeEach(() => {
    file = join(root, `db-${++counter}`, "latchkey.db");
    storage = createSqliteStorage(file);
  });
  afterEach(async () => {
    await storage.close();
    for (const s of extra.splice(0)) await s.close();
  });

  it("names its backend and answers ping", async () => {
    assert.equal(storage.backend, "sqlite");
    await storage.ping();
  });

  describe("insertSecret and findSecret", () => {
    it("stores a document and finds it by store and name, unchanged", async () => {
      const d = appendVersion(doc("db/password", { kind: "automatic" }), "v1.k.two", T0 + SEC, 10);
      await insertAll(d);
      assert.deepEqual(await storage.findSecret("default", "db/password"), d);
    });

    it("finds nothing for an unknown name or another store", async () => {
      await insertAll(doc("a"));
      assert.equal(await storage.findSecret("default", "b"), undefined);
      assert.equal(await storage.findSecret("other", "a"), undefined);
    });

    it("returns false for a duplicate (store, name) and keeps the first document", async () => {
      const first = doc("dup");
      await insertAll(first);
      assert.equal(await storage.insertSecret(doc("dup")), false);
      assert.deepEqual(await storage.findSecret("default", "dup"), first);
    });

    it("accepts the same name in another store", async () => {
      await insertAll(doc("shared", { store: "default" }), doc("shared", { store: "team-a" }));
      assert.equal((await storage.findSecret("team-a", "shared"))?.store, "team-a");
      assert.equal((await storage.findSecret("default", "shared"))?.store, "default");
    });

    it("returns false for a duplicate id", async () => {
      await insertAll(doc("one", { id: "same-id" }));
      assert.equal(await storage.insertSecret(doc("two", { id: "same-id" })), false);
      assert.equal(await storage.findSecret("default", "two"), undefined);
    });

    it("treats names as case-sensitive", async () => {
      await insertAll(doc("Key"), doc("key"));
      assert.equal((await storage.findSecret("default", "Key"))?.name, "Key");
    });
  });

  describe("replaceSecret", () => {
    it("writes when the stored revision is the expected one", async () => {
      const d = doc("cas");
      await insertAll(d);
      const next = appendVersion(d, "v1.k.two", T0 + SEC, 10);
      assert.equal(await storage.replaceSecret(next, d.revision), true);
      assert.deepEqual(await storage.findSecret("default", "cas"), next);
    });

    it("rejects a write with a stale revision and changes nothing", async () => {
      const d = doc("cas");
      await insertAll(d);
      const winner = applyMetadataPatch(d, { description: "winner" }, T0 + SEC);
      const loser = applyMetadataPatch(d, { description: "loser" }, T0 + 2 * SEC);
      assert.equal(await storage.replaceSecret(winner, d.revision), true);
      assert.equal(await storage.replaceSecret(loser, d.revision), false);
      assert.deepEqual(await storage.findSecret("default", "cas"), winner);
    });

    it("rejects a write whose expected revision is ahead of the stored one", async () => {
      const d = doc("cas");
      await insertAll(d);
      assert.equal(await storage.replaceSecret(applyMetadataPatch(d, { description: "x" }, T0), d.revision + 1), false);
      assert.deepEqual(await storage.findSecret("default", "cas"), d);
    });

    it("returns false for a document that does not exist", async () => {
      assert.equal(await storage.replaceSecret(doc("ghost"), 1), false);
      assert.equal(await storage.findSecret("default", "ghost"), undefined);
    });

    it("keeps the rotation index in step with the document", async () => {
      const d = doc("auto", { kind: "automatic", interval: 60 });
      await insertAll(d);
      assert.equal(await storage.nextRotationAt(), T0 + 60 * SEC);
      const manual = applyMetadataPatch(d, { kind: "manual" }, T0 + SEC);
      assert.equal(await storage.replaceSecret(manual, d.revision), true);
      assert.equal(await storage.nextRotationAt(), undefined);
      assert.deepEqual(await storage.findDueSecrets(Number.MAX_SAFE_INTEGER, 10), []);
    });
  });

  describe("deleteSecret", () => {
    it("deletes when the revision matches and frees the name", async () => {
      const d = doc("gone");
      await insertAll(d);
      assert.equal(await storage.deleteSecret(d.id, d.revision), true);
      assert.equal(await storage.findSecret("default", "gone"), undefined);
      assert.equal(await storage.insertSecret(doc("gone")), true);
    });

    it("refuses a stale revision and keeps the document", async () => {
      const d = doc("kept");
      await insertAll(d);
      const next = applyMetadataPatch(d, { description: "changed" }, T0 + SEC);
      assert.equal(await storage.replaceSecret(next, d.revision), true);
      assert.equal(await storage.deleteSecret(d.id, d.revision), false);
      assert.deepEqual(await storage.findSecret("default", "kept"), next);
      assert.equal(await storage.deleteSecret(d.id, next.revision), true);
    });

    it("returns false for an unknown id or a second delete", async () => {
      const d = doc("once");
      await insertAll(d);
      assert.equal(await storage.deleteSecret("no-such-id", 1), false);
      assert.equal(await storage.deleteSecret(d.id, d.revision), true);
      assert.equal(await storage.deleteSecret(d.id, d.revision), false);
    });

    it("removes a deleted automatic secret from the rotation queries", async () => {
      const d = doc("auto", { kind: "automatic" });
      await insertAll(d);
      assert.equal(await storage.deleteSecret(d.id, d.revision), true);
      assert.equal(await storage.nextRotationAt(), undefined);
      assert.deepEqual(await storage.findDueSecrets(Number.MAX_SAFE_INTEGER, 10), []);
    });
  });

  describe("listSecrets", () => {
    beforeEach(async () => {
      // Inserted out of order, with look-alikes in another store and just outside the prefix.
      await insertAll(
        doc("db/replica"),
        doc("app/token"),
        doc("db/primary"),
        doc("db-other"),
        doc("db/archive/old"),
        doc("zeta"),
        doc("db/primary", { store: "team-a" }),
        doc("Db/upper"),
      );
    });

    it("lists one store in name order", async () => {
      const all = await storage.listSecrets({ store: "default", prefix: "", limit: 100 });
      assert.deepEqual(names(all), ["Db/upper", "app/token", "db-other", "db/archive/old", "db/primary", "db/replica", "zeta"]);
      assert.ok(all.every((d) => d.store === "default"));
    });

    it("keeps to the prefix", async () => {
      assert.deepEqual(names(await storage.listSecrets({ store: "default", prefix: "db/", limit: 100 })), [
        "db/archive/old",
        "db/primary",
        "db/replica",
      ]);
      assert.deepEqual(names(await storage.listSecrets({ store: "default", prefix: "db", limit: 100 })), [
        "db-other",
        "db/archive/old",
        "db/primary",
        "db/replica",
      ]);
      assert.deepEqual(await storage.listSecrets({ store: "default", prefix: "nothing/", limit: 100 }), []);
    });

    it("treats prefix characters literally", async () => {
      await insertAll(doc("a_b"), doc("a.b"), doc("aXb"));
      assert.deepEqual(names(await storage.listSecrets({ store: "default", prefix: "a_", limit: 100 })), ["a_b"]);
      assert.deepEqual(names(await storage.listSecrets({ store: "default", prefix: "a.", limit: 100 })), ["a.b"]);
    });

    it("stops at limit", async () => {
      assert.deepEqual(names(await storage.listSecrets({ store: "default", prefix: "", limit: 2 })), ["Db/upper", "app/token"]);
    });

    it("continues strictly after the given name", async () => {
      assert.deepEqual(names(await storage.listSecrets({ store: "default", prefix: "db/", after: { name: "db/primary", id: "\u{10FFFF}" }, limit: 100 })), [
        "db/replica",
      ]);
      assert.deepEqual(names(await storage.listSecrets({ store: "default", prefix: "", after: { name: "db/", id: "\u{10FFFF}" }, limit: 2 })), [
        "db/archive/old",
        "db/primary",
      ]);
    });

    it("pages through everything with after and limit, without gaps or repeats", async () => {
      const seen: string[] = [];
      let after: { name: string; id: string } | undefined;
      for (;;) {
        const page = await storage.listSecrets({ store: "default", prefix: "", after, limit: 3 });
        seen.push(...names(page));
        if (page.length < 3) break;
        const last = page[page.length - 1];
        after = last && { name: last.name, id: last.id };
      }
      assert.deepEqual(seen, ["Db/upper", "app/token", "db-other", "db/archive/old", "db/primary", "db/replica", "zeta"]);
    });

    it("pages backward with before: the last `limit` names before it, in name order", async () => {
      assert.deepEqual(names(await storage.listSecrets({ store: "default", prefix: "", before: { name: "db/replica", id: "" }, limit: 2 })), [
        "db/archive/old",
        "db/primary",
      ]);
    });

    it("lists other stores apart", async () => {
      assert.deepEqual(names(await storage.listSecrets({ store: "team-a", prefix: "", limit: 100 })), ["db/primary"]);
      assert.deepEqual(await storage.listSecrets({ store: "empty", prefix: "", limit: 100 }), []);
    });
  });

  describe("rotation queries", () => {
    it("finds due automatic secrets, earliest first, up to the limit", async () => {
      await insertAll(
        doc("late", { kind: "automatic", interval: 300 }),
        doc("early", { kind: "automatic", interval: 60 }),
        doc("middle", { kind: "automatic", interval: 120 }),
        doc("future", { kind: "automatic", interval: 3600 }),
        doc("manual"),
      );
      const now = T0 + 300 * SEC;
      assert.deepEqual(names(await storage.findDueSecrets(now, 10)), ["early", "middle", "late"]);
      assert.deepEqual(names(await storage.findDueSecrets(now, 2)), ["early", "middle"]);
    });

    it("counts a secret due exactly now as due", async () => {
      await insertAll(doc("edge", { kind: "automatic", interval: 60 }));
      assert.deepEqual(names(await storage.findDueSecrets(T0 + 60 * SEC - 1, 10)), []);
      assert.deepEqual(names(await storage.findDueSecrets(T0 + 60 * SEC, 10)), ["edge"]);
    });

    it("finds due secrets across stores", async () => {
      await insertAll(doc("x", { kind: "automatic", store: "a" }), doc("y", { kind: "automatic", store: "b", interval: 30 }));
      const due = await storage.findDueSecrets(T0 + 60 * SEC, 10);
      assert.deepEqual(due.map((d) => `${d.store}/${d.name}`), ["b/y", "a/x"]);
    });

    it("no longer finds a secret once a new version moves its schedule on", async () => {
      const d = doc("rotating", { kind: "automatic", interval: 60 });
      await insertAll(d);
      const now = T0 + 61 * SEC;
      assert.equal(await storage.replaceSecret(appendVersion(d, "v1.k.n", now, 10), d.revision), true);
      assert.deepEqual(await storage.findDueSecrets(now, 10), []);
      assert.equal(await storage.nextRotationAt(), now + 60 * SEC);
    });

    it("reports the earliest next rotation, or undefined without automatic secrets", async () => {
      assert.equal(await storage.nextRotationAt(), undefined);
      await insertAll(doc("manual"));
      assert.equal(await storage.nextRotationAt(), undefined);
      await insertAll(doc("b", { kind: "automatic", interval: 600 }), doc("a", { kind: "automatic", interval: 90 }));
      assert.equal(await storage.nextRotationAt(), T0 + 90 * SEC);
    });
  });

  describe("data keys", () => {
    const key = (store: string, id: string, createdAt: number): DataKeyRecord => ({
      store,
      id,
      kekId: "kek-1",
      wrapped: `wrapped-${store}-${id}`,
      createdAt,
    });

    it("lists a store's data keys oldest first", async () => {
      assert.equal(await storage.insertDataKey(key("default", "k2", T0 + 2)), true);
      assert.equal(await storage.insertDataKey(key("default", "k1", T0 + 1)), true);
      assert.equal(await storage.insertDataKey(key("other", "k9", T0)), true);
      assert.deepEqual(await storage.listDataKeys("default"), [key("default", "k1", T0 + 1), key("default", "k2", T0 + 2)]);
      assert.deepEqual(await storage.listDataKeys("other"), [key("other", "k9", T0)]);
      assert.deepEqual(await storage.listDataKeys("none"), []);
    });

    it("returns false for a duplicate (store, id) and keeps the first", async () => {
      assert.equal(await storage.insertDataKey(key("default", "k1", T0)), true);
      assert.equal(await storage.insertDataKey({ ...key("default", "k1", T0 + 5), wrapped: "replacement" }), false);
      assert.deepEqual(await storage.listDataKeys("default"), [key("default", "k1", T0)]);
      assert.equal(await storage.insertDataKey(key("other", "k1", T0)), true, "the same id in another store");
    });

    it("lists every data key of every store", async () => {
      await storage.insertDataKey(key("b", "k1", T0));
      await storage.insertDataKey(key("a", "k1", T0));
      assert.deepEqual(
        (await storage.listAllDataKeys()).map((k) => `${k.store}/${k.id}`),
        ["a/k1", "b/k1"],
      );
    });
  });

  describe("durability", () => {
    it("keeps secrets and data keys after close and reopen", async () => {
      const d = appendVersion(doc("durable", { kind: "automatic", interval: 60 }), "v1.k.two", T0 + SEC, 10);
      await insertAll(d, doc("other", { store: "team-a" }));
      await storage.insertDataKey({ store: "default", id: "k1", kekId: "kek", wrapped: "w", createdAt: T0 });
      await storage.close();

      storage = createSqliteStorage(file);
      assert.deepEqual(await storage.findSecret("default", "durable"), d);
      assert.equal((await storage.findSecret("team-a", "other"))?.name, "other");
      assert.deepEqual(await storage.listDataKeys("default"), [{ store: "default", id: "k1", kekId: "kek", wrapped: "w", createdAt: T0 }]);
      assert.equal(await storage.nextRotationAt(), T0 + SEC + 60 * SEC);
      assert.equal(await storage.insertSecret(doc("durable")), false, "uniqueness survives too");
    });

    it("tolerates a second close", async () => {
      await storage.close();
      await storage.close();
      storage = createSqliteStorage(file);
    });

    it("shares writes with another handle on the same file, compare-and-set included", async () => {
      const peer = reopen();
      const d = doc("shared");
      await insertAll(d);
      const seen = await peer.findSecret("default", "shared");
      assert.deepEqual(seen, d);
      const mine = applyMetadataPatch(d, { description: "mine" }, T0 + SEC);
      const theirs = applyMetadataPatch(d, { description: "theirs" }, T0 + SEC);
      assert.equal(await peer.replaceSecret(theirs, d.revision), true);
      assert.equal(await storage.replaceSecret(mine, d.revision), false);
      assert.equal((await storage.findSecret("default", "shared"))?.description, "theirs");
    });
  });

  describe("scanSecrets", () => {
    it("scans every store in id order from after the given id", async () => {
      await insertAll(doc("c", { id: "id-3" }), doc("a", { id: "id-1", store: "x" }), doc("b", { id: "id-2" }));
      assert.deepEqual((await storage.scanSecrets("", 10)).map((d) => d.id), ["id-1", "id-2", "id-3"]);
      assert.deepEqual((await storage.scanSecrets("id-1", 1)).map((d) => d.id), ["id-2"]);
    });
  });
});
