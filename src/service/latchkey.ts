import { auditFor, noteTarget } from "../audit/auditor.js";
import type { Envelope } from "../crypto/envelope.js";
import { sealedSize } from "../crypto/envelope.js";
import { invalidArgument, LatchkeyError, storeNotFound } from "../domain/errors.js";
import { canSee, checkPrefixScope, checkScope, isAdmin, ownerFor, type Principal, serviceOf } from "../domain/principal.js";
import { DEFAULT_STORE, type SecretDocument, validateDescription, type VersionState } from "../domain/secret.js";
import { newStoreRecord, type StoreRecord, validateStoreName } from "../domain/store.js";
import type { Limits, Usage } from "../domain/usage.js";
import { checkVarList, setVar, type VarRecord } from "../domain/vars.js";
import type { Logger } from "../log/logger.js";
import type { Clock } from "../scheduler/clock.js";
import type { Storage } from "../storage/storage.js";
import { decodePageToken, page, pageLimit } from "./paging.js";
import type { QuotaGuard } from "./quotas.js";
import type { VerifyLimiter } from "./verify-limiter.js";
import type {
  BatchGetResult,
  BatchItem,
  BatchResult,
  CreateSecretInput,
  ListSecretsInput,
  OpenedSecret,
  SecretManager,
  SecretPage,
  SecretRef,
  UpdateSecretInput,
  ValueInput,
} from "./secret-manager.js";
import { type SecretEvent, type WatchInput, watchSecrets } from "./secret-watch.js";

/**
 * Latchkey is the application service every transport calls: REST routes and RPC handlers alike.
 *
 * It decides who may see which store (a store owned by a service is invisible, "not found", to everyone but that
 * service and admins), admits writes within quotas, and delegates the secret lifecycle to the SecretManager and
 * storage. Transport concerns (authentication, IP allowlists) are settled before a call reaches it: it receives the
 * caller's Principal.
 */
export interface Latchkey {
  createSecret(p: Principal, input: CreateSecretInput): Promise<OpenedSecret>;
  getSecret(p: Principal, ref: SecretRef, version?: number): Promise<OpenedSecret>;
  listSecrets(p: Principal, input: ListSecretsInput): Promise<SecretPage>;
  updateSecret(p: Principal, ref: SecretRef, input: UpdateSecretInput): Promise<SecretDocument>;
  deleteSecret(p: Principal, ref: SecretRef, opts?: { purge?: boolean; expectedRevision?: number }): Promise<void>;
  undeleteSecret(p: Principal, ref: SecretRef, opts?: { id?: string }): Promise<SecretDocument>;
  rotateSecret(
    p: Principal,
    ref: SecretRef,
    opts?: { previousState?: Exclude<VersionState, "active">; expectedRevision?: number },
  ): Promise<OpenedSecret>;
  /** `caller` names an anonymous caller (its IP) for the limits on failed attempts. */
  verifySecret(p: Principal, ref: SecretRef, value: ValueInput | string, caller?: string): Promise<{ valid: boolean; version: number }>;
  listVersions(p: Principal, ref: SecretRef): Promise<SecretDocument>;
  setVersionState(p: Principal, ref: SecretRef, version: number, state: VersionState, expectedRevision?: number): Promise<SecretDocument>;
  copySecret(p: Principal, from: SecretRef, to: SecretRef): Promise<OpenedSecret>;
  renameSecret(p: Principal, ref: SecretRef, newName: string, expectedRevision?: number): Promise<SecretDocument>;
  moveSecret(p: Principal, ref: SecretRef, to: SecretRef, expectedRevision?: number): Promise<SecretDocument>;
  batchUpsert(p: Principal, store: string, items: readonly BatchItem[], atomic: boolean): Promise<BatchResult[]>;
  batchDelete(p: Principal, store: string, names: readonly string[], opts: { atomic: boolean; purge: boolean }): Promise<BatchResult[]>;
  batchGet(p: Principal, store: string, names: readonly string[]): Promise<BatchGetResult[]>;
  watchSecrets(p: Principal, input: WatchInput, signal: AbortSignal): AsyncGenerator<SecretEvent>;

