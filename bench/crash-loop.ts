/**
 * Crash loop: SIGKILL the real process at random moments while 8 writers create and update secrets, restart it on
 * the same data directory, and check every acknowledged write, every write in flight at a kill, the file and the
 * audit chain (test/support/crash.ts). The same loop as test/e2e/crash-safety.test.ts, for longer runs.
 *
 * Usage: node --import tsx bench/crash-loop.ts [CYCLES] [--seed N] [--writers N] [--keep] [--verbose]
 * (CYCLES defaults to $CRASH_CYCLES, else 50; --seed defaults to $CRASH_SEED, else random.)
 * Prints one summary line; exits 1 on any violation (the data directory is then kept for a look).
 */
import { rmSync } from "node:fs";
import { formatSummary, runCrashLoop } from "../test/support/crash.js";
import { tempDir } from "../test/support/server.js";
import { killAll } from "../test/support/spawn.js";
import { arg } from "./support.js";

async function main(): Promise<number> {
  const first = process.argv[2] ?? "";
  const cycles = Number(/^\d+$/.test(first) ? first : (process.env.CRASH_CYCLES ?? "50"));
  const seedText = arg("seed", process.env.CRASH_SEED ?? "");
  const dataDir = tempDir("latchkey-crash-loop-");
  try {
    const s = await runCrashLoop({
      dataDir,
      cycles,
      writers: Number(arg("writers", "8")),
      ...(seedText ? { seed: Number(seedText) } : {}),
      log: process.argv.includes("--verbose") ? (l) => console.error(l) : (l) => l.startsWith("VIOLATION") && console.error(l),
    });
    console.log(formatSummary(s));
    const failed = s.violations.length > 0 || s.cycles < cycles;
    if (failed) console.error(`data directory kept: ${dataDir}`);
    else if (!process.argv.includes("--keep")) rmSync(dataDir, { recursive: true, force: true });
    return failed ? 1 : 0;
  } finally {
    await killAll();
  }
}

process.exitCode = await main();
