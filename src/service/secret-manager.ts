import { createHash, randomBytes, randomUUID, timingSafeEqual } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { type Envelope, sealedKeyId } from "../crypto/envelope.js";
import { type ErrorCode, invalidArgument, LatchkeyError, secretNotFound } from "../domain/errors.js";
import {
  appendVersion,
  applyMetadataPatch,
  checkRevision,
  findVersion,
  isExpired,
  isPurgeDue,
  isRotationDue,
  latestVersion,
  type MetadataPatch,
  move,
  newSecretDocument,
  nextVersionNumber,
  rename,
  requireCurrentVersion,
  restore,
  type SecretDocument,
  type SecretKind,
  type SecretType,
  setVersionState,
  softDelete,
  validateBinaryValue,
  validateDescription,
  validateFolder,
  validateGrace,
  validateInterval,
  validateMetadata,
  validateName,
  validateTags,
  validateValue,
  validVersions,
  type VersionRecord,
  type VersionState,
} from "../domain/secret.js";
import { auditFor, noteTarget } from "../audit/auditor.js";
import type { Logger } from "../log/logger.js";
import type { Clock } from "../scheduler/clock.js";
import { NameTakenError, type ListState, type Storage, type WriteOp, type WriteOutcome } from "../storage/storage.js";
import { decodeListCursor, encodeListCursor, pageLimit } from "./paging.js";

/** Identifies a secret: its store and its name in that store. */
export interface SecretRef {
  readonly store: string;
  readonly name: string;
}

/** A secret with one version opened: `value` for text, `binaryValue` for bytes. */
export interface OpenedSecret {
  readonly doc: SecretDocument;
  readonly version: VersionRecord;
  /** The text value ("" when the version holds bytes). */
  readonly value: string;
  /** The bytes, when the version holds bytes. */
  readonly binaryValue: Buffer | undefined;
}

/** A value given by a caller: text or bytes. */
export interface ValueInput {
  readonly value?: string | undefined;
  readonly binaryValue?: Uint8Array | undefined;
}

/** The metadata a caller may set on a secret (all optional). */
export interface MetadataInput {
  readonly description?: string | undefined;
  readonly type?: SecretType | undefined;
  readonly folder?: string | undefined;
  readonly tags?: readonly string[] | undefined;
  readonly metadata?: Readonly<Record<string, string>> | undefined;
  /** A time, or null for none. */
  readonly expiresAt?: number | null | undefined;
  readonly rotationIntervalSeconds?: number | undefined;
  readonly gracePeriodSeconds?: number | undefined;
}

export interface CreateSecretInput extends SecretRef, ValueInput, MetadataInput {
  /** When the store was created: keys older than that are from a purged incarnation of it. */
  readonly storeCreatedAt?: number | undefined;
  readonly kind: SecretKind;
}

export interface UpdateSecretInput extends ValueInput, MetadataInput {
  readonly kind?: SecretKind | undefined;
  /** Check-and-set: the revision the caller last saw (0 or absent: do not check). */
  readonly expectedRevision?: number | undefined;
}

export interface ListSecretsInput {
  readonly store: string;
  readonly prefix?: string | undefined;
  /** 0 or undefined: 100. Clamped to 1000. */
  readonly pageSize?: number | undefined;
  /** A next_page_token or prev_page_token of an earlier page. */
  readonly pageToken?: string | undefined;
  readonly folder?: string | undefined;
  readonly tag?: string | undefined;
  readonly state?: ListState | undefined;
}

export interface SecretPage {
  readonly docs: SecretDocument[];
  /** Empty on the last page. */
  readonly nextPageToken: string;
  /** Empty on the first page. */
  readonly prevPageToken: string;
}

/** One item of a batch write: a secret to create, or to update if it exists. */
export interface BatchItem extends ValueInput, MetadataInput {
  readonly name: string;
  readonly kind?: SecretKind | undefined;
  readonly expectedRevision?: number | undefined;
}

