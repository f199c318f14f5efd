import type { Document, Filter, IndexDescription, Sort } from "mongodb";
import {
  type ChangeKind,
  dueAt,
  latestVersion,
  type SecretDocument,
  type SecretType,
  upgradeDocument,
  type VersionState,
} from "../../domain/secret.js";
import type { StoreRecord } from "../../domain/store.js";
import type { VarRecord } from "../../domain/vars.js";
import type { AuditRecord } from "../../domain/audit.js";
import type { TokenRecord } from "../../domain/token.js";
import type { AuditQuery, DataKeyRecord, ListQuery, StoreListQuery, VarListQuery } from "../storage.js";

/**
 * The pure half of the MongoDB adapter: document shapes, filters, sorts, indexes and the validator. No I/O here,
 * so all of it is unit-tested without a server.
 *
 * A secret is one document; times are BSON dates (readable in mongosh, usable by TTL and range queries);
 * `currentVersion` and `lastRotatedAt` are derived on write so change-stream projections can use them.
 */

export const SECRETS = "secrets";
export const DATA_KEYS = "data_keys";
export const CURSORS = "cursors";
export const STORES = "stores";
export const VARS = "vars";
export const TOKENS = "tokens";
export const AUDIT = "audit";

export interface MongoVersion {
  version: number;
  createdAt: Date;
  validUntil: Date | null;
  sealed: string;
  state: VersionState;
  binary: boolean;
}

export interface MongoSecret {
  _id: string;
  store: string;
  name: string;
  kind: "manual" | "automatic";
  type: SecretType;
  description: string;
  folder: string;
  tags: string[];
  metadata: Record<string, string>;
  expiresAt: Date | null;
  gracePeriodSeconds: number;
  rotation: { intervalSeconds: number; nextRotationAt: Date } | null;
  versions: MongoVersion[];
  deletion: { deletedAt: Date; purgeAt: Date } | null;
  lastChange: ChangeKind;
  /** Derived: not soft-deleted (the unique name index covers live secrets only). */
  live: boolean;
  /** Derived: when the scheduler must next act (rotate or purge); null for none. */
  dueAt: Date | null;
  /** Derived: the number of the newest version. */
  currentVersion: number;
  /** Derived: when the newest version was made. */
  lastRotatedAt: Date;
  /** Derived: how many versions are kept (usage). */
  versionCount: number;
  /** Derived: bytes of sealed values (usage). */
  sealedBytes: number;
  createdAt: Date;
  updatedAt: Date;
  revision: number;
}

export interface MongoDataKey {
  _id: string;
  store: string;
  id: string;
  kekId: string;
  wrapped: string;
  createdAt: Date;
}

const date = (ms: number | null): Date | null => (ms === null ? null : new Date(ms));

export function toMongoSecret(doc: SecretDocument): MongoSecret {
  const last = latestVersion(doc);
  const due = dueAt(doc);
  return {
    _id: doc.id,
    store: doc.store,
    name: doc.name,
    kind: doc.kind,
    type: doc.type,
    description: doc.description,
    folder: doc.folder,
    tags: [...doc.tags],
    metadata: { ...doc.metadata },
    expiresAt: date(doc.expiresAt),
    gracePeriodSeconds: doc.gracePeriodSeconds,
    rotation: doc.rotation && {
      intervalSeconds: doc.rotation.intervalSeconds,
      nextRotationAt: new Date(doc.rotation.nextRotationAt),
    },
    versions: doc.versions.map((v) => ({
      version: v.version,
      createdAt: new Date(v.createdAt),
      validUntil: date(v.validUntil),
      sealed: v.sealed,
      state: v.state,
      binary: v.binary,
    })),
    deletion: doc.deletion && { deletedAt: new Date(doc.deletion.deletedAt), purgeAt: new Date(doc.deletion.purgeAt) },
    lastChange: doc.lastChange,
    live: doc.deletion === null,
    dueAt: date(due),
    currentVersion: last.version,
    lastRotatedAt: new Date(last.createdAt),
    versionCount: doc.versions.length,
    sealedBytes: doc.versions.reduce((n, v) => n + v.sealed.length, 0),
    createdAt: new Date(doc.createdAt),
    updatedAt: new Date(doc.updatedAt),
    revision: doc.revision,
  };
}

