import { randomBytes } from "node:crypto";
import type { DataKeyRecord, Storage } from "../storage/storage.js";
import { keyId, open, seal } from "./aead.js";

/** A master key (key-encryption key): wraps data keys, never touches values. */
export interface MasterKey {
  readonly id: string;
  readonly key: Buffer;
}

export function masterKeyFrom(key: Buffer): MasterKey {
  if (key.length !== 32) throw new Error("a master key is 32 bytes");
  return { id: keyId(key), key };
}

/**
 * Envelope seals and opens secret values.
 *
 * Each store has a random 256-bit data key, stored wrapped by the master key. Values are sealed with AES-256-GCM
 * under the store's data key; the associated data binds a ciphertext to (store, secret id, version), so a ciphertext
 * copied onto another secret or version fails to open. Sealed form: `v1.<data key id>.<base64 nonce|ct|tag>`.
 */
export interface Envelope {
  /**
   * Seals under the store's active data key. `hint.keyId` prefers a given key of the store (new versions of a
   * secret use the key of its latest version, so a process whose view of the store is stale cannot pick a key a
   * purge destroyed); `hint.notBefore` refuses a cached active key created before that time (the store's creation)
   * and re-reads the store's keys.
   */
  seal(store: string, secretId: string, version: number, plaintext: Uint8Array, hint?: SealHint): Promise<string>;
  open(store: string, secretId: string, version: number, sealed: string): Promise<Buffer>;
  /** Loads every data key of a store and checks the master key opens it (start-up check). */
  check(store: string): Promise<void>;
  /** Drops a store's cached keys (after its keys were destroyed). */
  forget(store: string): void;
  /**
   * Re-wraps under the current master key every data key still wrapped by a previous one. Values are not touched.
   * Returns how many keys were re-wrapped.
   */
  rewrapAll(): Promise<number>;
}

/** The size of the sealed form of a plaintext of `bytes` bytes. */
export function sealedSize(bytes: number): number {
  return "v1.".length + 16 + 1 + Math.ceil((12 + bytes + 16) / 3) * 4;
}

export interface SealHint {
  readonly keyId?: string | undefined;
  readonly notBefore?: number | undefined;
}

/** The data key id a sealed value names, or undefined for an empty (destroyed) one. */
export function sealedKeyId(sealed: string): string | undefined {
  const parts = sealed.split(".");
  return parts.length === 3 && parts[0] === "v1" ? parts[1] : undefined;
}

/** SealedFormatError: a stored envelope is malformed or cannot be opened (wrong key, tampering). */
export class EnvelopeError extends Error {
  override name = "EnvelopeError";
}

interface ActiveKey {
  id: string;
  key: Buffer;
  createdAt: number;
}

interface StoreKeys {
  active: ActiveKey | undefined;
  byId: Map<string, Buffer>;
}

export function valueAad(store: string, secretId: string, version: number): string {
  return `latchkey/value/v1\0${store}\0${secretId}\0${version}`;
}

function dataKeyAad(store: string, id: string): string {
  return `latchkey/data-key/v1\0${store}\0${id}`;
}