/** How one item of a batch went: its new version and revision, or a machine-readable error. */
export interface BatchResult {
  readonly name: string;
  readonly ok: boolean;
  readonly created?: boolean;
  readonly version?: number;
  readonly revision?: number;
  readonly error?: { readonly code: ErrorCode; readonly reason: string; readonly field?: string; readonly message: string };
}

/** One item of a batch read. */
export interface BatchGetResult {
  readonly name: string;
  readonly secret?: OpenedSecret;
  readonly error?: BatchResult["error"];
}

/**
 * SecretManager holds the use cases of the secret lifecycle, independent of any transport and of who calls.
 *
 * It validates input, applies the pure domain transitions, seals and opens values, and writes through the storage
 * port by compare-and-set, retrying when another writer got there first (unless the caller pinned a revision).
 */
export interface SecretManager {
  create(input: CreateSecretInput): Promise<OpenedSecret>;
  /** The current version, or `version` when given (> 0). */
  get(ref: SecretRef, version?: number): Promise<OpenedSecret>;
  list(input: ListSecretsInput): Promise<SecretPage>;
  update(ref: SecretRef, input: UpdateSecretInput): Promise<SecretDocument>;
  /** Soft-deletes (restorable for the retention window), or with `purge` removes for good. */
  delete(ref: SecretRef, opts?: { purge?: boolean; expectedRevision?: number }): Promise<void>;
  /** Restores a soft-deleted secret: the most recently deleted of that name, or the one with `id`. */
  undelete(ref: SecretRef, opts?: { id?: string }): Promise<SecretDocument>;
  /** Rotates an automatic secret now: a generated value; the previous version kept for the grace period or set to `previousState`. */
  rotate(ref: SecretRef, opts?: { previousState?: Exclude<VersionState, "active">; expectedRevision?: number }): Promise<OpenedSecret>;
  /** Constant-time check of a value (text, or `{ binaryValue }`) against every currently valid version. */
  verify(ref: SecretRef, value: ValueInput | string): Promise<{ valid: boolean; version: number }>;
  /** The secret with every version kept (metadata only). */
  listVersions(ref: SecretRef): Promise<SecretDocument>;
  setVersionState(ref: SecretRef, version: number, state: VersionState, expectedRevision?: number): Promise<SecretDocument>;
  /** A new secret at `to` with the current value and the metadata of `from`. The value never leaves the server. */
  copy(from: SecretRef, to: SecretRef, opts?: { storeCreatedAt?: number }): Promise<OpenedSecret>;
  /** The same secret, versions and all, under a new name in its store. */
  rename(ref: SecretRef, newName: string, expectedRevision?: number): Promise<SecretDocument>;
  /** The same secret, versions and all (re-sealed for the new store), in another store, maybe under a new name. */
  move(ref: SecretRef, to: SecretRef, opts?: { expectedRevision?: number; storeCreatedAt?: number }): Promise<SecretDocument>;
  /** Creates or updates many secrets of one store: all or nothing when `atomic`, else each on its own. */
  batchUpsert(store: string, items: readonly BatchItem[], atomic: boolean, storeCreatedAt?: number): Promise<BatchResult[]>;
  batchDelete(store: string, names: readonly string[], opts: { atomic: boolean; purge: boolean }): Promise<BatchResult[]>;
  batchGet(store: string, names: readonly string[]): Promise<BatchGetResult[]>;
  /**
   * What the scheduler does with a due document, by compare-and-set on the revision it was read at: rotate it, or
   * purge it once its deletion's retention is over. Resolves with the new version (0 for a purge), or undefined if
   * nothing was due any more or another writer changed it first.
   */
  runDue(doc: SecretDocument): Promise<number | undefined>;
  /** @deprecated the scheduler's old name for runDue. */
  rotateIfDue(doc: SecretDocument): Promise<number | undefined>;
}

