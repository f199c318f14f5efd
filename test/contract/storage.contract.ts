import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import {
  appendVersion,
  applyMetadataPatch,
  move,
  newSecretDocument,
  rename,
  restore,
  type SecretDocument,
  setVersionState,
  softDelete,
} from "../../src/domain/secret.js";
import { newStoreRecord } from "../../src/domain/store.js";
import { setVar } from "../../src/domain/vars.js";
import { type ChangeEvent, type ChangeFeedItem, type ListQuery, NameTakenError, type Storage } from "../../src/storage/storage.js";

/**
 * The storage contract: every behaviour of the port, run against every adapter.
 *
 * `open` returns a storage on a fresh, empty backend, and `peer` opens a second handle on that same backend (another
 * process, another replica), for the change feed across processes.
 */
export interface StorageFixture {
  open(): Promise<{ storage: Storage; peer(): Promise<Storage> }>;
  /** Removes every backend this fixture made. */
  cleanup(): Promise<void>;
}

const T0 = Date.UTC(2030, 0, 1);
let sealedCounter = 0;
const sealed = () => `v1.testkey.${Buffer.from(`ciphertext-${++sealedCounter}`).toString("base64")}`;

export function secretDoc(
  name: string,
  opts: { store?: string; kind?: "manual" | "automatic"; interval?: number; now?: number } = {},
): SecretDocument {
  const kind = opts.kind ?? "manual";
  return newSecretDocument(
    {
      id: randomUUID(),
      store: opts.store ?? "default",
      name,
      kind,
      description: `about ${name}`,
      rotationIntervalSeconds: kind === "automatic" ? (opts.interval ?? 60) : undefined,
    },
    sealed(),
    opts.now ?? T0,
  );
}

/**
 * Reads the feed from `resumeAfter` (or now) and collects `n` items after the start item (all items, start
 * included, when `keepStart`), or what came within `ms`. `started` resolves once the feed is open.
 */
function read(
  storage: Storage,
  n: number,
  resumeAfter: string | undefined,
  opts: { ms?: number; keepStart?: boolean } = {},
): { started: Promise<void>; items: Promise<ChangeFeedItem[]> } {
  let open: () => void = () => {};
  const started = new Promise<void>((r) => {
    open = r;
  });
  const items = (async () => {
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(), opts.ms ?? 5000);
    const out: ChangeFeedItem[] = [];
    try {
      for await (const item of storage.changes({ resumeAfter, signal: ac.signal })) {
        if (item.op === "start") open();
        if (item.op !== "start" || opts.keepStart) out.push(item);
        if (out.length >= n) break;
      }
    } finally {
      clearTimeout(timer);
      ac.abort();
      open();
    }
    return out;
  })();
  return { started, items };
}

async function take(storage: Storage, n: number, resumeAfter: string | undefined, ms = 5000): Promise<ChangeFeedItem[]> {
  return read(storage, n, resumeAfter, { ms }).items;
}

