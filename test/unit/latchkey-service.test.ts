import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, afterEach, beforeEach, describe, it } from "node:test";
import { createEnvelope, type Envelope, masterKeyFrom, sealedSize } from "../../src/crypto/envelope.js";
import { type ErrorCode, LatchkeyError } from "../../src/domain/errors.js";
import { ANONYMOUS, adminPrincipal, type Principal, type TokenPrincipal } from "../../src/domain/principal.js";
import type { StoreRecord } from "../../src/domain/store.js";
import { createLogger } from "../../src/log/logger.js";
import { createLatchkey, type Latchkey } from "../../src/service/latchkey.js";
import { createQuotaGuard, type QuotaLimits } from "../../src/service/quotas.js";
import { createSecretManager, type SecretRef } from "../../src/service/secret-manager.js";
import { createSqliteStorage } from "../../src/storage/sqlite/sqlite-storage.js";
import type { Storage } from "../../src/storage/storage.js";

/** The application service over real SQLite storage and real envelope encryption, with a clock the tests move. */

const T0 = Date.UTC(2030, 0, 1);
const SEC = 1000;
const MAX_VERSIONS = 3;
const NO_LIMITS: QuotaLimits = { global: {}, perStore: {} };

const ADMIN: Principal = adminPrincipal("admin:aaaaaaaaaaaa");
/** A service's token, as LATCHKEY_SERVICE_TOKENS makes it: a writer bound to the service. */
const service = (name: string, tokenId: string): Principal => ({ kind: "token", tokenId, role: "writer", service: name, stores: null, prefixes: null });
const BILLING = service("billing", "service:billing:bbbbbbbbbbbb");
const SEARCH = service("search", "service:search:cccccccccccc");

/** Who a principal is, for assertion messages. */
const who = (p: Principal) => (p.kind === "token" ? `${p.role}${p.service ? `:${p.service}` : ""}` : p.kind);

const root = mkdtempSync(join(tmpdir(), "latchkey-service-"));
after(() => rmSync(root, { recursive: true, force: true }));

let counter = 0;
let t = T0;
const clock = { now: () => t };
const logger = createLogger("silent");
let opened: Storage[] = [];

interface World {
  readonly storage: Storage;
  readonly envelope: Envelope;
  readonly latchkey: Latchkey;
}

/** A fresh data directory, or the given storage, with a Latchkey over it enforcing `limits`. */
function world(limits: QuotaLimits = NO_LIMITS, storage?: Storage): World {
  if (!storage) {
    storage = createSqliteStorage(join(root, `db-${++counter}`, "latchkey.db"));
    opened.push(storage);
  }
  const envelope = createEnvelope({ masterKey: masterKeyFrom(Buffer.alloc(32, 7)), storage, clock });
  const manager = createSecretManager({ storage, envelope, clock, logger, maxVersions: MAX_VERSIONS });
  const latchkey = createLatchkey({
    storage,
    manager,
    envelope,
    quotas: createQuotaGuard(storage, limits),
    clock,
    logger,
    maxVersions: MAX_VERSIONS,
  });
  return { storage, envelope, latchkey };
}

function isError(err: unknown, code: ErrorCode, reason?: string): true {
  assert.ok(err instanceof LatchkeyError, `a LatchkeyError, got ${String(err)}`);
  assert.equal(err.code, code, err.message);
  if (reason !== undefined) assert.equal(err.reason, reason, err.message);
  return true;
}

async function assertCode(p: Promise<unknown>, code: ErrorCode, reason?: string): Promise<void> {
  await assert.rejects(p, (err: unknown) => isError(err, code, reason));
}

/** Asserts a store-not-found answer: what a caller gets for a store it may not see, never permission_denied. */
async function assertStoreNotFound(p: Promise<unknown>): Promise<void> {
  await assertCode(p, "not_found", "STORE_NOT_FOUND");
}

async function assertViolations(p: Promise<unknown>, expected: [field: string, reason: string][]): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    isError(err, "invalid_argument");
    const e = err as LatchkeyError;
    assert.deepEqual(
      e.violations.map((v) => [v.field, v.reason]),
      expected,
    );
    for (const v of e.violations) assert.ok(e.message.includes(v.message), `the message carries "${v.message}"`);
    return true;
  });
}

const ref = (store: string, name: string): SecretRef => ({ store, name });

async function drain<T>(it: AsyncGenerator<T>): Promise<void> {
  // Only the first step matters: it is where visibility is checked.
  await it.next();
}

let w: World;
let lk: Latchkey;
let storage: Storage;

