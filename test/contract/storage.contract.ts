import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { appendVersion, applyMetadataPatch, newSecretDocument, type SecretDocument } from "../../src/domain/secret.js";
import { newStoreRecord } from "../../src/domain/store.js";
import { setVar } from "../../src/domain/vars.js";
import type { ChangeFeedItem, Storage } from "../../src/storage/storage.js";

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
  });
}
