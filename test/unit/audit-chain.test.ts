import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, afterEach, beforeEach, describe, it } from "node:test";
import Database from "better-sqlite3";
import { type AuditEvent, type AuditRecord, auditHash, chainRecord, GENESIS_HASH, verifyChain } from "../../src/domain/audit.js";
import { appendVersion, newSecretDocument, type SecretDocument } from "../../src/domain/secret.js";
import { verifyAuditLog } from "../../src/service/audit-verify.js";
import { listAudit } from "../../src/service/tokens.js";
import { createSqliteStorage } from "../../src/storage/sqlite/sqlite-storage.js";
import type { PendingAudit, Storage } from "../../src/storage/storage.js";

/** The hash-chained audit log: the pure chain rules, and the SQLite adapter that appends to it with each write. */

const T0 = Date.UTC(2030, 0, 1);
const SEC = 1000;

function event(i: number, over: Partial<AuditEvent> = {}): AuditEvent {
  return {
    at: T0 + i * SEC,
    requestId: `req-${i}`,
    actorKind: "token",
    tokenId: i % 2 === 0 ? "tok_even" : "tok_odd",
    role: "writer",
    service: "",
    ip: "127.0.0.1",
    op: "latchkey.v1.SecretService/GetSecret",
    store: i % 3 === 0 ? "payments" : "default",
    name: `secret-${i % 4}`,
    version: i,
    code: "ok",
    ...over,
  };
}

/** A chain of `n` linked records, seq 1..n. */
function chain(n: number, name = "main"): AuditRecord[] {
  const out: AuditRecord[] = [];
  for (let i = 1; i <= n; i++) out.push(chainRecord(name, out[out.length - 1], event(i)));
  return out;
}

/** One field of a record changed to a different value of the same type. */
function edited(r: AuditRecord, field: keyof AuditRecord): AuditRecord {
  const v = r[field];
  if (field === "actorKind") return { ...r, actorKind: r.actorKind === "system" ? "token" : "system" };
  return { ...r, [field]: typeof v === "number" ? v + 1 : `${String(v)}x` };
}

const EVENT_FIELDS: readonly (keyof AuditEvent)[] = [
  "at",
  "requestId",
  "actorKind",
  "tokenId",
  "role",
  "service",
  "ip",
  "op",
  "store",
  "name",
  "version",
  "code",
];

describe("chainRecord", () => {
  it("starts a chain at seq 1 after the genesis hash, and links each record to the one before", () => {
    const rs = chain(3);
    assert.deepEqual(
      rs.map((r) => r.seq),
      [1, 2, 3],
    );
    assert.equal(rs[0]?.prevHash, GENESIS_HASH);
    assert.equal(GENESIS_HASH, "0".repeat(64));
    assert.equal(rs[1]?.prevHash, rs[0]?.hash);
    assert.equal(rs[2]?.prevHash, rs[1]?.hash);
    for (const r of rs) {
      assert.match(r.hash, /^[0-9a-f]{64}$/);
      assert.equal(r.chain, "main");
      assert.equal(r.hash, auditHash(r.prevHash, r.chain, r.seq, r));
    }
    assert.deepEqual({ ...rs[1], chain: undefined, seq: undefined, prevHash: undefined, hash: undefined }, {
      ...event(2),
      chain: undefined,
      seq: undefined,
      prevHash: undefined,
      hash: undefined,
    });
  });

  it("hashes every field, the chain's name and the position", () => {
    const base = chainRecord("main", undefined, event(1));
    for (const f of EVENT_FIELDS) {
      const changed = edited(base, f);
      assert.notEqual(auditHash(base.prevHash, "main", 1, changed), base.hash, f);
    }
    assert.notEqual(chainRecord("other", undefined, event(1)).hash, base.hash, "the chain");
    assert.notEqual(chainRecord("main", { seq: 1, hash: GENESIS_HASH }, event(1)).hash, base.hash, "the seq");
    assert.equal(chainRecord("main", undefined, event(1)).hash, base.hash, "and nothing else: it is deterministic");
  });
});

