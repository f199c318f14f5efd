import { hostname } from "node:os";
import { setTimeout as sleep } from "node:timers/promises";
import {
  type ChangeStream,
  type ClientSession,
  type ChangeStreamDocument,
  type Collection,
  type Db,
  type Document,
  MongoClient,
  MongoServerError,
  type ResumeToken,
  Timestamp,
} from "mongodb";
import type { Logger } from "../../log/logger.js";
import {
  type ChangeEvent,
  type ChangeFeedItem,
  NameTakenError,
  type PendingAudit,
  type Storage,
  type WriteOp,
  type WriteOutcome,
} from "../storage.js";
import { type AuditEvent, type AuditRecord, chainRecord } from "../../domain/audit.js";
import type { StoreRecord } from "../../domain/store.js";
import type { Usage } from "../../domain/usage.js";
import {
  CURSORS,
  casFilter,
  changeStreamPipeline,
  DATA_KEY_INDEXES,
  DATA_KEYS,
  dueQuery,
  fromMongoDataKey,
  fromMongoSecret,
  listQuery,
  type MongoDataKey,
  type MongoSecret,
  SECRET_INDEXES,
  SECRETS,
  SECRETS_VALIDATOR,
  toMongoDataKey,
  toMongoSecret,
  fromMongoStore,
  fromMongoVar,
  type MongoStore,
  type MongoVar,
  secretUsagePipeline,
  STORE_INDEXES,
  STORES,
  storeListFilter,
  toMongoStore,
  toMongoVar,
  VAR_INDEXES,
  VARS,
  TOKENS,
  AUDIT,
  type MongoToken,
  type MongoAudit,
  toMongoToken,
  fromMongoToken,
  toMongoAudit,
  fromMongoAudit,
  auditFilter,
  AUDIT_INDEXES,
  TOKEN_INDEXES,
  varId,
  varListFilter,
  varUsagePipeline,
} from "./mongo-documents.js";

export interface MongoStorageOptions {
  readonly uri: string;
  readonly dbName: string;
  readonly logger: Logger;
}

const DUPLICATE_KEY = 11000;
/** Server codes meaning the change stream cannot resume from its token: rescan and start from now. */
const HISTORY_LOST = new Set([260, 280, 286]);

/**
 * The production store: MongoDB through the official driver. Requires a replica set (change streams) and
 * MongoDB 6.0 or newer (change-stream pre-images, so a delete event still names the secret).
 *
 * Majority write concern, retryable writes and primary reads, so an acknowledged write survives a failover and a
 * read sees it. Every write to a secret is one document operation, compare-and-set on `revision`.
 */