export interface SecretManagerDeps {
  readonly storage: Storage;
  readonly envelope: Envelope;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly maxVersions: number;
  /** How long a deleted secret stays restorable; 0 deletes for good at once. Default 7 days. */
  readonly deleteRetentionSeconds?: number;
}

const MAX_CAS_ATTEMPTS = 16;
export const MAX_BATCH = 100;

/** A generated secret value: 32 random bytes, base64url (43 characters). */
export function generateValue(): string {
  return randomBytes(32).toString("base64url");
}

/** The plaintext and binary flag of a caller's value; exactly one of value and binary_value. */
function plaintextOf(input: ValueInput, required: boolean): { bytes: Buffer; binary: boolean } | undefined {
  if (input.value !== undefined && input.binaryValue !== undefined) {
    throw invalidArgument("binary_value", "exclusive", "give value or binary_value, not both");
  }
  if (input.binaryValue !== undefined) return { bytes: Buffer.from(validateBinaryValue(input.binaryValue)), binary: true };
  if (input.value !== undefined) return { bytes: Buffer.from(validateValue(input.value), "utf8"), binary: false };
  if (required) throw invalidArgument("value", "required", "value is required for manual secrets");
  return undefined;
}

/** Validates the metadata fields a caller gave, leaving absent ones absent. */
function checkedMetadata(input: MetadataInput): MetadataPatch {
  return {
    description: input.description === undefined ? undefined : validateDescription(input.description),
    type: input.type,
    folder: input.folder === undefined ? undefined : validateFolder(input.folder),
    tags: input.tags === undefined ? undefined : validateTags(input.tags),
    metadata: input.metadata === undefined ? undefined : validateMetadata(input.metadata),
    expiresAt: input.expiresAt,
    rotationIntervalSeconds:
      input.rotationIntervalSeconds === undefined ? undefined : validateInterval(input.rotationIntervalSeconds),
    gracePeriodSeconds: input.gracePeriodSeconds === undefined ? undefined : validateGrace(input.gracePeriodSeconds),
  };
}

function expiredError(doc: SecretDocument): LatchkeyError {
  return new LatchkeyError("failed_precondition", `secret "${doc.name}" has expired`, { reason: "SECRET_EXPIRED", httpStatus: 410 });
}

function revisionConflict(name: string): LatchkeyError {
  return new LatchkeyError("failed_precondition", `secret "${name}" changed since the revision given: re-read it and retry`, {
    reason: "REVISION_MISMATCH",
    httpStatus: 409,
  });
}

function nameTaken(ref: SecretRef): LatchkeyError {
  return new LatchkeyError("already_exists", `secret "${ref.name}" already exists in store "${ref.store}"`, {
    reason: "SECRET_EXISTS",
  });
}

/** A thrown error as a batch item's machine-readable error. */
function itemError(err: unknown): NonNullable<BatchResult["error"]> {
  if (err instanceof LatchkeyError) {
    const v = err.violations[0];
    return {
      code: err.code,
      reason: v?.reason ?? err.reason ?? err.code.toUpperCase(),
      ...(v ? { field: v.field } : {}),
      message: err.message,
    };
  }
  throw err;
}

const NOT_APPLIED = { code: "aborted", reason: "BATCH_ABORTED", message: "not applied: another item of the atomic batch failed" } as const;

/** The call's audit entry, for the write that makes `doc` (its store, name and newest version). */
function auditOf(doc: SecretDocument) {
  return auditFor({ store: doc.store, name: doc.name, version: latestVersion(doc).version });
}

