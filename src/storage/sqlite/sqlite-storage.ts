import { closeSync, type FSWatcher, mkdirSync, openSync, watch } from "node:fs";
import { basename, dirname } from "node:path";
import Database from "better-sqlite3";
import { dueAt, latestVersion, type SecretDocument, upgradeDocument } from "../../domain/secret.js";
import { type AuditEvent, type AuditRecord, chainRecord } from "../../domain/audit.js";
import type { StoreRecord } from "../../domain/store.js";
import type { TokenRecord } from "../../domain/token.js";
import type { Usage } from "../../domain/usage.js";
import type { VarRecord } from "../../domain/vars.js";
import {
  type ChangeEvent,
  type ChangeFeedItem,
  type ChangesOptions,
  type DataKeyRecord,
  type AuditQuery,
  type ListQuery,
  NameTakenError,
  type PendingAudit,
  type Storage,
  type StoreListQuery,
  type VarListQuery,
  type WriteOp,
  type WriteOutcome,
} from "../storage.js";

export interface SqliteStorageOptions {
  /** Changes older than this are pruned from the change log. Default 1 hour. */
  readonly changeRetentionMs?: number;
  /** At most this many changes are kept. Default 200,000. */
  readonly changeRetentionRows?: number;
  /** Change-feed readers re-check at least this often even without a signal. Default 2000 ms. */
  readonly feedPollMs?: number;
}

const FEED_BATCH = 500;
const PRUNE_EVERY_WRITES = 1024;

/**
 * The embedded default store: one SQLite file (WAL, synchronous=FULL, so an acknowledged write survives a crash).
 *
 * Each secret is one row: the whole document as JSON, plus the columns its queries need (store, name, revision,
 * due_at, deleted, folder, expires_at; a partial unique index keeps live names unique). Compare-and-set is `UPDATE … WHERE id = ? AND revision = ?`. Every write also appends to the
 * `changes` table in the same transaction: the change feed, which any process sharing the file can tail by sequence
 * number. Readers are woken by writes in this process, by file-system events on the WAL (writes by other
 * processes), and by a slow fallback timer.
 */