export async function createMongoStorage(opts: MongoStorageOptions): Promise<Storage> {
  const client = new MongoClient(opts.uri, {
    appName: "latchkey",
    writeConcern: { w: "majority" },
    readPreference: "primary",
    readConcern: { level: "majority" },
    retryWrites: true,
    retryReads: true,
    serverSelectionTimeoutMS: 5000,
  });
  await client.connect();
  const db = client.db(opts.dbName);
  try {
    await setup(db);
  } catch (err) {
    await client.close();
    throw err;
  }
  const secrets = db.collection<MongoSecret>(SECRETS);
  const dataKeys = db.collection<MongoDataKey>(DATA_KEYS);
  const cursors = db.collection<{ _id: string; token: string; at: Date }>(CURSORS);
  const stores = db.collection<MongoStore>(STORES);
  const vars = db.collection<MongoVar>(VARS);
  const tokens = db.collection<MongoToken>(TOKENS);
  const audit = db.collection<MongoAudit>(AUDIT);
  const { logger } = opts;

  /**
   * This process's audit chain. Replicas keep separate chains (no lock across them); within a process, appends are
   * serialized so the chain has no forks.
   */
  const chain = `${hostname()}/${process.pid}/${Date.now().toString(36)}`;
  let head: { seq: number; hash: string } | undefined;
  let appending: Promise<unknown> = Promise.resolve();
  function serially<T>(work: () => Promise<T>): Promise<T> {
    const run = appending.then(work, work);
    appending = run.catch(() => {});
    return run;
  }

  async function appendAuditEvents(events: readonly AuditEvent[]): Promise<AuditRecord[]> {
    if (events.length === 0) return [];
    return serially(async () => {
      const records: AuditRecord[] = [];
      let prev = head;
      for (const e of events) records.push((prev = chainRecord(chain, prev, e)));
      await audit.insertMany(records.map(toMongoAudit), { ordered: true });
      head = prev;
      return records;
    });
  }

  /**
   * Runs `work` in a transaction; with an audit entry, the entry is appended in the same transaction when `ok`
   * says the write happened, so a change and its audit entry land together or not at all.
   */
  async function transaction<T>(pending: PendingAudit | undefined, work: (s: ClientSession) => Promise<T>, ok: (r: T) => boolean): Promise<T> {
    const run = async () => {
      const session = client.startSession();
      try {
        let result!: T;
        let record: AuditRecord | undefined;
        await session.withTransaction(async () => {
          record = undefined;
          result = await work(session);
          if (pending && ok(result) && session.inTransaction()) {
            record = chainRecord(chain, head, pending.event);
            await audit.insertOne(toMongoAudit(record), { session });
          }
        });
        if (record && pending) {
          head = record;
          pending.written = true;
          pending.record = record;
        }
        return result;
      } finally {
        await session.endSession();
      }
    };
    return pending ? serially(run) : run();
  }

  /** A single-document write: plain without an audit entry, in a transaction with one. */
  function write(pending: PendingAudit | undefined, work: (s?: ClientSession) => Promise<boolean>): Promise<boolean> {
    return pending ? transaction(pending, work, (r) => r) : work();
  }

  return {
    backend: "mongodb",
    async ping() {
      await db.command({ ping: 1 }, { timeoutMS: 2000 });
    },
    async findSecret(store, name) {
      const m = await secrets.findOne({ store, name, live: true });
      return m ? fromMongoSecret(m) : undefined;
    },
    async findSecretById(id) {
      const m = await secrets.findOne({ _id: id });
      return m ? fromMongoSecret(m) : undefined;
    },
    async applyWrites(ops, atomic, audit) {
      if (!atomic) {
        const outcomes: WriteOutcome[] = [];
        for (const op of ops) outcomes.push(await applyOne(secrets, op));
        if (audit && outcomes.includes("ok")) {
          const [record] = await appendAuditEvents([audit.event]);
          audit.written = true;
          if (record) audit.record = record;
        }
        return outcomes;
      }
      // All or nothing: a multi-document transaction (replica sets have them); a failed write aborts it.
      return transaction(
        audit,
        async (session) => {
          const outcomes: WriteOutcome[] = [];
          for (const op of ops) {
            const o = await applyOne(secrets, op, session);
            if (o !== "ok") {
              await session.abortTransaction();
              return ops.map((_, i): WriteOutcome => (i === outcomes.length ? o : "not_applied"));
            }
            outcomes.push(o);
          }
          return outcomes;
        },
        (outcomes) => outcomes.every((o) => o === "ok"),
      );
    },
    insertSecret(doc, audit) {
      return write(audit, async (session) => {
        try {
          await secrets.insertOne(toMongoSecret(doc), { session });
          return true;
        } catch (err) {
          if (err instanceof MongoServerError && err.code === DUPLICATE_KEY) return false;
          throw err;
        }
      });
    },
    replaceSecret(doc, expectedRevision, audit) {
      return write(audit, async (session) => {
        try {
          const r = await secrets.replaceOne(casFilter(doc.id, expectedRevision), toMongoSecret(doc), { session });
          return r.matchedCount === 1;
        } catch (err) {
          if (err instanceof MongoServerError && err.code === DUPLICATE_KEY) throw new NameTakenError(doc.store, doc.name);
          throw err;
        }
      });
    },
    deleteSecret(id, expectedRevision, audit) {
      return write(audit, async (session) => (await secrets.deleteOne(casFilter(id, expectedRevision), { session })).deletedCount === 1);
    },
    async listSecrets(query) {
      const { filter, sort, limit, reverse } = listQuery(query);
      const page = (await secrets.find(filter).sort(sort).limit(limit).toArray()).map(fromMongoSecret);
      return reverse ? page.reverse() : page;
    },
    async findDueSecrets(now, limit) {
      const { filter, sort } = dueQuery(now);
      return (await secrets.find(filter).sort(sort).limit(limit).toArray()).map(fromMongoSecret);
    },
    async nextRotationAt() {
      const m = await secrets.findOne({ dueAt: { $type: "date" } }, { sort: { dueAt: 1 }, projection: { dueAt: 1 } });
      return m?.dueAt?.getTime();
    },
    changes({ resumeAfter, signal }) {
      return watchSecrets(db, secrets, resumeAfter, signal, logger);
    },
    async findStore(name) {
      const m = await stores.findOne({ _id: name });
      return m ? fromMongoStore(m) : undefined;
    },
    insertStore(store, audit) {
      return write(audit, async (session) => {
        try {
          await stores.insertOne(toMongoStore(store), { session });
          return true;
        } catch (err) {
          if (err instanceof MongoServerError && err.code === DUPLICATE_KEY) return false;
          throw err;
        }
      });
    },
    async replaceStore(store: StoreRecord, expectedRevision) {
      const r = await stores.replaceOne({ _id: store.name, revision: expectedRevision }, toMongoStore(store));
      return r.matchedCount === 1;
    },
    deleteStore(name, expectedRevision, audit) {
      return write(audit, async (session) => (await stores.deleteOne({ _id: name, revision: expectedRevision }, { session })).deletedCount === 1);
    },
    async listStores(query) {
      return (await stores.find(storeListFilter(query)).sort({ _id: 1 }).limit(query.limit).toArray()).map(fromMongoStore);
    },
    async deleteStoreSecrets(store, limit) {
      const ids = (await secrets.find({ store }, { projection: { _id: 1 } }).limit(limit).toArray()).map((d) => d._id);
      if (ids.length === 0) return 0;
      return (await secrets.deleteMany({ _id: { $in: ids } })).deletedCount;
    },
    async deleteStoreVars(store) {
      return (await vars.deleteMany({ store })).deletedCount;
    },
    async deleteDataKeys(store) {
      return (await dataKeys.deleteMany({ store })).deletedCount;
    },
    async findVar(store, name) {
      const m = await vars.findOne({ _id: varId(store, name) });
      return m ? fromMongoVar(m) : undefined;
    },
    async putVars(records, audit) {
      if (records.length === 0) return;
      // Several vars at once: all or nothing, in a transaction.
      await transaction(
        audit,
        async (session) => {
          await vars.bulkWrite(
            records.map((v) => ({ replaceOne: { filter: { _id: varId(v.store, v.name) }, replacement: toMongoVar(v), upsert: true } })),
            { ordered: true, session },
          );
          return true;
        },
        (ok) => ok,
      );
    },
    deleteVar(store, name, audit) {
      return write(audit, async (session) => (await vars.deleteOne({ _id: varId(store, name) }, { session })).deletedCount === 1);
    },
    async insertToken(token, audit) {
      await write(audit, async (session) => {
        await tokens.insertOne(toMongoToken(token), { session });
        return true;
      });
    },
    async findTokenByHash(hash) {
      const m = await tokens.findOne({ hash });
      return m ? fromMongoToken(m) : undefined;
    },
    async findTokenById(id) {
      const m = await tokens.findOne({ _id: id });
      return m ? fromMongoToken(m) : undefined;
    },
    async listTokens(query) {
      const filter = query.after ? { _id: { $gt: query.after } } : {};
      return (await tokens.find(filter).sort({ _id: 1 }).limit(query.limit).toArray()).map(fromMongoToken);
    },
    revokeToken(id, at, audit) {
      return write(audit, async (session) => {
        const r = await tokens.updateOne({ _id: id, revokedAt: null }, { $set: { revokedAt: new Date(at) } }, { session });
        return r.matchedCount === 1;
      });
    },
    appendAudit(events) {
      return appendAuditEvents(events);
    },
    async listAudit(query) {
      return (await audit.find(auditFilter(query)).sort({ at: -1, chain: -1, seq: -1 }).limit(query.limit).toArray()).map(fromMongoAudit);
    },
    async auditChains() {
      return (await audit.distinct("chain")).sort();
    },
    async scanAudit(chainName, afterSeq, limit) {
      return (await audit.find({ chain: chainName, seq: { $gt: afterSeq } }).sort({ seq: 1 }).limit(limit).toArray()).map(fromMongoAudit);
    },
    async listVars(query) {
      return (await vars.find(varListFilter(query)).sort({ name: 1 }).limit(query.limit).toArray()).map(fromMongoVar);
    },
    async usage(store) {
      const [sec] = await secrets.aggregate<{ secrets: number; versions: number; bytes: number }>(secretUsagePipeline(store)).toArray();
      const [v] = await vars.aggregate<{ vars: number; bytes: number }>(varUsagePipeline(store)).toArray();
      const storeCount = await stores.countDocuments(store === undefined ? {} : { _id: store });
      const usage: Usage = {
        stores: storeCount,
        secrets: sec?.secrets ?? 0,
        versions: sec?.versions ?? 0,
        vars: v?.vars ?? 0,
        bytes: (sec?.bytes ?? 0) + (v?.bytes ?? 0),
      };
      return usage;
    },
    async rewrapDataKey(key, expectedKekId) {
      const r = await dataKeys.updateOne(
        { store: key.store, id: key.id, kekId: expectedKekId },
        { $set: { kekId: key.kekId, wrapped: key.wrapped } },
      );
      return r.matchedCount === 1;
    },
    async loadResumeToken(consumer) {
      return (await cursors.findOne({ _id: consumer }))?.token;
    },
    async saveResumeToken(consumer, token) {
      await cursors.updateOne({ _id: consumer }, { $set: { token, at: new Date() } }, { upsert: true });
    },
    async scanSecrets(afterId, limit) {
      return (await secrets.find({ _id: { $gt: afterId } }).sort({ _id: 1 }).limit(limit).toArray()).map(fromMongoSecret);
    },
    async listAllDataKeys() {
      return (await dataKeys.find({}).sort({ store: 1, createdAt: 1, id: 1 }).toArray()).map(fromMongoDataKey);
    },
    async listDataKeys(store) {
      return (await dataKeys.find({ store }).sort({ createdAt: 1, id: 1 }).toArray()).map(fromMongoDataKey);
    },
    async insertDataKey(key) {
      try {
        await dataKeys.insertOne(toMongoDataKey(key));
        return true;
      } catch (err) {
        if (err instanceof MongoServerError && err.code === DUPLICATE_KEY) return false;
        throw err;
      }
    },
    async close() {
      await client.close();
    },
  };
}

