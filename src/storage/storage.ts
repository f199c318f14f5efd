import type { ChangeKind, SecretDocument } from "../domain/secret.js";
import type { AuditEvent, AuditRecord } from "../domain/audit.js";
import type { StoreRecord } from "../domain/store.js";
import type { TokenRecord } from "../domain/token.js";
import type { Usage } from "../domain/usage.js";
import type { VarRecord } from "../domain/vars.js";

/** A store's data key as stored: wrapped by a master key, never in the clear. */
export interface DataKeyRecord {
  readonly store: string;
  /** Public identifier of the data key (see crypto/aead.ts keyId). */
  readonly id: string;
  /** Identifier of the master key that wrapped it. */
  readonly kekId: string;
  /** The wrapped key envelope. */
  readonly wrapped: string;
  readonly createdAt: number;
}

/** A position in a list of secrets: lists are ordered by name, then id (deleted secrets may share a name). */
export interface ListCursor {
  readonly name: string;
  readonly id: string;
}

/**
 * Which secrets a list covers: "live" (not deleted; the default), "active" (live and not expired), "expired"
 * (live and expired at `now`), "deleted" (soft-deleted, restorable).
 */
export type ListState = "live" | "active" | "expired" | "deleted";

export interface ListQuery {
  readonly store: string;
  /** Only names starting with this. */
  readonly prefix: string;
  /** Only secrets strictly after this position (paging forward). */
  readonly after?: ListCursor | undefined;
  /** Only secrets strictly before this position (paging backward): the last `limit` of them. */
  readonly before?: ListCursor | undefined;
  readonly limit: number;
  /** Only secrets in exactly this folder. */
  readonly folder?: string | undefined;
  /** Only secrets carrying this tag. */
  readonly tag?: string | undefined;
  readonly state?: ListState | undefined;
  /** The time "expired" is judged at. */
  readonly now?: number | undefined;
}

/** One write of a batch. */
export type WriteOp =
  | { readonly op: "insert"; readonly doc: SecretDocument }
  | { readonly op: "replace"; readonly doc: SecretDocument; readonly expectedRevision: number }
  | { readonly op: "delete"; readonly id: string; readonly expectedRevision: number };

/**
 * How a write of a batch went: written; refused because the revision changed or the document is gone
 * ("conflict"); refused because its (store, name) is held by another live secret ("name_taken"); or not applied
 * because another write of an atomic batch failed.
 */
export type WriteOutcome = "ok" | "conflict" | "name_taken" | "not_applied";

/**
 * The audit entry of the call a write belongs to. An adapter given one appends it to the audit log in the same
 * transaction as the write, and sets `written` once that commits; the caller appends it separately otherwise.
 */
export interface PendingAudit {
  event: AuditEvent;
  written: boolean;
  /** The stored entry (with its chain position and hash), once written. */
  record?: AuditRecord;
}

export interface AuditQuery {
  /** Entries at or after this time (ms). */
  readonly from?: number | undefined;
  /** Entries before this time (ms). */
  readonly to?: number | undefined;
  readonly tokenId?: string | undefined;
  readonly store?: string | undefined;
  readonly name?: string | undefined;
  /** Newest first, strictly before this position (paging back through the log): [at, chain, seq]. */
  readonly before?: { readonly at: number; readonly chain: string; readonly seq: number } | undefined;
  readonly limit: number;
}

/** A write would give a live secret a (store, name) another live secret holds. */
export class NameTakenError extends Error {
  override name = "NameTakenError";
  constructor(
    readonly store: string,
    readonly secretName: string,
  ) {
    super(`the name "${secretName}" is taken in store "${store}"`);
  }
}

export interface StoreListQuery {
  /** Only names strictly after this one. */
  readonly after?: string | undefined;
  readonly limit: number;
  /** Only stores owned by this service (a string), only unowned stores (null), or all (undefined). */
  readonly managedBy?: string | null | undefined;
}

export interface VarListQuery {
  readonly store: string;
  readonly prefix: string;
  readonly after?: string | undefined;
  readonly limit: number;
}