describe("latchkey service", () => {
  beforeEach(async () => {
    t = T0;
    w = world();
    ({ latchkey: lk, storage } = w);
    await lk.ensureDefaultStore();
  });
  afterEach(async () => {
    for (const s of opened.splice(0)) await s.close();
  });

  describe("default store", () => {
    it("ensureDefaultStore creates the default store once and leaves it alone afterwards", async () => {
      const first = await lk.getStore(ADMIN, "default");
      assert.equal(first.state, "active");
      assert.equal(first.managedBy, null);
      assert.equal(first.createdAt, T0);
      t += 60 * SEC;
      await lk.ensureDefaultStore();
      await lk.ensureDefaultStore();
      assert.deepEqual(await storage.findStore("default"), first);
      const { stores } = await lk.listStores(ADMIN, {});
      assert.deepEqual(
        stores.map((s) => s.name),
        ["default"],
      );
    });

    it("cannot be deleted, even empty, by an admin; services do not even see it", async () => {
      await assertCode(lk.deleteStore(ADMIN, "default", { purge: true }), "failed_precondition", "DEFAULT_STORE");
      await assertStoreNotFound(lk.deleteStore(BILLING, "default", { purge: true }));
      assert.equal((await storage.findStore("default"))?.state, "active");
    });
  });

  describe("stores", () => {
    it("creates, gets, lists and deletes a store", async () => {
      t += SEC;
      const rec = await lk.createStore(ADMIN, { name: "payments", description: "card processing" });
      assert.deepEqual(rec, {
        name: "payments",
        description: "card processing",
        managedBy: null,
        state: "active",
        createdAt: T0 + SEC,
        updatedAt: T0 + SEC,
        revision: 1,
      });
      assert.deepEqual(await lk.getStore(ADMIN, "payments"), rec);
      assert.deepEqual(await storage.findStore("payments"), rec);
      assert.deepEqual(
        (await lk.listStores(ADMIN, {})).stores.map((s) => s.name),
        ["default", "payments"],
      );

      assert.deepEqual(await lk.deleteStore(ADMIN, "payments", { purge: false }), { secrets: 0, vars: 0 });
      await assertStoreNotFound(lk.getStore(ADMIN, "payments"));
      assert.equal(await storage.findStore("payments"), undefined);
      assert.deepEqual(
        (await lk.listStores(ADMIN, {})).stores.map((s) => s.name),
        ["default"],
      );
      await assertStoreNotFound(lk.deleteStore(ADMIN, "payments", { purge: false }));
    });

    it("refuses a taken name, a bad name and a long description", async () => {
      await lk.createStore(ADMIN, { name: "payments" });
      await assertCode(lk.createStore(ADMIN, { name: "payments" }), "already_exists", "STORE_EXISTS");
      await assertCode(lk.createStore(BILLING, { name: "payments" }), "already_exists", "STORE_EXISTS");
      await assertViolations(lk.createStore(ADMIN, { name: "-bad" }), [["name", "pattern"]]);
      await assertViolations(lk.createStore(ADMIN, { name: "" }), [["name", "required"]]);
      await assertViolations(lk.createStore(ADMIN, { name: "ok", description: "d".repeat(1025) }), [["description", "too_long"]]);
      assert.equal(await storage.findStore("ok"), undefined);
    });

    it("gives a store created with a service token to that service", async () => {
      const rec = await lk.createStore(BILLING, { name: "billing-prod" });
      assert.equal(rec.managedBy, "billing");
      assert.equal((await storage.findStore("billing-prod"))?.managedBy, "billing");
    });

    it("lets an admin create a store on a service's behalf", async () => {
      const rec = await lk.createStore(ADMIN, { name: "search-idx", managedBy: "search" });
      assert.equal(rec.managedBy, "search");
      assert.deepEqual(await lk.getStore(SEARCH, "search-idx"), rec);
      await assertViolations(lk.createStore(ADMIN, { name: "x", managedBy: "not a service!" }), [["managed_by", "pattern"]]);
      assert.equal(await storage.findStore("x"), undefined);
    });

    it("does not let a service create a store for another service", async () => {
      await assertViolations(lk.createStore(BILLING, { name: "sneaky", managedBy: "search" }), [["managed_by", "not_allowed"]]);
      assert.equal(await storage.findStore("sneaky"), undefined);
      await assertStoreNotFound(lk.getStore(SEARCH, "sneaky"));
    });

    it("deleting a store with contents needs purge: failed_precondition STORE_NOT_EMPTY, 409, nothing changed", async () => {
      await lk.createStore(ADMIN, { name: "payments" });
      await lk.createSecret(ADMIN, { ...ref("payments", "db/password"), kind: "manual", value: "s3cret" });
      await assert.rejects(lk.deleteStore(ADMIN, "payments", { purge: false }), (err: unknown) => {
        isError(err, "failed_precondition", "STORE_NOT_EMPTY");
        assert.equal((err as LatchkeyError).httpStatus, 409);
        assert.match((err as LatchkeyError).message, /1 secrets and 0 vars/);
        return true;
      });
      const rec = await storage.findStore("payments");
      assert.equal(rec?.state, "active");
      assert.equal(rec?.revision, 1);
      assert.equal((await lk.getSecret(ADMIN, ref("payments", "db/password"))).value, "s3cret");

      // Vars alone also make a store non-empty.
      await lk.createStore(ADMIN, { name: "config" });
      await lk.setVars(ADMIN, "config", [{ name: "region", value: "eu" }]);
      await assertCode(lk.deleteStore(ADMIN, "config", { purge: false }), "failed_precondition", "STORE_NOT_EMPTY");
      assert.equal((await lk.getVar(ADMIN, "config", "region")).value, "eu");
    });

    it("purge removes secrets, vars and data keys, and returns what it removed", async () => {
      await lk.createStore(ADMIN, { name: "payments" });
      await lk.createStore(ADMIN, { name: "other" });
      for (const name of ["a", "b/c", "d"]) {
        await lk.createSecret(ADMIN, { ...ref("payments", name), kind: "manual", value: `value-${name}` });
      }
      await lk.updateSecret(ADMIN, ref("payments", "a"), { value: "second" });
      await lk.createSecret(ADMIN, { ...ref("payments", "auto"), kind: "automatic" });
      await lk.setVars(ADMIN, "payments", [
        { name: "region", value: "eu" },
        { name: "tier", value: "gold" },
      ]);
      await lk.createSecret(ADMIN, { ...ref("other", "a"), kind: "manual", value: "kept" });
      await lk.setVars(ADMIN, "other", [{ name: "region", value: "us" }]);
      assert.equal((await storage.listDataKeys("payments")).length, 1);

      assert.deepEqual(await lk.deleteStore(ADMIN, "payments", { purge: true }), { secrets: 4, vars: 2 });

      assert.deepEqual(await storage.listDataKeys("payments"), []);
      assert.deepEqual(await storage.listSecrets({ store: "payments", prefix: "", limit: 100 }), []);
      assert.deepEqual(await storage.listVars({ store: "payments", prefix: "", limit: 100 }), []);
      assert.equal(await storage.findStore("payments"), undefined);
      assert.deepEqual(await storage.usage("payments"), { stores: 0, secrets: 0, versions: 0, vars: 0, bytes: 0 });
      await assertStoreNotFound(lk.getSecret(ADMIN, ref("payments", "a")));

      // Other stores are untouched.
      assert.equal((await lk.getSecret(ADMIN, ref("other", "a"))).value, "kept");
      assert.equal((await lk.getVar(ADMIN, "other", "region")).value, "us");
      assert.equal((await storage.listDataKeys("other")).length, 1);
    });

    it("an interrupted purge leaves the store invisible, and deleting it again finishes the job", async () => {
      const rec = await lk.createStore(BILLING, { name: "billing-prod" });
      await lk.createSecret(BILLING, { ...ref("billing-prod", "a"), kind: "manual", value: "1" });
      await lk.createSecret(BILLING, { ...ref("billing-prod", "b"), kind: "manual", value: "2" });
      await lk.setVars(BILLING, "billing-prod", [{ name: "region", value: "eu" }]);
      // A purge that died after marking the store: the record says "purging", the contents are all still there.
      const purging: StoreRecord = { ...rec, state: "purging", updatedAt: T0 + SEC, revision: rec.revision + 1 };
      assert.equal(await storage.replaceStore(purging, rec.revision), true);
      t += 60 * SEC; // past any cached store record

      for (const p of [ADMIN, BILLING]) {
        await assertStoreNotFound(lk.getStore(p, "billing-prod"));
        await assertStoreNotFound(lk.getSecret(p, ref("billing-prod", "a")));
        await assertStoreNotFound(lk.createSecret(p, { ...ref("billing-prod", "c"), kind: "manual", value: "3" }));
        await assertStoreNotFound(lk.setVars(p, "billing-prod", [{ name: "x", value: "y" }]));
        assert.ok(!(await lk.listStores(p, {})).stores.some((s) => s.name === "billing-prod"));
      }
      // Only those who could see it may finish it.
      await assertStoreNotFound(lk.deleteStore(SEARCH, "billing-prod", { purge: true }));
      await assertStoreNotFound(lk.deleteStore(ANONYMOUS, "billing-prod", { purge: true }));

      assert.deepEqual(await lk.deleteStore(BILLING, "billing-prod", { purge: true }), { secrets: 2, vars: 1 });
      assert.equal(await storage.findStore("billing-prod"), undefined);
      assert.deepEqual(await storage.listDataKeys("billing-prod"), []);
      assert.deepEqual(await storage.usage("billing-prod"), { stores: 0, secrets: 0, versions: 0, vars: 0, bytes: 0 });

      // The name is free again.
      await lk.createStore(BILLING, { name: "billing-prod" });
      assert.deepEqual((await lk.listSecrets(BILLING, { store: "billing-prod" })).docs, []);
    });

    it("a recreated store sees none of the old store's secrets or vars, and gets a new data key", async () => {
      await lk.createStore(ADMIN, { name: "payments" });
      await lk.createSecret(ADMIN, { ...ref("payments", "db/password"), kind: "manual", value: "old" });
      await lk.setVars(ADMIN, "payments", [{ name: "region", value: "eu" }]);
      const [oldKey] = await storage.listDataKeys("payments");
      assert.ok(oldKey);
      await lk.deleteStore(ADMIN, "payments", { purge: true });

      await lk.createStore(ADMIN, { name: "payments" });
      await assertCode(lk.getSecret(ADMIN, ref("payments", "db/password")), "not_found", "SECRET_NOT_FOUND");
      assert.deepEqual((await lk.listSecrets(ADMIN, { store: "payments" })).docs, []);
      assert.deepEqual((await lk.listVars(ADMIN, { store: "payments" })).vars, []);
      await assertCode(lk.getVar(ADMIN, "payments", "region"), "not_found", "VAR_NOT_FOUND");
      assert.deepEqual((await lk.usage(ADMIN, "payments")).usage, { stores: 1, secrets: 0, versions: 0, vars: 0, bytes: 0 });

      const created = await lk.createSecret(ADMIN, { ...ref("payments", "db/password"), kind: "manual", value: "new" });
      assert.equal(created.version.version, 1);
      assert.equal((await lk.getSecret(ADMIN, ref("payments", "db/password"))).value, "new");
      const keys = await storage.listDataKeys("payments");
      assert.equal(keys.length, 1);
      assert.notEqual(keys[0]?.id, oldKey.id);
    });

    it("a store purged and recreated by another process: values written afterwards open everywhere", async () => {
      // Two processes sharing one data file: this one (lk) has used the store's data key and cached it.
      const other = world(NO_LIMITS, storage);
      await lk.createStore(ADMIN, { name: "payments" });
      await lk.createSecret(ADMIN, { ...ref("payments", "old"), kind: "manual", value: "old" });
      const [oldKey] = await storage.listDataKeys("payments");

      t += 60 * SEC;
      await other.latchkey.deleteStore(ADMIN, "payments", { purge: true });
      await other.latchkey.createStore(ADMIN, { name: "payments" });

      // This process writes into the new store.
      await lk.createSecret(ADMIN, { ...ref("payments", "new"), kind: "manual", value: "written after the purge" });
      const doc = await storage.findSecret("payments", "new");
      assert.ok(doc && oldKey);
      assert.ok(!doc.versions[0]?.sealed.startsWith(`v1.${oldKey.id}.`), "not sealed under the destroyed data key");
      // A third process (or this one after a restart) can open it.
      const fresh = world(NO_LIMITS, storage);
      assert.equal((await fresh.latchkey.getSecret(ADMIN, ref("payments", "new"))).value, "written after the purge");
      assert.equal((await other.latchkey.getSecret(ADMIN, ref("payments", "new"))).value, "written after the purge");
    });

    it("pages through stores with page tokens", async () => {
      const names = ["s01", "s02", "s03", "s04", "s05", "s06", "s07"];
      for (const name of names) await lk.createStore(ADMIN, { name });
      await lk.createStore(ADMIN, { name: "b1", managedBy: "billing" });
      await lk.createStore(BILLING, { name: "b2" });
      await lk.createStore(BILLING, { name: "b3" });

      async function all(p: Principal, pageSize: number): Promise<string[][]> {
        const pages: string[][] = [];
        let pageToken = "";
        do {
          const res = await lk.listStores(p, { pageSize, pageToken });
          pages.push(res.stores.map((s) => s.name));
          pageToken = res.nextPageToken;
        } while (pageToken !== "" && pages.length < 20);
        return pages;
      }

      assert.deepEqual(await all(ADMIN, 4), [
        ["b1", "b2", "b3", "default"],
        ["s01", "s02", "s03", "s04"],
        ["s05", "s06", "s07"],
      ]);
      assert.deepEqual(await all(ADMIN, 0), [["b1", "b2", "b3", "default", ...names]], "0 means the default page size");
      assert.deepEqual(await all(BILLING, 2), [["b1", "b2"], ["b3"]]);
      assert.deepEqual(await all(SEARCH, 2), [[]]);
      assert.deepEqual(await all(ANONYMOUS, 3), [
        ["default", "s01", "s02"],
        ["s03", "s04", "s05"],
        ["s06", "s07"],
      ]);
      const exact = await lk.listStores(BILLING, { pageSize: 3 });
      assert.equal(exact.stores.length, 3);
      assert.equal(exact.nextPageToken, "", "no token when the page ends exactly at the last store");

      await assertViolations(lk.listStores(ADMIN, { pageToken: "not-a-token" }), [["page_token", "malformed"]]);
      await assertViolations(lk.listStores(ADMIN, { pageSize: -1 }), [["page_size", "out_of_range"]]);
    });
  });

  describe("visibility", () => {
    beforeEach(async () => {
      await lk.createStore(BILLING, { name: "billing-prod" });
      await lk.createSecret(BILLING, { ...ref("billing-prod", "api-key"), kind: "automatic" });
      await lk.setVars(BILLING, "billing-prod", [{ name: "region", value: "eu" }]);
      await lk.createSecret(ADMIN, { ...ref("default", "shared"), kind: "manual", value: "shared-value" });
    });

    /** Every call a caller might make on `store`, each expected to fail with store-not-found. */
    function everyCall(p: Principal, store: string): [string, () => Promise<unknown>][] {
      const r = ref(store, "api-key");
      return [
        ["getStore", () => lk.getStore(p, store)],
        ["getSecret", () => lk.getSecret(p, r)],
        ["getSecret v1", () => lk.getSecret(p, r, 1)],
        ["listSecrets", () => lk.listSecrets(p, { store })],
        ["createSecret", () => lk.createSecret(p, { ...ref(store, "new"), kind: "manual", value: "v" })],
        ["updateSecret", () => lk.updateSecret(p, r, { description: "x" })],
        ["updateSecret value", () => lk.updateSecret(p, r, { value: "x" })],
        ["rotateSecret", () => lk.rotateSecret(p, r)],
        ["verifySecret", () => lk.verifySecret(p, r, "guess")],
        ["deleteSecret", () => lk.deleteSecret(p, r)],
        ["watchSecrets", () => drain(lk.watchSecrets(p, { store }, new AbortController().signal))],
        ["setVars", () => lk.setVars(p, store, [{ name: "region", value: "us" }])],
        ["getVar", () => lk.getVar(p, store, "region")],
        ["listVars", () => lk.listVars(p, { store })],
        ["deleteVar", () => lk.deleteVar(p, store, "region")],
        ["usage", () => lk.usage(p, store)],
        ["deleteStore", () => lk.deleteStore(p, store, { purge: true })],
      ];
    }

    it("a service's store is not found for other services and anonymous readers, never permission_denied", async () => {
      for (const p of [SEARCH, ANONYMOUS]) {
        for (const [call, fn] of everyCall(p, "billing-prod")) {
          await assert.rejects(fn(), (err: unknown) => {
            assert.ok(err instanceof LatchkeyError, `${who(p)} ${call}: a LatchkeyError, got ${String(err)}`);
            assert.equal(err.code, "not_found", `${who(p)} ${call}: ${err.message}`);
            assert.equal(err.reason, "STORE_NOT_FOUND", `${who(p)} ${call}`);
            return true;
          });
        }
      }
      // Nothing changed.
      assert.equal((await lk.getSecret(BILLING, ref("billing-prod", "api-key"))).version.version, 1);
      assert.equal((await lk.getVar(BILLING, "billing-prod", "region")).value, "eu");
      assert.equal((await storage.findStore("billing-prod"))?.state, "active");
    });

    it("answers a hidden store exactly like a missing one", async () => {
      const hidden = await lk.getStore(SEARCH, "billing-prod").catch((e: unknown) => e as LatchkeyError);
      const missing = await lk.getStore(SEARCH, "no-such-store").catch((e: unknown) => e as LatchkeyError);
      assert.ok(hidden instanceof LatchkeyError && missing instanceof LatchkeyError);
      assert.equal(hidden.code, missing.code);
      assert.equal(hidden.reason, missing.reason);
      assert.equal(hidden.message.replace("billing-prod", "X"), missing.message.replace("no-such-store", "X"));
    });

    it("a service does not see unowned stores such as default", async () => {
      for (const [call, fn] of everyCall(BILLING, "default")) {
        await assert.rejects(fn(), (err: unknown) => {
          assert.ok(err instanceof LatchkeyError, `${call}: a LatchkeyError, got ${String(err)}`);
          assert.equal(err.code, "not_found", `${call}: ${err.message}`);
          return true;
        });
      }
      assert.equal((await lk.getSecret(ANONYMOUS, ref("default", "shared"))).value, "shared-value");
    });

    it("the owning service and admins see the store", async () => {
      for (const p of [BILLING, ADMIN]) {
        assert.equal((await lk.getStore(p, "billing-prod")).managedBy, "billing");
        assert.equal((await lk.getSecret(p, ref("billing-prod", "api-key"))).version.version, 1);
        assert.equal((await lk.listSecrets(p, { store: "billing-prod" })).docs.length, 1);
        assert.equal((await lk.getVar(p, "billing-prod", "region")).value, "eu");
        assert.equal((await lk.usage(p, "billing-prod")).usage.secrets, 1);
      }
      assert.equal((await lk.getSecret(ADMIN, ref("default", "shared"))).value, "shared-value");
    });
  });

  describe("token scopes", () => {
    const scoped = (over: Partial<Omit<TokenPrincipal, "kind">>): Principal => ({
      kind: "token",
      tokenId: "tok_scoped",
      role: "writer",
      service: null,
      stores: null,
      prefixes: null,
      ...over,
    });

    async function assertOutOfScope(p: Promise<unknown>): Promise<void> {
      await assertCode(p, "permission_denied", "OUT_OF_SCOPE");
    }

    beforeEach(async () => {
      await lk.createStore(ADMIN, { name: "payments" });
      await lk.createSecret(ADMIN, { ...ref("default", "ci/token"), kind: "manual", value: "ci" });
      await lk.createSecret(ADMIN, { ...ref("default", "prod/token"), kind: "manual", value: "prod" });
      await lk.createSecret(ADMIN, { ...ref("payments", "ci/token"), kind: "manual", value: "pay" });
    });

    it("a store-scoped token reaches only its stores, and lists only them", async () => {
      const p = scoped({ role: "reader", stores: ["default"] });
      assert.equal((await lk.getSecret(p, ref("default", "prod/token"))).value, "prod");
      await assertOutOfScope(lk.getSecret(p, ref("payments", "ci/token")));
      await assertOutOfScope(lk.getStore(p, "payments"));
      await assertOutOfScope(lk.listSecrets(p, { store: "payments" }));
      await assertOutOfScope(lk.usage(p, "payments"));
      assert.deepEqual(
        (await lk.listStores(p, {})).stores.map((s) => s.name),
        ["default"],
      );
    });

    it("a prefix-scoped token reaches only names under its prefixes, and must list under one", async () => {
      const p = scoped({ prefixes: ["ci/"] });
      assert.equal((await lk.getSecret(p, ref("default", "ci/token"))).value, "ci");
      await assertOutOfScope(lk.getSecret(p, ref("default", "prod/token")));
      await assertOutOfScope(lk.verifySecret(p, ref("default", "prod/token"), "prod"));
      await assertOutOfScope(lk.createSecret(p, { ...ref("default", "prod/new"), kind: "manual", value: "v" }));
      await assertOutOfScope(lk.renameSecret(p, ref("default", "ci/token"), "prod/renamed"));
      await assertOutOfScope(lk.copySecret(p, ref("default", "ci/token"), ref("default", "prod/copy")));
      await assertOutOfScope(lk.batchGet(p, "default", ["ci/token", "prod/token"]));
      await assertOutOfScope(lk.setVars(p, "default", [{ name: "ci/a", value: "1" }, { name: "prod/a", value: "2" }]));
      assert.equal(await storage.findVar("default", "ci/a"), undefined, "all or nothing");
      await assertOutOfScope(lk.listSecrets(p, { store: "default" }));
      assert.deepEqual(
        (await lk.listSecrets(p, { store: "default", prefix: "ci/" })).docs.map((d) => d.name),
        ["ci/token"],
      );
      assert.equal(await storage.findSecret("default", "prod/new"), undefined);
      assert.equal(await storage.findSecret("default", "prod/copy"), undefined);
      assert.ok(await storage.findSecret("default", "ci/token"), "not renamed");
    });

    it("visibility comes first: a scoped token gets not_found for a store it cannot see", async () => {
      await lk.createStore(BILLING, { name: "billing-prod" });
      const p = scoped({ stores: ["billing-prod"] });
      await assertStoreNotFound(lk.getStore(p, "billing-prod"));
      await assertStoreNotFound(lk.getSecret(p, ref("billing-prod", "x")));
    });

    it("a service token scoped to some of its stores cannot delete the others", async () => {
      await lk.createStore(BILLING, { name: "billing-a" });
      await lk.createStore(BILLING, { name: "billing-b" });
      const p = scoped({ service: "billing", stores: ["billing-a"] });
      await assertOutOfScope(lk.getStore(p, "billing-b"));
      await assertOutOfScope(lk.deleteStore(p, "billing-b", { purge: true }));
      assert.equal((await storage.findStore("billing-b"))?.state, "active", "the store out of scope is still there");
      await lk.deleteStore(p, "billing-a", { purge: false });
    });
  });

  describe("secrets", () => {
    it("secrets of the same name in two stores are independent", async () => {
      await lk.createStore(ADMIN, { name: "payments" });
      const a = await lk.createSecret(ADMIN, { ...ref("default", "db/password"), kind: "manual", value: "in-default" });
      const b = await lk.createSecret(ADMIN, { ...ref("payments", "db/password"), kind: "manual", value: "in-payments" });
      assert.notEqual(a.doc.id, b.doc.id);

      await lk.updateSecret(ADMIN, ref("payments", "db/password"), { value: "changed", description: "rotated by hand" });
      const inDefault = await lk.getSecret(ADMIN, ref("default", "db/password"));
      assert.equal(inDefault.value, "in-default");
      assert.equal(inDefault.doc.revision, 1);
      assert.equal(inDefault.doc.description, "");
      const inPayments = await lk.getSecret(ADMIN, ref("payments", "db/password"));
      assert.equal(inPayments.value, "changed");
      assert.equal(inPayments.version.version, 2);

      assert.deepEqual(await lk.verifySecret(ADMIN, ref("default", "db/password"), "changed"), { valid: false, version: 0 });
      assert.deepEqual(await lk.verifySecret(ADMIN, ref("payments", "db/password"), "changed"), { valid: true, version: 2 });

      await lk.deleteSecret(ADMIN, ref("default", "db/password"));
      await assertCode(lk.getSecret(ADMIN, ref("default", "db/password")), "not_found", "SECRET_NOT_FOUND");
      assert.equal((await lk.getSecret(ADMIN, ref("payments", "db/password"))).value, "changed");
      assert.deepEqual(
        (await lk.listSecrets(ADMIN, { store: "payments" })).docs.map((d) => d.name),
        ["db/password"],
      );
      assert.deepEqual((await lk.listSecrets(ADMIN, { store: "default" })).docs, []);
    });

    it("each store has its own data key", async () => {
      await lk.createStore(ADMIN, { name: "payments" });
      await lk.createSecret(ADMIN, { ...ref("default", "x"), kind: "manual", value: "1" });
      await lk.createSecret(ADMIN, { ...ref("payments", "x"), kind: "manual", value: "2" });
      const [k1] = await storage.listDataKeys("default");
      const [k2] = await storage.listDataKeys("payments");
      assert.ok(k1 && k2);
      assert.notEqual(k1.id, k2.id);
    });
  });

  describe("vars", () => {
    it("sets new and existing vars: createdAt kept, revision + 1", async () => {
      const [created] = await lk.setVars(ADMIN, "default", [{ name: "region", value: "eu" }]);
      assert.deepEqual(created, { store: "default", name: "region", value: "eu", createdAt: T0, updatedAt: T0, revision: 1 });
      t += 5 * SEC;
      const records = await lk.setVars(ADMIN, "default", [
        { name: "region", value: "us" },
        { name: "tier", value: "gold" },
      ]);
      assert.deepEqual(records, [
        { store: "default", name: "region", value: "us", createdAt: T0, updatedAt: T0 + 5 * SEC, revision: 2 },
        { store: "default", name: "tier", value: "gold", createdAt: T0 + 5 * SEC, updatedAt: T0 + 5 * SEC, revision: 1 },
      ]);
      assert.deepEqual(await lk.getVar(ANONYMOUS, "default", "region"), records[0]);
      assert.deepEqual(await storage.findVar("default", "tier"), records[1]);
    });

    it("lists vars by prefix with page tokens, and deletes them", async () => {
      await lk.setVars(ADMIN, "default", [
        { name: "app/a", value: "1" },
        { name: "app/b", value: "2" },
        { name: "app/c", value: "3" },
        { name: "db/host", value: "4" },
      ]);
      const first = await lk.listVars(ADMIN, { store: "default", prefix: "app/", pageSize: 2 });
      assert.deepEqual(
        first.vars.map((v) => v.name),
        ["app/a", "app/b"],
      );
      assert.notEqual(first.nextPageToken, "");
      const second = await lk.listVars(ADMIN, { store: "default", prefix: "app/", pageSize: 2, pageToken: first.nextPageToken });
      assert.deepEqual(
        second.vars.map((v) => v.name),
        ["app/c"],
      );
      assert.equal(second.nextPageToken, "");

      await lk.deleteVar(ADMIN, "default", "app/b");
      await assertCode(lk.deleteVar(ADMIN, "default", "app/b"), "not_found", "VAR_NOT_FOUND");
      await assertCode(lk.getVar(ADMIN, "default", "app/b"), "not_found", "VAR_NOT_FOUND");
      assert.deepEqual(
        (await lk.listVars(ADMIN, { store: "default" })).vars.map((v) => v.name),
        ["app/a", "app/c", "db/host"],
      );
    });

    it("setVars is all or nothing and lists every violation, duplicates included", async () => {
      await lk.setVars(ADMIN, "default", [{ name: "region", value: "eu" }]);
      await assertViolations(
        lk.setVars(ADMIN, "default", [
          { name: "region", value: "us" },
          { name: "", value: "x" },
          { name: "empty", value: "" },
          { name: "a/../b", value: "v" },
          { name: "dup", value: "1" },
          { name: "dup", value: "2" },
          { name: "big", value: "x".repeat(10_241) },
          { name: "fine", value: "ok" },
        ]),
        [
          ["vars[1].name", "required"],
          ["vars[2].value", "empty"],
          ["vars[3].name", "pattern"],
          ["vars[5].name", "duplicate"],
          ["vars[6].value", "too_long"],
        ],
      );
      assert.equal((await lk.getVar(ADMIN, "default", "region")).value, "eu", "the valid vars were not written either");
      assert.equal((await lk.getVar(ADMIN, "default", "region")).revision, 1);
      assert.equal(await storage.findVar("default", "dup"), undefined);
      assert.equal(await storage.findVar("default", "fine"), undefined);
      assert.equal((await storage.usage("default")).vars, 1);
    });

    it("setVars validates before looking at the store, and refuses empty or oversized calls", async () => {
      await assertViolations(lk.setVars(ADMIN, "default", []), [["vars", "required"]]);
      const many = Array.from({ length: 1001 }, (_, i) => ({ name: `v${i}`, value: "x" }));
      await assertViolations(lk.setVars(ADMIN, "default", many), [["vars", "too_many"]]);
      assert.equal((await storage.usage("default")).vars, 0);
    });
  });

  describe("usage", () => {
    it("counts stores, secrets, versions, vars and bytes of one store and of the whole service", async () => {
      await lk.createStore(ADMIN, { name: "payments" });
      const created = await lk.createSecret(ADMIN, { ...ref("payments", "a"), kind: "manual", value: "hello" });
      assert.equal(created.version.sealed.length, sealedSize(5), "sealedSize predicts the sealed length");
      await lk.setVars(ADMIN, "payments", [
        { name: "k", value: "vvv" },
        { name: "accent", value: "é" },
      ]);
      assert.deepEqual(await lk.usage(ADMIN, "payments"), {
        usage: { stores: 1, secrets: 1, versions: 1, vars: 2, bytes: sealedSize(5) + 3 + 2 },
        limits: {},
      });

      await lk.updateSecret(ADMIN, ref("payments", "a"), { value: "hello, world" });
      const auto = await lk.createSecret(ADMIN, { ...ref("payments", "auto"), kind: "automatic" });
      assert.equal(auto.version.sealed.length, sealedSize(43));
      const expectedBytes = sealedSize(5) + sealedSize(12) + sealedSize(43) + 3 + 2;
      await assertStoreNotFound(lk.usage(BILLING, "payments"));
      assert.deepEqual((await lk.usage(ANONYMOUS, "payments")).usage, { stores: 1, secrets: 2, versions: 3, vars: 2, bytes: expectedBytes });

      // Versions beyond MAX_VERSIONS are dropped and stop counting.
      for (let i = 0; i < 5; i++) await lk.rotateSecret(ADMIN, ref("payments", "auto"));
      const u = (await lk.usage(ADMIN, "payments")).usage;
      assert.equal(u.versions, 2 + MAX_VERSIONS);
      assert.equal(u.bytes, sealedSize(5) + sealedSize(12) + MAX_VERSIONS * sealedSize(43) + 3 + 2);

      await lk.createSecret(ADMIN, { ...ref("default", "d"), kind: "manual", value: "xy" });
      assert.deepEqual(await lk.usage(ADMIN), {
        usage: { stores: 2, secrets: 3, versions: 3 + MAX_VERSIONS, vars: 2, bytes: u.bytes + sealedSize(2) },
        limits: {},
      });
      assert.deepEqual((await lk.usage(ADMIN, "")).usage, (await lk.usage(ADMIN)).usage, "an empty store means the service");
    });

    it("usage of the whole service needs an admin", async () => {
      for (const p of [BILLING, ANONYMOUS]) {
        await assertCode(lk.usage(p), "permission_denied");
        await assertCode(lk.usage(p, ""), "permission_denied");
      }
    });

    it("reports the limits that apply", async () => {
      const limited = world({ global: { stores: 10, bytes: 1_000_000 }, perStore: { secrets: 5 } });
      await limited.latchkey.ensureDefaultStore();
      assert.deepEqual((await limited.latchkey.usage(ADMIN)).limits, { stores: 10, bytes: 1_000_000 });
      assert.deepEqual((await limited.latchkey.usage(ADMIN, "default")).limits, { secrets: 5 });
    });
  });

  describe("quotas", () => {
    it("refuses a secret past the store's limit and changes nothing", async () => {
      const q = world({ global: {}, perStore: { secrets: 2 } });
      await q.latchkey.ensureDefaultStore();
      await q.latchkey.createStore(ADMIN, { name: "other" });
      await q.latchkey.createSecret(ADMIN, { ...ref("default", "a"), kind: "manual", value: "1" });
      await q.latchkey.createSecret(ADMIN, { ...ref("default", "b"), kind: "automatic" });
      const before = await q.storage.usage("default");

      await assertCode(q.latchkey.createSecret(ADMIN, { ...ref("default", "c"), kind: "manual", value: "3" }), "resource_exhausted", "QUOTA_EXCEEDED");
      await assertCode(q.latchkey.createSecret(ADMIN, { ...ref("default", "d"), kind: "automatic" }), "resource_exhausted", "QUOTA_EXCEEDED");
      assert.deepEqual(await q.storage.usage("default"), before);
      assert.equal(await q.storage.findSecret("default", "c"), undefined);

      // The limit is per store; and writes that do not add secrets still pass.
      await q.latchkey.createSecret(ADMIN, { ...ref("other", "c"), kind: "manual", value: "3" });
      await q.latchkey.updateSecret(ADMIN, ref("default", "a"), { value: "new" });
      await q.latchkey.rotateSecret(ADMIN, ref("default", "b"));
      await q.latchkey.deleteSecret(ADMIN, ref("default", "a"));
      await q.latchkey.createSecret(ADMIN, { ...ref("default", "c"), kind: "manual", value: "3" });
    });

    it("refuses a new version past the bytes limit, leaving the secret as it was", async () => {
      const q = world({ global: {}, perStore: { bytes: 2 * sealedSize(10) } });
      await q.latchkey.ensureDefaultStore();
      await q.latchkey.createSecret(ADMIN, { ...ref("default", "a"), kind: "manual", value: "0123456789" });
      const doc = await q.storage.findSecret("default", "a");

      // Sealed values grow in steps of 3 plaintext bytes (base64): 12 bytes seal larger than 10.
      assert.ok(sealedSize(12) > sealedSize(10));
      await assertCode(q.latchkey.updateSecret(ADMIN, ref("default", "a"), { value: "012345678901" }), "resource_exhausted", "QUOTA_EXCEEDED");
      assert.deepEqual(await q.storage.findSecret("default", "a"), doc);
      await assertCode(q.latchkey.createSecret(ADMIN, { ...ref("default", "b"), kind: "manual", value: "012345678901" }), "resource_exhausted", "QUOTA_EXCEEDED");
      assert.equal(await q.storage.findSecret("default", "b"), undefined);

      // Exactly at the limit is allowed; metadata-only updates never count.
      await q.latchkey.updateSecret(ADMIN, ref("default", "a"), { value: "abcdefghij" });
      assert.equal((await q.storage.usage("default")).bytes, 2 * sealedSize(10));
      await q.latchkey.updateSecret(ADMIN, ref("default", "a"), { description: "at the limit" });
    });

    it("at maxVersions, a new version of the same size adds nothing and passes at the bytes limit", async () => {
      const q = world({ global: {}, perStore: { bytes: MAX_VERSIONS * sealedSize(43), versions: MAX_VERSIONS } });
      await q.latchkey.ensureDefaultStore();
      await q.latchkey.createSecret(ADMIN, { ...ref("default", "auto"), kind: "automatic" });
      for (let i = 1; i < MAX_VERSIONS; i++) await q.latchkey.rotateSecret(ADMIN, ref("default", "auto"));
      assert.deepEqual(await q.storage.usage("default"), {
        stores: 1,
        secrets: 1,
        versions: MAX_VERSIONS,
        vars: 0,
        bytes: MAX_VERSIONS * sealedSize(43),
      });
      const rotated = await q.latchkey.rotateSecret(ADMIN, ref("default", "auto"));
      assert.equal(rotated.version.version, MAX_VERSIONS + 1);
      assert.equal((await q.storage.usage("default")).bytes, MAX_VERSIONS * sealedSize(43));
    });

    it("refuses vars past the limit, all or nothing; replacing existing vars passes", async () => {
      const q = world({ global: {}, perStore: { vars: 2 } });
      await q.latchkey.ensureDefaultStore();
      await q.latchkey.setVars(ADMIN, "default", [{ name: "a", value: "1" }]);
      await assertCode(
        q.latchkey.setVars(ADMIN, "default", [
          { name: "b", value: "2" },
          { name: "c", value: "3" },
        ]),
        "resource_exhausted",
        "QUOTA_EXCEEDED",
      );
      assert.equal(await q.storage.findVar("default", "b"), undefined);
      assert.equal(await q.storage.findVar("default", "c"), undefined);
      await q.latchkey.setVars(ADMIN, "default", [
        { name: "a", value: "one" },
        { name: "b", value: "2" },
      ]);
      await q.latchkey.setVars(ADMIN, "default", [
        { name: "a", value: "uno" },
        { name: "b", value: "dos" },
      ]);
      assert.equal((await q.storage.usage("default")).vars, 2);
    });

    it("refuses a store past the service's limit", async () => {
      const q = world({ global: { stores: 2 }, perStore: {} });
      await q.latchkey.ensureDefaultStore();
      await q.latchkey.createStore(ADMIN, { name: "one" });
      await assertCode(q.latchkey.createStore(BILLING, { name: "two" }), "resource_exhausted", "QUOTA_EXCEEDED");
      assert.equal(await q.storage.findStore("two"), undefined);
      await q.latchkey.deleteStore(ADMIN, "one", { purge: false });
      await q.latchkey.createStore(BILLING, { name: "two" });
    });

    it("a lowered limit refuses growth but lets shrinking and neutral writes through", async () => {
      await lk.createSecret(ADMIN, { ...ref("default", "a"), kind: "manual", value: "1" });
      await lk.createSecret(ADMIN, { ...ref("default", "b"), kind: "manual", value: "2" });
      await lk.createSecret(ADMIN, { ...ref("default", "c"), kind: "automatic" });
      await lk.setVars(ADMIN, "default", [
        { name: "x", value: "1" },
        { name: "y", value: "2" },
      ]);
      const lowered = world({ global: { secrets: 2 }, perStore: { vars: 1 } }, storage).latchkey;

      await assertCode(lowered.createSecret(ADMIN, { ...ref("default", "d"), kind: "manual", value: "4" }), "resource_exhausted", "QUOTA_EXCEEDED");
      await assertCode(lowered.setVars(ADMIN, "default", [{ name: "z", value: "3" }]), "resource_exhausted", "QUOTA_EXCEEDED");
      await lowered.updateSecret(ADMIN, ref("default", "a"), { description: "metadata only" });
      await lowered.updateSecret(ADMIN, ref("default", "a"), { value: "11" });
      await lowered.rotateSecret(ADMIN, ref("default", "c"));
      await lowered.setVars(ADMIN, "default", [{ name: "x", value: "one" }]);
      await lowered.deleteSecret(ADMIN, ref("default", "b"));
      await lowered.deleteVar(ADMIN, "default", "y");
      assert.deepEqual(
        { secrets: (await storage.usage()).secrets, vars: (await storage.usage()).vars },
        { secrets: 2, vars: 1 },
      );
    });

    it("setVars cannot overshoot when a var it replaces is deleted while it waits", async () => {
      // A storage whose next lookup of var "a" reads, then is held until the test releases it: the caller gets
      // what "a" was before anything the test does meanwhile.
      const real = createSqliteStorage(join(root, `db-${++counter}`, "latchkey.db"));
      opened.push(real);
      let hold: { entered: () => void; release: Promise<void> } | undefined;
      const gated: Storage = {
        ...real,
        async findVar(store, name) {
          const found = await real.findVar(store, name);
          const h = hold;
          if (h && name === "a") {
            hold = undefined;
            h.entered();
            await h.release;
          }
          return found;
        },
      };
      const q = world({ global: {}, perStore: { vars: 1 } }, gated).latchkey;
      await q.ensureDefaultStore();
      await q.setVars(ADMIN, "default", [{ name: "a", value: "1" }]);

      let entered!: () => void;
      const inLookup = new Promise<void>((r) => (entered = r));
      let release!: () => void;
      hold = { entered, release: new Promise<void>((r) => (release = r)) };

      // Replaces "a": it sees "a" exist, so as measured then it adds no var.
      const replacing = q.setVars(ADMIN, "default", [{ name: "a", value: "2" }]);
      await inLookup;
      await q.deleteVar(ADMIN, "default", "a");
      // Adds "b", which fits now that "a" is gone.
      let addingSettled = false;
      const adding = q.setVars(ADMIN, "default", [{ name: "b", value: "x" }]).finally(() => {
        addingSettled = true;
      });
      // Let "b" go as far as it can (it may have to wait for the replacement: then it never settles here).
      for (let i = 0; i < 100 && !addingSettled; i++) await new Promise((r) => setImmediate(r));
      release();
      const outcomes = await Promise.allSettled([replacing, adding]);

      const held = (await real.usage("default")).vars;
      assert.ok(held <= 1, `the store holds ${held} vars over a limit of 1`);
      for (const o of outcomes) {
        if (o.status === "rejected") isError(o.reason, "resource_exhausted", "QUOTA_EXCEEDED");
      }
    });
  });
});
