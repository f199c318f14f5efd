import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, afterEach, beforeEach, describe, it } from "node:test";
import { createEnvelope, type Envelope, EnvelopeError, masterKeyFrom } from "../../src/crypto/envelope.js";
import { createSqliteStorage } from "../../src/storage/sqlite/sqlite-storage.js";
import type { Storage } from "../../src/storage/storage.js";

/** Envelope encryption over a real SQLite store: round trips, binding to (store, id, version), keys, processes. */

const T0 = Date.UTC(2030, 0, 1);
const clock = { now: () => T0 };
const KEY_A = masterKeyFrom(Buffer.alloc(32, 1));
const KEY_B = masterKeyFrom(Buffer.alloc(32, 2));
const PLAIN = "correct horse battery staple";

const root = mkdtempSync(join(tmpdir(), "latchkey-envelope-"));
after(() => rmSync(root, { recursive: true, force: true }));

let counter = 0;
let file: string;
let opened: Storage[] = [];

/** A storage handle on the current test's database file; each call is like another process. */
function storageHandle(): Storage {
  const s = createSqliteStorage(file);
  opened.push(s);
  return s;
}

function envelope(storage: Storage = storageHandle(), masterKey = KEY_A): Envelope {
  return createEnvelope({ masterKey, storage, clock });
}

const bytes = (s: string) => Buffer.from(s, "utf8");

async function assertEnvelopeError(p: Promise<unknown>, message?: RegExp): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof EnvelopeError, `an EnvelopeError, got ${String(err)}`);
    assert.equal(err.name, "EnvelopeError");
    if (message) assert.match(err.message, message);
    return true;
  });
}

/** Flips one bit of the byte at `index` of the sealed payload (the part after the key id). */
function tamper(sealed: string, index: number): string {
  const [format, keyId, payload] = sealed.split(".") as [string, string, string];
  const box = Buffer.from(payload, "base64");
  box[index] = (box[index] as number) ^ 0x01;
  return `${format}.${keyId}.${box.toString("base64")}`;
}