/** What changed about one secret; never a value. */
export interface ChangeEvent {
  /** Opaque position in the feed: pass it as `resumeAfter` to continue after this event. */
  readonly token: string;
  readonly op: "insert" | "update" | "delete";
  readonly id: string;
  readonly store: string;
  readonly name: string;
  /** The document's revision after the change (for a delete: the last one). */
  readonly revision: number;
  /** The newest version after the change (for a delete: the last one). */
  readonly version: number;
  /** What the write did: the document's lastChange ("purged" for a hard delete). */
  readonly change: ChangeKind | "purged";
  /** The next rotation after the change; null for manual or deleted secrets. */
  readonly nextRotationAt: number | null;
  /** When the scheduler must next act on the secret (rotate or purge it); null for none. */
  readonly dueAt: number | null;
  /** When the change was made (ms): the document's updatedAt, or the deletion time. */
  readonly at: number;
}

/** The first item of every feed: it is open, and `token` is its position (resume there to miss nothing). */
export interface ChangeStart {
  readonly op: "start";
  readonly token: string;
}

/**
 * The feed lost history: the position asked for is no longer available (expired, invalidated). Consumers rescan
 * the state they derive from the feed; the feed goes on from `token`.
 */
export interface ChangeReset {
  readonly op: "reset";
  readonly token: string | undefined;
}

export type ChangeFeedItem = ChangeEvent | ChangeStart | ChangeReset;

export interface ChangesOptions {
  /** Continue after this token; absent: start from now. */
  readonly resumeAfter?: string | undefined;
  /** Ends the iteration. */
  readonly signal: AbortSignal;
}

/**
 * Storage is the port every backend implements: durable, untrusted storage of secret documents.
 *
 * It only ever sees ciphertext. Writes to a secret are compare-and-set on the document's `revision`, so several
 * processes can share one backend and stay correct without transactions across documents. "Not found" is
 * `undefined`; the service decides what it means. Adapters hold no domain rules.
 */
export interface Storage {
  /** Which adapter this is, for logs and health output. */
  readonly backend: string;
  /** Resolves when the backend answers a trivial query; rejects otherwise (readiness). */
  ping(): Promise<void>;

  /** The live (not deleted) secret of that name. */
  findSecret(store: string, name: string): Promise<SecretDocument | undefined>;
  /** Any secret, live or deleted, by id. */
  findSecretById(id: string): Promise<SecretDocument | undefined>;
  /** Inserts a new document. Returns false, writing nothing, if its (store, name) is taken by a live secret. */
  insertSecret(doc: SecretDocument, audit?: PendingAudit): Promise<boolean>;
  /**
   * Replaces the document with `doc.id` if its stored revision is `expectedRevision`. Returns false otherwise.
   * Throws NameTakenError if the new (store, name) is held by another live secret.
   */
  replaceSecret(doc: SecretDocument, expectedRevision: number, audit?: PendingAudit): Promise<boolean>;
  /**
   * Applies several writes. Atomic: all or none (a failing write leaves every outcome but its own "not_applied").
   * Not atomic: each write on its own, in order.
   */
  applyWrites(ops: readonly WriteOp[], atomic: boolean, audit?: PendingAudit): Promise<WriteOutcome[]>;
  /** Deletes the document with `id` if its stored revision is `expectedRevision`. Returns false otherwise. */
  deleteSecret(id: string, expectedRevision: number, audit?: PendingAudit): Promise<boolean>;
  /** Documents of one store in (name, id) order, filtered and keyset-paged as the query says. */
  listSecrets(query: ListQuery): Promise<SecretDocument[]>;
  /**
   * Secrets the scheduler must act on at `now` (due rotations of automatic secrets, due purges of deleted ones),
   * earliest first, at most `limit`.
   */
  findDueSecrets(now: number, limit: number): Promise<SecretDocument[]>;
  /** The earliest time the scheduler must act on any secret, or undefined if there is none. */
  nextRotationAt(): Promise<number | undefined>;