export function createSqliteStorage(file: string, opts: SqliteStorageOptions = {}): Storage {
  const retentionMs = opts.changeRetentionMs ?? 3_600_000;
  const retentionRows = opts.changeRetentionRows ?? 200_000;
  const feedPollMs = opts.feedPollMs ?? 2000;
  const inMemory = file === ":memory:";
  if (!inMemory) {
    mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    // Create the file owner-only: SQLite gives its -wal and -shm files the same mode.
    closeSync(openSync(file, "a", 0o600));
  }
  const db = new Database(file);
  db.pragma("journal_mode = WAL");
  db.pragma("synchronous = FULL");
  db.pragma("busy_timeout = 5000");
  migrate(db);

  const q = {
    find: db.prepare<[string, string], { doc: string }>("SELECT doc FROM secrets WHERE store = ? AND name = ? AND deleted = 0"),
    findById: db.prepare<[string], { doc: string }>("SELECT doc FROM secrets WHERE id = ?"),
    insert: db.prepare(
      "INSERT INTO secrets (id, store, name, revision, due_at, deleted, folder, expires_at, version_count, sealed_bytes, doc) " +
        "VALUES (@id, @store, @name, @revision, @due, @deleted, @folder, @expiresAt, @versionCount, @sealedBytes, @doc)",
    ),
    replace: db.prepare(
      "UPDATE secrets SET store = @store, name = @name, revision = @revision, due_at = @due, deleted = @deleted, folder = @folder, " +
        "expires_at = @expiresAt, version_count = @versionCount, sealed_bytes = @sealedBytes, doc = @doc WHERE id = @id AND revision = @expected",
    ),
    deleteStoreSecrets: db.prepare<[string, number], { doc: string }>(
      "DELETE FROM secrets WHERE id IN (SELECT id FROM secrets WHERE store = ? LIMIT ?) RETURNING doc",
    ),
    findStore: db.prepare<[string], { doc: string }>("SELECT doc FROM stores WHERE name = ?"),
    insertStore: db.prepare("INSERT INTO stores (name, managed_by, revision, doc) VALUES (@name, @managedBy, @revision, @doc)"),
    replaceStore: db.prepare(
      "UPDATE stores SET revision = @revision, doc = @doc WHERE name = @name AND revision = @expected",
    ),
    deleteStore: db.prepare("DELETE FROM stores WHERE name = ? AND revision = ?"),
    listStoresAll: db.prepare<[string, number], { doc: string }>("SELECT doc FROM stores WHERE name > ? ORDER BY name LIMIT ?"),
    listStoresUnmanaged: db.prepare<[string, number], { doc: string }>(
      "SELECT doc FROM stores WHERE name > ? AND managed_by IS NULL ORDER BY name LIMIT ?",
    ),
    listStoresManagedBy: db.prepare<[string, string, number], { doc: string }>(
      "SELECT doc FROM stores WHERE managed_by = ? AND name > ? ORDER BY name LIMIT ?",
    ),
    deleteStoreVars: db.prepare("DELETE FROM vars WHERE store = ?"),
    deleteDataKeys: db.prepare("DELETE FROM data_keys WHERE store = ?"),
    findVar: db.prepare<[string, string], VarRow>("SELECT * FROM vars WHERE store = ? AND name = ?"),
    putVar: db.prepare(
      "INSERT INTO vars (store, name, value, created_at, updated_at, revision) VALUES (@store, @name, @value, @createdAt, @updatedAt, @revision) " +
        "ON CONFLICT (store, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at, revision = excluded.revision",
    ),
    deleteVar: db.prepare("DELETE FROM vars WHERE store = ? AND name = ?"),
    listVars: db.prepare<[string, string, string, string, number], VarRow>(
      "SELECT * FROM vars WHERE store = ? AND name > ? AND name >= ? AND name < ? ORDER BY name LIMIT ?",
    ),
    secretUsage: db.prepare<[string], { n: number; v: number; b: number }>(
      "SELECT COUNT(*) AS n, COALESCE(SUM(version_count), 0) AS v, COALESCE(SUM(sealed_bytes), 0) AS b FROM secrets WHERE store = ? AND deleted = 0",
    ),
    varUsage: db.prepare<[string], { n: number; b: number }>(
      "SELECT COUNT(*) AS n, COALESCE(SUM(length(CAST(value AS BLOB))), 0) AS b FROM vars WHERE store = ?",
    ),
    secretUsageAll: db.prepare<[], { n: number; v: number; b: number }>(
      "SELECT COUNT(*) AS n, COALESCE(SUM(version_count), 0) AS v, COALESCE(SUM(sealed_bytes), 0) AS b FROM secrets WHERE deleted = 0",
    ),
    varUsageAll: db.prepare<[], { n: number; b: number }>(
      "SELECT COUNT(*) AS n, COALESCE(SUM(length(CAST(value AS BLOB))), 0) AS b FROM vars",
    ),
    storeCount: db.prepare<[], { n: number }>("SELECT COUNT(*) AS n FROM stores"),
    storeExists: db.prepare<[string], { n: number }>("SELECT COUNT(*) AS n FROM stores WHERE name = ?"),
    rewrapKey: db.prepare(
      "UPDATE data_keys SET kek_id = @kekId, wrapped = @wrapped WHERE store = @store AND id = @id AND kek_id = @expected",
    ),
    deleteReturning: db.prepare<[string, number], { doc: string }>(
      "DELETE FROM secrets WHERE id = ? AND revision = ? RETURNING doc",
    ),
    due: db.prepare<[number, number], { doc: string }>("SELECT doc FROM secrets WHERE due_at <= ? ORDER BY due_at LIMIT ?"),
    nextDue: db.prepare<[], { t: number | null }>("SELECT MIN(due_at) AS t FROM secrets WHERE due_at IS NOT NULL"),
    scan: db.prepare<[string, number], { doc: string }>("SELECT doc FROM secrets WHERE id > ? ORDER BY id LIMIT ?"),
    listKeys: db.prepare<[string], KeyRow>(
      "SELECT store, id, kek_id, wrapped, created_at FROM data_keys WHERE store = ? ORDER BY created_at, id",
    ),
    listAllKeys: db.prepare<[], KeyRow>(
      "SELECT store, id, kek_id, wrapped, created_at FROM data_keys ORDER BY store, created_at, id",
    ),
    insertKey: db.prepare(
      "INSERT OR IGNORE INTO data_keys (store, id, kek_id, wrapped, created_at) VALUES (@store, @id, @kekId, @wrapped, @createdAt)",
    ),
    appendChange: db.prepare(
      "INSERT INTO changes (op, id, store, name, revision, version, version_created_at, change, next_rotation_at, due_at, at) " +
        "VALUES (@op, @id, @store, @name, @revision, @version, @versionAt, @change, @next, @due, @at)",
    ),
    readChanges: db.prepare<[number, number], ChangeRow>(
      "SELECT seq, op, id, store, name, revision, version, change, next_rotation_at, due_at, at FROM changes WHERE seq > ? ORDER BY seq LIMIT ?",
    ),
    changeBounds: db.prepare<[], { lo: number | null; hi: number | null }>(
      "SELECT MIN(seq) AS lo, MAX(seq) AS hi FROM changes",
    ),
    lastSeq: db.prepare<[], { seq: number }>("SELECT seq FROM sqlite_sequence WHERE name = 'changes'"),
    pruneByAge: db.prepare("DELETE FROM changes WHERE at < ?"),
    pruneByCount: db.prepare("DELETE FROM changes WHERE seq <= (SELECT MAX(seq) FROM changes) - ?"),
    loadCursor: db.prepare<[string], { token: string }>("SELECT token FROM cursors WHERE consumer = ?"),
    saveCursor: db.prepare(
      "INSERT INTO cursors (consumer, token, at) VALUES (?, ?, ?) ON CONFLICT (consumer) DO UPDATE SET token = excluded.token, at = excluded.at",
    ),
    ping: db.prepare("SELECT 1"),
    insertToken: db.prepare("INSERT INTO tokens (id, hash, doc) VALUES (?, ?, ?)"),
    tokenByHash: db.prepare<[string], { doc: string }>("SELECT doc FROM tokens WHERE hash = ?"),
    tokenById: db.prepare<[string], { doc: string }>("SELECT doc FROM tokens WHERE id = ?"),
    updateToken: db.prepare("UPDATE tokens SET doc = ? WHERE id = ?"),
    listTokens: db.prepare<[string, number], { doc: string }>("SELECT doc FROM tokens WHERE id > ? ORDER BY id LIMIT ?"),
    auditLast: db.prepare<[], { seq: number; hash: string }>("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1"),
    insertAudit: db.prepare(
      "INSERT INTO audit (seq, at, request_id, actor_kind, token_id, role, service, ip, op, store, name, version, code, prev_hash, hash) " +
        "VALUES (@seq, @at, @requestId, @actorKind, @tokenId, @role, @service, @ip, @op, @store, @name, @version, @code, @prevHash, @hash)",
    ),
    scanAudit: db.prepare<[number, number], AuditRow>("SELECT * FROM audit WHERE seq > ? ORDER BY seq LIMIT ?"),
  };

  const row = (doc: SecretDocument) => ({
    id: doc.id,
    store: doc.store,
    name: doc.name,
    revision: doc.revision,
    due: dueAt(doc),
    deleted: doc.deletion ? 1 : 0,
    folder: doc.folder,
    expiresAt: doc.expiresAt,
    versionCount: doc.versions.length,
    sealedBytes: sealedBytes(doc),
    doc: JSON.stringify(doc),
  });
  const parse = (r: { doc: string }): SecretDocument => upgradeDocument(JSON.parse(r.doc) as SecretDocument);
  const change = (op: ChangeEvent["op"], doc: SecretDocument) => {
    const latest = latestVersion(doc);
    return {
      op,
      id: doc.id,
      store: doc.store,
      name: doc.name,
      revision: doc.revision,
      version: latest.version,
      versionAt: latest.createdAt,
      // A hard delete of a soft-deleted secret is its purge; of a live one, its deletion.
      change: op === "delete" ? (doc.deletion ? "purged" : "deleted") : doc.lastChange,
      next: op === "delete" || doc.deletion ? null : (doc.rotation?.nextRotationAt ?? null),
      due: op === "delete" ? null : dueAt(doc),
      at: op === "delete" ? Date.now() : doc.updatedAt,
    };
  };

  let writes = 0;
  const afterWrites = (n: number) => {
    const before = writes;
    writes += n;
    if (Math.floor(before / PRUNE_EVERY_WRITES) !== Math.floor(writes / PRUNE_EVERY_WRITES)) {
      q.pruneByAge.run(Date.now() - retentionMs);
      q.pruneByCount.run(retentionRows);
    }
    feed.signal();
  };

  const insertTx = db.transaction((doc: SecretDocument) => {
    q.insert.run(row(doc));
    q.appendChange.run(change("insert", doc));
  });
  const replaceTx = db.transaction((doc: SecretDocument, expected: number): boolean => {
    try {
      if (q.replace.run({ ...row(doc), expected }).changes !== 1) return false;
    } catch (err) {
      if (isUniqueViolation(err)) throw new NameTakenError(doc.store, doc.name);
      throw err;
    }
    q.appendChange.run(change("update", doc));
    return true;
  });
  /** One write of a batch, in its own savepoint. */
  const applyOne = (w: WriteOp): WriteOutcome => {
    try {
      if (w.op === "insert") {
        insertTx(w.doc);
        return "ok";
      }
      if (w.op === "replace") return replaceTx(w.doc, w.expectedRevision) ? "ok" : "conflict";
      return deleteTx(w.id, w.expectedRevision) ? "ok" : "conflict";
    } catch (err) {
      if (err instanceof NameTakenError || isUniqueViolation(err)) return "name_taken";
      throw err;
    }
  };
  /** Thrown inside an atomic batch to roll it back, carrying the outcomes to report. */
  class Rollback extends Error {
    constructor(readonly outcomes: WriteOutcome[]) {
      super("batch rolled back");
    }
  }
  const atomicTx = db.transaction((ops: readonly WriteOp[]): WriteOutcome[] => {
    const outcomes: WriteOutcome[] = [];
    for (const w of ops) {
      const o = applyOne(w);
      if (o !== "ok") {
        const report = ops.map((_, i) => (i === outcomes.length ? o : "not_applied" as WriteOutcome));
        throw new Rollback(report);
      }
      outcomes.push(o);
    }
    return outcomes;
  });
  const purgeSecretsTx = db.transaction((store: string, limit: number): number => {
    const gone = q.deleteStoreSecrets.all(store, limit);
    for (const r of gone) q.appendChange.run(change("delete", parse(r)));
    return gone.length;
  });
  const putVarsTx = db.transaction((vars: readonly VarRecord[]) => {
    for (const v of vars) q.putVar.run(v);
  });
  const deleteTx = db.transaction((id: string, expected: number): boolean => {
    const gone = q.deleteReturning.get(id, expected);
    if (!gone) return false;
    q.appendChange.run(change("delete", parse(gone)));
    return true;
  });

  /**
   * Links an event into the chain after `prev` (by default the last stored entry) and stores it, inside the
   * caller's transaction.
   */
  function appendAuditRow(event: AuditEvent, prev: { seq: number; hash: string } | undefined = q.auditLast.get()): AuditRecord {
    const rec = chainRecord(AUDIT_CHAIN, prev, event);
    q.insertAudit.run(rec);
    return rec;
  }

  const feed = createFeedSignal(inMemory ? undefined : file, feedPollMs);
  const listStatements = new Map<string, Database.Statement<unknown[], { doc: string }>>();
  const auditStatements = new Map<string, Database.Statement<unknown[], AuditRow>>();

  /**
   * Group commit: writes issued in the same turn of the event loop share one transaction, so one fsync
   * acknowledges them all. Each write runs in its own savepoint, so one failing write (a taken name) does not
   * undo the others; every caller's promise settles only after the commit is on disk.
   */
  interface PendingWrite {
    run: () => boolean;
    audit: PendingAudit | undefined;
    /** The audit entry as stored in this write's transaction (kept only if it commits). */
    record?: AuditRecord | undefined;
    resolve: (ok: boolean) => void;
    reject: (err: unknown) => void;
  }
  let pending: PendingWrite[] = [];
  /** One write and, if it succeeded, its audit entry: in one savepoint, so both land or neither. */
  const runOne = db.transaction((w: PendingWrite): boolean => {
    const ok = w.run();
    if (ok && w.audit) w.record = appendAuditRow(w.audit.event);
    return ok;
  });
  const commitBatch = db.transaction((batch: PendingWrite[]) =>
    batch.map((w): { ok: boolean } | { err: unknown } => {
      try {
        return { ok: runOne(w) };
      } catch (err) {
        return { err };
      }
    }),
  );
  function flush(): void {
    const batch = pending;
    pending = [];
    if (batch.length === 0) return;
    let results: ({ ok: boolean } | { err: unknown })[];
    try {
      results = commitBatch.immediate(batch);
    } catch (err) {
      for (const w of batch) w.reject(err);
      return;
    }
    let changed = 0;
    batch.forEach((w, i) => {
      const r = results[i] as { ok: boolean } | { err: unknown };
      if ("err" in r) w.reject(r.err);
      else {
        if (r.ok) {
          changed++;
          if (w.audit) {
            w.audit.written = true;
            if (w.record) w.audit.record = w.record;
          }
        }
        w.resolve(r.ok);
      }
    });
    if (changed > 0) afterWrites(changed);
  }
  function write(run: () => boolean, audit?: PendingAudit): Promise<boolean> {
    return new Promise((resolve, reject) => {
      if (pending.push({ run, audit, resolve, reject }) === 1) setImmediate(flush);
    });
  }

  function toEvent(r: ChangeRow): ChangeEvent {
    return {
      token: String(r.seq),
      op: r.op,
      id: r.id,
      store: r.store,
      name: r.name,
      revision: r.revision,
      version: r.version,
      change: r.change as ChangeEvent["change"],
      nextRotationAt: r.next_rotation_at,
      dueAt: r.due_at,
      at: r.at,
    };
  }

  async function* changes({ resumeAfter, signal }: ChangesOptions): AsyncGenerator<ChangeFeedItem> {
    // sqlite_sequence only grows (AUTOINCREMENT), and a rolled-back write returns its number, so the log has no
    // gaps except where it was pruned: a gap means history was lost.
    const last = q.lastSeq.get()?.seq ?? 0;
    let seq = last;
    let lost = false;
    if (resumeAfter !== undefined) {
      const asked = /^\d{1,15}$/.test(resumeAfter) ? Number(resumeAfter) : Number.NaN;
      const lo = q.changeBounds.get()?.lo ?? last + 1;
      if (!Number.isNaN(asked) && asked <= last && asked >= lo - 1) seq = asked;
      else lost = true;
    }
    yield { op: "start", token: String(seq) };
    if (lost) yield { op: "reset", token: String(seq) };
    while (!signal.aborted) {
      // Listen before reading, so a write landing between the read and the wait still wakes us.
      const wait = feed.next(signal);
      const rows = q.readChanges.all(seq, FEED_BATCH);
      if (rows.length === FEED_BATCH) wait.cancel();
      if (rows[0] && rows[0].seq !== seq + 1) yield { op: "reset", token: String(seq) };
      for (const r of rows) {
        seq = r.seq;
        yield toEvent(r);
        if (signal.aborted) return;
      }
      if (rows.length < FEED_BATCH) await wait.promise;
    }
  }

  return {
    backend: "sqlite",
    async ping() {
      q.ping.get();
    },
    async findSecret(store, name) {
      const r = q.find.get(store, name);
      return r && parse(r);
    },
    async findSecretById(id) {
      const r = q.findById.get(id);
      return r && parse(r);
    },
    async applyWrites(ops, atomic, audit) {
      let outcomes: WriteOutcome[] = [];
      await write(() => {
        if (atomic) {
          try {
            outcomes = atomicTx(ops);
          } catch (err) {
            if (!(err instanceof Rollback)) throw err;
            outcomes = err.outcomes;
          }
        } else {
          outcomes = ops.map(applyOne);
        }
        return outcomes.includes("ok");
      }, audit);
      return outcomes;
    },
    insertSecret(doc, audit) {
      return write(() => {
        try {
          insertTx(doc);
          return true;
        } catch (err) {
          if (isUniqueViolation(err)) return false;
          throw err;
        }
      }, audit);
    },
    replaceSecret(doc, expectedRevision, audit) {
      return write(() => replaceTx(doc, expectedRevision), audit);
    },
    deleteSecret(id, expectedRevision, audit) {
      return write(() => deleteTx(id, expectedRevision), audit);
    },
    async listSecrets(query: ListQuery) {
      const { sql, params } = listSql(query);
      let stmt = listStatements.get(sql);
      if (!stmt) {
        stmt = db.prepare<unknown[], { doc: string }>(sql);
        listStatements.set(sql, stmt);
      }
      const rows = stmt.all(...params).map(parse);
      return query.before ? rows.reverse() : rows;
    },
    async findDueSecrets(now, limit) {
      return q.due.all(now, limit).map(parse);
    },
    async nextRotationAt() {
      return q.nextDue.get()?.t ?? undefined;
    },
    changes,
    async findStore(name) {
      const r = q.findStore.get(name);
      return r && (JSON.parse(r.doc) as StoreRecord);
    },
    insertStore(store, audit) {
      return write(() => {
        try {
          q.insertStore.run({ name: store.name, managedBy: store.managedBy, revision: store.revision, doc: JSON.stringify(store) });
          return true;
        } catch (err) {
          if (isUniqueViolation(err)) return false;
          throw err;
        }
      }, audit);
    },
    replaceStore(store, expectedRevision) {
      return write(
        () =>
          q.replaceStore.run({ name: store.name, revision: store.revision, doc: JSON.stringify(store), expected: expectedRevision })
            .changes === 1,
      );
    },
    deleteStore(name, expectedRevision, audit) {
      return write(() => q.deleteStore.run(name, expectedRevision).changes === 1, audit);
    },
    async listStores(query: StoreListQuery) {
      const after = query.after ?? "";
      const rows =
        query.managedBy === undefined
          ? q.listStoresAll.all(after, query.limit)
          : query.managedBy === null
            ? q.listStoresUnmanaged.all(after, query.limit)
            : q.listStoresManagedBy.all(query.managedBy, after, query.limit);
      return rows.map((r) => JSON.parse(r.doc) as StoreRecord);
    },
    async deleteStoreSecrets(store, limit) {
      let n = 0;
      await write(() => {
        n = purgeSecretsTx(store, limit);
        return n > 0;
      });
      return n;
    },
    async deleteStoreVars(store) {
      let n = 0;
      await write(() => {
        n = q.deleteStoreVars.run(store).changes;
        return true;
      });
      return n;
    },
    async deleteDataKeys(store) {
      let n = 0;
      await write(() => {
        n = q.deleteDataKeys.run(store).changes;
        return true;
      });
      return n;
    },
    async findVar(store, name) {
      const r = q.findVar.get(store, name);
      return r && fromVarRow(r);
    },
    async putVars(vars, audit) {
      await write(() => {
        putVarsTx(vars);
        return true;
      }, audit);
    },
    deleteVar(store, name, audit) {
      return write(() => q.deleteVar.run(store, name).changes === 1, audit);
    },
    async insertToken(token, audit) {
      await write(() => {
        q.insertToken.run(token.id, token.hash, JSON.stringify(token));
        return true;
      }, audit);
    },
    async findTokenByHash(hash) {
      const r = q.tokenByHash.get(hash);
      return r && (JSON.parse(r.doc) as TokenRecord);
    },
    async findTokenById(id) {
      const r = q.tokenById.get(id);
      return r && (JSON.parse(r.doc) as TokenRecord);
    },
    async listTokens(query) {
      return q.listTokens.all(query.after ?? "", query.limit).map((r) => JSON.parse(r.doc) as TokenRecord);
    },
    revokeToken(id, at, audit) {
      return write(() => {
        const r = q.tokenById.get(id);
        const token = r && (JSON.parse(r.doc) as TokenRecord);
        if (!token || token.revokedAt !== null) return false;
        q.updateToken.run(JSON.stringify({ ...token, revokedAt: at }), id);
        return true;
      }, audit);
    },
    async appendAudit(events) {
      if (events.length === 0) return [];
      let records: AuditRecord[] = [];
      await write(() => {
        // One look-up of the chain's end for the whole batch (the first call's default); each entry links to the
        // one before it.
        let prev: AuditRecord | undefined;
        records = events.map((e) => (prev = appendAuditRow(e, prev)));
        return true;
      });
      return records;
    },
    async listAudit(query: AuditQuery) {
      const { sql, params } = auditSql(query);
      let stmt = auditStatements.get(sql);
      if (!stmt) {
        stmt = db.prepare<unknown[], AuditRow>(sql);
        auditStatements.set(sql, stmt);
      }
      return stmt.all(...params).map(fromAuditRow);
    },
    async auditChains() {
      return q.auditLast.get() ? [AUDIT_CHAIN] : [];
    },
    async scanAudit(chain, afterSeq, limit) {
      if (chain !== AUDIT_CHAIN) return [];
      return q.scanAudit.all(afterSeq, limit).map(fromAuditRow);
    },
    async listVars(query: VarListQuery) {
      return q.listVars
        .all(query.store, query.after ?? "", query.prefix, `${query.prefix}\u{10FFFF}`, query.limit)
        .map(fromVarRow);
    },
    async usage(store) {
      if (store === undefined) {
        const sec = q.secretUsageAll.get() ?? { n: 0, v: 0, b: 0 };
        const vars = q.varUsageAll.get() ?? { n: 0, b: 0 };
        return toUsage(q.storeCount.get()?.n ?? 0, sec, vars);
      }
      const sec = q.secretUsage.get(store) ?? { n: 0, v: 0, b: 0 };
      const vars = q.varUsage.get(store) ?? { n: 0, b: 0 };
      return toUsage(q.storeExists.get(store)?.n ?? 0, sec, vars);
    },
    async rewrapDataKey(key, expectedKekId) {
      return q.rewrapKey.run({ ...key, expected: expectedKekId }).changes === 1;
    },
    async loadResumeToken(consumer) {
      return q.loadCursor.get(consumer)?.token;
    },
    async saveResumeToken(consumer, token) {
      q.saveCursor.run(consumer, token, Date.now());
    },
    async scanSecrets(afterId, limit) {
      return q.scan.all(afterId, limit).map(parse);
    },
    async listAllDataKeys() {
      return q.listAllKeys.all().map(fromKeyRow);
    },
    async listDataKeys(store) {
      return q.listKeys.all(store).map(fromKeyRow);
    },
    async insertDataKey(key) {
      return q.insertKey.run(key).changes === 1;
    },
    async close() {
      if (pending.length > 0) flush();
      feed.close();
      if (db.open) db.close();
    },
  };
}