  createStore(p: Principal, input: { name: string; description?: string; managedBy?: string }): Promise<StoreRecord>;
  getStore(p: Principal, name: string): Promise<StoreRecord>;
  listStores(p: Principal, input: { pageSize?: number; pageToken?: string }): Promise<{ stores: StoreRecord[]; nextPageToken: string }>;
  deleteStore(p: Principal, name: string, opts: { purge: boolean }): Promise<{ secrets: number; vars: number }>;
  usage(p: Principal, store?: string): Promise<{ usage: Usage; limits: Limits }>;

  /** Sets one or many vars, all or none; `vars` may be of any shape (decoded JSON): every problem is reported. */
  setVars(p: Principal, store: string, vars: readonly unknown[]): Promise<VarRecord[]>;
  getVar(p: Principal, store: string, name: string): Promise<VarRecord>;
  listVars(
    p: Principal,
    input: { store: string; prefix?: string; pageSize?: number; pageToken?: string },
  ): Promise<{ vars: VarRecord[]; nextPageToken: string }>;
  deleteVar(p: Principal, store: string, name: string): Promise<void>;

  /** Creates the default store if it does not exist (at start-up). */
  ensureDefaultStore(): Promise<void>;
}

export interface LatchkeyDeps {
  readonly storage: Storage;
  readonly manager: SecretManager;
  readonly envelope: Envelope;
  readonly quotas: QuotaGuard;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly maxVersions: number;
  /** Limits on failed verifications; none when absent. */
  readonly verifyLimiter?: VerifyLimiter;
}

/** Store records change rarely (ownership never): reads use a short-lived cache; writes check the store afresh. */
const STORE_CACHE_MS = 5000;
const SERVICE_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;

