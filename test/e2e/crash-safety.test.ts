import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import { after, before, describe, it } from "node:test";
import { type CrashLoopSummary, formatSummary, runCrashLoop } from "../support/crash.js";
import { tempDir } from "../support/server.js";
import { killAll } from "../support/spawn.js";

/**
 * Crash safety of the embedded store, against the real process: 8 writers create and update secrets (REST and
 * Connect JSON, single writes and atomic batches, over keep-alive HTTP) while the process is SIGKILLed at random
 * moments and restarted on the same data directory (test/support/crash.ts).
 *
 * CRASH_CYCLES (default 12) sets the number of kills; CRASH_SEED replays a run's choices (the seed is in every
 * failure message). `node --import tsx bench/crash-loop.ts 200` runs the same loop longer.
 *
 * SIGKILL ends the process, not the machine: what the process handed to the kernel survives it. So this covers
 * SQLite's transactions and recovery, the group commit and the acknowledgement order, not fsync against power loss.
 */

const CYCLES = Number(process.env.CRASH_CYCLES ?? "12");
const SEED = process.env.CRASH_SEED ? Number(process.env.CRASH_SEED) : undefined;

describe("crash safety: SIGKILL during writes, restart on the same data", () => {
  const dataDir = tempDir("latchkey-crash-");
  let s: CrashLoopSummary;
  const lines: string[] = [];
  const found = (re: RegExp) => s.violations.filter((v) => re.test(v));
  const context = () => `seed ${s.seed} (CRASH_SEED=${s.seed} repeats the run), data dir ${dataDir}`;

  before(
    async () => {
      s = await runCrashLoop({ dataDir, cycles: CYCLES, writers: 8, ...(SEED === undefined ? {} : { seed: SEED }), log: (l) => lines.push(l) });
    },
    { timeout: 120_000 + CYCLES * 15_000 },
  );

  after(async () => {
    await killAll();
    // Keep the data of a failed run for a look; the path is in the failure messages.
    if (s && s.violations.length === 0) rmSync(dataDir, { recursive: true, force: true });
  });

  it("comes back ready on the data left by every kill", (t) => {
    t.diagnostic(formatSummary(s));
    assert.deepEqual(found(/did not become ready|exited/), [], context());
    assert.equal(s.cycles, CYCLES, `${context()}\n${lines.join("\n")}`);
  });

  it("every acknowledged write reads back at its version with exactly its value, after every restart", () => {
    assert.ok(s.acknowledged > CYCLES * 20, `only ${s.acknowledged} writes were acknowledged`);
    assert.ok(s.versionsChecked >= s.acknowledged, `${s.versionsChecked} versions checked for ${s.acknowledged} acknowledged`);
    assert.deepEqual(found(/acknowledged|current is|versions after a restart|versions are not|versions list|reads/), [], context());
  });

  it("a write in flight at the kill is all there or absent; an atomic batch is never half there", () => {
    assert.ok(s.inFlight > 0, "some writes were in flight at a kill");
    assert.equal(s.inFlightPresent + s.inFlightAbsent, s.inFlight, "every in-flight write was found present or absent");
    assert.deepEqual(found(/in-flight|half there/), [], context());
  });

  it("passes PRAGMA integrity_check after each kill and after the last stop", () => {
    assert.equal(s.integrity, "ok");
    assert.deepEqual(found(/integrity_check/), [], context());
  });

  it("keeps an intact audit chain with one ok entry for exactly the writes that landed", () => {
    assert.ok(s.auditEntries >= s.acknowledged / 3, `${s.auditEntries} audit entries`);
    assert.deepEqual(found(/audit/), [], context());
  });

  it("nothing else went wrong", () => {
    assert.deepEqual(s.violations, [], context());
  });
});