interface KeyRow {
  store: string;
  id: string;
  kek_id: string;
  wrapped: string;
  created_at: number;
}

interface ChangeRow {
  seq: number;
  op: ChangeEvent["op"];
  id: string;
  store: string;
  name: string;
  revision: number;
  version: number;
  change: string;
  next_rotation_at: number | null;
  due_at: number | null;
  at: number;
}

/** The one audit chain of an embedded store: its writers are serialized by SQLite, whatever process they are in. */
const AUDIT_CHAIN = "main";

interface AuditRow {
  seq: number;
  at: number;
  request_id: string;
  actor_kind: AuditEvent["actorKind"];
  token_id: string;
  role: string;
  service: string;
  ip: string;
  op: string;
  store: string;
  name: string;
  version: number;
  code: string;
  prev_hash: string;
  hash: string;
}

function fromAuditRow(r: AuditRow): AuditRecord {
  return {
    chain: AUDIT_CHAIN,
    seq: r.seq,
    at: r.at,
    requestId: r.request_id,
    actorKind: r.actor_kind,
    tokenId: r.token_id,
    role: r.role,
    service: r.service,
    ip: r.ip,
    op: r.op,
    store: r.store,
    name: r.name,
    version: r.version,
    code: r.code,
    prevHash: r.prev_hash,
    hash: r.hash,
  };
}