export function fromMongoSecret(m: MongoSecret): SecretDocument {
  return upgradeDocument({
    id: m._id,
    store: m.store,
    name: m.name,
    kind: m.kind,
    type: m.type,
    description: m.description,
    folder: m.folder,
    tags: m.tags,
    metadata: m.metadata,
    expiresAt: m.expiresAt ? m.expiresAt.getTime() : (m.expiresAt ?? null),
    gracePeriodSeconds: m.gracePeriodSeconds,
    rotation: m.rotation && {
      intervalSeconds: m.rotation.intervalSeconds,
      nextRotationAt: m.rotation.nextRotationAt.getTime(),
    },
    versions: m.versions.map((v) => ({
      version: v.version,
      createdAt: v.createdAt.getTime(),
      validUntil: v.validUntil === null ? null : v.validUntil.getTime(),
      sealed: v.sealed,
      state: v.state,
      binary: v.binary,
    })),
    deletion: m.deletion ? { deletedAt: m.deletion.deletedAt.getTime(), purgeAt: m.deletion.purgeAt.getTime() } : (m.deletion ?? null),
    lastChange: m.lastChange,
    createdAt: m.createdAt.getTime(),
    updatedAt: m.updatedAt.getTime(),
    revision: m.revision,
  } as SecretDocument);
}

export function toMongoDataKey(k: DataKeyRecord): MongoDataKey {
  return { _id: `${k.store}\u0000${k.id}`, store: k.store, id: k.id, kekId: k.kekId, wrapped: k.wrapped, createdAt: new Date(k.createdAt) };
}

export function fromMongoDataKey(m: MongoDataKey): DataKeyRecord {
  return { store: m.store, id: m.id, kekId: m.kekId, wrapped: m.wrapped, createdAt: m.createdAt.getTime() };
}

/** Compare-and-set: the document with this id, only at this revision. */
export function casFilter(id: string, expectedRevision: number): Filter<MongoSecret> {
  return { _id: id, revision: expectedRevision };
}

/** Escapes a string for use as a literal inside a regular expression. */
export function escapeRegex(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
}

/**
 * One page of a store's secrets in (name, _id) order, filtered. `after` pages forward (ascending); `before` pages
 * backward, so the query sorts descending and the adapter reverses the page. A prefix is an anchored regex, which
 * the (store, live, name, _id) index serves as a range scan.
 */
export function listQuery(q: ListQuery): { filter: Filter<MongoSecret>; sort: Sort; limit: number; reverse: boolean } {
  const state = q.state ?? "live";
  const and: Filter<MongoSecret>[] = [{ store: q.store, live: state !== "deleted" }];
  const now = new Date(q.now ?? Date.now());
  if (state === "active") and.push({ $or: [{ expiresAt: null }, { expiresAt: { $gt: now } }] });
  if (state === "expired") and.push({ expiresAt: { $ne: null, $lte: now } });
  if (q.prefix) and.push({ name: { $regex: `^${escapeRegex(q.prefix)}` } });
  if (q.folder !== undefined) and.push({ folder: q.folder });
  if (q.tag !== undefined) and.push({ tags: q.tag });
  if (q.after) and.push({ $or: [{ name: { $gt: q.after.name } }, { name: q.after.name, _id: { $gt: q.after.id } }] });
  if (q.before) and.push({ $or: [{ name: { $lt: q.before.name } }, { name: q.before.name, _id: { $lt: q.before.id } }] });
  const reverse = q.before !== undefined;
  const filter = and.length === 1 ? (and[0] as Filter<MongoSecret>) : { $and: and };
  return { filter, sort: reverse ? { name: -1, _id: -1 } : { name: 1, _id: 1 }, limit: q.limit, reverse };
}

/** Secrets the scheduler must act on at `now` (rotate or purge), earliest first (served by the due index). */
export function dueQuery(now: number): { filter: Filter<MongoSecret>; sort: Sort } {
  return { filter: { dueAt: { $lte: new Date(now) } }, sort: { dueAt: 1 } };
}

export const SECRET_INDEXES: IndexDescription[] = [
  // Live names are unique per store; soft-deleted secrets give their name up at once.
  { key: { store: 1, name: 1 }, name: "store_live_name_unique", unique: true, partialFilterExpression: { live: true } },
  { key: { store: 1, live: 1, name: 1, _id: 1 }, name: "store_list" },
  { key: { dueAt: 1 }, name: "due", partialFilterExpression: { dueAt: { $type: "date" } } },
];

export const DATA_KEY_INDEXES: IndexDescription[] = [{ key: { store: 1, createdAt: 1 }, name: "store_created" }];

