import { createHash, randomBytes, randomUUID, timingSafeEqual } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { type Envelope, sealedKeyId } from "../crypto/envelope.js";
import { invalidArgument, LatchkeyError, secretNotFound } from "../domain/errors.js";
import {
  appendVersion,
  applyMetadataPatch,
  currentVersion,
  findVersion,
  isRotationDue,
  isVersionValid,
  newSecretDocument,
  nextVersionNumber,
  validateDescription,
  validateGrace,
  validateInterval,
  validateName,
  validateValue,
  type SecretDocument,
  type SecretKind,
  type VersionRecord,
} from "../domain/secret.js";
import type { Logger } from "../log/logger.js";
import type { Clock } from "../scheduler/clock.js";
import type { Storage } from "../storage/storage.js";
import { decodePageToken, page, pageLimit } from "./paging.js";

/** Identifies a secret: its store and its name in that store. */
export interface SecretRef {
  readonly store: string;
  readonly name: string;
}

/** A secret with one version opened. */
export interface OpenedSecret {
  readonly doc: SecretDocument;
  readonly version: VersionRecord;
  readonly value: string;
}

export interface CreateSecretInput extends SecretRef {
  /** When the store was created: keys older than that are from a purged incarnation of it. */
  readonly storeCreatedAt?: number | undefined;
  readonly kind: SecretKind;
  readonly value?: string | undefined;
  readonly description?: string | undefined;
  readonly rotationIntervalSeconds?: number | undefined;
  readonly gracePeriodSeconds?: number | undefined;
}

export interface UpdateSecretInput {
  readonly value?: string | undefined;
  readonly description?: string | undefined;
  readonly kind?: SecretKind | undefined;
  readonly rotationIntervalSeconds?: number | undefined;
  readonly gracePeriodSeconds?: number | undefined;
}

export interface ListSecretsInput {
  readonly store: string;
  readonly prefix?: string | undefined;
  /** 0 or undefined: 100. Clamped to 1000. */
  readonly pageSize?: number | undefined;
  readonly pageToken?: string | undefined;
}

export interface SecretPage {
  readonly docs: SecretDocument[];
  /** Empty on the last page. */
  readonly nextPageToken: string;
}

/**
 * SecretManager holds the use cases of the secret lifecycle, independent of any transport.
 *
 * It validates input, applies the pure domain transitions, seals and opens values, and writes through the storage
 * port by compare-and-set, retrying when another writer got there first.
 */
export interface SecretManager {
  create(input: CreateSecretInput): Promise<OpenedSecret>;
  /** The current version, or `version` when given (> 0). */
  get(ref: SecretRef, version?: number): Promise<OpenedSecret>;
  list(input: ListSecretsInput): Promise<SecretPage>;
  update(ref: SecretRef, input: UpdateSecretInput): Promise<SecretDocument>;
  delete(ref: SecretRef): Promise<void>;
  /** Rotates an automatic secret now: a generated value, the previous version kept for the grace period. */
  rotate(ref: SecretRef): Promise<OpenedSecret>;
  /** Constant-time check of `value` against every currently valid version. */
  verify(ref: SecretRef, value: string): Promise<{ valid: boolean; version: number }>;
  /**
   * Rotates `doc` if it is still due, by compare-and-set on the revision it was read at. Returns the new version
   * number, or undefined if it was not due any more or another writer changed it first.
   */
  rotateIfDue(doc: SecretDocument): Promise<number | undefined>;
}

export interface SecretManagerDeps {
  readonly storage: Storage;
  readonly envelope: Envelope;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly maxVersions: number;
}

const MAX_CAS_ATTEMPTS = 16;

/** A generated secret value: 32 random bytes, base64url (43 characters). */
export function generateValue(): string {
  return randomBytes(32).toString("base64url");
}