describe("verifyChain", () => {
  const rs = chain(6);

  it("accepts an intact chain and returns its last record", () => {
    const r = verifyChain(rs);
    assert.equal(r.ok, true);
    assert.equal(r.checked, 6);
    assert.equal(r.last, rs[5]);
    assert.deepEqual(verifyChain([]), { ok: true, checked: 0 });
  });

  it("continues from the last record of a previous batch", () => {
    assert.equal(verifyChain(rs.slice(3), rs[2]).ok, true);
    assert.equal(verifyChain(rs.slice(3), rs[2]).checked, 3);
    // A batch that does not start right after `from` is a gap.
    const gap = verifyChain(rs.slice(4), rs[2]);
    assert.equal(gap.ok, false);
    assert.equal(gap.brokenAt, 5);
    assert.match(gap.reason ?? "", /entry 4 is missing/);
  });

  it("detects an edit of any field at the edited entry", () => {
    for (const f of [...EVENT_FIELDS, "chain", "hash"] as const) {
      for (const at of [0, 2, 5]) {
        const tampered = rs.map((r, i) => (i === at ? edited(r, f) : r));
        const res = verifyChain(tampered);
        assert.equal(res.ok, false, `${f} of entry ${at + 1}`);
        assert.equal(res.brokenAt, at + 1, `${f} of entry ${at + 1}`);
        assert.equal(res.checked, at, `${f}: the entries before it were fine`);
        assert.match(res.reason ?? "", /do not match its hash/);
      }
    }
  });

  it("detects a changed link at the entry that carries it", () => {
    const tampered = rs.map((r, i) => (i === 3 ? { ...r, prevHash: rs[1]?.hash as string } : r));
    const res = verifyChain(tampered);
    assert.deepEqual([res.ok, res.brokenAt], [false, 4]);
    assert.match(res.reason ?? "", /does not follow/);
    const first = rs.map((r, i) => (i === 0 ? { ...r, prevHash: "f".repeat(64) } : r));
    assert.deepEqual([verifyChain(first).ok, verifyChain(first).brokenAt], [false, 1], "the first entry must follow genesis");
  });

  it("detects a removed entry at the one after it", () => {
    const res = verifyChain([...rs.slice(0, 2), ...rs.slice(3)]);
    assert.deepEqual([res.ok, res.brokenAt, res.checked], [false, 4, 2]);
    assert.match(res.reason ?? "", /entry 3 is missing/);
  });

  it("detects a removed entry even when the ones after it are renumbered", () => {
    const renumbered = [...rs.slice(0, 2), ...rs.slice(3).map((r) => ({ ...r, seq: r.seq - 1 }))];
    const res = verifyChain(renumbered);
    assert.deepEqual([res.ok, res.brokenAt], [false, 3]);
  });

  it("detects two entries swapped at the first one out of place", () => {
    const swapped = [rs[0], rs[1], rs[3], rs[2], rs[4], rs[5]] as AuditRecord[];
    const res = verifyChain(swapped);
    assert.deepEqual([res.ok, res.brokenAt, res.checked], [false, 4, 2]);
    // Swapped and renumbered to look in order: the links give it away.
    const relabelled = swapped.map((r, i) => ({ ...r, seq: i + 1 }));
    const res2 = verifyChain(relabelled);
    assert.deepEqual([res2.ok, res2.brokenAt], [false, 3]);
  });

  it("detects an inserted entry, even one correctly linked to the entry before it", () => {
    const forged = chainRecord("main", rs[1], event(99, { op: "forged" }));
    assert.equal(forged.seq, 3);
    // Inserted as is: the original entry 3 now comes where 4 was expected.
    const inserted = [rs[0], rs[1], forged, ...rs.slice(2)] as AuditRecord[];
    const res = verifyChain(inserted);
    assert.deepEqual([res.ok, res.brokenAt, res.checked], [false, 3, 3]);
    // With the entries after it renumbered: the next one does not follow the forgery.
    const renumbered = [rs[0], rs[1], forged, ...rs.slice(2).map((r) => ({ ...r, seq: r.seq + 1 }))] as AuditRecord[];
    const res2 = verifyChain(renumbered);
    assert.deepEqual([res2.ok, res2.brokenAt], [false, 4]);
  });

  it("a check that starts later anchors on the first record's own link", () => {
    assert.equal(verifyChain(rs.slice(2)).ok, true);
    assert.equal(verifyChain(rs.slice(2)).checked, 4);
  });
});

const root = mkdtempSync(join(tmpdir(), "latchkey-audit-"));
after(() => rmSync(root, { recursive: true, force: true }));

let counter = 0;
let file: string;
let storage: Storage;
let raw: Database.Database | undefined;

function doc(name: string, over: Partial<SecretDocument> = {}): SecretDocument {
  return {
    ...newSecretDocument(
      { id: randomUUID(), store: "default", name, kind: "manual", description: "" },
      `v1.k.${Buffer.from(name).toString("base64")}`,
      T0,
    ),
    ...over,
  };
}