/** Server-side validation of every secret write: a malformed document is refused by MongoDB itself. */
export const SECRETS_VALIDATOR: Document = {
  $jsonSchema: {
    bsonType: "object",
    required: [
      "_id",
      "store",
      "name",
      "kind",
      "type",
      "description",
      "folder",
      "tags",
      "metadata",
      "expiresAt",
      "gracePeriodSeconds",
      "rotation",
      "versions",
      "deletion",
      "lastChange",
      "live",
      "dueAt",
      "currentVersion",
      "lastRotatedAt",
      "versionCount",
      "sealedBytes",
      "createdAt",
      "updatedAt",
      "revision",
    ],
    properties: {
      _id: { bsonType: "string" },
      store: { bsonType: "string", minLength: 1 },
      name: { bsonType: "string", minLength: 1, maxLength: 256 },
      kind: { enum: ["manual", "automatic"] },
      type: { enum: ["secret", "token"] },
      description: { bsonType: "string" },
      folder: { bsonType: "string" },
      tags: { bsonType: "array", items: { bsonType: "string" } },
      metadata: { bsonType: "object" },
      expiresAt: { bsonType: ["date", "null"] },
      deletion: { bsonType: ["object", "null"] },
      lastChange: { bsonType: "string" },
      live: { bsonType: "bool" },
      dueAt: { bsonType: ["date", "null"] },
      gracePeriodSeconds: { bsonType: ["int", "long", "double"], minimum: 0 },
      rotation: {
        oneOf: [
          { bsonType: "null" },
          {
            bsonType: "object",
            required: ["intervalSeconds", "nextRotationAt"],
            properties: {
              intervalSeconds: { bsonType: ["int", "long", "double"], minimum: 1 },
              nextRotationAt: { bsonType: "date" },
            },
          },
        ],
      },
      versions: {
        bsonType: "array",
        minItems: 1,
        items: {
          bsonType: "object",
          required: ["version", "createdAt", "validUntil", "sealed", "state", "binary"],
          properties: {
            version: { bsonType: ["int", "long", "double"], minimum: 1 },
            createdAt: { bsonType: "date" },
            validUntil: { bsonType: ["date", "null"] },
            // Sealed values only (or nothing, once destroyed): plaintext can never be stored by mistake.
            sealed: { bsonType: "string", pattern: "^(v1\\.|$)" },
            state: { enum: ["active", "deactivated", "suspended", "compromised", "destroyed"] },
            binary: { bsonType: "bool" },
          },
        },
      },
      currentVersion: { bsonType: ["int", "long", "double"], minimum: 1 },
      lastRotatedAt: { bsonType: "date" },
      versionCount: { bsonType: ["int", "long", "double"], minimum: 1 },
      sealedBytes: { bsonType: ["int", "long", "double"], minimum: 0 },
      createdAt: { bsonType: "date" },
      updatedAt: { bsonType: "date" },
      revision: { bsonType: ["int", "long", "double"], minimum: 1 },
    },
  },
};

/**
 * The change-stream pipeline: only the operations that change secrets, and only the fields a change event
 * carries (never the sealed versions), from the document after the change or, for deletes, the pre-image.
 */
export function changeStreamPipeline(): Document[] {
  const keep = ["store", "name", "revision", "currentVersion", "lastChange", "updatedAt", "live", "dueAt", "rotation.nextRotationAt"];
  const project: Document = { operationType: 1, documentKey: 1, wallTime: 1, clusterTime: 1 };
  for (const f of keep) {
    project[`fullDocument.${f}`] = 1;
    project[`fullDocumentBeforeChange.${f}`] = 1;
  }
  return [{ $match: { operationType: { $in: ["insert", "replace", "update", "delete"] } } }, { $project: project }];
}

export interface MongoStore {
  _id: string;
  description: string;
  managedBy: string | null;
  state: "active" | "purging";
  createdAt: Date;
  updatedAt: Date;
  revision: number;
}

export function toMongoStore(s: StoreRecord): MongoStore {
  return {
    _id: s.name,
    description: s.description,
    managedBy: s.managedBy,
    state: s.state,
    createdAt: new Date(s.createdAt),
    updatedAt: new Date(s.updatedAt),
    revision: s.revision,
  };
}

export function fromMongoStore(m: MongoStore): StoreRecord {
  return {
    name: m._id,
    description: m.description,
    managedBy: m.managedBy,
    state: m.state,
    createdAt: m.createdAt.getTime(),
    updatedAt: m.updatedAt.getTime(),
    revision: m.revision,
  };
}

export function storeListFilter(q: StoreListQuery): Filter<MongoStore> {
  const filter: Filter<MongoStore> = {};
  if (q.after) filter._id = { $gt: q.after };
  if (q.managedBy !== undefined) filter.managedBy = q.managedBy;
  return filter;
}

export interface MongoVar {
  _id: string;
  store: string;
  name: string;
  value: string;
  createdAt: Date;
  updatedAt: Date;
  revision: number;
}

export function varId(store: string, name: string): string {
  return `${store}\u0000${name}`;
}

export function toMongoVar(v: VarRecord): MongoVar {
  return {
    _id: varId(v.store, v.name),
    store: v.store,
    name: v.name,
    value: v.value,
    createdAt: new Date(v.createdAt),
    updatedAt: new Date(v.updatedAt),
    revision: v.revision,
  };
}

