import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { rmSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { SecretEventType } from "../../gen/latchkey/v1/secret_pb.js";
import { SecretService, type WatchSecretsResponse } from "../../gen/latchkey/v1/secret_service_pb.js";
import type { SecretDocument } from "../../src/domain/secret.js";
import { createSqliteStorage } from "../../src/storage/sqlite/sqlite-storage.js";
import { ADMIN_TOKEN, MASTER_KEY, tempDir } from "../support/server.js";

/**
 * Several server processes on one embedded data directory, hundreds of automatic secrets on 1-2 s intervals for
 * about ten seconds, one process killed with SIGKILL and restarted in the middle: every secret rotates on time,
 * exactly once per interval, and a watcher that reconnects sees every rotation once, in order.
 */

const SECRETS = 240;
const RUN_MS = 10_000;
/** How late a rotation may be on a loaded 2-core machine (the check for gaps). */
const MAX_LAG_MS = 2500;

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

describe("several processes on one data directory", () => {
  const dataDir = tempDir("latchkey-multi-");
  const procs = new Map<string, ChildProcess>();
  const output: string[] = [];
  after(() => {
    for (const p of procs.values()) p.kill("SIGKILL");
    rmSync(dataDir, { recursive: true, force: true });
  });

  function startProcess(id: string, port: number): ChildProcess {
    const child = spawn(process.execPath, ["--import", "tsx", "src/main.ts"], {
      env: {
        ...process.env,
        LATCHKEY_PORT: String(port),
        LATCHKEY_DATA_DIR: dataDir,
        LATCHKEY_ADMIN_TOKEN: ADMIN_TOKEN,
        LATCHKEY_MASTER_KEY: MASTER_KEY,
        LATCHKEY_MAX_VERSIONS: "200",
        LOG_LEVEL: "warn",
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    child.stdout?.on("data", (d: Buffer) => output.push(`[${id}] ${d}`));
    child.stderr?.on("data", (d: Buffer) => output.push(`[${id}] ${d}`));
    procs.set(id, child);
    return child;
  }

  async function waitReady(port: number, ms = 20_000): Promise<void> {
    const deadline = Date.now() + ms;
    while (Date.now() < deadline) {
      const ok = await fetch(`http://127.0.0.1:${port}/readyz`).then((r) => r.ok, () => false);
      if (ok) return;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`port ${port} not ready in ${ms} ms:\n${output.join("")}`);
  }

  function exited(child: ChildProcess): Promise<number | null> {
    return child.exitCode !== null ? Promise.resolve(child.exitCode) : new Promise((r) => child.once("exit", (code) => r(code)));
  }

  it("rotates every secret exactly once per interval while a process is killed and restarted", { timeout: 90_000 }, async (t) => {
    const ports = { a: await freePort(), b: await freePort(), c: await freePort() };
    startProcess("a", ports.a);
    startProcess("b", ports.b);
    startProcess("c", ports.c);
    await Promise.all(Object.values(ports).map((p) => waitReady(p)));

    const intervals = new Map<string, number>();
    for (let i = 0; i < SECRETS; i += 40) {
      await Promise.all(
        Array.from({ length: 40 }, async (_, j) => {
          const name = `mp/s${i + j}`;
          const interval = (i + j) % 2 === 0 ? 1 : 2;
          intervals.set(name, interval);
          const res = await fetch(`http://127.0.0.1:${ports.a}/v1/secrets`, {
            method: "POST",
            headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
            body: JSON.stringify({ name, kind: "automatic", rotation_interval_secs: interval, grace_period_secs: 0 }),
          });
          assert.equal(res.status, 201);
        }),
      );
    }
    const started = Date.now();

    // A watcher on process c, which disconnects halfway and resumes from its last token.
    const watcher = createClient(SecretService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${ports.c}` }));
    const rotations = new Map<string, number[]>();
    let lastToken = "";
    let resets = 0;
    async function watch(until: number): Promise<void> {
      const ac = new AbortController();
      const timer = setTimeout(() => ac.abort(), until - Date.now());
      try {
        for await (const ev of watcher.watchSecrets({ namePrefix: "mp/", resumeToken: lastToken }, { signal: ac.signal })) {
          record(ev);
        }
      } catch (err) {
        if (!(err instanceof ConnectError && err.code === Code.Canceled)) throw err;
      } finally {
        clearTimeout(timer);
      }
    }
    function record(ev: WatchSecretsResponse): void {
      lastToken = ev.resumeToken;
      if (ev.type === SecretEventType.RESET) resets++;
      if (ev.type !== SecretEventType.ROTATED) return;
      const seen = rotations.get(ev.name) ?? [];
      seen.push(ev.version);
      rotations.set(ev.name, seen);
    }
    const watching = (async () => {
      await watch(started + 4000);
      await new Promise((r) => setTimeout(r, 1500)); // disconnected while rotations go on
      await watch(started + RUN_MS + 1500);
    })();

    // Kill b in the middle of the run, then bring it back.
    await new Promise((r) => setTimeout(r, 3000));
    const b = procs.get("b") as ChildProcess;
    b.kill("SIGKILL");
    await exited(b);
    await new Promise((r) => setTimeout(r, 1500));
    startProcess("b", ports.b);
    await waitReady(ports.b);

    await new Promise((r) => setTimeout(r, Math.max(0, started + RUN_MS - Date.now())));
    const stoppedAt = Date.now();
    await watching;
    for (const p of procs.values()) p.kill("SIGTERM");
    const codes = await Promise.all([...procs.values()].map(exited));
    assert.deepEqual(codes, [0, 0, 0], `clean exits\n${output.join("")}`);

    const storage = createSqliteStorage(join(dataDir, "latchkey.db"));
    const docs: SecretDocument[] = [];
    for (let afterId = ""; ; ) {
      const page = await storage.scanSecrets(afterId, 500);
      if (page.length === 0) break;
      docs.push(...page);
      afterId = page[page.length - 1]?.id ?? "";
    }
    await storage.close();
    assert.equal(docs.length, SECRETS);

    let total = 0;
    for (const doc of docs) {
      const interval = (intervals.get(doc.name) as number) * 1000;
      const versions = doc.versions;
      assert.equal(versions[0]?.version, 1, `${doc.name} kept its whole history`);
      for (let i = 1; i < versions.length; i++) {
        const prev = versions[i - 1] as (typeof versions)[number];
        const cur = versions[i] as (typeof versions)[number];
        assert.equal(cur.version, prev.version + 1, `${doc.name}: consecutive versions`);
        const gap = cur.createdAt - prev.createdAt;
        assert.ok(gap >= interval - 1, `${doc.name}: v${cur.version} came ${gap} ms after v${prev.version}: a double rotation`);
        assert.ok(gap <= interval + MAX_LAG_MS, `${doc.name}: v${cur.version} came ${gap} ms after v${prev.version}: a gap`);
      }
      const lastAt = (versions[versions.length - 1] as (typeof versions)[number]).createdAt;
      assert.ok(stoppedAt - lastAt <= interval + MAX_LAG_MS, `${doc.name}: rotations stopped ${stoppedAt - lastAt} ms before the end`);
      total += versions.length - 1;

      // The watcher saw each of its rotations once, in order, across its reconnect.
      const seen = rotations.get(doc.name) ?? [];
      for (let i = 1; i < seen.length; i++) {
        assert.equal(seen[i], (seen[i - 1] as number) + 1, `${doc.name}: watched versions ${seen.join(",")}`);
      }
    }
    let worst = 0;
    for (const doc of docs) {
      const interval = (intervals.get(doc.name) as number) * 1000;
      for (let i = 1; i < doc.versions.length; i++) {
        worst = Math.max(worst, (doc.versions[i]?.createdAt ?? 0) - (doc.versions[i - 1]?.createdAt ?? 0) - interval);
      }
    }
    t.diagnostic(`${total} rotations of ${SECRETS} secrets by 3 processes; worst lateness ${worst} ms; watched ${[...rotations.values()].reduce((n, v) => n + v.length, 0)}`);
    assert.equal(resets, 0, "the watcher never lost history");
    const watched = [...rotations.values()].reduce((n, v) => n + v.length, 0);
    assert.ok(total > SECRETS * 4, `rotations made: ${total}`);
    assert.ok(watched >= total * 0.8, `watched ${watched} of ${total} rotations`);
  });
});