export function exerciseStorage(name: string, fixture: StorageFixture): void {
  describe(`Storage contract: ${name}`, () => {
    let s: Storage;
    let peer: () => Promise<Storage>;
    before(async () => {
      ({ storage: s, peer } = await fixture.open());
    });
    after(async () => {
      await s.close();
      await fixture.cleanup();
    });

    it("answers ping", async () => {
      await s.ping();
    });

    it("returns undefined for a missing secret", async () => {
      assert.equal(await s.findSecret("default", "missing/secret"), undefined);
    });

    it("stores a document and reads it back unchanged", async () => {
      const doc = secretDoc("roundtrip/a", { kind: "automatic", interval: 30 });
      assert.equal(await s.insertSecret(doc), true);
      assert.deepEqual(await s.findSecret("default", "roundtrip/a"), doc);
    });

    it("refuses a duplicate name in the same store and writes nothing", async () => {
      const first = secretDoc("dup/name");
      assert.equal(await s.insertSecret(first), true);
      assert.equal(await s.insertSecret(secretDoc("dup/name")), false);
      assert.equal((await s.findSecret("default", "dup/name"))?.id, first.id);
      assert.equal(await s.insertSecret(secretDoc("dup/name", { store: "other" })), true, "same name, other store");
    });

    it("replaces by compare-and-set on the revision", async () => {
      const doc = secretDoc("cas/one");
      await s.insertSecret(doc);
      const v2 = appendVersion(doc, sealed(), T0 + 1000, 10);
      assert.equal(await s.replaceSecret(v2, doc.revision), true);
      const stale = appendVersion(doc, sealed(), T0 + 2000, 10);
      assert.equal(await s.replaceSecret(stale, doc.revision), false, "a stale revision loses");
      assert.deepEqual(await s.findSecret("default", "cas/one"), v2);
      assert.equal(await s.replaceSecret({ ...v2, id: randomUUID(), revision: 9 }, 8), false, "unknown id");
    });

    it("lets exactly one of two racing writers win", async () => {
      const doc = secretDoc("cas/race");
      await s.insertSecret(doc);
      const a = appendVersion(doc, sealed(), T0 + 1, 10);
      const b = appendVersion(doc, sealed(), T0 + 2, 10);
      const results = await Promise.all([s.replaceSecret(a, doc.revision), s.replaceSecret(b, doc.revision)]);
      assert.deepEqual(results.filter(Boolean).length, 1);
    });

    it("deletes by compare-and-set, with every version", async () => {
      const doc = secretDoc("del/one");
      await s.insertSecret(doc);
      const v2 = appendVersion(doc, sealed(), T0 + 1, 10);
      await s.replaceSecret(v2, doc.revision);
      assert.equal(await s.deleteSecret(doc.id, doc.revision), false, "stale revision");
      assert.equal(await s.deleteSecret(doc.id, v2.revision), true);
      assert.equal(await s.findSecret("default", "del/one"), undefined);
      assert.equal(await s.deleteSecret(doc.id, v2.revision), false, "already gone");
      assert.equal(await s.insertSecret(secretDoc("del/one")), true, "the name is free again");
    });

    it("pages a store's names forward and backward, with a prefix", async () => {
      const names = ["pg/a", "pg/b", "pg/c", "pg/d", "pg/e", "pgx", "ph/a"];
      for (const n of [...names].reverse()) await s.insertSecret(secretDoc(n, { store: "paging" }));
      await s.insertSecret(secretDoc("pg/zz", { store: "elsewhere" }));
      const ls = async (q: { prefix?: string; after?: string; before?: string; limit: number }) =>
        (
          await s.listSecrets({
            store: "paging",
            prefix: q.prefix ?? "",
            // Name-only positions: after every id of that name, or before every one.
            after: q.after === undefined ? undefined : { name: q.after, id: "\u{10FFFF}" },
            before: q.before === undefined ? undefined : { name: q.before, id: "" },
            limit: q.limit,
          })
        ).map((d) => d.name);
      assert.deepEqual(await ls({ limit: 100 }), names);
      assert.deepEqual(await ls({ prefix: "pg/", limit: 2 }), ["pg/a", "pg/b"]);
      assert.deepEqual(await ls({ prefix: "pg/", after: "pg/b", limit: 2 }), ["pg/c", "pg/d"]);
      assert.deepEqual(await ls({ prefix: "pg/", after: "pg/d", limit: 2 }), ["pg/e"]);
      assert.deepEqual(await ls({ prefix: "pg/", before: "pg/e", limit: 2 }), ["pg/c", "pg/d"], "backward, in name order");
      assert.deepEqual(await ls({ prefix: "pg/", before: "pg/b", limit: 5 }), ["pg/a"]);
      assert.deepEqual(await ls({ before: "pgx", limit: 1 }), ["pg/e"]);
      assert.deepEqual(await ls({ prefix: "pg.", limit: 5 }), [], "a prefix is literal, not a pattern");
      assert.deepEqual(await ls({ prefix: "nothing", limit: 5 }), []);
    });

    it("finds due automatic secrets earliest first, and forgets deleted ones", async () => {
      const due = (await fixture.open()).storage; // a fresh backend: only our secrets
      try {
        assert.equal(await due.nextRotationAt(), undefined);
        const a = secretDoc("due/a", { kind: "automatic", interval: 10 }); // T0 + 10 s
        const b = secretDoc("due/b", { kind: "automatic", interval: 5 }); // T0 + 5 s
        const c = secretDoc("due/c", { kind: "automatic", interval: 100 });
        const m = secretDoc("due/manual");
        for (const d of [a, b, c, m]) await due.insertSecret(d);
        assert.equal(await due.nextRotationAt(), T0 + 5000);
        assert.deepEqual((await due.findDueSecrets(T0 + 4999, 10)).map((d) => d.name), []);
        assert.deepEqual((await due.findDueSecrets(T0 + 10_000, 10)).map((d) => d.name), ["due/b", "due/a"]);
        assert.deepEqual((await due.findDueSecrets(T0 + 10_000, 1)).map((d) => d.name), ["due/b"]);
        assert.equal(await due.deleteSecret(b.id, b.revision), true);
        assert.deepEqual((await due.findDueSecrets(T0 + 10_000, 10)).map((d) => d.name), ["due/a"]);
        assert.equal(await due.nextRotationAt(), T0 + 10_000);
        const rotated = appendVersion(a, sealed(), T0 + 10_000, 10);
        await due.replaceSecret(rotated, a.revision);
        assert.deepEqual((await due.findDueSecrets(T0 + 10_000, 10)).map((d) => d.name), []);
        assert.equal(await due.nextRotationAt(), T0 + 20_000);
      } finally {
        await due.close();
      }
    });

    it("scans every secret of every store by id", async () => {
      const seen: string[] = [];
      let afterId = "";
      for (;;) {
        const page = await s.scanSecrets(afterId, 3);
        if (page.length === 0) break;
        for (const d of page) seen.push(d.id);
        afterId = page[page.length - 1]?.id ?? "";
      }
      assert.ok(seen.length >= 10);
      assert.deepEqual(seen, [...seen].sort(), "id order");
      assert.equal(new Set(seen).size, seen.length, "no doubles");
    });

    it("keeps data keys per store", async () => {
      const k = (store: string, id: string, at: number) => ({ store, id, kekId: "kek1", wrapped: `w-${id}`, createdAt: at });
      assert.equal(await s.insertDataKey(k("ks", "k2", T0 + 2)), true);
      assert.equal(await s.insertDataKey(k("ks", "k1", T0 + 1)), true);
      assert.equal(await s.insertDataKey(k("ks", "k1", T0 + 5)), false, "duplicate id");
      assert.equal(await s.insertDataKey(k("other-ks", "k1", T0)), true);
      assert.deepEqual((await s.listDataKeys("ks")).map((r) => r.id), ["k1", "k2"]);
      assert.deepEqual(await s.listDataKeys("ks"), [k("ks", "k1", T0 + 1), k("ks", "k2", T0 + 2)]);
      const all = await s.listAllDataKeys();
      assert.ok(all.some((r) => r.store === "other-ks"));
    });

    it("persists resume tokens per consumer", async () => {
      assert.equal(await s.loadResumeToken("nobody"), undefined);
      await s.saveResumeToken("scheduler", "t1");
      await s.saveResumeToken("scheduler", "t2");
      await s.saveResumeToken("other", "o1");
      assert.equal(await s.loadResumeToken("scheduler"), "t2");
      assert.equal(await s.loadResumeToken("other"), "o1");
    });

    it("feeds every change in commit order, to another process too", async () => {
      const other = await peer();
      try {
        const local = read(s, 3, undefined);
        const remote = read(other, 3, undefined);
        await Promise.all([local.started, remote.started]);
        const doc = secretDoc("feed/one", { kind: "automatic", interval: 60 });
        await s.insertSecret(doc);
        const v2 = appendVersion(doc, sealed(), T0 + 1000, 10);
        await s.replaceSecret(v2, doc.revision);
        await s.deleteSecret(doc.id, v2.revision);
        for (const items of [await local.items, await remote.items]) {
          const events = items.filter((i) => i.op !== "reset");
          assert.deepEqual(
            events.map((e) => e.op),
            ["insert", "update", "delete"],
          );
          const [ins, upd, del] = events as Extract<ChangeFeedItem, { id: string }>[];
          assert.equal(ins?.id, doc.id);
          assert.equal(ins?.store, "default");
          assert.equal(ins?.name, "feed/one");
          assert.equal(ins?.version, 1);
          assert.equal(ins?.nextRotationAt, T0 + 60_000);
          assert.equal(upd?.version, 2);
          assert.equal(upd?.revision, 2);
          assert.equal(upd?.nextRotationAt, T0 + 61_000);
          assert.equal(del?.name, "feed/one", "a delete still names the secret");
          assert.equal(del?.nextRotationAt, null);
          assert.ok(typeof ins?.token === "string" && ins.token !== "");
        }
      } finally {
        await other.close();
      }
    });

    it("resumes the feed after a token, and resets on a token it cannot honour", async () => {
      const start = read(s, 1, undefined);
      await start.started;
      const a = secretDoc("resume/a");
      await s.insertSecret(a);
      const [first] = await start.items;
      assert.ok(first && first.op === "insert");
      const b = secretDoc("resume/b");
      const c = secretDoc("resume/c");
      await s.insertSecret(b);
      await s.insertSecret(c);
      const resumed = await take(s, 2, first.token);
      assert.deepEqual(
        resumed.filter((e) => e.op !== "start").map((e) => (e.op === "reset" ? "reset" : e.name)),
        ["resume/b", "resume/c"],
      );
      const bogus = await read(s, 2, "not-a-token-we-issued", { ms: 3000, keepStart: true }).items;
      assert.deepEqual(
        bogus.map((e) => e.op),
        ["start", "reset"],
      );
    });

    it("resumes from the start token without missing writes made right after it", async () => {
      const feed = read(s, 1, undefined, { keepStart: true });
      const [start] = await feed.items;
      assert.equal(start?.op, "start");
      const docs = [secretDoc("start/a"), secretDoc("start/b")];
      for (const d of docs) await s.insertSecret(d);
      const resumed = await take(s, 2, start?.token);
      assert.deepEqual(
        resumed.map((e) => (e.op === "insert" ? e.name : e.op)),
        ["start/a", "start/b"],
      );
    });

    it("marks which changes made a new version", async () => {
      const feed = read(s, 3, undefined);
      await feed.started;
      const doc = secretDoc("feed/kinds", { kind: "automatic", interval: 60 });
      await s.insertSecret(doc);
      const rotated = appendVersion(doc, sealed(), T0 + 5000, 10);
      await s.replaceSecret(rotated, doc.revision);
      const touched = applyMetadataPatch(rotated, { description: "new words" }, T0 + 6000);
      await s.replaceSecret(touched, rotated.revision);
      const [ins, rot, meta] = (await feed.items) as Extract<ChangeFeedItem, { id: string }>[];
      assert.equal(ins?.change, "created");
      assert.equal(rot?.change, "rotated", "a rotation made a version");
      assert.equal(rot?.at, T0 + 5000);
      assert.equal(meta?.change, "updated", "a metadata change made no version");
    });

    it("answers each of many concurrent writes on its own", async () => {
      const docs = Array.from({ length: 40 }, (_, i) => secretDoc(`burst/${i % 30}`));
      const results = await Promise.all(docs.map((d) => s.insertSecret(d)));
      assert.equal(results.filter(Boolean).length, 30, "ten names were taken by earlier writes in the burst");
      const page = await s.listSecrets({ store: "default", prefix: "burst/", limit: 100 });
      assert.equal(page.length, 30);
      const stale = await Promise.all(page.map((d) => s.replaceSecret({ ...d, revision: d.revision + 1 }, d.revision + 5)));
      assert.equal(stale.some(Boolean), false);
    });

    it("keeps stores: unique names, compare-and-set, listing by owner", async () => {
      const a = newStoreRecord({ name: "st-a", description: "first", managedBy: null }, T0);
      const b = newStoreRecord({ name: "st-b", description: "", managedBy: "billing" }, T0);
      const c = newStoreRecord({ name: "st-c", description: "", managedBy: "search" }, T0);
      for (const st of [c, a, b]) assert.equal(await s.insertStore(st), true);
      assert.equal(await s.insertStore({ ...a, description: "again" }), false, "a taken name");
      assert.deepEqual(await s.findStore("st-a"), a);
      assert.equal(await s.findStore("st-none"), undefined);
      const names = async (q: Parameters<Storage["listStores"]>[0]) => (await s.listStores(q)).map((r) => r.name).filter((n) => n.startsWith("st-"));
      assert.deepEqual(await names({ limit: 100 }), ["st-a", "st-b", "st-c"]);
      assert.deepEqual(await names({ limit: 100, managedBy: "billing" }), ["st-b"]);
      assert.deepEqual(await names({ limit: 100, managedBy: null }), ["st-a"]);
      assert.deepEqual(await names({ limit: 100, after: "st-a" }), ["st-b", "st-c"]);
      const a2 = { ...a, description: "changed", revision: 2, updatedAt: T0 + 1 };
      assert.equal(await s.replaceStore(a2, 1), true);
      assert.equal(await s.replaceStore({ ...a, revision: 3 }, 1), false, "stale revision");
      assert.deepEqual(await s.findStore("st-a"), a2);
      assert.equal(await s.deleteStore("st-a", 1), false, "stale revision");
      assert.equal(await s.deleteStore("st-a", 2), true);
      assert.equal(await s.findStore("st-a"), undefined);
    });

    it("keeps vars per store, in name order, with their values", async () => {
      const v = (store: string, name: string, value: string) => setVar(undefined, store, name, value, T0);
      await s.putVars([v("vs", "b", "2"), v("vs", "a", "1"), v("vs", "c/d", "3"), v("other-vs", "a", "x")]);
      assert.deepEqual(await s.findVar("vs", "a"), v("vs", "a", "1"));
      assert.equal(await s.findVar("vs", "zz"), undefined);
      const updated = setVar(await s.findVar("vs", "a"), "vs", "a", "one", T0 + 5);
      await s.putVars([updated]);
      assert.deepEqual(await s.findVar("vs", "a"), { ...updated, createdAt: T0 });
      assert.equal((await s.findVar("vs", "a"))?.revision, 2);
      const list = async (prefix: string, after?: string) =>
        (await s.listVars({ store: "vs", prefix, after, limit: 10 })).map((r) => `${r.name}=${r.value}`);
      assert.deepEqual(await list(""), ["a=one", "b=2", "c/d=3"]);
      assert.deepEqual(await list("c/"), ["c/d=3"]);
      assert.deepEqual(await list("", "a"), ["b=2", "c/d=3"]);
      assert.equal(await s.deleteVar("vs", "b"), true);
      assert.equal(await s.deleteVar("vs", "b"), false);
      assert.deepEqual(await list(""), ["a=one", "c/d=3"]);
    });

    it("measures usage per store and for the whole service", async () => {
      const u = (await fixture.open()).storage; // a fresh backend
      try {
        await u.insertStore(newStoreRecord({ name: "u1", description: "", managedBy: null }, T0));
        await u.insertStore(newStoreRecord({ name: "u2", description: "", managedBy: null }, T0));
        const one = secretDoc("x", { store: "u1" });
        const two = appendVersion(secretDoc("y", { store: "u1" }), sealed(), T0 + 1, 10);
        await u.insertSecret(one);
        await u.insertSecret(two);
        await u.insertSecret(secretDoc("z", { store: "u2" }));
        await u.putVars([setVar(undefined, "u1", "k", "héllo", T0)]);
        const sealedOf = (d: SecretDocument) => d.versions.reduce((n, v) => n + v.sealed.length, 0);
        assert.deepEqual(await u.usage("u1"), {
          stores: 1,
          secrets: 2,
          versions: 3,
          vars: 1,
          bytes: sealedOf(one) + sealedOf(two) + Buffer.byteLength("héllo"),
        });
        const all = await u.usage();
        assert.equal(all.stores, 2);
        assert.equal(all.secrets, 3);
        assert.equal(all.versions, 4);
        assert.equal(all.vars, 1);
        assert.deepEqual(await u.usage("nowhere"), { stores: 0, secrets: 0, versions: 0, vars: 0, bytes: 0 });
      } finally {
        await u.close();
      }
    });

    it("purges a store's secrets in batches, with delete events, and its vars and keys", async () => {
      const feed = read(s, 5, undefined);
      await feed.started;
      for (const n of ["p1", "p2", "p3", "p4", "p5"]) await s.insertSecret(secretDoc(n, { store: "purge-me" }));
      await s.insertSecret(secretDoc("p1", { store: "keep-me" }));
      await s.putVars([setVar(undefined, "purge-me", "v", "1", T0), setVar(undefined, "keep-me", "v", "1", T0)]);
      await s.insertDataKey({ store: "purge-me", id: "pk", kekId: "kek1", wrapped: "w", createdAt: T0 });
      await s.insertDataKey({ store: "keep-me", id: "kk", kekId: "kek1", wrapped: "w", createdAt: T0 });
      await feed.items;
      const deletes = read(s, 5, undefined);
      await deletes.started;
      assert.equal(await s.deleteDataKeys("purge-me"), 1);
      assert.equal(await s.deleteStoreSecrets("purge-me", 2), 2);
      assert.equal(await s.deleteStoreSecrets("purge-me", 2), 2);
      assert.equal(await s.deleteStoreSecrets("purge-me", 2), 1);
      assert.equal(await s.deleteStoreSecrets("purge-me", 2), 0);
      assert.equal(await s.deleteStoreVars("purge-me"), 1);
      const events = (await deletes.items) as Extract<ChangeFeedItem, { id: string }>[];
      assert.deepEqual(events.map((e) => e.op), ["delete", "delete", "delete", "delete", "delete"]);
      assert.deepEqual(events.map((e) => e.name).sort(), ["p1", "p2", "p3", "p4", "p5"]);
      assert.deepEqual(await s.listDataKeys("purge-me"), []);
      assert.equal((await s.listDataKeys("keep-me")).length, 1);
      assert.equal(await s.findSecret("keep-me", "p1").then((d) => d?.name), "p1");
      assert.equal(await s.findVar("keep-me", "v").then((v) => v?.value), "1");
    });

    it("re-wraps a data key only from the expected master key", async () => {
      const k = { store: "rw", id: "k1", kekId: "old", wrapped: "w-old", createdAt: T0 };
      await s.insertDataKey(k);
      assert.equal(await s.rewrapDataKey({ ...k, kekId: "new", wrapped: "w-new" }, "other"), false);
      assert.equal(await s.rewrapDataKey({ ...k, kekId: "new", wrapped: "w-new" }, "old"), true);
      assert.deepEqual(await s.listDataKeys("rw"), [{ ...k, kekId: "new", wrapped: "w-new" }]);
    });

    it("carries no secret value or ciphertext in change events", async () => {
      const feed = read(s, 1, undefined);
      await feed.started;
      const doc = secretDoc("feed/private");
      await s.insertSecret(doc);
      const [ev] = await feed.items;
      assert.ok(ev);
      assert.doesNotMatch(JSON.stringify(ev), /v1\.testkey\./);
    });

    // ---- Soft deletion, live-name uniqueness, batches, filtered lists, due work and change kinds ----

    /** A document with the fields lists filter on set as given (storage keeps documents as they are). */
    const shaped = (
      name: string,
      store: string,
      over: { folder?: string; tags?: string[]; expiresAt?: number | null } = {},
    ): SecretDocument => ({ ...secretDoc(name, { store }), ...over });
    const namesOf = (docs: readonly SecretDocument[]) => docs.map((d) => d.name);
    const byNameThenId = (a: SecretDocument, b: SecretDocument) =>
      a.name < b.name ? -1 : a.name > b.name ? 1 : a.id < b.id ? -1 : a.id > b.id ? 1 : 0;

    async function rejectsNameTaken(p: Promise<unknown>, store: string, secretName: string): Promise<void> {
      await assert.rejects(p, (err: unknown) => {
        assert.ok(err instanceof NameTakenError, `a NameTakenError, got ${String(err)}`);
        assert.equal(err.store, store);
        assert.equal(err.secretName, secretName);
        return true;
      });
    }

    /** Inserts `doc`, then soft-deletes it at `at` for `retention` seconds; returns the deleted document. */
    async function insertDeleted(doc: SecretDocument, at: number, retention = 3600, into: Storage = s): Promise<SecretDocument> {
      assert.equal(await into.insertSecret(doc), true);
      const del = softDelete(doc, at, retention);
      assert.equal(await into.replaceSecret(del, doc.revision), true);
      return del;
    }

    it("finds any secret by id, live or soft-deleted, and not by name once deleted", async () => {
      const doc = secretDoc("byid/a", { store: "byid", kind: "automatic", interval: 60 });
      assert.equal(await s.insertSecret(doc), true);
      assert.deepEqual(await s.findSecretById(doc.id), doc);
      const del = softDelete(doc, T0 + 1000, 60);
      assert.equal(await s.replaceSecret(del, doc.revision), true);
      assert.deepEqual(await s.findSecretById(doc.id), del, "a deleted secret is still found by id, deletion and all");
      assert.deepEqual(del.deletion, { deletedAt: T0 + 1000, purgeAt: T0 + 61_000 });
      assert.equal(await s.findSecret("byid", "byid/a"), undefined, "not by name");
      assert.equal(await s.findSecretById(randomUUID()), undefined);
      const back = restore(del, T0 + 2000);
      assert.equal(await s.replaceSecret(back, del.revision), true);
      assert.deepEqual(await s.findSecretById(doc.id), back);
      assert.deepEqual(await s.findSecret("byid", "byid/a"), back);
    });

    it("keeps live names unique, while soft-deleted secrets give theirs up and may share one", async () => {
      const store = "softnames";
      const first = secretDoc("shared", { store });
      const firstDel = await insertDeleted(first, T0 + 1000);
      const second = secretDoc("shared", { store });
      assert.equal(await s.insertSecret(second), true, "a deleted secret frees its name");
      assert.equal((await s.findSecret(store, "shared"))?.id, second.id);
      assert.equal(await s.insertSecret(secretDoc("shared", { store })), false, "the name is live again");

      // Restoring the deleted one while its name is held by a live one.
      await rejectsNameTaken(s.replaceSecret(restore(firstDel, T0 + 2000), firstDel.revision), store, "shared");
      assert.deepEqual(await s.findSecretById(first.id), firstDel, "nothing written");
      assert.equal((await s.findSecret(store, "shared"))?.id, second.id);

      // Two deleted secrets of the same name.
      const secondDel = softDelete(second, T0 + 3000, 3600);
      assert.equal(await s.replaceSecret(secondDel, second.revision), true);
      const deleted = await s.listSecrets({ store, prefix: "", limit: 10, state: "deleted" });
      assert.deepEqual(deleted.map((d) => d.id).sort(), [first.id, second.id].sort());
      assert.equal(await s.findSecret(store, "shared"), undefined);

      // With the name free, either can come back; then the other cannot.
      const firstBack = restore(firstDel, T0 + 4000);
      assert.equal(await s.replaceSecret(firstBack, firstDel.revision), true);
      assert.deepEqual(await s.findSecret(store, "shared"), firstBack);
      await rejectsNameTaken(s.replaceSecret(restore(secondDel, T0 + 5000), secondDel.revision), store, "shared");
      assert.deepEqual(await s.findSecretById(second.id), secondDel);
    });

    it("refuses a rename or move onto a live name with NameTakenError, but not onto a deleted one's", async () => {
      const store = "renames";
      const a = secretDoc("a", { store });
      const b = secretDoc("b", { store });
      for (const d of [a, b]) assert.equal(await s.insertSecret(d), true);
      await rejectsNameTaken(s.replaceSecret(rename(b, "a", T0 + 1000), b.revision), store, "a");
      assert.deepEqual(await s.findSecretById(b.id), b, "nothing written");
      const c = rename(b, "c", T0 + 1000);
      assert.equal(await s.replaceSecret(c, b.revision), true);
      assert.equal(await s.findSecret(store, "b"), undefined, "the old name is free");
      assert.equal((await s.findSecret(store, "c"))?.id, b.id);

      // Into another store, onto a name taken there.
      const there = secretDoc("c", { store: "renames-elsewhere" });
      assert.equal(await s.insertSecret(there), true);
      const moved = move(c, "renames-elsewhere", "c", [sealed()], T0 + 2000);
      await rejectsNameTaken(s.replaceSecret(moved, c.revision), "renames-elsewhere", "c");
      assert.deepEqual(await s.findSecretById(b.id), c);

      // Onto the name of a deleted secret.
      const aDel = softDelete(a, T0 + 3000, 3600);
      assert.equal(await s.replaceSecret(aDel, a.revision), true);
      const cToA = rename(c, "a", T0 + 4000);
      assert.equal(await s.replaceSecret(cToA, c.revision), true);
      assert.equal((await s.findSecret(store, "a"))?.id, b.id);
      assert.deepEqual(await s.findSecretById(a.id), aDel, "the deleted one is untouched");
    });

    it("applies an atomic batch all or nothing", async () => {
      const store = "atomic";
      const a = secretDoc("a", { store });
      const b = secretDoc("b", { store });
      for (const d of [a, b]) assert.equal(await s.insertSecret(d), true);

      // All ok.
      const c = secretDoc("c", { store });
      const a2 = applyMetadataPatch(a, { description: "a2" }, T0 + 1000);
      assert.deepEqual(
        await s.applyWrites(
          [
            { op: "insert", doc: c },
            { op: "replace", doc: a2, expectedRevision: a.revision },
            { op: "delete", id: b.id, expectedRevision: b.revision },
          ],
          true,
        ),
        ["ok", "ok", "ok"],
      );
      assert.deepEqual(await s.findSecret(store, "c"), c);
      assert.deepEqual(await s.findSecret(store, "a"), a2);
      assert.equal(await s.findSecretById(b.id), undefined);

      // Watch the feed: a rolled-back batch must leave no event behind.
      const feed = read(s, 1, undefined);
      await feed.started;

      // One conflict: that write says so, every other one was not applied, and nothing was written.
      const d = secretDoc("d", { store });
      const a3 = applyMetadataPatch(a2, { description: "a3" }, T0 + 2000);
      const c2 = applyMetadataPatch(c, { description: "c2" }, T0 + 2000);
      assert.deepEqual(
        await s.applyWrites(
          [
            { op: "insert", doc: d },
            { op: "replace", doc: a3, expectedRevision: a2.revision },
            { op: "replace", doc: c2, expectedRevision: c.revision + 5 },
            { op: "delete", id: c.id, expectedRevision: c.revision },
          ],
          true,
        ),
        ["not_applied", "not_applied", "conflict", "not_applied"],
      );
      assert.deepEqual(
        await s.applyWrites(
          [
            { op: "insert", doc: d },
            { op: "delete", id: randomUUID(), expectedRevision: 1 },
          ],
          true,
        ),
        ["not_applied", "conflict"],
        "deleting a missing document is a conflict",
      );
      // A taken name.
      assert.deepEqual(
        await s.applyWrites(
          [
            { op: "insert", doc: d },
            { op: "insert", doc: secretDoc("a", { store }) },
            { op: "replace", doc: a3, expectedRevision: a2.revision },
          ],
          true,
        ),
        ["not_applied", "name_taken", "not_applied"],
      );
      assert.deepEqual(
        await s.applyWrites(
          [
            { op: "insert", doc: secretDoc("e", { store }) },
            { op: "insert", doc: secretDoc("e", { store }) },
          ],
          true,
        ),
        ["not_applied", "name_taken"],
        "a name taken by an earlier write of the same batch",
      );
      assert.deepEqual(
        await s.applyWrites(
          [
            { op: "replace", doc: a3, expectedRevision: a2.revision },
            { op: "replace", doc: rename(c, "a", T0 + 2000), expectedRevision: c.revision },
          ],
          true,
        ),
        ["not_applied", "name_taken"],
        "a rename onto a live name",
      );
      assert.equal(await s.findSecret(store, "d"), undefined);
      assert.equal(await s.findSecret(store, "e"), undefined);
      assert.deepEqual(await s.findSecret(store, "a"), a2);
      assert.deepEqual(await s.findSecret(store, "c"), c);
      assert.deepEqual(namesOf(await s.listSecrets({ store, prefix: "", limit: 10 })), ["a", "c"]);

      const marker = secretDoc("marker", { store });
      assert.equal(await s.insertSecret(marker), true);
      const [first] = await feed.items;
      assert.ok(first && first.op === "insert", `the first change after the failed batches is the marker, got ${JSON.stringify(first)}`);
      assert.equal(first.id, marker.id);
    });

    it("applies a batch that is not atomic write by write, keeping the writes that worked", async () => {
      const store = "loose";
      const x = secretDoc("x", { store });
      const z = secretDoc("z", { store });
      for (const d of [x, z]) assert.equal(await s.insertSecret(d), true);
      const y = secretDoc("y", { store });
      const x2 = applyMetadataPatch(x, { description: "x2" }, T0 + 1000);
      const outcomes = await s.applyWrites(
        [
          { op: "insert", doc: y },
          { op: "replace", doc: applyMetadataPatch(x, { description: "stale" }, T0 + 1000), expectedRevision: x.revision + 1 },
          { op: "insert", doc: secretDoc("x", { store }) },
          { op: "delete", id: randomUUID(), expectedRevision: 1 },
          { op: "replace", doc: rename(z, "y", T0 + 1000), expectedRevision: z.revision },
          { op: "replace", doc: x2, expectedRevision: x.revision },
          { op: "delete", id: z.id, expectedRevision: z.revision },
        ],
        false,
      );
      assert.deepEqual(outcomes, ["ok", "conflict", "name_taken", "conflict", "name_taken", "ok", "ok"]);
      assert.deepEqual(await s.findSecret(store, "y"), y, "an earlier write is kept");
      assert.deepEqual(await s.findSecret(store, "x"), x2, "a later write is applied");
      assert.equal(await s.findSecretById(z.id), undefined);
      assert.deepEqual(namesOf(await s.listSecrets({ store, prefix: "", limit: 10 })), ["x", "y"]);
      assert.deepEqual(await s.applyWrites([{ op: "insert", doc: secretDoc("x", { store }) }], false), ["name_taken"]);
    });

    it("lists by state, folder, tag and prefix, alone and combined", async () => {
      const store = "filters";
      const docs = [
        shaped("app/db", store, { folder: "app", tags: ["db", "prod"] }),
        shaped("app/cache", store, { folder: "app", tags: ["prod"], expiresAt: T0 + 10_000 }),
        shaped("app/old", store, { folder: "app", tags: ["db"], expiresAt: T0 + 5_000 }),
        shaped("web/key", store, { folder: "web", tags: ["prod"] }),
        shaped("root", store),
      ];
      for (const d of docs) assert.equal(await s.insertSecret(d), true);
      // Deleted ones: one that would count as expired, one that would match every filter below.
      await insertDeleted(shaped("app/gone", store, { folder: "app", tags: ["db", "prod"], expiresAt: T0 + 1 }), T0 + 100);
      await insertDeleted(shaped("app/was", store, { folder: "app", tags: ["prod"] }), T0 + 100);
      await s.insertSecret(shaped("app/db", "filters-other", { folder: "app", tags: ["prod"] }));

      const ls = async (q: Omit<ListQuery, "store" | "prefix" | "limit"> & { prefix?: string; limit?: number }) =>
        namesOf(await s.listSecrets({ store, ...q, limit: q.limit ?? 100, prefix: q.prefix ?? "" }));
      const at5 = T0 + 5_000;
      const at10 = T0 + 10_000;

      assert.deepEqual(await ls({}), ["app/cache", "app/db", "app/old", "root", "web/key"], "live by default");
      assert.deepEqual(await ls({ state: "live", now: at10 }), ["app/cache", "app/db", "app/old", "root", "web/key"]);
      assert.deepEqual(await ls({ state: "active", now: at5 - 1 }), ["app/cache", "app/db", "app/old", "root", "web/key"]);
      assert.deepEqual(await ls({ state: "active", now: at5 }), ["app/cache", "app/db", "root", "web/key"], "expiry is inclusive");
      assert.deepEqual(await ls({ state: "active", now: at10 }), ["app/db", "root", "web/key"]);
      assert.deepEqual(await ls({ state: "expired", now: at5 - 1 }), []);
      assert.deepEqual(await ls({ state: "expired", now: at5 }), ["app/old"]);
      assert.deepEqual(await ls({ state: "expired", now: at10 }), ["app/cache", "app/old"], "never a deleted secret");
      assert.deepEqual(await ls({ state: "deleted", now: at10 }), ["app/gone", "app/was"]);

      assert.deepEqual(await ls({ folder: "app" }), ["app/cache", "app/db", "app/old"]);
      assert.deepEqual(await ls({ folder: "" }), ["root"], "the empty folder is a folder too");
      assert.deepEqual(await ls({ folder: "ap" }), [], "a folder matches exactly");
      assert.deepEqual(await ls({ tag: "prod" }), ["app/cache", "app/db", "web/key"]);
      assert.deepEqual(await ls({ tag: "db" }), ["app/db", "app/old"]);
      assert.deepEqual(await ls({ tag: "pro" }), [], "a tag matches exactly");
      assert.deepEqual(await ls({ prefix: "app/" }), ["app/cache", "app/db", "app/old"]);
      assert.deepEqual(await ls({ prefix: "app/c" }), ["app/cache"]);

      assert.deepEqual(await ls({ prefix: "app/", tag: "prod", state: "active", now: at10 }), ["app/db"]);
      assert.deepEqual(await ls({ folder: "app", tag: "db", state: "expired", now: at5 }), ["app/old"]);
      assert.deepEqual(await ls({ folder: "app", tag: "prod", state: "deleted" }), ["app/gone", "app/was"]);
      assert.deepEqual(await ls({ folder: "app", tag: "db", state: "deleted", prefix: "app/g" }), ["app/gone"]);
      assert.deepEqual(await ls({ folder: "web", tag: "db" }), []);
      assert.deepEqual(await ls({ tag: "prod", limit: 2 }), ["app/cache", "app/db"]);
      assert.deepEqual(
        namesOf(await s.listSecrets({ store, prefix: "", limit: 2, tag: "prod", after: { name: "app/db", id: "\u{10FFFF}" } })),
        ["web/key"],
        "a filter holds across pages",
      );
      assert.deepEqual(
        namesOf(await s.listSecrets({ store, prefix: "", limit: 2, tag: "prod", before: { name: "web/key", id: "" } })),
        ["app/cache", "app/db"],
      );
    });

    it("pages by (name, id) both ways, through secrets sharing a name", async () => {
      const store = "cursors";
      // Three deleted secrets named "same", two others around them, and live ones that must not show.
      for (const n of ["alpha", "same", "same", "same", "zeta"]) await insertDeleted(secretDoc(n, { store }), T0 + 100);
      for (const n of ["alpha", "same", "zeta"]) assert.equal(await s.insertSecret(secretDoc(n, { store })), true);
      const all = await s.listSecrets({ store, prefix: "", limit: 100, state: "deleted" });
      assert.equal(all.length, 5);
      assert.deepEqual(all, [...all].sort(byNameThenId), "in (name, id) order");
      assert.deepEqual(namesOf(all), ["alpha", "same", "same", "same", "zeta"]);
      const key = (d: SecretDocument) => `${d.name}/${d.id}`;

      for (const limit of [1, 2, 3]) {
        const forward: SecretDocument[] = [];
        let after: { name: string; id: string } | undefined;
        for (let guard = 0; guard < 10; guard++) {
          const page = await s.listSecrets({ store, prefix: "", limit, state: "deleted", after });
          forward.push(...page);
          const last = page[page.length - 1];
          if (page.length < limit || !last) break;
          after = { name: last.name, id: last.id };
        }
        assert.deepEqual(forward.map(key), all.map(key), `forward in pages of ${limit}`);

        const backward: SecretDocument[] = [];
        let before: { name: string; id: string } = { name: "\u{10FFFF}", id: "" };
        for (let guard = 0; guard < 10; guard++) {
          const page = await s.listSecrets({ store, prefix: "", limit, state: "deleted", before });
          backward.unshift(...page);
          const first = page[0];
          if (page.length < limit || !first) break;
          before = { name: first.name, id: first.id };
        }
        assert.deepEqual(backward.map(key), all.map(key), `backward in pages of ${limit}`);
      }

      // Positions inside the run of equal names.
      const [, s1, s2, s3] = all as [SecretDocument, SecretDocument, SecretDocument, SecretDocument, SecretDocument];
      const q = { store, prefix: "", limit: 10, state: "deleted" as const };
      assert.deepEqual((await s.listSecrets({ ...q, after: { name: s1.name, id: s1.id } })).map(key), all.slice(2).map(key));
      assert.deepEqual((await s.listSecrets({ ...q, before: { name: s3.name, id: s3.id } })).map(key), all.slice(0, 3).map(key));
      assert.deepEqual((await s.listSecrets({ ...q, limit: 1, before: { name: s3.name, id: s3.id } })).map(key), [key(s2)]);
      assert.deepEqual(
        (await s.listSecrets({ ...q, after: { name: s1.name, id: s1.id }, before: { name: s3.name, id: s3.id } })).map(key),
        [key(s2)],
        "both bounds",
      );
      assert.deepEqual((await s.listSecrets({ ...q, prefix: "same", after: { name: s3.name, id: s3.id } })).map(key), []);
    });

    it("finds due purges of deleted secrets at their purge time, and never their rotation", async () => {
      const due = (await fixture.open()).storage; // a fresh backend: only our secrets
      try {
        const names = async (now: number) => (await due.findDueSecrets(now, 10)).map((d) => d.name);
        const a = secretDoc("due/a", { kind: "automatic", interval: 10 }); // rotates at T0 + 10 s
        const b = secretDoc("due/b", { kind: "automatic", interval: 20 }); // would rotate at T0 + 20 s
        const c = secretDoc("due/c", { kind: "automatic", interval: 30 }); // would rotate at T0 + 30 s
        const m = secretDoc("due/m");
        for (const d of [a, b, c, m]) assert.equal(await due.insertSecret(d), true);
        const bDel = softDelete(b, T0 + 1000, 5); // purge at T0 + 6 s
        const cDel = softDelete(c, T0 + 1000, 1000); // purge at T0 + 1001 s
        const mDel = softDelete(m, T0 + 2000, 100); // purge at T0 + 102 s
        assert.equal(await due.replaceSecret(bDel, b.revision), true);
        assert.equal(await due.replaceSecret(cDel, c.revision), true);
        assert.equal(await due.replaceSecret(mDel, m.revision), true);

        assert.equal(await due.nextRotationAt(), T0 + 6000, "the earliest purge");
        assert.deepEqual(await names(T0 + 5999), []);
        assert.deepEqual(await names(T0 + 6000), ["due/b"]);
        assert.deepEqual(await names(T0 + 30_000), ["due/b", "due/a"], "no rotation of a deleted secret");
        assert.deepEqual(await names(T0 + 102_000), ["due/b", "due/a", "due/m"]);
        assert.deepEqual(await names(T0 + 1_001_000), ["due/b", "due/a", "due/m", "due/c"]);
        const [dueB] = await due.findDueSecrets(T0 + 6000, 1);
        assert.deepEqual(dueB, bDel, "the whole deleted document");

        // Restored, b is due for its rotation again; purged, m is due for nothing.
        const bBack = restore(bDel, T0 + 7000);
        assert.equal(await due.replaceSecret(bBack, bDel.revision), true);
        assert.equal(await due.deleteSecret(m.id, mDel.revision), true);
        assert.deepEqual(await names(T0 + 19_999), ["due/a"]);
        assert.deepEqual(await names(T0 + 20_000), ["due/a", "due/b"]);
        assert.deepEqual(await names(T0 + 102_000), ["due/a", "due/b"]);
        assert.equal(await due.nextRotationAt(), T0 + 10_000);
        assert.equal(await due.deleteSecret(a.id, a.revision), true);
        assert.equal(await due.deleteSecret(b.id, bBack.revision), true);
        assert.equal(await due.nextRotationAt(), T0 + 1_001_000, "only c's purge is left");
      } finally {
        await due.close();
      }
    });

    it("says in each change event what the write did and when the scheduler must act next", async () => {
      const ev = (await fixture.open()).storage; // a fresh backend: only our changes
      try {
        const feed = read(ev, 12, undefined);
        await feed.started;
        const doc = secretDoc("ch/one", { kind: "automatic", interval: 60, store: "ch" }); // rotates at T0 + 60 s
        const writes: SecretDocument[] = [doc];
        const step = async (next: SecretDocument) => {
          const prev = writes[writes.length - 1] as SecretDocument;
          assert.equal(await ev.replaceSecret(next, prev.revision), true, next.lastChange);
          writes.push(next);
          return next;
        };
        assert.equal(await ev.insertSecret(doc), true);
        const upd = await step(applyMetadataPatch(doc, { description: "new words" }, T0 + 1000));
        const rot = await step(appendVersion(upd, sealed(), T0 + 2000, 10)); // next rotation T0 + 62 s
        const st = await step(setVersionState(rot, 1, "deactivated", T0 + 3000));
        const ren = await step(rename(st, "ch/two", T0 + 4000));
        const mov = await step(move(ren, "ch-b", "ch/three", [sealed(), sealed()], T0 + 5000));
        const del = await step(softDelete(mov, T0 + 6000, 100)); // purge at T0 + 106 s
        const back = await step(restore(del, T0 + 7000));
        const del2 = await step(softDelete(back, T0 + 8000, 100));
        assert.equal(await ev.deleteSecret(doc.id, del2.revision), true, "purge");
        const live = secretDoc("ch/live", { store: "ch" });
        assert.equal(await ev.insertSecret(live), true);
        assert.equal(await ev.deleteSecret(live.id, live.revision), true, "a hard delete of a live secret");

        const events = (await feed.items).filter((i): i is ChangeEvent => i.op !== "start" && i.op !== "reset");
        const seen = events.map((e) => [e.op, e.change, e.store, e.name, e.revision, e.nextRotationAt, e.dueAt]);
        assert.deepEqual(seen, [
          ["insert", "created", "ch", "ch/one", 1, T0 + 60_000, T0 + 60_000],
          ["update", "updated", "ch", "ch/one", 2, T0 + 60_000, T0 + 60_000],
          ["update", "rotated", "ch", "ch/one", 3, T0 + 62_000, T0 + 62_000],
          ["update", "state_changed", "ch", "ch/one", 4, T0 + 62_000, T0 + 62_000],
          ["update", "renamed", "ch", "ch/two", 5, T0 + 62_000, T0 + 62_000],
          ["update", "moved", "ch-b", "ch/three", 6, T0 + 62_000, T0 + 62_000],
          ["update", "deleted", "ch-b", "ch/three", 7, null, T0 + 106_000],
          ["update", "restored", "ch-b", "ch/three", 8, T0 + 62_000, T0 + 62_000],
          ["update", "deleted", "ch-b", "ch/three", 9, null, T0 + 108_000],
          ["delete", "purged", "ch-b", "ch/three", 9, null, null],
          ["insert", "created", "ch", "ch/live", 1, null, null],
          ["delete", "deleted", "ch", "ch/live", 1, null, null],
        ]);
        assert.deepEqual(
          events.slice(0, 10).map((e) => e.id),
          Array(10).fill(doc.id),
        );
        assert.deepEqual(
          events.slice(1, 9).map((e) => e.at),
          [T0 + 1000, T0 + 2000, T0 + 3000, T0 + 4000, T0 + 5000, T0 + 6000, T0 + 7000, T0 + 8000],
          "an update is dated by the document",
        );
        assert.equal(events[2]?.version, 2, "the rotation made version 2");
      } finally {
        await ev.close();
      }
    });

    it("counts only live secrets in usage", async () => {
      const u = (await fixture.open()).storage; // a fresh backend
      try {
        await u.insertStore(newStoreRecord({ name: "uz", description: "", managedBy: null }, T0));
        const live = secretDoc("live", { store: "uz" });
        const alsoLive = appendVersion(secretDoc("also", { store: "uz" }), sealed(), T0 + 1, 10);
        const gone = appendVersion(secretDoc("gone", { store: "uz" }), sealed(), T0 + 1, 10);
        for (const d of [live, alsoLive, gone]) assert.equal(await u.insertSecret(d), true);
        const goneDel = softDelete(gone, T0 + 2, 3600);
        assert.equal(await u.replaceSecret(goneDel, gone.revision), true);
        await insertDeleted(secretDoc("gone2", { store: "other-uz" }), T0 + 2, 3600, u);
        const sealedOf = (d: SecretDocument) => d.versions.reduce((n, v) => n + v.sealed.length, 0);
        const liveUsage = { stores: 1, secrets: 2, versions: 3, vars: 0, bytes: sealedOf(live) + sealedOf(alsoLive) };
        assert.deepEqual(await u.usage("uz"), liveUsage);
        assert.deepEqual(await u.usage("other-uz"), { stores: 0, secrets: 0, versions: 0, vars: 0, bytes: 0 });
        const all = await u.usage();
        assert.equal(all.secrets, 2);
        assert.equal(all.versions, 3);
        assert.equal(all.bytes, liveUsage.bytes);
        // Restored, it counts again.
        assert.equal(await u.replaceSecret(restore(goneDel, T0 + 3), goneDel.revision), true);
        assert.deepEqual(await u.usage("uz"), { ...liveUsage, secrets: 3, versions: 5, bytes: liveUsage.bytes + sealedOf(gone) });
      } finally {
        await u.close();
      }
    });
  });
}
