import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import { join } from "node:path";

/** Shared pieces of the benchmark harness: arguments, /proc readings, CPU pinning, result files. */

export function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? (process.argv[i + 1] as string) : fallback;
}

const hasTaskset = (() => {
  try {
    execFileSync("taskset", ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
})();

/** The command and arguments to run `cmd` pinned to `core` (unpinned where taskset is missing). */
export function pinned(core: number, cmd: string, args: string[]): [string, string[]] {
  return hasTaskset ? ["taskset", ["-c", String(core), cmd, ...args]] : [cmd, args];
}

/** Pins this process to `core`, so the load generator and the server do not share one. */
export function pinSelf(core: number): void {
  if (hasTaskset) execFileSync("taskset", ["-p", "-c", String(core), String(process.pid)], { stdio: "ignore" });
}

/** User + system CPU seconds a process has used (from /proc). */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** Resident memory of a process, now and at its peak, in kB (from /proc). */
export function rssKb(pid: number): { current: number; peak: number } {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const read = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+)`, "m").exec(status)?.[1] ?? 0);
  return { current: read("VmRSS"), peak: read("VmHWM") };
}

/** The p-th percentile of sorted numbers. */
export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] as number;
}

const RESULTS_DIR = join("bench", "results");

/** Writes one benchmark's figures and rebuilds bench/RESULTS.md from every result on file. */
export function writeResult(name: string, r: { title: string; command: string; lines: string[]; markdown?: boolean }): void {
  mkdirSync(RESULTS_DIR, { recursive: true });
  const when = new Date().toISOString();
  const lines = r.markdown ? r.lines : r.lines.map((l) => `- ${l}`);
  const body = [`## ${r.title}`, "", `Run ${when}: \`${r.command}\``, "", ...lines, ""].join("\n");
  writeFileSync(join(RESULTS_DIR, `${name}.md`), body);
  const cpu = cpus()[0]?.model ?? "unknown CPU";
  const head = [
    "# Benchmark results",
    "",
    `Machine: ${cpus().length} × ${cpu}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB; Node ${process.version}; ${process.platform}.`,
    "Server and load generator are pinned to different cores where taskset exists. Figures are from single runs",
    "on a shared machine: compare ratios measured in the same run, not absolute numbers across runs.",
    "",
  ];
  const parts = existsSync(RESULTS_DIR)
    ? readdirSync(RESULTS_DIR)
        .filter((f) => f.endsWith(".md"))
        .sort()
        .map((f) => readFileSync(join(RESULTS_DIR, f), "utf8"))
    : [];
  writeFileSync(join("bench", "RESULTS.md"), [...head, ...parts].join("\n"));
}
