import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import Database from "better-sqlite3";
import type { SecretDocument } from "../../domain/secret.js";
import type { DataKeyRecord, ListQuery, Storage } from "../storage.js";

/**
 * The embedded default store: one SQLite file (WAL, synchronous=FULL, so an acknowledged write survives a crash).
 *
 * Each secret is one row: the whole document as JSON, plus the columns its queries need (store, name, revision,
 * next_rotation_at). Compare-and-set is `UPDATE … WHERE id = ? AND revision = ?`.
 */
export function createSqliteStorage(file: string): Storage {
  if (file !== ":memory:") mkdirSync(dirname(file), { recursive: true });
  const db = new Database(file);
  db.pragma("journal_mode = WAL");
  db.pragma("synchronous = FULL");
  db.pragma("busy_timeout = 5000");
  migrate(db);

  const q = {
    find: db.prepare<[string, string], { doc: string }>("SELECT doc FROM secrets WHERE store = ? AND name = ?"),
    insert: db.prepare(
      "INSERT INTO secrets (id, store, name, revision, next_rotation_at, doc) VALUES (@id, @store, @name, @revision, @next, @doc)",
    ),
    replace: db.prepare(
      "UPDATE secrets SET store = @store, name = @name, revision = @revision, next_rotation_at = @next, doc = @doc WHERE id = @id AND revision = @expected",
    ),
    delete: db.prepare("DELETE FROM secrets WHERE id = ? AND revision = ?"),
    list: db.prepare<[string, string, string, string, number], { doc: string }>(
      "SELECT doc FROM secrets WHERE store = ? AND name > ? AND name >= ? AND name < ? ORDER BY name LIMIT ?",
    ),
    due: db.prepare<[number, number], { doc: string }>(
      "SELECT doc FROM secrets WHERE next_rotation_at <= ? ORDER BY next_rotation_at LIMIT ?",
    ),
    nextDue: db.prepare<[], { t: number | null }>(
      "SELECT MIN(next_rotation_at) AS t FROM secrets WHERE next_rotation_at IS NOT NULL",
    ),
    listKeys: db.prepare<[string], { store: string; id: string; kek_id: string; wrapped: string; created_at: number }>(
      "SELECT store, id, kek_id, wrapped, created_at FROM data_keys WHERE store = ? ORDER BY created_at, id",
    ),
    insertKey: db.prepare(
      "INSERT OR IGNORE INTO data_keys (store, id, kek_id, wrapped, created_at) VALUES (@store, @id, @kekId, @wrapped, @createdAt)",
    ),
    ping: db.prepare("SELECT 1"),
  };

  const row = (doc: SecretDocument) => ({
    id: doc.id,
    store: doc.store,
    name: doc.name,
    revision: doc.revision,
    next: doc.rotation?.nextRotationAt ?? null,
    doc: JSON.stringify(doc),
  });
  const parse = (r: { doc: string }): SecretDocument => JSON.parse(r.doc) as SecretDocument;

  return {
    backend: "sqlite",
    async ping() {
      q.ping.get();
    },
    async findSecret(store, name) {
      const r = q.find.get(store, name);
      return r && parse(r);
    },
    async insertSecret(doc) {
      try {
        q.insert.run(row(doc));
        return true;
      } catch (err) {
        if (isUniqueViolation(err)) return false;
        throw err;
      }
    },
    async replaceSecret(doc, expectedRevision) {
      return q.replace.run({ ...row(doc), expected: expectedRevision }).changes === 1;
    },
    async deleteSecret(id, expectedRevision) {
      return q.delete.run(id, expectedRevision).changes === 1;
    },
    async listSecrets(query: ListQuery) {
      return q.list.all(query.store, query.after, query.prefix, `${query.prefix}\u{10FFFF}`, query.limit).map(parse);
    },
    async findDueSecrets(now, limit) {
      return q.due.all(now, limit).map(parse);
    },
    async nextRotationAt() {
      return q.nextDue.get()?.t ?? undefined;
    },
    async listDataKeys(store) {
      return q.listKeys
        .all(store)
        .map((r): DataKeyRecord => ({ store: r.store, id: r.id, kekId: r.kek_id, wrapped: r.wrapped, createdAt: r.created_at }));
    },
    async insertDataKey(key) {
      return q.insertKey.run(key).changes === 1;
    },
    async close() {
      if (db.open) db.close();
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
];

/** Applies the migrations the file has not seen, each in its own transaction, tracked by user_version. */
function migrate(db: Database.Database): void {
  const current = db.pragma("user_version", { simple: true }) as number;
  if (current > MIGRATIONS.length) {
    throw new Error(`the data file has schema version ${current}, newer than this Latchkey (${MIGRATIONS.length})`);
  }
  for (let v = current; v < MIGRATIONS.length; v++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[v] as string);
      db.pragma(`user_version = ${v + 1}`);
    }).immediate();
  }
}
