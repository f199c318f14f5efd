/**
 * Rotation benchmark: 100,000 automatic secrets, 10,000 of them due at the same instant.
 *
 * Measures, against a real server process pinned to one core (the harness on the other):
 * - burst: time from the instant until all 10,000 due secrets are rotated, and their lateness p50/p99/max;
 * - idle: server CPU over 10 s while nothing is due (the scheduler must not poll);
 * - steady: rotation lateness p50/p99 with 2,000 secrets on a 2 s interval (1,000 rotations/s);
 * - memory: server RSS (current and peak).
 *
 * Usage: npm run bench:rotation [-- --secrets 100000 --due 10000]
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { rmSync } from "node:fs";
import { join } from "node:path";
import { createEnvelope, masterKeyFrom } from "../src/crypto/envelope.js";
import { newSecretDocument, type SecretDocument } from "../src/domain/secret.js";
import { generateValue } from "../src/service/secret-manager.js";
import { createSqliteStorage } from "../src/storage/sqlite/sqlite-storage.js";
import type { ChangeEvent } from "../src/storage/storage.js";
import { tempDir } from "../test/support/server.js";
import { arg, cpuSeconds, freePort, percentile, pinned, pinSelf, rssKb, writeResult } from "./support.js";

const TOTAL = Number(arg("secrets", "100000"));
const DUE = Number(arg("due", "10000"));
const STEADY = Number(arg("steady", "2000"));
const STEADY_INTERVAL_S = 2;
const MASTER_KEY = Buffer.alloc(32, 3);
const ADMIN_TOKEN = "bench-admin-token-0123456789";

async function main(): Promise<void> {
  const dataDir = tempDir("latchkey-bench-rotation-");
  const file = join(dataDir, "latchkey.db");
  const log: string[] = [];
  const say = (s: string) => {
    log.push(s);
    console.log(s);
  };

  // Seed: every secret automatic; DUE of them due at one instant a few seconds after the server is up.
  const seedStart = performance.now();
  const storage = createSqliteStorage(file);
  const envelope = createEnvelope({ masterKey: masterKeyFrom(MASTER_KEY), storage, clock: { now: Date.now } });
  const now = Date.now();
  const burstAt = now + 60_000; // moved to the real instant below, once the server is ready
  const dueIds = new Set<string>();
  for (let i = 0; i < TOTAL; i += 1000) {
    const batch: Promise<boolean>[] = [];
    for (let j = i; j < Math.min(TOTAL, i + 1000); j++) {
      const id = randomUUID();
      const sealed = await envelope.seal("default", id, 1, Buffer.from(generateValue()));
      let doc: SecretDocument = newSecretDocument(
        { id, store: "default", name: `bench/s${j}`, kind: "automatic", description: "", rotationIntervalSeconds: 86_400, gracePeriodSeconds: 0 },
        sealed,
        now,
      );
      if (j < DUE) {
        doc = { ...doc, rotation: { intervalSeconds: 86_400, nextRotationAt: burstAt } };
        dueIds.add(id);
      }
      batch.push(storage.insertSecret(doc));
    }
    await Promise.all(batch);
  }
  say(`seeded ${TOTAL} automatic secrets (${DUE} due together) in ${((performance.now() - seedStart) / 1000).toFixed(1)} s`);

  const port = await freePort();
  const server: ChildProcess = spawn(...pinned(1, process.execPath, ["dist/src/main.js"]), {
    env: {
      ...process.env,
      LATCHKEY_PORT: String(port),
      LATCHKEY_DATA_DIR: dataDir,
      LATCHKEY_MASTER_KEY: MASTER_KEY.toString("base64"),
      LATCHKEY_ADMIN_TOKEN: ADMIN_TOKEN,
      LOG_LEVEL: "warn",
    },
    stdio: ["ignore", "inherit", "inherit"],
  });
  const spawnedAt = performance.now();
  for (;;) {
    if (await fetch(`http://127.0.0.1:${port}/readyz`).then((r) => r.ok, () => false)) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  say(`server ready ${Math.round(performance.now() - spawnedAt)} ms after spawn, with ${TOTAL} secrets`);
  const pid = server.pid as number;

  // Follow rotations through a second handle's change feed (what another process sees).
  const rotatedAt = new Map<string, number>();
  const steadyLate: number[] = [];
  const scheduledFor = new Map<string, number>();
  const ac = new AbortController();
  let steadyOn = false;
  const follower = (async () => {
    for await (const item of storage.changes({ signal: ac.signal })) {
      if (item.op !== "update") continue;
      const ev = item as ChangeEvent;
      if (ev.change !== "rotated") {
        if (ev.nextRotationAt !== null) scheduledFor.set(ev.id, ev.nextRotationAt);
        continue; // a schedule change, not a rotation
      }
      if (dueIds.has(ev.id) && !rotatedAt.has(ev.id)) rotatedAt.set(ev.id, ev.at);
      const planned = scheduledFor.get(ev.id);
      if (steadyOn && planned !== undefined) steadyLate.push(ev.at - planned);
      if (ev.nextRotationAt !== null) scheduledFor.set(ev.id, ev.nextRotationAt);
    }
  })();

  // Burst: move the DUE secrets' rotation to one instant two seconds from now, all at once, directly in the store.
  const instant = Date.now() + 2000;
  const dueDocs = await storage.findDueSecrets(burstAt, DUE);
  const movedAt = Date.now();
  await Promise.all(
    dueDocs.map((d) =>
      storage.replaceSecret(
        { ...d, rotation: { intervalSeconds: 86_400, nextRotationAt: instant }, updatedAt: movedAt, revision: d.revision + 1 },
        d.revision,
      ),
    ),
  );
  const cpuBefore = cpuSeconds(pid);
  while (rotatedAt.size < DUE && Date.now() < instant + 120_000) await new Promise((r) => setTimeout(r, 50));
  const lastRotation = Math.max(...rotatedAt.values());
  const burstLate = [...rotatedAt.values()].map((t) => t - instant).sort((a, b) => a - b);
  const burstCpu = cpuSeconds(pid) - cpuBefore;
  say(
    `burst: ${rotatedAt.size}/${DUE} rotated ${lastRotation - instant} ms after the instant ` +
      `(${Math.round(DUE / ((lastRotation - instant) / 1000))}/s); lateness p50 ${percentile(burstLate, 50)} ms, ` +
      `p99 ${percentile(burstLate, 99)} ms; server CPU ${burstCpu.toFixed(2)} s`,
  );

  // Idle: nothing due for a day.
  await new Promise((r) => setTimeout(r, 1000));
  const idleCpu0 = cpuSeconds(pid);
  const idleStart = performance.now();
  await new Promise((r) => setTimeout(r, 10_000));
  const idleCpu = cpuSeconds(pid) - idleCpu0;
  const idleSecs = (performance.now() - idleStart) / 1000;
  say(`idle: server CPU ${(idleCpu * 1000).toFixed(0)} ms over ${idleSecs.toFixed(1)} s (${((idleCpu / idleSecs) * 100).toFixed(2)}% of a core)`);

  // Steady: STEADY secrets on a 2 s interval through the API.
  const names = Array.from({ length: STEADY }, (_, i) => `bench/s${DUE + i}`);
  for (let i = 0; i < names.length; i += 100) {
    await Promise.all(
      names.slice(i, i + 100).map((n) =>
        fetch(`http://127.0.0.1:${port}/v1/secrets/${n}`, {
          method: "PUT",
          headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
          body: JSON.stringify({ rotation_interval_secs: STEADY_INTERVAL_S }),
        }).then((r) => r.text()),
      ),
    );
  }
  await new Promise((r) => setTimeout(r, 4000)); // past the first, catch-up rotation of each
  steadyOn = true;
  const steadyCpu0 = cpuSeconds(pid);
  const steadyStart = performance.now();
  await new Promise((r) => setTimeout(r, 15_000));
  steadyOn = false;
  const steadySecs = (performance.now() - steadyStart) / 1000;
  const steadyCpu = cpuSeconds(pid) - steadyCpu0;
  steadyLate.sort((a, b) => a - b);
  say(
    `steady: ${steadyLate.length} rotations in ${steadySecs.toFixed(1)} s (${Math.round(steadyLate.length / steadySecs)}/s) ` +
      `lateness p50 ${percentile(steadyLate, 50)} ms, p99 ${percentile(steadyLate, 99)} ms, max ${steadyLate.at(-1)} ms; ` +
      `server CPU ${((steadyCpu / steadySecs) * 100).toFixed(0)}% of a core`,
  );
  const rss = rssKb(pid);
  say(`memory: server RSS ${(rss.current / 1024).toFixed(0)} MB (peak ${(rss.peak / 1024).toFixed(0)} MB) with ${TOTAL} secrets`);

  ac.abort();
  await follower.catch(() => {});
  server.kill("SIGTERM");
  await new Promise((r) => server.once("exit", r));
  await storage.close();
  rmSync(dataDir, { recursive: true, force: true });

  writeResult("rotation", {
    title: "Rotation scheduler",
    command: `npm run bench:rotation -- --secrets ${TOTAL} --due ${DUE} --steady ${STEADY}`,
    lines: log,
  });
}

pinSelf(0);
await main();
