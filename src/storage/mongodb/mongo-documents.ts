import type { Document, Filter, IndexDescription, Sort } from "mongodb";
import type { SecretDocument } from "../../domain/secret.js";
import type { StoreRecord } from "../../domain/store.js";
import type { VarRecord } from "../../domain/vars.js";
import type { DataKeyRecord, ListQuery, StoreListQuery, VarListQuery } from "../storage.js";

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

export interface MongoVersion {
  version: number;
  createdAt: Date;
  validUntil: Date | null;
  sealed: string;
}

export interface MongoSecret {
  _id: string;
  store: string;
  name: string;
  kind: "manual" | "automatic";
  description: string;
  gracePeriodSeconds: number;
  rotation: { intervalSeconds: number; nextRotationAt: Date } | null;
  versions: MongoVersion[];
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

export function toMongoSecret(doc: SecretDocument): MongoSecret {
  const last = doc.versions[doc.versions.length - 1];
  return {
    _id: doc.id,
    store: doc.store,
    name: doc.name,
    kind: doc.kind,
    description: doc.description,
    gracePeriodSeconds: doc.gracePeriodSeconds,
    rotation: doc.rotation && {
      intervalSeconds: doc.rotation.intervalSeconds,
      nextRotationAt: new Date(doc.rotation.nextRotationAt),
    },
    versions: doc.versions.map((v) => ({
      version: v.version,
      createdAt: new Date(v.createdAt),
      validUntil: v.validUntil === null ? null : new Date(v.validUntil),
      sealed: v.sealed,
    })),
    currentVersion: last ? last.version : 0,
    lastRotatedAt: new Date(last ? last.createdAt : doc.createdAt),
    versionCount: doc.versions.length,
    sealedBytes: doc.versions.reduce((n, v) => n + v.sealed.length, 0),
    createdAt: new Date(doc.createdAt),
    updatedAt: new Date(doc.updatedAt),
    revision: doc.revision,
  };
}

export function fromMongoSecret(m: MongoSecret): SecretDocument {
  return {
    id: m._id,
    store: m.store,
    name: m.name,
    kind: m.kind,
    description: m.description,
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
    })),
    createdAt: m.createdAt.getTime(),
    updatedAt: m.updatedAt.getTime(),
    revision: m.revision,
  };
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
 * One page of a store's secrets in name order. `after` pages forward (ascending); `before` pages backward, so the
 * query sorts descending and the adapter reverses the page. A prefix is an anchored regex, which the
 * (store, name) index serves as a range scan.
 */
export function listQuery(q: ListQuery): { filter: Filter<MongoSecret>; sort: Sort; limit: number; reverse: boolean } {
  const name: Record<string, unknown> = {};
  if (q.prefix) name.$regex = `^${escapeRegex(q.prefix)}`;
  if (q.after) name.$gt = q.after;
  if (q.before) name.$lt = q.before;
  const filter: Filter<MongoSecret> = Object.keys(name).length > 0 ? { store: q.store, name } : { store: q.store };
  const reverse = q.before !== undefined && q.before !== "";
  return { filter, sort: { name: reverse ? -1 : 1 }, limit: q.limit, reverse };
}

/** Automatic secrets due at `now`, earliest first (served by the rotation index). */
export function dueQuery(now: number): { filter: Filter<MongoSecret>; sort: Sort } {
  return { filter: { "rotation.nextRotationAt": { $lte: new Date(now) } }, sort: { "rotation.nextRotationAt": 1 } };
}

export const SECRET_INDEXES: IndexDescription[] = [
  { key: { store: 1, name: 1 }, name: "store_name_unique", unique: true },
  {
    key: { "rotation.nextRotationAt": 1 },
    name: "rotation_due",
    partialFilterExpression: { "rotation.nextRotationAt": { $type: "date" } },
  },
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
      "description",
      "gracePeriodSeconds",
      "rotation",
      "versions",
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
      description: { bsonType: "string" },
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
          required: ["version", "createdAt", "validUntil", "sealed"],
          properties: {
            version: { bsonType: ["int", "long", "double"], minimum: 1 },
            createdAt: { bsonType: "date" },
            validUntil: { bsonType: ["date", "null"] },
            sealed: { bsonType: "string", pattern: "^v1\\." },
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
  const keep = ["store", "name", "revision", "currentVersion", "lastRotatedAt", "updatedAt", "rotation.nextRotationAt"];
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

/** Sums a store's (or, unfiltered, every) secret count, versions and sealed bytes. */
export function secretUsagePipeline(store?: string): Document[] {
  return [
    ...(store === undefined ? [] : [{ $match: { store } }]),
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