export function createEnvelope(deps: {
  masterKey: MasterKey;
  /** Earlier master keys: data keys they wrapped still open, and rewrapAll moves them to `masterKey`. */
  previousMasterKeys?: readonly MasterKey[];
  storage: Pick<Storage, "listDataKeys" | "insertDataKey"> & Partial<Pick<Storage, "listAllDataKeys" | "rewrapDataKey">>;
  clock: { now(): number };
}): Envelope {
  const { masterKey, storage, clock } = deps;
  const masters = new Map<string, MasterKey>([[masterKey.id, masterKey]]);
  for (const k of deps.previousMasterKeys ?? []) if (!masters.has(k.id)) masters.set(k.id, k);
  const cache = new Map<string, StoreKeys>();
  const loading = new Map<string, Promise<StoreKeys>>();

  function unwrap(rec: DataKeyRecord): Buffer {
    const kek = masters.get(rec.kekId);
    if (!kek) {
      throw new EnvelopeError(
        `data key ${rec.id} of store "${rec.store}" was wrapped by master key ${rec.kekId}, ` +
          `but the configured master key is ${masterKey.id}`,
      );
    }
    try {
      return open(kek.key, Buffer.from(rec.wrapped, "base64"), dataKeyAad(rec.store, rec.id));
    } catch {
      throw new EnvelopeError(`data key ${rec.id} of store "${rec.store}" does not open with master key ${kek.id}`);
    }
  }

  async function load(store: string): Promise<StoreKeys> {
    const records = await storage.listDataKeys(store);
    const keys: StoreKeys = { active: undefined, byId: new Map() };
    for (const rec of records) {
      const key = unwrap(rec);
      keys.byId.set(rec.id, key);
      keys.active = { id: rec.id, key, createdAt: rec.createdAt };
    }
    cache.set(store, keys);
    return keys;
  }

  function keysOf(store: string): StoreKeys | Promise<StoreKeys> {
    const hit = cache.get(store);
    if (hit) return hit;
    let p = loading.get(store);
    if (!p) {
      p = load(store).finally(() => loading.delete(store));
      loading.set(store, p);
    }
    return p;
  }

  const creating = new Map<string, Promise<ActiveKey>>();

  async function activeKey(store: string, notBefore: number | undefined): Promise<ActiveKey> {
    let keys = await keysOf(store);
    if (keys.active && notBefore !== undefined && keys.active.createdAt < notBefore) {
      // Cached from before the store was (re)created: another process may have purged it since. Whatever the
      // store holds now is right.
      cache.delete(store);
      keys = await keysOf(store);
    }
    if (keys.active) return keys.active;
    // One creation per store at a time in this process; racing processes may each add one, and all of them open.
    let pending = creating.get(store);
    if (!pending) {
      pending = createKey(store).finally(() => creating.delete(store));
      creating.set(store, pending);
    }
    return pending;
  }

  async function createKey(store: string): Promise<ActiveKey> {
    let keys = await keysOf(store);
    if (keys.active) return keys.active;
    const key = randomBytes(32);
    const id = keyId(key);
    const wrapped = seal(masterKey.key, key, dataKeyAad(store, id)).toString("base64");
    await storage.insertDataKey({ store, id, kekId: masterKey.id, wrapped, createdAt: clock.now() });
    cache.delete(store);
    keys = await keysOf(store);
    if (!keys.active) throw new EnvelopeError(`data key of store "${store}" vanished after it was written`);
    return keys.active;
  }

  async function keyById(store: string, id: string): Promise<Buffer | undefined> {
    let key = (await keysOf(store)).byId.get(id);
    if (key === undefined) {
      // Another process may have created the store's key since we cached it.
      cache.delete(store);
      key = (await keysOf(store)).byId.get(id);
    }
    return key;
  }

  async function requireKey(store: string, id: string): Promise<Buffer> {
    const key = await keyById(store, id);
    if (key === undefined) throw new EnvelopeError(`data key ${id} of store "${store}" not found`);
    return key;
  }

  return {
    async seal(store, secretId, version, plaintext, hint) {
      const preferred = hint?.keyId === undefined ? undefined : await keyById(store, hint.keyId);
      const { id, key } = preferred ? { id: hint?.keyId as string, key: preferred } : await activeKey(store, hint?.notBefore);
      return `v1.${id}.${seal(key, plaintext, valueAad(store, secretId, version)).toString("base64")}`;
    },
    async open(store, secretId, version, sealed) {
      const parts = sealed.split(".");
      if (parts.length !== 3 || parts[0] !== "v1") throw new EnvelopeError("unknown sealed value format");
      const key = await requireKey(store, parts[1] as string);
      try {
        return open(key, Buffer.from(parts[2] as string, "base64"), valueAad(store, secretId, version));
      } catch {
        throw new EnvelopeError(`version ${version} of secret ${secretId} does not open: wrong key or tampered`);
      }
    },
    async check(store) {
      cache.delete(store);
      await keysOf(store);
    },
    forget(store) {
      cache.delete(store);
    },
    async rewrapAll() {
      if (!storage.listAllDataKeys || !storage.rewrapDataKey) return 0;
      let moved = 0;
      for (const rec of await storage.listAllDataKeys()) {
        if (rec.kekId === masterKey.id) continue;
        const key = unwrap(rec);
        const wrapped = seal(masterKey.key, key, dataKeyAad(rec.store, rec.id)).toString("base64");
        if (await storage.rewrapDataKey({ ...rec, kekId: masterKey.id, wrapped }, rec.kekId)) moved++;
      }
      cache.clear();
      return moved;
    },
  };
}
