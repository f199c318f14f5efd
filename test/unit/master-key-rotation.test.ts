import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, afterEach, beforeEach, describe, it } from "node:test";
import { loadConfig } from "../../src/config/config.js";
import { createEnvelope, type Envelope, EnvelopeError, type MasterKey, masterKeyFrom } from "../../src/crypto/envelope.js";
import type { SecretDocument } from "../../src/domain/secret.js";
import { createLogger } from "../../src/log/logger.js";
import { createSecretManager, type SecretManager, type SecretRef } from "../../src/service/secret-manager.js";
import { createSqliteStorage } from "../../src/storage/sqlite/sqlite-storage.js";
import type { DataKeyRecord, Storage } from "../../src/storage/storage.js";

/** Master-key rotation: data keys wrapped by a previous master key still open, and rewrapAll moves them. */

const T0 = Date.UTC(2030, 0, 1);
const clock = { now: () => T0 };
const logger = createLogger("silent");
const KEY_A = masterKeyFrom(Buffer.alloc(32, 1));
const KEY_B = masterKeyFrom(Buffer.alloc(32, 2));
const KEY_C = masterKeyFrom(Buffer.alloc(32, 3));

const root = mkdtempSync(join(tmpdir(), "latchkey-rekey-"));
after(() => rmSync(root, { recursive: true, force: true }));

let counter = 0;
let storage: Storage;

function envelope(masterKey: MasterKey, previousMasterKeys: MasterKey[] = []): Envelope {
  return createEnvelope({ masterKey, previousMasterKeys, storage, clock });
}

function manager(env: Envelope): SecretManager {
  return createSecretManager({ storage, envelope: env, clock, logger, maxVersions: 5 });
}

async function assertEnvelopeError(p: Promise<unknown>, message?: RegExp): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof EnvelopeError, `an EnvelopeError, got ${String(err)}`);
    assert.equal(err.name, "EnvelopeError");
    if (message) assert.match(err.message, message);
    return true;
  });
}

async function allSecrets(): Promise<SecretDocument[]> {
  return storage.scanSecrets("", 1000);
}

/** Every value, by store, name and version, as `m` opens it. */
async function openAll(m: SecretManager): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const doc of await allSecrets()) {
    for (const v of doc.versions) {
      const r: SecretRef = { store: doc.store, name: doc.name };
      out.set(`${doc.store}/${doc.name}@${v.version}`, (await m.get(r, v.version)).value);
    }
  }
  return out;
}

/** The values written by `seed`. */
const EXPECTED = new Map([
  ["default/db/password@1", "pw-1"],
  ["default/db/password@2", "pw-2"],
  ["payments/api-key@1", "payments-key"],
  ["billing/token@1", "billing-1"],
  ["billing/token@2", "billing-2"],
  ["billing/token@3", "billing-3"],
]);

/** Values in three stores, several versions each, all sealed under master key A. */
async function seed(): Promise<void> {
  const m = manager(envelope(KEY_A));
  await m.create({ store: "default", name: "db/password", kind: "manual", value: "pw-1" });
  await m.update({ store: "default", name: "db/password" }, { value: "pw-2" });
  await m.create({ store: "payments", name: "api-key", kind: "manual", value: "payments-key" });
  await m.create({ store: "billing", name: "token", kind: "manual", value: "billing-1" });
  await m.update({ store: "billing", name: "token" }, { value: "billing-2" });
  await m.update({ store: "billing", name: "token" }, { value: "billing-3" });
}

const kekIds = (keys: DataKeyRecord[]) => keys.map((k) => k.kekId);