/** The SQL of an audit query: newest first, filtered, paged by (at, seq). */
function auditSql(qr: AuditQuery): { sql: string; params: unknown[] } {
  const where: string[] = [];
  const params: unknown[] = [];
  if (qr.from !== undefined) {
    where.push("at >= ?");
    params.push(qr.from);
  }
  if (qr.to !== undefined) {
    where.push("at < ?");
    params.push(qr.to);
  }
  if (qr.tokenId !== undefined) {
    where.push("token_id = ?");
    params.push(qr.tokenId);
  }
  if (qr.store !== undefined) {
    where.push("store = ?");
    params.push(qr.store);
  }
  if (qr.name !== undefined) {
    where.push("name = ?");
    params.push(qr.name);
  }
  if (qr.before) {
    where.push("(at, seq) < (?, ?)");
    params.push(qr.before.at, qr.before.seq);
  }
  params.push(qr.limit);
  const clause = where.length > 0 ? `WHERE ${where.join(" AND ")}` : "";
  return { sql: `SELECT * FROM audit ${clause} ORDER BY at DESC, seq DESC LIMIT ?`, params };
}

interface VarRow {
  store: string;
  name: string;
  value: string;
  created_at: number;
  updated_at: number;
  revision: number;
}

function fromVarRow(r: VarRow): VarRecord {
  return { store: r.store, name: r.name, value: r.value, createdAt: r.created_at, updatedAt: r.updated_at, revision: r.revision };
}