/** Creates collections, the validator, pre-images and indexes; safe to run on every start and from many replicas. */
async function setup(db: Db): Promise<void> {
  const existing = new Set((await db.listCollections({}, { nameOnly: true }).toArray()).map((c) => c.name));
  if (!existing.has(SECRETS)) {
    await db
      .createCollection(SECRETS, { validator: SECRETS_VALIDATOR, changeStreamPreAndPostImages: { enabled: true } })
      .catch(ignoreAlreadyExists);
  }
  await db.command({
    collMod: SECRETS,
    validator: SECRETS_VALIDATOR,
    validationLevel: "strict",
    changeStreamPreAndPostImages: { enabled: true },
  });
  for (const name of [DATA_KEYS, STORES, VARS, CURSORS, TOKENS, AUDIT]) {
    if (!existing.has(name)) await db.createCollection(name).catch(ignoreAlreadyExists);
  }
  await db.collection(SECRETS).createIndexes(SECRET_INDEXES);
  await db.collection(DATA_KEYS).createIndexes(DATA_KEY_INDEXES);
  await db.collection(STORES).createIndexes(STORE_INDEXES);
  await db.collection(VARS).createIndexes(VAR_INDEXES);
  await db.collection(TOKENS).createIndexes(TOKEN_INDEXES);
  await db.collection(AUDIT).createIndexes(AUDIT_INDEXES);
}