export function fromMongoVar(m: MongoVar): VarRecord {
  return {
    store: m.store,
    name: m.name,
    value: m.value,
    createdAt: m.createdAt.getTime(),
    updatedAt: m.updatedAt.getTime(),
    revision: m.revision,
  };
}

export function varListFilter(q: VarListQuery): Filter<MongoVar> {
  const name: Record<string, unknown> = {};
  if (q.prefix) name.$regex = `^${escapeRegex(q.prefix)}`;
  if (q.after) name.$gt = q.after;
  return Object.keys(name).length > 0 ? { store: q.store, name } : { store: q.store };
}

export const VAR_INDEXES: IndexDescription[] = [{ key: { store: 1, name: 1 }, name: "store_name_unique", unique: true }];
export const STORE_INDEXES: IndexDescription[] = [{ key: { managedBy: 1, _id: 1 }, name: "managed_by" }];

/** Sums a store's (or, unfiltered, every) live secret count, versions and sealed bytes. */
export function secretUsagePipeline(store?: string): Document[] {
  return [
    { $match: store === undefined ? { live: true } : { store, live: true } },
    { $group: { _id: null, secrets: { $sum: 1 }, versions: { $sum: "$versionCount" }, bytes: { $sum: "$sealedBytes" } } },
  ];
}

/** Sums a store's (or every) var count and value bytes. */
export function varUsagePipeline(store?: string): Document[] {
  return [
    ...(store === undefined ? [] : [{ $match: { store } }]),
    { $group: { _id: null, vars: { $sum: 1 }, bytes: { $sum: { $strLenBytes: "$value" } } } },
  ];
}

export interface MongoToken extends Omit<TokenRecord, "id" | "expiresAt" | "createdAt" | "revokedAt"> {
  _id: string;
  expiresAt: Date | null;
  createdAt: Date;
  revokedAt: Date | null;
}

export function toMongoToken(t: TokenRecord): MongoToken {
  const { id, expiresAt, createdAt, revokedAt, ...rest } = t;
  return {
    ...rest,
    _id: id,
    expiresAt: expiresAt === null ? null : new Date(expiresAt),
    createdAt: new Date(createdAt),
    revokedAt: revokedAt === null ? null : new Date(revokedAt),
  };
}

export function fromMongoToken(m: MongoToken): TokenRecord {
  const { _id, expiresAt, createdAt, revokedAt, ...rest } = m;
  return {
    ...rest,
    id: _id,
    expiresAt: expiresAt ? expiresAt.getTime() : null,
    createdAt: createdAt.getTime(),
    revokedAt: revokedAt ? revokedAt.getTime() : null,
  };
}

export const TOKEN_INDEXES: IndexDescription[] = [{ key: { hash: 1 }, name: "hash_unique", unique: true }];

export interface MongoAudit extends Omit<AuditRecord, "at"> {
  _id: string;
  at: Date;
}

export function toMongoAudit(r: AuditRecord): MongoAudit {
  return { ...r, _id: `${r.chain}#${r.seq}`, at: new Date(r.at) };
}

export function fromMongoAudit(m: MongoAudit): AuditRecord {
  const { _id, at, ...rest } = m;
  return { ...rest, at: at.getTime() };
}

export const AUDIT_INDEXES: IndexDescription[] = [
  { key: { chain: 1, seq: 1 }, name: "chain_seq_unique", unique: true },
  { key: { at: -1, chain: -1, seq: -1 }, name: "at" },
  { key: { tokenId: 1, at: -1 }, name: "token" },
  { key: { store: 1, name: 1, at: -1 }, name: "secret" },
];

/** Audit entries newest first, filtered; `before` pages back by (at, chain, seq). */
export function auditFilter(q: AuditQuery): Filter<MongoAudit> {
  const and: Filter<MongoAudit>[] = [];
  if (q.from !== undefined || q.to !== undefined) {
    and.push({ at: { ...(q.from === undefined ? {} : { $gte: new Date(q.from) }), ...(q.to === undefined ? {} : { $lt: new Date(q.to) }) } });
  }
  if (q.tokenId !== undefined) and.push({ tokenId: q.tokenId });
  if (q.store !== undefined) and.push({ store: q.store });
  if (q.name !== undefined) and.push({ name: q.name });
  if (q.before) {
    const { at, chain, seq } = q.before;
    const d = new Date(at);
    and.push({ $or: [{ at: { $lt: d } }, { at: d, chain: { $lt: chain } }, { at: d, chain, seq: { $lt: seq } }] });
  }
  return and.length === 0 ? {} : and.length === 1 ? (and[0] as Filter<MongoAudit>) : { $and: and };
}