function toUsage(stores: number, sec: { n: number; v: number; b: number }, vars: { n: number; b: number }): Usage {
  return { stores, secrets: sec.n, versions: sec.v, vars: vars.n, bytes: sec.b + vars.b };
}

/** Bytes of sealed values a secret holds (the ciphertext envelopes). */
export function sealedBytes(doc: SecretDocument): number {
  let n = 0;
  for (const v of doc.versions) n += v.sealed.length;
  return n;
}

/**
 * The SQL of a list: the store's live or deleted secrets, filtered, keyset-paged by (name, id). Backward pages
 * are read in descending order (the caller reverses them).
 */
export function listSql(qr: ListQuery): { sql: string; params: unknown[] } {
  const where = ["store = ?"];
  const params: unknown[] = [qr.store];
  const state = qr.state ?? "live";
  where.push(state === "deleted" ? "deleted = 1" : "deleted = 0");
  if (state === "active") {
    where.push("(expires_at IS NULL OR expires_at > ?)");
    params.push(qr.now ?? Date.now());
  } else if (state === "expired") {
    where.push("expires_at IS NOT NULL AND expires_at <= ?");
    params.push(qr.now ?? Date.now());
  }
  if (qr.prefix) {
    where.push("name >= ? AND name < ?");
    params.push(qr.prefix, `${qr.prefix}\u{10FFFF}`);
  }
  if (qr.folder !== undefined) {
    where.push("folder = ?");
    params.push(qr.folder);
  }
  if (qr.tag !== undefined) {
    where.push("EXISTS (SELECT 1 FROM json_each(doc, '$.tags') WHERE value = ?)");
    params.push(qr.tag);
  }
  if (qr.after) {
    where.push("(name, id) > (?, ?)");
    params.push(qr.after.name, qr.after.id);
  }
  if (qr.before) {
    where.push("(name, id) < (?, ?)");
    params.push(qr.before.name, qr.before.id);
  }
  const order = qr.before ? "name DESC, id DESC" : "name, id";
  params.push(qr.limit);
  return { sql: `SELECT doc FROM secrets WHERE ${where.join(" AND ")} ORDER BY ${order} LIMIT ?`, params };
}