export function createSecretManager(deps: SecretManagerDeps): SecretManager {
  const { storage, envelope, clock, logger, maxVersions } = deps;

  async function load(ref: SecretRef): Promise<SecretDocument> {
    validateName(ref.name);
    const doc = await storage.findSecret(ref.store, ref.name);
    if (!doc) throw secretNotFound(ref.name);
    return doc;
  }

  async function openVersion(doc: SecretDocument, v: VersionRecord): Promise<string> {
    const plain = await envelope.open(doc.store, doc.id, v.version, v.sealed);
    return plain.toString("utf8");
  }

  async function sealNext(doc: SecretDocument, value: string): Promise<string> {
    // The key of the latest version: never one a purge of the store destroyed behind this process's back.
    const keyId = sealedKeyId(doc.versions[doc.versions.length - 1]?.sealed ?? "");
    return envelope.seal(doc.store, doc.id, nextVersionNumber(doc), Buffer.from(value, "utf8"), { keyId });
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

  async function casLoop<T>(ref: SecretRef, attempt: () => Promise<{ done: true; value: T } | { done: false }>): Promise<T> {
    return inTurn(ref, async () => {
      for (let i = 0; i < MAX_CAS_ATTEMPTS; i++) {
        const r = await attempt();
        if (r.done) return r.value;
        await sleep(Math.random() * Math.min(2 ** i, 50));
      }
      throw new LatchkeyError("aborted", `secret "${ref.name}" is being changed concurrently; retry`);
    });
  }

  /** Loads, transforms and writes back by compare-and-set until it sticks. */
  function mutate<T>(ref: SecretRef, change: (doc: SecretDocument) => Promise<{ next: SecretDocument; result: T }>): Promise<T> {
    return casLoop<T>(ref, async () => {
      const doc = await load(ref);
      const { next, result } = await change(doc);
      if (!(await storage.replaceSecret(next, doc.revision))) return { done: false };
      return { done: true, value: result };
    });
  }

  return {
    async create(input) {
      validateName(input.name);
      const description = validateDescription(input.description ?? "");
      const interval =
        input.rotationIntervalSeconds === undefined ? undefined : validateInterval(input.rotationIntervalSeconds);
      const grace = input.gracePeriodSeconds === undefined ? undefined : validateGrace(input.gracePeriodSeconds);
      let value: string;
      if (input.value !== undefined) value = validateValue(input.value);
      else if (input.kind === "automatic") value = generateValue();
      else throw invalidArgument("value", "required", "value is required for manual secrets");

      const id = randomUUID();
      const sealed = await envelope.seal(input.store, id, 1, Buffer.from(value, "utf8"), { notBefore: input.storeCreatedAt });
      const doc = newSecretDocument(
        {
          id,
          store: input.store,
          name: input.name,
          kind: input.kind,
          description,
          rotationIntervalSeconds: interval,
          gracePeriodSeconds: grace,
        },
        sealed,
        clock.now(),
      );
      if (!(await storage.insertSecret(doc))) {
        throw new LatchkeyError("already_exists", `secret "${input.name}" already exists`);
      }
      return { doc, version: currentVersion(doc), value };
    },

    async get(ref, version) {
      const doc = await load(ref);
      const v = version ? findVersion(doc, version) : currentVersion(doc);
      if (!v) throw secretNotFound(ref.name, version);
      return { doc, version: v, value: await openVersion(doc, v) };
    },

    async list(input) {
      const prefix = input.prefix ?? "";
      if (prefix.length > 256) throw invalidArgument("name_prefix", "too_long", "name_prefix must be at most 256 characters");
      const limit = pageLimit(input.pageSize);
      const after = decodePageToken(input.pageToken);
      const rows = await storage.listSecrets({ store: input.store, prefix, after, limit: limit + 1 });
      const { items, nextPageToken } = page(rows, limit, (d) => d.name);
      return { docs: items, nextPageToken };
    },

    async update(ref, input) {
      const value = input.value === undefined ? undefined : validateValue(input.value);
      const patch = {
        description: input.description === undefined ? undefined : validateDescription(input.description),
        kind: input.kind,
        rotationIntervalSeconds:
          input.rotationIntervalSeconds === undefined ? undefined : validateInterval(input.rotationIntervalSeconds),
        gracePeriodSeconds: input.gracePeriodSeconds === undefined ? undefined : validateGrace(input.gracePeriodSeconds),
      };
      return mutate(ref, async (doc) => {
        const now = clock.now();
        let next = applyMetadataPatch(doc, patch, now);
        if (value !== undefined) {
          next = appendVersion({ ...next, revision: doc.revision }, await sealNext(doc, value), now, maxVersions);
        }
        return { next, result: next };
      });
    },

    async delete(ref) {
      await casLoop<undefined>(ref, async () => {
        const doc = await load(ref);
        return (await storage.deleteSecret(doc.id, doc.revision)) ? { done: true, value: undefined } : { done: false };
      });
    },

    async rotate(ref) {
      return mutate(ref, async (doc) => {
        if (doc.kind !== "automatic") {
          throw new LatchkeyError(
            "failed_precondition",
            `secret "${ref.name}" is manual: change its value with UpdateSecret (PUT) instead`,
          );
        }
        const value = generateValue();
        const next = appendVersion(doc, await sealNext(doc, value), clock.now(), maxVersions);
        return { next, result: { doc: next, version: currentVersion(next), value } };
      });
    },

    async verify(ref, value) {
      if (value === "") throw invalidArgument("value", "required", "value is required");
      const doc = await load(ref);
      const now = clock.now();
      const presented = digest(Buffer.from(value, "utf8"));
      let match = 0;
      for (const v of doc.versions) {
        if (!isVersionValid(v, now)) continue;
        const candidate = digest(await envelope.open(doc.store, doc.id, v.version, v.sealed));
        // Every valid version is compared, match or not, so timing does not tell which matched.
        if (timingSafeEqual(candidate, presented) && match === 0) match = v.version;
      }
      return { valid: match !== 0, version: match };
    },

    async rotateIfDue(doc) {
      const now = clock.now();
      if (!isRotationDue(doc, now)) return undefined;
      const next = appendVersion(doc, await sealNext(doc, generateValue()), now, maxVersions);
      if (!(await storage.replaceSecret(next, doc.revision))) return undefined;
      const version = currentVersion(next).version;
      logger.info({ event: "rotated", store: doc.store, secret: doc.name, version }, "secret rotated");
      return version;
    },
  };
}

function digest(b: Buffer): Buffer {
  return createHash("sha256").update(b).digest();
}