export function createLatchkey(deps: LatchkeyDeps): Latchkey {
  const { storage, manager, envelope, quotas, clock, logger, maxVersions, verifyLimiter } = deps;
  const storeCache = new Map<string, { rec: StoreRecord; at: number }>();

  /** The store, if `p` may see it; otherwise not_found, whether it exists or not. */
  async function visibleStore(p: Principal, name: string, fresh = false): Promise<StoreRecord> {
    noteTarget({ store: name });
    validateStoreName(name);
    let rec: StoreRecord | undefined;
    const hit = storeCache.get(name);
    if (!fresh && hit && clock.now() - hit.at < STORE_CACHE_MS) rec = hit.rec;
    else {
      rec = await storage.findStore(name);
      if (rec) storeCache.set(name, { rec, at: clock.now() });
      else storeCache.delete(name);
    }
    if (!rec || !canSee(p, rec)) throw storeNotFound(name);
    checkScope(p, name);
    return rec;
  }

  /** The secret's store, if `p` may see it and the token's scope covers the secret's name. */
  async function secretStore(p: Principal, ref: SecretRef, fresh = false): Promise<StoreRecord> {
    noteTarget({ name: ref.name });
    const rec = await visibleStore(p, ref.store, fresh);
    checkScope(p, ref.store, ref.name);
    return rec;
  }

  /** The byte length of a caller's value (text or binary), or of a generated one. */
  function valueBytes(v: ValueInput): number {
    if (v.binaryValue !== undefined) return v.binaryValue.length;
    return v.value === undefined ? 43 : Buffer.byteLength(v.value);
  }

  /** Growth of a secret write that adds one version of `valueBytes`, pruning beyond maxVersions. */
  async function versionGrowth(ref: SecretRef, valueBytes: number): Promise<Partial<Usage>> {
    const doc = await storage.findSecret(ref.store, ref.name);
    if (!doc) return {};
    const prunedCount = Math.max(0, doc.versions.length + 1 - maxVersions);
    const pruned = doc.versions.slice(0, prunedCount).reduce((n, v) => n + v.sealed.length, 0);
    return { versions: 1 - prunedCount, bytes: sealedSize(valueBytes) - pruned };
  }

  async function purgeContents(name: string): Promise<{ secrets: number; vars: number }> {
    // The key goes first: from then on nothing of the store can be opened, even if the purge is interrupted.
    await storage.deleteDataKeys(name);
    envelope.forget(name);
    let secrets = 0;
    for (let n = await storage.deleteStoreSecrets(name, 500); n > 0; n = await storage.deleteStoreSecrets(name, 500)) {
      secrets += n;
    }
    const vars = await storage.deleteStoreVars(name);
    return { secrets, vars };
  }

  return {
    async createSecret(p, input) {
      const store = await secretStore(p, input, true);
      const bytes = valueBytes(input);
      // A taken name grows nothing: let the insert report already_exists rather than the quota.
      const growth = async () =>
        (await storage.findSecret(input.store, input.name)) ? {} : { secrets: 1, versions: 1, bytes: sealedSize(bytes) };
      return quotas.admit(input.store, growth, () => manager.create({ ...input, storeCreatedAt: store.createdAt }));
    },
    async getSecret(p, ref, version) {
      await secretStore(p, ref);
      return manager.get(ref, version);
    },
    async listSecrets(p, input) {
      await visibleStore(p, input.store);
      checkPrefixScope(p, input.store, input.prefix ?? "");
      return manager.list(input);
    },
    async updateSecret(p, ref, input) {
      await secretStore(p, ref);
      if (input.value === undefined && input.binaryValue === undefined) return manager.update(ref, input);
      const bytes = valueBytes(input);
      return quotas.admit(ref.store, () => versionGrowth(ref, bytes), () => manager.update(ref, input));
    },
    async deleteSecret(p, ref, opts) {
      await secretStore(p, ref);
      return manager.delete(ref, opts);
    },
    async undeleteSecret(p, ref, opts) {
      await secretStore(p, ref);
      // A restored secret counts again.
      const growth = async (): Promise<Partial<Usage>> => {
        const page = await storage.listSecrets({ store: ref.store, prefix: ref.name, limit: 1000, state: "deleted" });
        const doc = page.find((d) => d.name === ref.name && (!opts?.id || d.id === opts.id));
        return doc ? { secrets: 1, versions: doc.versions.length, bytes: doc.versions.reduce((n, v) => n + v.sealed.length, 0) } : {};
      };
      return quotas.admit(ref.store, growth, () => manager.undelete(ref, opts));
    },
    async rotateSecret(p, ref, opts) {
      await secretStore(p, ref);
      return quotas.admit(ref.store, () => versionGrowth(ref, 43), () => manager.rotate(ref, opts));
    },
    async verifySecret(p, ref, value, caller) {
      await secretStore(p, ref);
      // Verify is an oracle: failed attempts are limited per secret and per caller, and checked before trying.
      const secretKey = `${ref.store}\0${ref.name}`;
      const callerKey = p.kind === "token" ? `token:${p.tokenId}` : `ip:${caller ?? "unknown"}`;
      verifyLimiter?.check(secretKey, callerKey);
      const result = await manager.verify(ref, typeof value === "string" ? { value } : value);
      if (!result.valid) verifyLimiter?.failed(secretKey, callerKey);
      return result;
    },
    async listVersions(p, ref) {
      await secretStore(p, ref);
      return manager.listVersions(ref);
    },
    async setVersionState(p, ref, version, state, expectedRevision) {
      await secretStore(p, ref);
      return manager.setVersionState(ref, version, state, expectedRevision);
    },
    async copySecret(p, from, to) {
      await secretStore(p, from);
      const target = await secretStore(p, to, true);
      const growth = async (): Promise<Partial<Usage>> => {
        const src = await storage.findSecret(from.store, from.name);
        const current = src?.versions[src.versions.length - 1];
        return { secrets: 1, versions: 1, bytes: current?.sealed.length ?? 0 };
      };
      return quotas.admit(to.store, growth, () => manager.copy(from, to, { storeCreatedAt: target.createdAt }));
    },
    async renameSecret(p, ref, newName, expectedRevision) {
      await secretStore(p, ref);
      checkScope(p, ref.store, newName);
      return manager.rename(ref, newName, expectedRevision);
    },
    async moveSecret(p, ref, to, expectedRevision) {
      await secretStore(p, ref);
      const target = await secretStore(p, to, true);
      if (to.store === ref.store) return manager.rename(ref, to.name, expectedRevision);
      const growth = async (): Promise<Partial<Usage>> => {
        const src = await storage.findSecret(ref.store, ref.name);
        if (!src) return {};
        return { secrets: 1, versions: src.versions.length, bytes: src.versions.reduce((n, v) => n + v.sealed.length, 0) };
      };
      return quotas.admit(to.store, growth, () =>
        manager.move(ref, to, { expectedRevision, storeCreatedAt: target.createdAt }),
      );
    },
    async batchUpsert(p, store, items, atomic) {
      const target = await visibleStore(p, store, true);
      for (const item of items) if (typeof item.name === "string") checkScope(p, store, item.name);
      const growth = async (): Promise<Partial<Usage>> => {
        let secrets = 0;
        let versions = 0;
        let bytes = 0;
        for (const item of items) {
          const exists = typeof item.name === "string" && (await storage.findSecret(store, item.name));
          const adds = !exists || item.value !== undefined || item.binaryValue !== undefined;
          if (!exists) secrets++;
          if (adds) {
            versions++;
            bytes += sealedSize(valueBytes(item));
          }
        }
        return { secrets, versions, bytes };
      };
      return quotas.admit(store, growth, () => manager.batchUpsert(store, items, atomic, target.createdAt));
    },
    async batchDelete(p, store, names, opts) {
      await visibleStore(p, store);
      for (const name of names) checkScope(p, store, name);
      return manager.batchDelete(store, names, opts);
    },
    async batchGet(p, store, names) {
      await visibleStore(p, store);
      for (const name of names) checkScope(p, store, name);
      return manager.batchGet(store, names);
    },
    async *watchSecrets(p, input, signal) {
      const start = await visibleStore(p, input.store, true);
      checkPrefixScope(p, input.store, input.prefix ?? "");
      for await (const ev of watchSecrets(storage, input, signal)) {
        // The watch ends with its store: the store is re-read for every event (one indexed read), so a store
        // purged and re-created under the same name, perhaps for another owner, is never watched through.
        if (ev.change) {
          const now = await storage.findStore(input.store);
          if (!now || now.createdAt !== start.createdAt || !canSee(p, now)) {
            // The purge of this very store reports each secret's deletion; anything else ends the watch.
            const purging = !now || (now.createdAt === start.createdAt && now.state === "purging");
            if (purging && ev.type === "deleted") {
              yield ev;
              continue;
            }
            throw storeNotFound(input.store);
          }
        }
        yield ev;
      }
    },

    async createStore(p, input) {
      validateStoreName(input.name, "name");
      checkScope(p, input.name);
      const description = validateDescription(input.description ?? "");
      if (input.managedBy && !isAdmin(p)) {
        throw invalidArgument("managed_by", "not_allowed", "only an admin can create a store for another service");
      }
      if (input.managedBy && !SERVICE_NAME.test(input.managedBy)) {
        throw invalidArgument("managed_by", "pattern", "managed_by must be a service name: letters, digits, _ . -");
      }
      const rec = newStoreRecord({ name: input.name, description, managedBy: ownerFor(p, input.managedBy) }, clock.now());
      return quotas.admit(rec.name, () => ({ stores: 1 }), async () => {
        if (!(await storage.insertStore(rec, auditFor({ store: rec.name })))) {
          throw new LatchkeyError("already_exists", `store "${rec.name}" already exists`, { reason: "STORE_EXISTS" });
        }
        storeCache.set(rec.name, { rec, at: clock.now() });
        logger.info({ event: "store_created", store: rec.name, managed_by: rec.managedBy }, "store created");
        return rec;
      });
    },
    async getStore(p, name) {
      return visibleStore(p, name, true);
    },
    async listStores(p, input) {
      const limit = pageLimit(input.pageSize);
      const managedBy = isAdmin(p) ? undefined : serviceOf(p);
      const rows = await storage.listStores({ after: decodePageToken(input.pageToken), limit: limit + 1, managedBy });
      const { items, nextPageToken } = page(rows, limit, (r) => r.name);
      const scoped = p.kind === "token" ? p.stores : null;
      return { stores: items.filter((r) => canSee(p, r) && (scoped === null || scoped.includes(r.name))), nextPageToken };
    },
    async deleteStore(p, name, opts) {
      validateStoreName(name, "name");
      const rec = await storage.findStore(name);
      // A store left half-purged by an interrupted purge stays deletable by whoever could see it.
      if (!rec || !canSee(p, { ...rec, state: "active" })) throw storeNotFound(name);
      checkScope(p, name);
      // A purge takes every secret of the store: a token limited to some names may not do it.
      if (p.kind === "token" && p.prefixes !== null) {
        throw new LatchkeyError("permission_denied", "a token limited to name prefixes cannot delete a store", {
          reason: "OUT_OF_SCOPE",
        });
      }
      if (name === DEFAULT_STORE) {
        throw new LatchkeyError("failed_precondition", "the default store cannot be deleted", { reason: "DEFAULT_STORE" });
      }
      if (rec.state === "active") {
        const held = await storage.usage(name);
        if ((held.secrets > 0 || held.vars > 0) && !opts.purge) {
          throw new LatchkeyError(
            "failed_precondition",
            `store "${name}" holds ${held.secrets} secrets and ${held.vars} vars: delete them, or purge the store`,
            { reason: "STORE_NOT_EMPTY", httpStatus: 409 },
          );
        }
      }
      const purging: StoreRecord = { ...rec, state: "purging", updatedAt: clock.now(), revision: rec.revision + 1 };
      if (rec.state === "active" && !(await storage.replaceStore(purging, rec.revision))) {
        throw new LatchkeyError("aborted", `store "${name}" changed while being deleted; retry`);
      }
      storeCache.delete(name);
      const removed = await purgeContents(name);
      await storage.deleteStore(name, rec.state === "active" ? purging.revision : rec.revision, auditFor({ store: name }));
      logger.info({ event: "store_deleted", store: name, purged_secrets: removed.secrets, purged_vars: removed.vars }, "store deleted");
      return removed;
    },
    async usage(p, store) {
      if (store === undefined || store === "") {
        if (!isAdmin(p)) {
          throw new LatchkeyError("permission_denied", "usage of the whole service needs an admin token");
        }
        return { usage: await storage.usage(), limits: quotas.limits.global };
      }
      await visibleStore(p, store, true);
      return { usage: await storage.usage(store), limits: quotas.limits.perStore };
    },

    async setVars(p, store, input) {
      const vars = checkVarList(input);
      await visibleStore(p, store, true);
      for (const v of vars) checkScope(p, store, v.name);
      // Records and growth are worked out inside the quota queue, from what the store holds at that moment.
      let records: VarRecord[] | undefined;
      const prepare = async (): Promise<Partial<Usage>> => {
        const existing = await Promise.all(vars.map((v) => storage.findVar(store, v.name)));
        const now = clock.now();
        records = vars.map((v, i) => setVar(existing[i], store, v.name, v.value, now));
        return {
          vars: existing.filter((e) => e === undefined).length,
          bytes: records.reduce((n, r, i) => n + Buffer.byteLength(r.value) - Buffer.byteLength(existing[i]?.value ?? ""), 0),
        };
      };
      return quotas.admit(store, prepare, async () => {
        if (!records) await prepare();
        await storage.putVars(records as VarRecord[], auditFor({ store, name: (records as VarRecord[])[0]?.name ?? "" }));
        return records as VarRecord[];
      });
    },
    async getVar(p, store, name) {
      await secretStore(p, { store, name });
      const v = await storage.findVar(store, name);
      if (!v) throw new LatchkeyError("not_found", `var "${name}" not found`, { reason: "VAR_NOT_FOUND" });
      return v;
    },
    async listVars(p, input) {
      await visibleStore(p, input.store);
      checkPrefixScope(p, input.store, input.prefix ?? "");
      const limit = pageLimit(input.pageSize);
      const rows = await storage.listVars({
        store: input.store,
        prefix: input.prefix ?? "",
        after: decodePageToken(input.pageToken),
        limit: limit + 1,
      });
      const { items, nextPageToken } = page(rows, limit, (v) => v.name);
      return { vars: items, nextPageToken };
    },
    async deleteVar(p, store, name) {
      await secretStore(p, { store, name });
      if (!(await storage.deleteVar(store, name, auditFor({ store, name })))) {
        throw new LatchkeyError("not_found", `var "${name}" not found`, { reason: "VAR_NOT_FOUND" });
      }
    },

    async ensureDefaultStore() {
      const rec = newStoreRecord({ name: DEFAULT_STORE, description: "the default store", managedBy: null }, clock.now());
      await storage.insertStore(rec);
    },
  };
}