function fromKeyRow(r: KeyRow): DataKeyRecord {
  return { store: r.store, id: r.id, kekId: r.kek_id, wrapped: r.wrapped, createdAt: r.created_at };
}

/**
 * Wakes change-feed readers: `signal()` after a local write; a watch on the database directory catches commits
 * by other processes (each appends to the -wal file); a fallback timer catches anything the watch misses.
 */
function createFeedSignal(file: string | undefined, pollMs: number) {
  let waiters: (() => void)[] = [];
  const fire = () => {
    const w = waiters;
    waiters = [];
    for (const resolve of w) resolve();
  };
  let watcher: FSWatcher | undefined;
  if (file !== undefined) {
    const wal = `${basename(file)}-wal`;
    try {
      watcher = watch(dirname(file), { persistent: false }, (_event, name) => {
        if (name === wal && waiters.length > 0) fire();
      });
      watcher.on("error", () => watcher?.close());
    } catch {
      watcher = undefined; // the timer still wakes readers
    }
  }
  return {
    signal: fire,
    /** A wait that resolves on the next signal, after `pollMs`, or when `abort` fires; `cancel` settles it now. */
    next(abort: AbortSignal): { promise: Promise<void>; cancel: () => void } {
      let done: () => void = () => {};
      const promise = new Promise<void>((resolve) => {
        let settled = false;
        done = () => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          abort.removeEventListener("abort", done);
          resolve();
        };
        const timer = setTimeout(done, pollMs);
        timer.unref();
        abort.addEventListener("abort", done, { once: true });
        waiters.push(done);
      });
      return { promise, cancel: done };
    },
    close() {
      watcher?.close();
      fire();
    },
  };
}