function ignoreAlreadyExists(err: unknown): void {
  // NamespaceExists: another replica created it between our check and our create.
  if (!(err instanceof MongoServerError && err.code === 48)) throw err;
}

/**
 * A feed position: a change stream resume token (`r`), or, before the first event, the cluster time the feed
 * opened at (`t`, seconds and increment).
 */
type FeedPosition = { r: ResumeToken } | { t: [number, number] };

export function encodeResumeToken(t: ResumeToken): string {
  return encodePosition({ r: t });
}

function encodePosition(p: FeedPosition): string {
  return Buffer.from(JSON.stringify(p), "utf8").toString("base64url");
}

/** Decodes a token this adapter issued; undefined for anything else. */
export function decodePosition(s: string): FeedPosition | undefined {
  try {
    const p = JSON.parse(Buffer.from(s, "base64url").toString("utf8")) as Partial<{ r: unknown; t: unknown }>;
    if (p.r !== undefined && typeof p.r === "object" && p.r !== null) return { r: p.r as ResumeToken };
    if (Array.isArray(p.t) && p.t.length === 2 && p.t.every((n) => Number.isInteger(n))) return { t: p.t as [number, number] };
  } catch {
    // not ours
  }
  return undefined;
}

/** Change stream options that continue from a position. */
export function resumeOptions(p: FeedPosition | undefined): { startAfter?: ResumeToken; startAtOperationTime?: Timestamp } {
  if (p === undefined) return {};
  if ("r" in p) return { startAfter: p.r };
  return { startAtOperationTime: new Timestamp({ t: p.t[0], i: p.t[1] }) };
}

