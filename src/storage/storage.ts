import type { SecretDocument } from "../domain/secret.js";

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

export interface ListQuery {
  readonly store: string;
  /** Only names starting with this. */
  readonly prefix: string;
  /** Only names strictly after this one (keyset paging). */
  readonly after: string;
  readonly limit: number;
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

  findSecret(store: string, name: string): Promise<SecretDocument | undefined>;
  /** Inserts a new document. Returns false, writing nothing, if its (store, name) is taken. */
  insertSecret(doc: SecretDocument): Promise<boolean>;
  /** Replaces the document with `doc.id` if its stored revision is `expectedRevision`. Returns false otherwise. */
  replaceSecret(doc: SecretDocument, expectedRevision: number): Promise<boolean>;
  /** Deletes the document with `id` if its stored revision is `expectedRevision`. Returns false otherwise. */
  deleteSecret(id: string, expectedRevision: number): Promise<boolean>;
  /** Documents of one store in name order, after `query.after`, at most `query.limit`. */
  listSecrets(query: ListQuery): Promise<SecretDocument[]>;
  /** Automatic secrets whose next rotation is at or before `now`, earliest first, at most `limit`. */
  findDueSecrets(now: number, limit: number): Promise<SecretDocument[]>;
  /** The earliest next rotation time of any automatic secret, or undefined if there is none. */
  nextRotationAt(): Promise<number | undefined>;

  /** Every data key of a store, oldest first. */
  listDataKeys(store: string): Promise<DataKeyRecord[]>;
  /** Stores a new data key. Returns false if one with the same (store, id) exists. */
  insertDataKey(key: DataKeyRecord): Promise<boolean>;

  close(): Promise<void>;
}