export function createSecretManager(deps: SecretManagerDeps): SecretManager {
  const { storage, envelope, clock, logger, maxVersions } = deps;
  const retention = deps.deleteRetentionSeconds ?? 7 * 86_400;

  async function load(ref: SecretRef): Promise<SecretDocument> {
    validateName(ref.name);
    const doc = await storage.findSecret(ref.store, ref.name);
    if (!doc) throw secretNotFound(ref.name);
    return doc;
  }

  async function openVersion(doc: SecretDocument, v: VersionRecord): Promise<OpenedSecret> {
    const plain = await envelope.open(doc.store, doc.id, v.version, v.sealed);
    return v.binary
      ? { doc, version: v, value: "", binaryValue: plain }
      : { doc, version: v, value: plain.toString("utf8"), binaryValue: undefined };
  }

  /** Seals the next version of `doc` with the key of its latest version (never one a purge destroyed meanwhile). */
  async function sealNext(doc: SecretDocument, plaintext: Uint8Array): Promise<string> {
    const keyId = sealedKeyId(latestVersion(doc).sealed);
    return envelope.seal(doc.store, doc.id, nextVersionNumber(doc), plaintext, { keyId });
  }

  /**
   * Writes to one secret from this process take turns, so compare-and-set retries only have to absorb writers in
   * other processes; those retries back off with jitter so racing processes do not retry in lockstep.
   */
  const turns = new Map<string, Promise<unknown>>();
  function inTurn<T>(ref: SecretRef, work: () => Promise<T>): Promise<T> {
    const key = `${ref.store}\0${ref.name}`;
    const prev = turns.get(key) ?? Promise.resolve();
    const run = prev.then(work, work);
    const tail = run.catch(() => {});
    turns.set(key, tail);
    void tail.then(() => {
      if (turns.get(key) === tail) turns.delete(key);
    });
    return run;
  }

  /**
   * Loads, transforms and writes back by compare-and-set until it sticks. With a pinned revision there is no
   * retry: a change in between is the caller's conflict to resolve.
   */
  function mutate<T>(
    ref: SecretRef,
    expectedRevision: number | undefined,
    change: (doc: SecretDocument) => Promise<{ next: SecretDocument; result: T }>,
  ): Promise<T> {
    return inTurn(ref, async () => {
      for (let i = 0; i < MAX_CAS_ATTEMPTS; i++) {
        const doc = await load(ref);
        checkRevision(doc, expectedRevision);
        const { next, result } = await change(doc);
        try {
          if (await storage.replaceSecret(next, doc.revision, auditOf(next))) return result;
        } catch (err) {
          if (err instanceof NameTakenError) throw nameTaken({ store: err.store, name: err.secretName });
          throw err;
        }
        if (expectedRevision) throw revisionConflict(ref.name);
        await sleep(Math.random() * Math.min(2 ** i, 50));
      }
      throw new LatchkeyError("aborted", `secret "${ref.name}" is being changed concurrently; retry`);
    });
  }

  /** Builds a new secret document with version 1 sealed; input must name a valid store. */
  async function newDoc(input: CreateSecretInput): Promise<{ doc: SecretDocument; plaintext: Buffer; binary: boolean }> {
    validateName(input.name);
    const meta = checkedMetadata(input);
    const given = plaintextOf(input, input.kind !== "automatic");
    const plaintext = given?.bytes ?? Buffer.from(generateValue(), "utf8");
    const binary = given?.binary ?? false;
    const id = randomUUID();
    const sealed = await envelope.seal(input.store, id, 1, plaintext, { notBefore: input.storeCreatedAt });
    const doc = newSecretDocument(
      {
        id,
        store: input.store,
        name: input.name,
        kind: input.kind,
        description: meta.description ?? "",
        type: meta.type,
        folder: meta.folder,
        tags: meta.tags,
        metadata: meta.metadata,
        expiresAt: meta.expiresAt,
        rotationIntervalSeconds: meta.rotationIntervalSeconds,
        gracePeriodSeconds: meta.gracePeriodSeconds,
        binary,
      },
      sealed,
      clock.now(),
    );
    return { doc, plaintext, binary };
  }

  function opened(doc: SecretDocument, version: VersionRecord, plaintext: Buffer, binary: boolean): OpenedSecret {
    return binary
      ? { doc, version, value: "", binaryValue: plaintext }
      : { doc, version, value: plaintext.toString("utf8"), binaryValue: undefined };
  }

  /** The next document for an update: metadata patched, and a new version if a value was given. */
  async function updated(doc: SecretDocument, input: UpdateSecretInput, now: number): Promise<SecretDocument> {
    const meta = checkedMetadata(input);
    const given = plaintextOf(input, false);
    let next = applyMetadataPatch(doc, { ...meta, kind: input.kind }, now);
    if (given) {
      next = appendVersion({ ...next, revision: doc.revision }, await sealNext(doc, given.bytes), now, maxVersions, {
        binary: given.binary,
      });
    }
    return next;
  }

  async function purge(doc: SecretDocument): Promise<boolean> {
    return storage.deleteSecret(doc.id, doc.revision, auditOf(doc));
  }

  async function runDue(doc: SecretDocument): Promise<number | undefined> {
    const now = clock.now();
    if (isPurgeDue(doc, now)) {
      if (!(await purge(doc))) return undefined;
      logger.info({ event: "purged", store: doc.store, secret: doc.name }, "deleted secret purged");
      return 0;
    }
    if (!isRotationDue(doc, now)) return undefined;
    const next = appendVersion(doc, await sealNext(doc, Buffer.from(generateValue(), "utf8")), now, maxVersions);
    if (!(await storage.replaceSecret(next, doc.revision, auditOf(next)))) return undefined;
    const version = latestVersion(next).version;
    logger.info({ event: "rotated", store: doc.store, secret: doc.name, version }, "secret rotated");
    return version;
  }

  return {
    async create(input) {
      const { doc, plaintext, binary } = await newDoc(input);
      if (!(await storage.insertSecret(doc, auditOf(doc)))) throw nameTaken(input);
      return opened(doc, latestVersion(doc), plaintext, binary);
    },

    async get(ref, version) {
      const doc = await load(ref);
      if (isExpired(doc, clock.now())) throw expiredError(doc);
      if (!version) {
        const current = requireCurrentVersion(doc);
        noteTarget({ version: current.version });
        return openVersion(doc, current);
      }
      noteTarget({ version });
      const v = findVersion(doc, version);
      if (!v) throw secretNotFound(ref.name, version);
      if (v.state !== "active" && v.state !== "deactivated") {
        throw new LatchkeyError("failed_precondition", `version ${version} of secret "${ref.name}" is ${v.state}`, {
          reason: `VERSION_${v.state.toUpperCase()}`,
        });
      }
      return openVersion(doc, v);
    },

    async list(input) {
      const prefix = input.prefix ?? "";
      if (prefix.length > 256) throw invalidArgument("name_prefix", "too_long", "name_prefix must be at most 256 characters");
      if (input.folder) validateFolder(input.folder);
      const limit = pageLimit(input.pageSize);
      const cursor = decodeListCursor(input.pageToken);
      const rows = await storage.listSecrets({
        store: input.store,
        prefix,
        after: cursor?.dir === "next" ? cursor : undefined,
        before: cursor?.dir === "prev" ? cursor : undefined,
        limit: limit + 1,
        folder: input.folder || undefined,
        tag: input.tag || undefined,
        state: input.state,
        now: clock.now(),
      });
      // One extra row tells whether there is more in the direction read.
      const more = rows.length > limit;
      const docs = cursor?.dir === "prev" ? (more ? rows.slice(1) : rows) : rows.slice(0, limit);
      const hasNext = cursor?.dir === "prev" ? true : more;
      const hasPrev = cursor?.dir === "prev" ? more : cursor !== undefined;
      // A page emptied by deletions still leads back the way it came, from the cursor itself.
      const first = docs[0] ?? (cursor && { name: cursor.name, id: cursor.dir === "next" ? `${cursor.id}\u0000` : cursor.id });
      const last = docs[docs.length - 1] ?? (cursor && { name: cursor.name, id: cursor.dir === "prev" ? "" : cursor.id });
      return {
        docs,
        nextPageToken: hasNext && last ? encodeListCursor("next", last) : "",
        prevPageToken: hasPrev && first ? encodeListCursor("prev", first) : "",
      };
    },

    async update(ref, input) {
      return mutate(ref, input.expectedRevision, async (doc) => {
        const next = await updated(doc, input, clock.now());
        return { next, result: next };
      });
    },

    async delete(ref, opts = {}) {
      await inTurn(ref, async () => {
        for (let i = 0; i < MAX_CAS_ATTEMPTS; i++) {
          const doc = await load(ref);
          checkRevision(doc, opts.expectedRevision);
          const deleted = softDelete(doc, clock.now(), retention);
          const done =
            opts.purge || retention === 0 ? await purge(doc) : await storage.replaceSecret(deleted, doc.revision, auditOf(deleted));
          if (done) return;
          if (opts.expectedRevision) throw revisionConflict(ref.name);
          await sleep(Math.random() * Math.min(2 ** i, 50));
        }
        throw new LatchkeyError("aborted", `secret "${ref.name}" is being changed concurrently; retry`);
      });
    },

    async undelete(ref, opts = {}) {
      validateName(ref.name);
      let doc: SecretDocument | undefined;
      // Past its retention a deleted secret is gone, whether or not the purge has run yet.
      const now = clock.now();
      if (opts.id) {
        doc = await storage.findSecretById(opts.id);
        if (doc && (doc.store !== ref.store || doc.name !== ref.name || !doc.deletion || isPurgeDue(doc, now))) doc = undefined;
      } else {
        const deleted = await storage.listSecrets({ store: ref.store, prefix: ref.name, limit: 1000, state: "deleted" });
        doc = deleted
          .filter((d) => d.name === ref.name && !isPurgeDue(d, now))
          .sort((a, b) => (b.deletion?.deletedAt ?? 0) - (a.deletion?.deletedAt ?? 0))[0];
      }
      if (!doc) {
        throw new LatchkeyError("not_found", `no deleted secret "${ref.name}" to restore`, { reason: "DELETED_SECRET_NOT_FOUND" });
      }
      const next = restore(doc, clock.now());
      try {
        if (!(await storage.replaceSecret(next, doc.revision, auditOf(next)))) {
          throw new LatchkeyError("aborted", `secret "${ref.name}" changed while being restored; retry`);
        }
      } catch (err) {
        if (err instanceof NameTakenError) throw nameTaken(ref);
        throw err;
      }
      return next;
    },

    async rotate(ref, opts = {}) {
      return mutate(ref, opts.expectedRevision, async (doc) => {
        if (doc.kind !== "automatic") {
          throw new LatchkeyError(
            "failed_precondition",
            `secret "${ref.name}" is manual: change its value with UpdateSecret (PUT) instead`,
            { reason: "MANUAL_SECRET" },
          );
        }
        const value = Buffer.from(generateValue(), "utf8");
        const next = appendVersion(doc, await sealNext(doc, value), clock.now(), maxVersions, {
          previousState: opts.previousState,
        });
        return { next, result: opened(next, latestVersion(next), value, false) };
      });
    },

    async verify(ref, input) {
      const given_ = typeof input === "string" ? { value: input } : input;
      if (given_.value === "" || (given_.value === undefined && given_.binaryValue === undefined)) {
        throw invalidArgument("value", "required", "value is required");
      }
      const given = plaintextOf(given_, true) as { bytes: Buffer };
      const doc = await load(ref);
      const now = clock.now();
      if (isExpired(doc, now)) throw expiredError(doc);
      const presented = digest(given.bytes);
      let match = 0;
      for (const v of validVersions(doc, now)) {
        const candidate = digest(await envelope.open(doc.store, doc.id, v.version, v.sealed));
        // Every valid version is compared, match or not, so timing does not tell which matched.
        if (timingSafeEqual(candidate, presented) && match === 0) match = v.version;
      }
      noteTarget({ version: match });
      return { valid: match !== 0, version: match };
    },

    async listVersions(ref) {
      return load(ref);
    },

    async setVersionState(ref, version, state, expectedRevision) {
      return mutate(ref, expectedRevision, async (doc) => {
        const next = setVersionState(doc, version, state, clock.now());
        return { next, result: next };
      });
    },

    async copy(from, to, opts = {}) {
      validateName(to.name, "to_name");
      const src = await load(from);
      const current = requireCurrentVersion(src);
      const value = await openVersion(src, current);
      const { doc, plaintext, binary } = await newDoc({
        store: to.store,
        name: to.name,
        storeCreatedAt: opts.storeCreatedAt,
        kind: src.kind,
        ...(current.binary ? { binaryValue: value.binaryValue } : { value: value.value }),
        description: src.description,
        type: src.type,
        folder: src.folder,
        tags: src.tags,
        metadata: src.metadata,
        expiresAt: src.expiresAt,
        rotationIntervalSeconds: src.rotation?.intervalSeconds,
        gracePeriodSeconds: src.gracePeriodSeconds,
      });
      if (!(await storage.insertSecret(doc, auditOf(doc)))) throw nameTaken(to);
      return opened(doc, latestVersion(doc), plaintext, binary);
    },

    async rename(ref, newName, expectedRevision) {
      validateName(newName, "new_name");
      return mutate(ref, expectedRevision, async (doc) => {
        const next = rename(doc, newName, clock.now());
        return { next, result: next };
      });
    },

    async move(ref, to, opts = {}) {
      validateName(to.name, "to_name");
      if (to.store === ref.store) return this.rename(ref, to.name, opts.expectedRevision);
      return mutate(ref, opts.expectedRevision, async (doc) => {
        // Re-seal every version still holding a value, bound to the new store and under its key.
        const resealed: string[] = [];
        let keyId: string | undefined;
        for (const v of doc.versions) {
          if (v.sealed === "") {
            resealed.push("");
            continue;
          }
          const plain = await envelope.open(doc.store, doc.id, v.version, v.sealed);
          const sealed = await envelope.seal(to.store, doc.id, v.version, plain, { keyId, notBefore: opts.storeCreatedAt });
          keyId = sealedKeyId(sealed);
          resealed.push(sealed);
        }
        const next = move(doc, to.store, to.name, resealed, clock.now());
        return { next, result: next };
      });
    },

    async batchUpsert(store, items, atomic, storeCreatedAt) {
      if (items.length === 0) throw invalidArgument("items", "required", "at least one item is required");
      if (items.length > MAX_BATCH) throw invalidArgument("items", "too_many", `at most ${MAX_BATCH} items per batch`);
      const results: (BatchResult | undefined)[] = new Array(items.length).fill(undefined);
      const ops: (WriteOp | undefined)[] = new Array(items.length).fill(undefined);
      const seen = new Set<string>();
      const now = clock.now();
      await Promise.all(
        items.map(async (item, i) => {
          try {
            validateName(item.name);
            if (seen.has(item.name)) throw invalidArgument("name", "duplicate", `secret "${item.name}" appears twice in the batch`);
            seen.add(item.name);
            const existing = await storage.findSecret(store, item.name);
            if (existing) {
              checkRevision(existing, item.expectedRevision);
              const next = await updated(existing, item, now);
              ops[i] = { op: "replace", doc: next, expectedRevision: existing.revision };
              results[i] = { name: item.name, ok: true, created: false, version: latestVersion(next).version, revision: next.revision };
            } else {
              if (item.expectedRevision) throw secretNotFound(item.name);
              const { doc } = await newDoc({ ...item, store, kind: item.kind ?? "manual", storeCreatedAt });
              ops[i] = { op: "insert", doc };
              results[i] = { name: item.name, ok: true, created: true, version: 1, revision: 1 };
            }
          } catch (err) {
            results[i] = { name: item.name, ok: false, error: itemError(err) };
          }
        }),
      );
      return applyBatch(results as BatchResult[], ops, atomic);
    },

    async batchDelete(store, names, opts) {
      if (names.length === 0) throw invalidArgument("names", "required", "at least one name is required");
      if (names.length > MAX_BATCH) throw invalidArgument("names", "too_many", `at most ${MAX_BATCH} names per batch`);
      const results: BatchResult[] = [];
      const ops: (WriteOp | undefined)[] = [];
      const seen = new Set<string>();
      for (const name of names) {
        try {
          if (seen.has(name)) throw invalidArgument("names", "duplicate", `secret "${name}" appears twice in the batch`);
          seen.add(name);
          const doc = await load({ store, name });
          const purgeNow = opts.purge || retention === 0;
          ops.push(
            purgeNow
              ? { op: "delete", id: doc.id, expectedRevision: doc.revision }
              : { op: "replace", doc: softDelete(doc, clock.now(), retention), expectedRevision: doc.revision },
          );
          results.push({ name, ok: true, revision: doc.revision + (purgeNow ? 0 : 1) });
        } catch (err) {
          ops.push(undefined);
          results.push({ name, ok: false, error: itemError(err) });
        }
      }
      return applyBatch(results, ops, opts.atomic);
    },

    async batchGet(store, names) {
      if (names.length === 0) throw invalidArgument("names", "required", "at least one name is required");
      if (names.length > MAX_BATCH) throw invalidArgument("names", "too_many", `at most ${MAX_BATCH} names per batch`);
      return Promise.all(
        names.map(async (name) => {
          try {
            return { name, secret: await this.get({ store, name }) };
          } catch (err) {
            return { name, error: itemError(err) };
          }
        }),
      );
    },

    runDue,
    rotateIfDue: runDue,
  };

  /**
   * Writes the prepared operations of a batch and merges their outcomes into the per-item results. An atomic
   * batch with any invalid item writes nothing.
   */
  async function applyBatch(results: BatchResult[], ops: (WriteOp | undefined)[], atomic: boolean): Promise<BatchResult[]> {
    if (atomic && results.some((r) => !r.ok)) {
      return results.map((r) => (r.ok ? { name: r.name, ok: false, error: NOT_APPLIED } : r));
    }
    const todo = ops.flatMap((op, i) => (op ? [{ op, i }] : []));
    const outcomes = todo.length === 0 ? [] : await storage.applyWrites(todo.map((t) => t.op), atomic, auditFor());
    const merged = [...results];
    todo.forEach(({ i }, k) => {
      const outcome = outcomes[k] as WriteOutcome;
      if (outcome === "ok") return;
      const r = merged[i] as BatchResult;
      merged[i] = { name: r.name, ok: false, error: outcomeError(outcome, r.name) };
    });
    if (atomic && merged.some((r) => !r.ok)) {
      return merged.map((r) => (r.ok ? { name: r.name, ok: false, error: NOT_APPLIED } : r));
    }
    return merged;
  }
}

function outcomeError(outcome: WriteOutcome, name: string): NonNullable<BatchResult["error"]> {
  switch (outcome) {
    case "conflict":
      return { code: "aborted", reason: "CONCURRENT_CHANGE", message: `secret "${name}" changed while the batch was applied` };
    case "name_taken":
      return { code: "already_exists", reason: "SECRET_EXISTS", message: `secret "${name}" already exists` };
    default:
      return NOT_APPLIED;
  }
}

function digest(b: Buffer): Buffer {
  return createHash("sha256").update(b).digest();
}