type Projected = Partial<
  Pick<MongoSecret, "store" | "name" | "revision" | "currentVersion" | "lastChange" | "updatedAt" | "live" | "dueAt">
> & {
  rotation?: { nextRotationAt?: Date } | null;
};

/** One write of a batch, in a session when the batch is atomic. */
async function applyOne(secrets: Collection<MongoSecret>, op: WriteOp, session?: ClientSession): Promise<WriteOutcome> {
  try {
    if (op.op === "insert") {
      await secrets.insertOne(toMongoSecret(op.doc), { session });
      return "ok";
    }
    if (op.op === "replace") {
      const r = await secrets.replaceOne(casFilter(op.doc.id, op.expectedRevision), toMongoSecret(op.doc), { session });
      return r.matchedCount === 1 ? "ok" : "conflict";
    }
    const r = await secrets.deleteOne(casFilter(op.id, op.expectedRevision), { session });
    return r.deletedCount === 1 ? "ok" : "conflict";
  } catch (err) {
    if (err instanceof MongoServerError && err.code === DUPLICATE_KEY) return "name_taken";
    throw err;
  }
}

/** Maps a (projected) change-stream event to the port's ChangeEvent; undefined for events that are not ours. */
export function toChangeEvent(ev: ChangeStreamDocument<Document>, token: string): ChangeEvent | undefined {
  const op = ev.operationType;
  if (op !== "insert" && op !== "replace" && op !== "update" && op !== "delete") return undefined;
  const after = ("fullDocument" in ev ? ev.fullDocument : undefined) as Projected | null | undefined;
  const before = ("fullDocumentBeforeChange" in ev ? ev.fullDocumentBeforeChange : undefined) as Projected | null | undefined;
  const doc = op === "delete" ? before : after;
  const written = ev.wallTime ? ev.wallTime.getTime() : ev.clusterTime ? ev.clusterTime.high * 1000 : Date.now();
  const at = op === "delete" ? written : (doc?.updatedAt?.getTime() ?? written);
  return {
    token,
    op: op === "insert" ? "insert" : op === "delete" ? "delete" : "update",
    id: String(ev.documentKey._id),
    store: doc?.store ?? "",
    name: doc?.name ?? "",
    revision: doc?.revision ?? 0,
    version: doc?.currentVersion ?? 0,
    // A hard delete of a soft-deleted secret is its purge; of a live one, its deletion.
    change: op === "delete" ? (doc?.live === false ? "purged" : "deleted") : (doc?.lastChange ?? "updated"),
    nextRotationAt: op === "delete" || doc?.live === false ? null : (doc?.rotation?.nextRotationAt?.getTime() ?? null),
    dueAt: op === "delete" ? null : (doc?.dueAt?.getTime() ?? null),
    at,
  };
}