describe("master-key rotation", () => {
  beforeEach(async () => {
    storage = createSqliteStorage(join(root, `db-${++counter}`, "latchkey.db"));
    await seed();
  });
  afterEach(async () => {
    await storage.close();
  });

  it("seals every data key under the master key in use", async () => {
    const keys = await storage.listAllDataKeys();
    assert.deepEqual(
      keys.map((k) => k.store),
      ["billing", "default", "payments"],
    );
    assert.deepEqual(kekIds(keys), [KEY_A.id, KEY_A.id, KEY_A.id]);
    assert.deepEqual(await openAll(manager(envelope(KEY_A))), EXPECTED);
  });

  it("a new master key with the old one as previous opens every value before any re-wrap", async () => {
    const env = envelope(KEY_B, [KEY_A]);
    assert.deepEqual(await openAll(manager(env)), EXPECTED);
    for (const store of ["default", "payments", "billing"]) await env.check(store);
    assert.deepEqual(kekIds(await storage.listAllDataKeys()), [KEY_A.id, KEY_A.id, KEY_A.id], "reading re-wraps nothing");

    // A store's first key is made under the new master key.
    const m = manager(env);
    await m.create({ store: "fresh", name: "x", kind: "manual", value: "new" });
    const [fresh] = await storage.listDataKeys("fresh");
    assert.equal(fresh?.kekId, KEY_B.id);
    assert.equal((await m.get({ store: "fresh", name: "x" })).value, "new");
  });

  it("rewrapAll moves every data key to the new master key without touching a sealed value", async () => {
    const docsBefore = await allSecrets();
    const keysBefore = await storage.listAllDataKeys();
    const env = envelope(KEY_B, [KEY_A]);

    assert.equal(await env.rewrapAll(), keysBefore.length);

    const keysAfter = await storage.listAllDataKeys();
    assert.deepEqual(kekIds(keysAfter), keysBefore.map(() => KEY_B.id));
    assert.deepEqual(
      keysAfter.map((k) => [k.store, k.id, k.createdAt]),
      keysBefore.map((k) => [k.store, k.id, k.createdAt]),
      "the same data keys, only re-wrapped",
    );
    for (const [i, k] of keysAfter.entries()) assert.notEqual(k.wrapped, keysBefore[i]?.wrapped);
    assert.deepEqual(await allSecrets(), docsBefore, "secret documents, sealed values included, are unchanged");

    // The envelope that re-wrapped still opens everything (its cache was refreshed).
    assert.deepEqual(await openAll(manager(env)), EXPECTED);
  });

  it("after rewrapAll the new master key alone opens everything, and the old one alone fails clearly", async () => {
    assert.equal(await envelope(KEY_B, [KEY_A]).rewrapAll(), 3);

    assert.deepEqual(await openAll(manager(envelope(KEY_B))), EXPECTED);

    const onlyA = manager(envelope(KEY_A));
    await assertEnvelopeError(
      onlyA.get({ store: "default", name: "db/password" }),
      new RegExp(`store "default" was wrapped by master key ${KEY_B.id}, but the configured master key is ${KEY_A.id}`),
    );
    await assertEnvelopeError(onlyA.get({ store: "billing", name: "token" }, 1), new RegExp(KEY_B.id));
    await assertEnvelopeError(envelope(KEY_A).check("payments"), /wrapped by master key/);
    await assertEnvelopeError(onlyA.verify({ store: "payments", name: "api-key" }, "payments-key"));
  });

  it("the error names key ids only, never key material", async () => {
    await envelope(KEY_B, [KEY_A]).rewrapAll();
    await assert.rejects(envelope(KEY_A).check("default"), (err: unknown) => {
      assert.ok(err instanceof EnvelopeError);
      for (const k of [KEY_A, KEY_B]) {
        assert.ok(!err.message.includes(k.key.toString("base64")));
        assert.ok(!err.message.includes(k.key.toString("hex")));
      }
      return true;
    });
  });

  it("rewrapAll a second time is a no-op", async () => {
    const env = envelope(KEY_B, [KEY_A]);
    assert.equal(await env.rewrapAll(), 3);
    const keys = await storage.listAllDataKeys();
    assert.equal(await env.rewrapAll(), 0);
    assert.equal(await envelope(KEY_B, [KEY_A]).rewrapAll(), 0, "also from another envelope");
    assert.equal(await envelope(KEY_B).rewrapAll(), 0, "and without the previous key");
    assert.deepEqual(await storage.listAllDataKeys(), keys, "not even re-sealed");
  });

  it("rewrapAll with nothing to move returns 0 and changes nothing", async () => {
    const keys = await storage.listAllDataKeys();
    assert.equal(await envelope(KEY_A).rewrapAll(), 0);
    assert.equal(await envelope(KEY_A, [KEY_C]).rewrapAll(), 0);
    assert.deepEqual(await storage.listAllDataKeys(), keys);
  });

  it("re-wraps keys of several generations, and every data key of a store", async () => {
    // Two envelopes racing on a new store each add a data key: the store then has two keys.
    const [e1, e2] = [envelope(KEY_A), envelope(KEY_A)];
    const [m1, m2] = [manager(e1), manager(e2)];
    await Promise.all([
      m1.create({ store: "raced", name: "one", kind: "manual", value: "v-one" }),
      m2.create({ store: "raced", name: "two", kind: "manual", value: "v-two" }),
    ]);
    const raced = await storage.listDataKeys("raced");
    assert.equal(raced.length, 2, "two data keys in one store");
    // A store whose key was made under B (a process already on the new key).
    await manager(envelope(KEY_B, [KEY_A])).create({ store: "newer", name: "n", kind: "manual", value: "v-new" });

    const env = envelope(KEY_C, [KEY_A, KEY_B]);
    assert.equal(await env.rewrapAll(), 3 + 2 + 1);
    assert.ok(kekIds(await storage.listAllDataKeys()).every((id) => id === KEY_C.id));

    const onlyC = manager(envelope(KEY_C));
    assert.deepEqual(await openAll(onlyC), new Map([
      ...EXPECTED,
      ["newer/n@1", "v-new"],
      ["raced/one@1", "v-one"],
      ["raced/two@1", "v-two"],
    ]));
  });

  it("rewrapAll without the key that wrapped a data key fails with an EnvelopeError", async () => {
    await assertEnvelopeError(envelope(KEY_B).rewrapAll(), new RegExp(`wrapped by master key ${KEY_A.id}`));
    assert.deepEqual(kekIds(await storage.listAllDataKeys()), [KEY_A.id, KEY_A.id, KEY_A.id], "nothing moved");
    assert.deepEqual(await openAll(manager(envelope(KEY_A))), EXPECTED);
  });

  it("a previous key configured in the environment is used the way the app wires it", async () => {
    const config = loadConfig({
      LATCHKEY_MASTER_KEY: KEY_B.key.toString("base64"),
      LATCHKEY_PREVIOUS_MASTER_KEYS: `${KEY_C.key.toString("base64")}, ${KEY_A.key.toString("base64")}`,
    });
    assert.ok(config.masterKey);
    const env = envelope(masterKeyFrom(config.masterKey), config.previousMasterKeys.map(masterKeyFrom));
    assert.equal(await env.rewrapAll(), 3);
    assert.deepEqual(await openAll(manager(envelope(KEY_B))), EXPECTED);
  });
});
