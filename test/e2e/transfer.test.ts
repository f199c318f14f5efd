import assert from "node:assert/strict";
import { readdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { PassThrough, Readable } from "node:stream";
import { after, describe, it } from "node:test";
import { masterKeyFrom } from "../../src/crypto/envelope.js";
import { exportSecrets, ImportError, importSecrets } from "../../src/service/transfer.js";
import { createSqliteStorage } from "../../src/storage/sqlite/sqlite-storage.js";
import { run } from "../../src/cli/main.js";
import { MASTER_KEY, startTestServer, tempDir } from "../support/server.js";

/** Export from one store and import into another: every secret and version arrives, still sealed. */
describe("export and import", () => {
  const dirs: string[] = [];
  after(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  async function collect(stream: PassThrough): Promise<string> {
    const chunks: Buffer[] = [];
    stream.on("data", (c: Buffer) => chunks.push(c));
    await new Promise((r) => stream.once("end", r));
    return Buffer.concat(chunks).toString("utf8");
  }

  it("carries every secret with its versions to a fresh store, sealed, and they open there", async () => {
    const sourceDir = tempDir();
    dirs.push(sourceDir);
    const source = await startTestServer({ LATCHKEY_DATA_DIR: sourceDir });
    const values = new Map<string, string>();
    for (let i = 0; i < 25; i++) {
      const value = `transfer-canary-${i}-${Math.random().toString(36).slice(2)}`;
      values.set(`team${i % 3}/secret-${i}`, value);
      const res = await source.admin("/v1/secrets", { method: "POST", body: JSON.stringify({ name: `team${i % 3}/secret-${i}`, value }) });
      assert.equal(res.status, 201);
    }
    await source.admin("/v1/secrets/team0/secret-0", {
      method: "PUT",
      body: JSON.stringify({ value: "second-version-canary", grace_period_secs: 600 }),
    });
    await source.admin("/v1/secrets", {
      method: "POST",
      body: JSON.stringify({ name: "auto/one", kind: "automatic", rotation_interval_secs: 3600 }),
    });
    await source.stop();

    const storage = createSqliteStorage(join(sourceDir, "latchkey.db"));
    const out = new PassThrough();
    const text = collect(out);
    const summary = await exportSecrets(storage, out, masterKeyFrom(Buffer.from(MASTER_KEY, "base64")).id);
    out.end();
    await storage.close();
    const dump = await text;
    assert.equal(summary.secrets, 26);
    assert.equal(summary.dataKeys, 1);
    for (const v of [...values.values(), "second-version-canary"]) {
      assert.equal(dump.includes(v), false, "no plaintext in the export");
      assert.equal(dump.includes(Buffer.from(v).toString("base64")), false);
    }

    const targetDir = tempDir();
    dirs.push(targetDir);
    const target = createSqliteStorage(join(targetDir, "latchkey.db"));
    const masterKey = masterKeyFrom(Buffer.from(MASTER_KEY, "base64"));
    const imported = await importSecrets(target, Readable.from([dump]), masterKey);
    assert.deepEqual(imported, { dataKeys: 1, secrets: 26, skipped: 0, conflicts: [] });
    const again = await importSecrets(target, Readable.from([dump]), masterKey);
    assert.deepEqual(again, { dataKeys: 0, secrets: 0, skipped: 26, conflicts: [] }, "idempotent");
    await target.close();

    const moved = await startTestServer({ LATCHKEY_DATA_DIR: targetDir });
    try {
      for (const [name, value] of values) {
        if (name === "team0/secret-0") continue;
        const got = await (await fetch(`${moved.url}/v1/secrets/${name}`)).json();
        assert.equal(got.value, value);
      }
      const v2 = await (await fetch(`${moved.url}/v1/secrets/team0/secret-0`)).json();
      assert.equal(v2.version, 2);
      assert.equal(v2.value, "second-version-canary");
      const v1 = await (await fetch(`${moved.url}/v1/secrets/team0/secret-0?version=1`)).json();
      assert.equal(v1.value, values.get("team0/secret-0"));
      const verify = await fetch(`${moved.url}/v1/secrets/team0/secret-0/verify`, {
        method: "POST",
        body: JSON.stringify({ value: values.get("team0/secret-0") }),
      });
      assert.deepEqual(await verify.json(), { valid: true, version: 1 }, "the grace window came along");
    } finally {
      await moved.stop();
    }
  });

  it("refuses an export sealed under another master key, before writing anything", async () => {
    const dir = tempDir();
    dirs.push(dir);
    const s = await startTestServer({ LATCHKEY_DATA_DIR: dir });
    await s.admin("/v1/secrets", { method: "POST", body: JSON.stringify({ name: "k/one", value: "v" }) });
    await s.stop();
    const storage = createSqliteStorage(join(dir, "latchkey.db"));
    const out = new PassThrough();
    const text = collect(out);
    await exportSecrets(storage, out, null); // header without a key id: the data key check must catch it
    out.end();
    await storage.close();
    const target = createSqliteStorage(join(tempDir(), "latchkey.db"));
    const otherKey = masterKeyFrom(Buffer.alloc(32, 9));
    await assert.rejects(importSecrets(target, Readable.from([await text]), otherKey), /master key/);
    assert.equal((await target.scanSecrets("", 10)).length, 0, "nothing written");
    await assert.rejects(importSecrets(target, Readable.from(['{"kind":"secret"}\n']), otherKey), ImportError);
    await target.close();
  });

  it("runs as `latchkey export` and `latchkey import` with exit codes", async () => {
    const dir = tempDir();
    dirs.push(dir);
    const s = await startTestServer({ LATCHKEY_DATA_DIR: dir });
    await s.admin("/v1/secrets", { method: "POST", body: JSON.stringify({ name: "cli/one", value: "cli-canary-value" }) });
    await s.stop();
    const env = { ...process.env };
    const out = join(dir, "dump.jsonl");
    const stderr = new PassThrough();
    const io = { stdout: new PassThrough(), stderr, stdin: Readable.from([]) };
    try {
      process.env.LATCHKEY_DATA_DIR = dir;
      process.env.LATCHKEY_MASTER_KEY = MASTER_KEY;
      assert.equal(await run(["export", "--out", out], io), 0);
      assert.ok(readFileSync(out, "utf8").startsWith('{"kind":"latchkey-export"'));
      const targetDir = tempDir();
      dirs.push(targetDir);
      process.env.LATCHKEY_DATA_DIR = targetDir;
      assert.equal(await run(["import", "--in", out], io), 0);
      assert.ok(readdirSync(targetDir).includes("latchkey.db"));
      // The same name under another id is a conflict: exit 3.
      const conflictDir = tempDir();
      dirs.push(conflictDir);
      const c = await startTestServer({ LATCHKEY_DATA_DIR: conflictDir });
      await c.admin("/v1/secrets", { method: "POST", body: JSON.stringify({ name: "cli/one", value: "other" }) });
      await c.stop();
      process.env.LATCHKEY_DATA_DIR = conflictDir;
      assert.equal(await run(["import", "--in", out], io), 3);
      assert.equal(await run(["bogus"], io), 2);
    } finally {
      process.env = env;
    }
  });
});