/**
 * The change stream as the port's feed. The driver resumes by itself after a transient error; when it gives up,
 * this loop reopens from the last token with backoff. A token the server no longer has (history lost, invalidate)
 * yields a reset and continues from now.
 */
async function* watchSecrets(
  db: Db,
  secrets: Collection<MongoSecret>,
  resumeAfter: string | undefined,
  signal: AbortSignal,
  logger: Logger,
): AsyncGenerator<ChangeFeedItem> {
  let position = resumeAfter === undefined ? undefined : decodePosition(resumeAfter);
  const unusable = resumeAfter !== undefined && position === undefined;
  if (position === undefined) {
    // Start from the cluster time now, so the start token covers events that land before the stream opens.
    const reply = await db.command({ ping: 1 });
    const opTime = reply.operationTime as Timestamp | undefined;
    if (opTime) position = { t: [opTime.t, opTime.i] };
  }
  let token = position ? encodePosition(position) : resumeAfter;
  yield { op: "start", token: token ?? "" };
  if (unusable) yield { op: "reset", token };
  let backoffMs = 100;
  while (!signal.aborted) {
    let stream: ChangeStream<MongoSecret> | undefined;
    const onAbort = () => void stream?.close().catch(() => {});
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      stream = secrets.watch(changeStreamPipeline(), {
        fullDocument: "updateLookup",
        fullDocumentBeforeChange: "whenAvailable",
        ...resumeOptions(token === undefined ? undefined : decodePosition(token)),
      });
      for await (const ev of stream as AsyncIterable<ChangeStreamDocument<Document>>) {
        token = encodeResumeToken(ev._id);
        backoffMs = 100;
        if (ev.operationType === "invalidate") {
          yield { op: "reset", token };
          break;
        }
        const item = toChangeEvent(ev, token);
        if (item) yield item;
      }
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof MongoServerError && HISTORY_LOST.has(Number(err.code))) {
        logger.warn({ code: err.code }, "change stream history lost: rescanning");
        token = undefined;
        yield { op: "reset", token: undefined };
        continue;
      }
      // Keep the position the server last confirmed, even if no event came since.
      if (stream?.resumeToken) token = encodeResumeToken(stream.resumeToken);
      logger.warn({ err: String(err), retry_ms: backoffMs }, "change stream failed; reopening");
      await sleep(backoffMs, undefined, { signal }).catch(() => {});
      backoffMs = Math.min(backoffMs * 2, 5000);
    } finally {
      signal.removeEventListener("abort", onAbort);
      await stream?.close().catch(() => {});
    }
  }
}