const pending = (e: AuditEvent): PendingAudit => ({ event: e, written: false });

/** The data file opened behind the adapter's back, as someone tampering with it would. */
function tamper(): Database.Database {
  raw ??= new Database(file);
  return raw;
}

describe("audit log on SQLite", () => {
  beforeEach(() => {
    file = join(root, `db-${++counter}`, "latchkey.db");
    storage = createSqliteStorage(file);
  });
  afterEach(async () => {
    raw?.close();
    raw = undefined;
    await storage.close();
  });

  async function appendN(n: number, from = 1): Promise<void> {
    await storage.appendAudit(Array.from({ length: n }, (_, i) => event(from + i)));
  }

  describe("verifyAuditLog", () => {
    it("reports an empty log as intact, with no chains", async () => {
      assert.deepEqual(await verifyAuditLog(storage), { ok: true, chains: [] });
    });

    it("verifies what appendAudit wrote, across batches of its scan", async () => {
      await appendN(1500);
      await appendN(700, 1501);
      assert.deepEqual(await verifyAuditLog(storage), { ok: true, chains: [{ ok: true, checked: 2200, chain: "main" }] });
      const all = await storage.scanAudit("main", 0, 5000);
      assert.deepEqual(
        all.map((r) => r.seq),
        Array.from({ length: 2200 }, (_, i) => i + 1),
      );
      assert.deepEqual(all[41], chainRecord("main", all[40], event(42)), "each stored record is what chainRecord makes");
    });

    it("catches a column changed in the data file, at its entry", async () => {
      await appendN(1200);
      for (const [column, value] of [
        ["name", "innocent"],
        ["code", "ok "],
        ["token_id", "tok_someone_else"],
        ["at", T0],
        ["version", 0],
        ["actor_kind", "system"],
      ] as const) {
        const seq = 1100;
        const before = tamper().prepare(`SELECT ${column} AS v FROM audit WHERE seq = ?`).get(seq) as { v: unknown };
        tamper().prepare(`UPDATE audit SET ${column} = ? WHERE seq = ?`).run(value, seq);
        const res = await verifyAuditLog(storage);
        assert.equal(res.ok, false, column);
        assert.deepEqual(
          res.chains.map((c) => [c.chain, c.ok, c.brokenAt, c.checked]),
          [["main", false, seq, seq - 1]],
          column,
        );
        assert.match(res.chains[0]?.reason ?? "", /do not match its hash/);
        tamper().prepare(`UPDATE audit SET ${column} = ? WHERE seq = ?`).run(before.v, seq);
        assert.equal((await verifyAuditLog(storage)).ok, true, `${column} restored`);
      }
    });

    it("catches a changed hash at the last entry", async () => {
      await appendN(5);
      tamper().prepare("UPDATE audit SET hash = ? WHERE seq = 5").run("0".repeat(64));
      const res = await verifyAuditLog(storage);
      assert.deepEqual([res.ok, res.chains[0]?.brokenAt], [false, 5]);
    });

    it("catches a deleted entry, in the middle or at the start", async () => {
      await appendN(10);
      tamper().prepare("DELETE FROM audit WHERE seq = 4").run();
      let res = await verifyAuditLog(storage);
      assert.deepEqual([res.ok, res.chains[0]?.brokenAt, res.chains[0]?.checked], [false, 5, 3]);
      assert.match(res.chains[0]?.reason ?? "", /entry 4 is missing/);

      tamper().prepare("DELETE FROM audit WHERE seq <= 4").run();
      res = await verifyAuditLog(storage);
      assert.deepEqual([res.ok, res.chains[0]?.brokenAt, res.chains[0]?.checked], [false, 5, 0]);
      assert.match(res.chains[0]?.reason ?? "", /before it are missing/);
    });

    it("catches a forged entry inserted with the next entries renumbered", async () => {
      await appendN(6);
      const db = tamper();
      const rows = db.prepare("SELECT * FROM audit WHERE seq >= 3 ORDER BY seq DESC").all() as { seq: number }[];
      for (const r of rows) db.prepare("UPDATE audit SET seq = ? WHERE seq = ?").run(r.seq + 1, r.seq);
      const prev = (await storage.scanAudit("main", 0, 2))[1] as AuditRecord;
      const forged = chainRecord("main", prev, event(3, { op: "forged" }));
      db.prepare(
        "INSERT INTO audit (seq, at, request_id, actor_kind, token_id, role, service, ip, op, store, name, version, code, prev_hash, hash) " +
          "VALUES (@seq, @at, @requestId, @actorKind, @tokenId, @role, @service, @ip, @op, @store, @name, @version, @code, @prevHash, @hash)",
      ).run(forged);
      const res = await verifyAuditLog(storage);
      assert.deepEqual([res.ok, res.chains[0]?.brokenAt], [false, 4]);
    });
  });

  describe("writes carry their entry", () => {
    it("a write given a pending entry appends it in its transaction and marks it written", async () => {
      await appendN(2);
      const d = doc("db/password");
      const audit = pending(event(3, { op: "StoreSecret", name: "db/password", version: 1 }));
      assert.equal(await storage.insertSecret(d, audit), true);
      assert.equal(audit.written, true);
      const [newest] = await storage.listAudit({ limit: 1 });
      assert.deepEqual(newest, chainRecord("main", (await storage.scanAudit("main", 0, 2))[1], audit.event));

      const next = appendVersion(d, "v1.k.two", T0 + SEC, 10);
      const update = pending(event(4, { op: "UpdateSecret", name: "db/password", version: 2 }));
      assert.equal(await storage.replaceSecret(next, d.revision, update), true);
      assert.equal(update.written, true);
      assert.equal((await storage.listAudit({ limit: 10 })).length, 4);
      assert.equal((await verifyAuditLog(storage)).ok, true);
    });

    it("a write that does not happen writes no entry: stale revision, taken name, missing document", async () => {
      const d = doc("db/password");
      assert.equal(await storage.insertSecret(d), true, "no entry without a pending audit");
      assert.deepEqual(await storage.listAudit({ limit: 10 }), []);
      const next = appendVersion(d, "v1.k.two", T0 + SEC, 10);
      assert.equal(await storage.replaceSecret(next, d.revision), true);

      const stale = pending(event(1, { op: "UpdateSecret" }));
      const again = appendVersion(d, "v1.k.three", T0 + 2 * SEC, 10); // built on the old revision
      assert.equal(await storage.replaceSecret(again, d.revision, stale), false);
      assert.equal(stale.written, false);
      assert.deepEqual(await storage.findSecret("default", "db/password"), next, "the document is as it was");

      const taken = pending(event(2, { op: "StoreSecret" }));
      assert.equal(await storage.insertSecret(doc("db/password"), taken), false);
      assert.equal(taken.written, false);

      const gone = pending(event(3, { op: "DeleteSecret" }));
      assert.equal(await storage.deleteSecret(randomUUID(), 1, gone), false);
      assert.equal(gone.written, false);

      assert.deepEqual(await storage.listAudit({ limit: 10 }), [], "no entry for any of them");
      // And the next entry takes seq 1: nothing was half-written.
      const ok = pending(event(4));
      assert.equal(await storage.deleteSecret(d.id, next.revision, ok), true);
      assert.deepEqual(
        (await storage.scanAudit("main", 0, 10)).map((r) => r.seq),
        [1],
      );
    });

    it("an entry that cannot be appended takes its write with it", async () => {
      const d = doc("db/password");
      const broken = pending({ ...event(1), code: null as unknown as string });
      await assert.rejects(storage.insertSecret(d, broken));
      assert.equal(broken.written, false);
      assert.equal(await storage.findSecret("default", "db/password"), undefined, "the write was rolled back");
      // Writes in the same group commit are unaffected.
      const [a, b] = await Promise.allSettled([
        storage.insertSecret(doc("a"), pending(event(2))),
        storage.insertSecret(doc("b"), pending({ ...event(3), op: null as unknown as string })),
      ]);
      assert.equal(a.status, "fulfilled");
      assert.equal(b.status, "rejected");
      assert.ok(await storage.findSecret("default", "a"));
      assert.equal(await storage.findSecret("default", "b"), undefined);
      assert.equal((await verifyAuditLog(storage)).chains[0]?.checked, 1);
    });

    it("store and var writes carry their entries too", async () => {
      const store = { name: "payments", description: "", managedBy: null, state: "active" as const, createdAt: T0, updatedAt: T0, revision: 1 };
      const created = pending(event(1, { op: "CreateStore", store: "payments", name: "" }));
      assert.equal(await storage.insertStore(store, created), true);
      const again = pending(event(2, { op: "CreateStore" }));
      assert.equal(await storage.insertStore(store, again), false);
      const vars = pending(event(3, { op: "SetVars", store: "payments", name: "region" }));
      await storage.putVars([{ store: "payments", name: "region", value: "eu", createdAt: T0, updatedAt: T0, revision: 1 }], vars);
      const missingVar = pending(event(4, { op: "DeleteVar" }));
      assert.equal(await storage.deleteVar("payments", "nope", missingVar), false);
      assert.deepEqual(
        [created.written, again.written, vars.written, missingVar.written],
        [true, false, true, false],
      );
      assert.deepEqual(
        (await storage.listAudit({ limit: 10 })).map((r) => r.op),
        ["SetVars", "CreateStore"],
      );
    });
  });

  describe("listAudit", () => {
    /** 20 entries, one a second from T0 + 1 s: tokens alternate, stores every third, names cycle through four. */
    beforeEach(async () => {
      await appendN(20);
    });

    const seqs = (rs: readonly AuditRecord[]) => rs.map((r) => r.seq);

    it("lists newest first, at most `limit`", async () => {
      assert.deepEqual(seqs(await storage.listAudit({ limit: 5 })), [20, 19, 18, 17, 16]);
      assert.equal((await storage.listAudit({ limit: 100 })).length, 20);
    });

    it("filters by time: from inclusive, to exclusive", async () => {
      assert.deepEqual(seqs(await storage.listAudit({ from: T0 + 5 * SEC, to: T0 + 8 * SEC, limit: 100 })), [7, 6, 5]);
      assert.deepEqual(seqs(await storage.listAudit({ from: T0 + 18 * SEC, limit: 100 })), [20, 19, 18]);
      assert.deepEqual(seqs(await storage.listAudit({ to: T0 + 3 * SEC, limit: 100 })), [2, 1]);
      assert.deepEqual(await storage.listAudit({ from: T0 + 21 * SEC, limit: 100 }), []);
    });

    it("filters by token, store and name, alone and together", async () => {
      assert.deepEqual(seqs(await storage.listAudit({ tokenId: "tok_even", limit: 4 })), [20, 18, 16, 14]);
      assert.deepEqual(seqs(await storage.listAudit({ store: "payments", limit: 100 })), [18, 15, 12, 9, 6, 3]);
      assert.deepEqual(seqs(await storage.listAudit({ name: "secret-1", limit: 100 })), [17, 13, 9, 5, 1]);
      assert.deepEqual(seqs(await storage.listAudit({ store: "payments", name: "secret-1", limit: 100 })), [9]);
      assert.deepEqual(seqs(await storage.listAudit({ tokenId: "tok_odd", store: "payments", from: T0 + 10 * SEC, limit: 100 })), [15]);
      assert.deepEqual(await storage.listAudit({ tokenId: "tok_nobody", limit: 100 }), []);
    });

    it("pages back through the log with page tokens, newest first, missing nothing", async () => {
      const pages: number[][] = [];
      let pageToken = "";
      do {
        const page = await listAudit(storage, { pageSize: 6, pageToken });
        pages.push(seqs(page.events));
        pageToken = page.nextPageToken;
      } while (pageToken !== "" && pages.length < 10);
      assert.deepEqual(pages, [
        [20, 19, 18, 17, 16, 15],
        [14, 13, 12, 11, 10, 9],
        [8, 7, 6, 5, 4, 3],
        [2, 1],
      ]);
    });

    it("pages with filters applied on every page", async () => {
      const first = await listAudit(storage, { tokenId: "tok_even", pageSize: 3 });
      assert.deepEqual(seqs(first.events), [20, 18, 16]);
      const second = await listAudit(storage, { tokenId: "tok_even", pageSize: 3, pageToken: first.nextPageToken });
      assert.deepEqual(seqs(second.events), [14, 12, 10]);
      const exact = await listAudit(storage, { store: "payments", pageSize: 6 });
      assert.equal(exact.events.length, 6);
      assert.equal(exact.nextPageToken, "", "no token when the page ends exactly at the last entry");
    });

    it("orders by time first: an entry appended later but timed earlier sorts by its time", async () => {
      await storage.appendAudit([event(0, { at: T0 + 10 * SEC + 500, requestId: "late" })]);
      const around = await storage.listAudit({ from: T0 + 10 * SEC, to: T0 + 12 * SEC, limit: 10 });
      assert.deepEqual(
        around.map((r) => r.requestId),
        ["req-11", "late", "req-10"],
      );
      assert.equal(around[1]?.seq, 21);
    });
  });
});