describe("envelope", () => {
  beforeEach(() => {
    file = join(root, `db-${++counter}`, "latchkey.db");
  });
  afterEach(async () => {
    for (const s of opened.splice(0)) await s.close();
  });

  it("opens what it sealed", async () => {
    const env = envelope();
    const sealed = await env.seal("default", "id-1", 1, bytes(PLAIN));
    assert.equal((await env.open("default", "id-1", 1, sealed)).toString("utf8"), PLAIN);
  });

  it("round-trips empty, binary and multi-byte plaintexts", async () => {
    const env = envelope();
    for (const plain of [Buffer.alloc(0), Buffer.from([0, 255, 1, 254]), bytes("päss🔑"), Buffer.alloc(10_240 * 4, 0x61)]) {
      const sealed = await env.seal("default", "id-1", 3, plain);
      assert.ok((await env.open("default", "id-1", 3, sealed)).equals(plain));
    }
  });

  it("produces the documented format, never containing the plaintext", async () => {
    const env = envelope();
    const sealed = await env.seal("default", "id-1", 1, bytes(PLAIN));
    assert.match(sealed, /^v1\.[0-9a-f]{16}\.[A-Za-z0-9+/]+=*$/);
    assert.ok(!sealed.includes(PLAIN));
    assert.ok(!sealed.includes(bytes(PLAIN).toString("base64")));
    const payload = Buffer.from(sealed.split(".")[2] as string, "base64");
    assert.equal(payload.length, 12 + bytes(PLAIN).length + 16, "nonce || ciphertext || tag");
    assert.equal(payload.includes(bytes(PLAIN)), false);
  });

  it("seals the same plaintext differently each time (fresh nonce)", async () => {
    const env = envelope();
    const a = await env.seal("default", "id-1", 1, bytes(PLAIN));
    const b = await env.seal("default", "id-1", 1, bytes(PLAIN));
    assert.notEqual(a, b);
  });

  it("binds a ciphertext to its secret id", async () => {
    const env = envelope();
    const sealed = await env.seal("default", "id-1", 1, bytes(PLAIN));
    await assertEnvelopeError(env.open("default", "id-2", 1, sealed), /does not open/);
  });

  it("binds a ciphertext to its version", async () => {
    const env = envelope();
    const sealed = await env.seal("default", "id-1", 1, bytes(PLAIN));
    await assertEnvelopeError(env.open("default", "id-1", 2, sealed), /does not open/);
  });

  it("binds a ciphertext to its store", async () => {
    const env = envelope();
    const sealed = await env.seal("default", "id-1", 1, bytes(PLAIN));
    await env.seal("other", "id-x", 1, bytes("give the other store a data key"));
    await assertEnvelopeError(env.open("other", "id-1", 1, sealed));
    await assertEnvelopeError(envelope().open("never-used", "id-1", 1, sealed), /not found/);
  });

  it("gives each store its own data key", async () => {
    const env = envelope();
    const a = await env.seal("a", "id", 1, bytes(PLAIN));
    const b = await env.seal("b", "id", 1, bytes(PLAIN));
    assert.notEqual(a.split(".")[1], b.split(".")[1]);
    const storage = storageHandle();
    assert.equal((await storage.listDataKeys("a")).length, 1);
    assert.equal((await storage.listDataKeys("b")).length, 1);
  });

  it("rejects any tampered byte: nonce, ciphertext or tag", async () => {
    const env = envelope();
    const sealed = await env.seal("default", "id-1", 1, bytes(PLAIN));
    const size = Buffer.from(sealed.split(".")[2] as string, "base64").length;
    for (const i of [0, 11, 12, 12 + 5, size - 17, size - 16, size - 1]) {
      await assertEnvelopeError(env.open("default", "id-1", 1, tamper(sealed, i)), /does not open/);
    }
  });

  it("rejects malformed and truncated envelopes", async () => {
    const env = envelope();
    const sealed = await env.seal("default", "id-1", 1, bytes(PLAIN));
    const [, keyId] = sealed.split(".") as [string, string, string];
    await assertEnvelopeError(env.open("default", "id-1", 1, "garbage"), /unknown sealed value format/);
    await assertEnvelopeError(env.open("default", "id-1", 1, sealed.replace(/^v1\./, "v2.")), /unknown sealed value format/);
    await assertEnvelopeError(env.open("default", "id-1", 1, `${sealed}.extra`), /unknown sealed value format/);
    await assertEnvelopeError(env.open("default", "id-1", 1, `v1.${keyId}.AAAA`), /does not open/);
    await assertEnvelopeError(env.open("default", "id-1", 1, `v1.0000000000000000.${sealed.split(".")[2]}`), /not found/);
  });

  it("stores the data key wrapped, never in the clear", async () => {
    const storage = storageHandle();
    const env = envelope(storage);
    const sealed = await env.seal("default", "id-1", 1, bytes(PLAIN));
    const keys = await storage.listDataKeys("default");
    assert.equal(keys.length, 1);
    const rec = keys[0];
    assert.ok(rec);
    assert.equal(rec.id, sealed.split(".")[1]);
    assert.equal(rec.kekId, KEY_A.id);
    assert.equal(rec.createdAt, T0);
    assert.equal(Buffer.from(rec.wrapped, "base64").length, 12 + 32 + 16);
  });

  it("fails with a clear EnvelopeError under a different master key", async () => {
    const sealed = await envelope().seal("default", "id-1", 1, bytes(PLAIN));
    const wrong = envelope(storageHandle(), KEY_B);
    await assertEnvelopeError(wrong.open("default", "id-1", 1, sealed), new RegExp(`wrapped by master key ${KEY_A.id}.*configured master key is ${KEY_B.id}`));
    await assertEnvelopeError(wrong.check("default"), /master key/);
    await assertEnvelopeError(wrong.seal("default", "id-2", 1, bytes(PLAIN)), /master key/);
  });

  it("reports a wrapped data key that does not open with the master key", async () => {
    const storage = storageHandle();
    await storage.insertDataKey({
      store: "default",
      id: "forged0000000000",
      kekId: KEY_A.id,
      wrapped: Buffer.alloc(60, 7).toString("base64"),
      createdAt: T0,
    });
    await assertEnvelopeError(envelope(storage).check("default"), /does not open with master key/);
  });

  it("passes the start-up check for an empty store and a store with keys", async () => {
    const env = envelope();
    await env.check("default");
    await env.seal("default", "id-1", 1, bytes(PLAIN));
    await env.check("default");
    await envelope().check("default");
  });

  it("opens values sealed by another process sharing the file", async () => {
    const first = envelope(storageHandle());
    const sealed = await first.seal("default", "id-1", 1, bytes(PLAIN));
    const second = envelope(storageHandle());
    assert.equal((await second.open("default", "id-1", 1, sealed)).toString("utf8"), PLAIN);
  });

  it("opens a value whose data key another process created after this one cached the store", async () => {
    const second = envelope(storageHandle());
    await second.check("default"); // caches "no data key yet"
    const first = envelope(storageHandle());
    const sealed = await first.seal("default", "id-1", 1, bytes(PLAIN));
    assert.equal((await second.open("default", "id-1", 1, sealed)).toString("utf8"), PLAIN);
    const back = await second.seal("default", "id-2", 1, bytes("reply"));
    assert.equal((await first.open("default", "id-2", 1, back)).toString("utf8"), "reply");
  });

  it("keeps values readable when two processes create a store's first data key at once", async () => {
    const a = envelope(storageHandle());
    const b = envelope(storageHandle());
    const [sa, sb] = await Promise.all([
      a.seal("fresh", "id-a", 1, bytes("from a")),
      b.seal("fresh", "id-b", 1, bytes("from b")),
    ]);
    for (const env of [a, b, envelope()]) {
      assert.equal((await env.open("fresh", "id-a", 1, sa)).toString("utf8"), "from a");
      assert.equal((await env.open("fresh", "id-b", 1, sb)).toString("utf8"), "from b");
    }
  });

  it("creates one data key for many concurrent seals in one process", async () => {
    const storage = storageHandle();
    const env = envelope(storage);
    const sealed = await Promise.all(Array.from({ length: 10 }, (_, i) => env.seal("busy", `id-${i}`, 1, bytes(`v${i}`))));
    assert.equal(new Set(sealed.map((s) => s.split(".")[1])).size, 1);
    assert.equal((await storage.listDataKeys("busy")).length, 1);
  });
});

describe("masterKeyFrom", () => {
  it("accepts exactly 32 bytes and derives a stable public id", () => {
    assert.equal(masterKeyFrom(Buffer.alloc(32, 1)).id, KEY_A.id);
    assert.notEqual(KEY_A.id, KEY_B.id);
    assert.match(KEY_A.id, /^[0-9a-f]{16}$/);
    assert.ok(!KEY_A.id.includes(KEY_A.key.toString("hex").slice(0, 16)));
  });

  it("rejects other lengths", () => {
    for (const n of [0, 16, 31, 33, 64]) assert.throws(() => masterKeyFrom(Buffer.alloc(n)), /32 bytes/);
  });
});