  /**
   * Every change to any secret, in commit order, from `resumeAfter` (exclusive) or from now. The first item is a
   * ChangeStart once the feed is open; a ChangeReset follows when `resumeAfter` is no longer available, or comes
   * later if history is lost while reading. Survives transient backend failures by resuming.
   */
  changes(opts: ChangesOptions): AsyncIterable<ChangeFeedItem>;
  /** A consumer's last persisted feed position. */
  loadResumeToken(consumer: string): Promise<string | undefined>;
  saveResumeToken(consumer: string, token: string): Promise<void>;

  /** Every secret of every store in id order, after `afterId`, at most `limit` (export). */
  scanSecrets(afterId: string, limit: number): Promise<SecretDocument[]>;
  /** Every data key of every store (export). */
  listAllDataKeys(): Promise<DataKeyRecord[]>;

  findStore(name: string): Promise<StoreRecord | undefined>;
  /** Returns false, writing nothing, if the name is taken. */
  insertStore(store: StoreRecord, audit?: PendingAudit): Promise<boolean>;
  /** Compare-and-set on the store's revision. */
  replaceStore(store: StoreRecord, expectedRevision: number): Promise<boolean>;
  /** Compare-and-set on the store's revision. Removes the record only; see the purge methods for contents. */
  deleteStore(name: string, expectedRevision: number, audit?: PendingAudit): Promise<boolean>;
  /** Stores in name order. */
  listStores(query: StoreListQuery): Promise<StoreRecord[]>;
  /**
   * Deletes up to `limit` secrets of a store (each with a delete change event), returning how many went. A purge
   * calls it until it returns 0.
   */
  deleteStoreSecrets(store: string, limit: number): Promise<number>;
  /** Deletes every var of a store; returns how many went. */
  deleteStoreVars(store: string): Promise<number>;
  /** Deletes every data key of a store (crypto-shredding: its values can no longer be opened). */
  deleteDataKeys(store: string): Promise<number>;

  findVar(store: string, name: string): Promise<VarRecord | undefined>;
  /** Writes (creates or replaces) every var given, all or nothing where the backend allows, else in order. */
  putVars(vars: readonly VarRecord[], audit?: PendingAudit): Promise<void>;
  /** Returns false if there was no such var. */
  deleteVar(store: string, name: string, audit?: PendingAudit): Promise<boolean>;
  listVars(query: VarListQuery): Promise<VarRecord[]>;

  /**
   * What one store holds, or (no store given) the whole service. Counts live secrets (deleted ones, waiting to be
   * purged, do not count), their versions, vars, and bytes (sealed values plus var values); `stores` is 1 for
   * one store, else the number of stores.
   */
  usage(store?: string): Promise<Usage>;

  /** Replaces a data key's wrapping if it is still wrapped by `expectedKekId` (master-key rotation). */
  rewrapDataKey(key: DataKeyRecord, expectedKekId: string): Promise<boolean>;

  insertToken(token: TokenRecord, audit?: PendingAudit): Promise<void>;
  findTokenByHash(hash: string): Promise<TokenRecord | undefined>;
  findTokenById(id: string): Promise<TokenRecord | undefined>;
  /** Tokens in id order, after `after`. */
  listTokens(query: { after?: string | undefined; limit: number }): Promise<TokenRecord[]>;
  /** Marks a token revoked (once). Returns false if there is no such token or it was revoked already. */
  revokeToken(id: string, at: number, audit?: PendingAudit): Promise<boolean>;

  /** Appends entries to the audit log, in order, linked into this process's chain; returns them as stored. */
  appendAudit(events: readonly AuditEvent[]): Promise<AuditRecord[]>;
  /** Audit entries, newest first, filtered and paged. */
  listAudit(query: AuditQuery): Promise<AuditRecord[]>;
  /** Names of the audit log's chains (one on SQLite; one per server process on MongoDB). */
  auditChains(): Promise<string[]>;
  /** One chain's entries in sequence order, after `afterSeq` (verification). */
  scanAudit(chain: string, afterSeq: number, limit: number): Promise<AuditRecord[]>;

  /** Every data key of a store, oldest first. */
  listDataKeys(store: string): Promise<DataKeyRecord[]>;
  /** Stores a new data key. Returns false if one with the same (store, id) exists. */
  insertDataKey(key: DataKeyRecord): Promise<boolean>;

  close(): Promise<void>;
}