function isUniqueViolation(err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  return code === "SQLITE_CONSTRAINT_UNIQUE" || code === "SQLITE_CONSTRAINT_PRIMARYKEY";
}

const MIGRATIONS: readonly string[] = [
  `CREATE TABLE secrets (
     id TEXT PRIMARY KEY,
     store TEXT NOT NULL,
     name TEXT NOT NULL,
     revision INTEGER NOT NULL,
     next_rotation_at INTEGER,
     doc TEXT NOT NULL,
     UNIQUE (store, name)
   );
   CREATE INDEX secrets_due ON secrets (next_rotation_at) WHERE next_rotation_at IS NOT NULL;
   CREATE TABLE data_keys (
     store TEXT NOT NULL,
     id TEXT NOT NULL,
     kek_id TEXT NOT NULL,
     wrapped TEXT NOT NULL,
     created_at INTEGER NOT NULL,
     PRIMARY KEY (store, id)
   );`,
  `CREATE TABLE changes (
     seq INTEGER PRIMARY KEY AUTOINCREMENT,
     op TEXT NOT NULL,
     id TEXT NOT NULL,
     store TEXT NOT NULL,
     name TEXT NOT NULL,
     revision INTEGER NOT NULL,
     version INTEGER NOT NULL,
     version_created_at INTEGER NOT NULL,
     next_rotation_at INTEGER,
     at INTEGER NOT NULL
   );
   CREATE INDEX changes_at ON changes (at);
   CREATE TABLE cursors (
     consumer TEXT PRIMARY KEY,
     token TEXT NOT NULL,
     at INTEGER NOT NULL
   );`,
  `ALTER TABLE secrets ADD COLUMN version_count INTEGER NOT NULL DEFAULT 0;
   ALTER TABLE secrets ADD COLUMN sealed_bytes INTEGER NOT NULL DEFAULT 0;
   UPDATE secrets SET
     version_count = json_array_length(doc, '$.versions'),
     sealed_bytes = (SELECT COALESCE(SUM(length(json_extract(v.value, '$.sealed'))), 0) FROM json_each(doc, '$.versions') AS v);
   CREATE TABLE stores (
     name TEXT PRIMARY KEY,
     managed_by TEXT,
     revision INTEGER NOT NULL,
     doc TEXT NOT NULL
   );
   CREATE INDEX stores_managed_by ON stores (managed_by, name);
   CREATE TABLE vars (
     store TEXT NOT NULL,
     name TEXT NOT NULL,
     value TEXT NOT NULL,
     created_at INTEGER NOT NULL,
     updated_at INTEGER NOT NULL,
     revision INTEGER NOT NULL,
     PRIMARY KEY (store, name)
   );`,
  `CREATE TABLE secrets_v4 (
     id TEXT PRIMARY KEY,
     store TEXT NOT NULL,
     name TEXT NOT NULL,
     revision INTEGER NOT NULL,
     due_at INTEGER,
     deleted INTEGER NOT NULL DEFAULT 0,
     folder TEXT NOT NULL DEFAULT '',
     expires_at INTEGER,
     version_count INTEGER NOT NULL DEFAULT 0,
     sealed_bytes INTEGER NOT NULL DEFAULT 0,
     doc TEXT NOT NULL
   );
   INSERT INTO secrets_v4 (id, store, name, revision, due_at, version_count, sealed_bytes, doc)
     SELECT id, store, name, revision, next_rotation_at, version_count, sealed_bytes, doc FROM secrets;
   DROP TABLE secrets;
   ALTER TABLE secrets_v4 RENAME TO secrets;
   CREATE UNIQUE INDEX secrets_live_name ON secrets (store, name) WHERE deleted = 0;
   CREATE INDEX secrets_list ON secrets (store, deleted, name, id);
   CREATE INDEX secrets_due ON secrets (due_at) WHERE due_at IS NOT NULL;
   ALTER TABLE changes ADD COLUMN change TEXT NOT NULL DEFAULT 'updated';
   ALTER TABLE changes ADD COLUMN due_at INTEGER;`,
  `CREATE TABLE tokens (
     id TEXT PRIMARY KEY,
     hash TEXT NOT NULL UNIQUE,
     doc TEXT NOT NULL
   );
   CREATE TABLE audit (
     seq INTEGER PRIMARY KEY,
     at INTEGER NOT NULL,
     request_id TEXT NOT NULL,
     actor_kind TEXT NOT NULL,
     token_id TEXT NOT NULL,
     role TEXT NOT NULL,
     service TEXT NOT NULL,
     ip TEXT NOT NULL,
     op TEXT NOT NULL,
     store TEXT NOT NULL,
     name TEXT NOT NULL,
     version INTEGER NOT NULL,
     code TEXT NOT NULL,
     prev_hash TEXT NOT NULL,
     hash TEXT NOT NULL
   );
   CREATE INDEX audit_at ON audit (at, seq);
   CREATE INDEX audit_token ON audit (token_id, at, seq);
   CREATE INDEX audit_secret ON audit (store, name, at, seq);`,
];

/** Applies the migrations the file has not seen, each in its own transaction, tracked by user_version. */
function migrate(db: Database.Database): void {
  db.transaction(() => {
    const current = db.pragma("user_version", { simple: true }) as number;
    if (current > MIGRATIONS.length) {
      throw new Error(`the data file has schema version ${current}, newer than this Latchkey (${MIGRATIONS.length})`);
    }
    for (let v = current; v < MIGRATIONS.length; v++) {
      db.exec(MIGRATIONS[v] as string);
      db.pragma(`user_version = ${v + 1}`);
    }
  }).immediate();
}
