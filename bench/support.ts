import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { get as httpGet } from "node:http";
import { createServer } from "node:net";
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

// ---------------------------------------------------------------------------------------------------------------
// Servers and h2load, shared by the transport and scale benchmarks.

/** One load run's outcome: calls/s over the measured window, per-call latency percentiles, failed calls. */
export interface Figure {
  rps: number;
  p50Ms: number;
  p99Ms: number;
  /** Calls answered with an error status, failed connections, or (wrk) calls over its 2 s timeout. */
  errors: number;
  /** h2load: streams it still had open when the run's time was up, which it counts as errored. Not failures. */
  cut?: number;
  requests: number;
}

export const fmt = (f: Figure): string =>
  `${Math.round(f.rps)}/s p50 ${f.p50Ms.toFixed(2)} ms p99 ${f.p99Ms.toFixed(2)} ms${f.errors ? ` ERRORS ${f.errors}` : ""}${f.cut ? ` (${f.cut} cut at stop)` : ""}`;

export const BENCH_ADMIN_TOKEN = "bench-admin-token-0123456789";

/** A free loopback port. */
export function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

export async function waitFor(check: () => Promise<boolean>, what: string, ms = 60_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 5));
  }
  throw new Error(`${what} not ready within ${ms} ms`);
}

/** Every child started, so a failed run can leave none behind (see killChildren). */
const children = new Set<ChildProcess>();

export function killChildren(): void {
  for (const c of children) c.kill("SIGKILL");
}

export function stopper(child: ChildProcess): () => Promise<void> {
  children.add(child);
  return () =>
    new Promise((resolve) => {
      if (child.exitCode !== null) return resolve();
      child.once("exit", () => resolve());
      child.kill("SIGTERM");
      setTimeout(() => child.kill("SIGKILL"), 5_000).unref();
    });
}

export interface LatchkeyProcess {
  readonly url: string;
  readonly pid: number;
  readonly adminToken: string;
  /** Spawn to /readyz answering 200. */
  readonly readyMs: number;
  /** Calls that did not end ok (or not_modified), by the server's own count, since the last call of this. */
  errors(): Promise<number>;
  /** Size of the database file and its WAL. */
  dbBytes(): number;
  stop(): Promise<void>;
}

function readyz(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const req = httpGet({ host: "127.0.0.1", port, path: "/readyz", agent: false }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on("error", () => resolve(false));
  });
}

/** Starts the built server (dist/) pinned to `core`, on `dataDir`, and waits until it is ready. */
export async function startLatchkey(opts: { core: number; dataDir: string; masterKey: string; env?: Record<string, string> }): Promise<LatchkeyProcess> {
  const port = await freePort();
  const spawnedAt = performance.now();
  const child = spawn(...pinned(opts.core, process.execPath, ["dist/src/main.js"]), {
    env: {
      ...process.env,
      LATCHKEY_PORT: String(port),
      LATCHKEY_DATA_DIR: opts.dataDir,
      LATCHKEY_MASTER_KEY: opts.masterKey,
      LATCHKEY_ADMIN_TOKEN: BENCH_ADMIN_TOKEN,
      LATCHKEY_ALLOWED_IPS: "127.0.0.1/32",
      LOG_LEVEL: "warn",
      ...opts.env,
    },
    stdio: ["ignore", "inherit", "inherit"],
  });
  const stop = stopper(child);
  const url = `http://127.0.0.1:${port}`;
  // A bare http.get, not fetch: the first fetch in a process loads undici, a cost that is not the server's.
  await waitFor(() => readyz(port), "latchkey");
  const readyMs = Math.round(performance.now() - spawnedAt);
  const counts = new Map<string, number>();
  const errors = async () => {
    const text = await fetch(`${url}/metrics`).then((r) => r.text());
    let n = 0;
    for (const m of text.matchAll(/^latchkey_requests_total\{op="([^"]*)",code="([^"]*)"\} (\d+)/gm)) {
      const key = `${m[1]} ${m[2]}`;
      const v = Number(m[3]);
      const delta = v - (counts.get(key) ?? 0);
      counts.set(key, v);
      if (delta === 0 || m[2] === "ok" || m[2] === "not_modified") continue;
      // A load generator stopping at the end of a run abandons the calls it has in flight: the server records
      // them as canceled. Those are not errors of the server; anything else is.
      if (m[2] === "canceled") continue;
      n += delta;
      console.log(`  server: ${delta} × ${m[2]} on ${m[1]}`);
    }
    return n;
  };
  await errors();
  const dbBytes = () =>
    ["latchkey.db", "latchkey.db-wal"].reduce((sum, f) => sum + (existsSync(join(opts.dataDir, f)) ? statSync(join(opts.dataDir, f)).size : 0), 0);
  return { url, pid: child.pid as number, adminToken: BENCH_ADMIN_TOKEN, readyMs, errors, dbBytes, stop };
}

/** Runs a command pinned to `core`; resolves with its output, rejects if it fails. */
export function runPinned(core: number, cmd: string, args: string[]): Promise<string> {
  const [c, a] = pinned(core, cmd, args);
  return new Promise((resolve, reject) => {
    const child = spawn(c, a, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (out += d.toString()));
    child.once("close", (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} exited ${code}: ${out}`))));
  });
}

/** A gRPC-framed message written to `dir/name`; returns the path (h2load reads bodies from files). */
export function grpcFrame(dir: string, name: string, message: Uint8Array): string {
  const f = Buffer.alloc(5 + message.length);
  f.writeUInt32BE(message.length, 1);
  f.set(message, 5);
  const path = join(dir, name);
  writeFileSync(path, f);
  return path;
}

let h2loadRuns = 0;

export interface H2Job {
  readonly path: string;
  /** A file holding the request body. */
  readonly body: string;
  readonly headers: Record<string, string>;
  readonly streams: number;
}

/**
 * h2load with one connection per job, all jobs at once, `streams` calls in flight on each; latency percentiles
 * per request, from h2load's log files. A call fails if h2load says so or its HTTP status is not 200.
 */
export async function h2load(
  url: string,
  jobs: H2Job[],
  opts: { seconds: number; warmup: number; core: number; work: string; /** Paced: calls per second per job. */ rps?: number },
): Promise<Figure> {
  const logs = jobs.map(() => join(opts.work, `h2load-${++h2loadRuns}.log`));
  const outs = await Promise.all(
    jobs.map((j, i) =>
      runPinned(opts.core, "h2load", [
        "-c1",
        `-m${j.streams}`,
        "-D",
        String(opts.seconds),
        ...(opts.warmup > 0 ? ["--warm-up-time", String(opts.warmup)] : []),
        ...(opts.rps !== undefined ? [`--rps=${opts.rps}`] : []),
        "-d",
        j.body,
        ...Object.entries(j.headers).flatMap(([k, v]) => ["-H", `${k}: ${v}`]),
        "--log-file",
        logs[i] as string,
        `${url}${j.path}`,
      ]),
    ),
  );
  let requests = 0;
  let failed = 0;
  let cut = 0;
  for (const out of outs) {
    const m = /requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored/.exec(out);
    if (!m) throw new Error(`unexpected h2load output: ${out}`);
    requests += Number(m[3]);
    failed += Number(m[4]);
    cut += Number(m[5]);
  }
  const durations: number[] = [];
  let first = Number.POSITIVE_INFINITY;
  let last = 0;
  for (const log of logs) {
    for (const line of readFileSync(log, "utf8").split("\n")) {
      const [start, status, us] = line.split("\t").map(Number);
      if (!us || start === undefined) continue;
      if (status !== 200) failed++;
      durations.push(us / 1000);
      first = Math.min(first, start / 1000);
      last = Math.max(last, start / 1000 + us / 1000);
    }
    rmSync(log, { force: true });
  }
  durations.sort((a, b) => a - b);
  const seconds = (last - first) / 1000;
  return { rps: durations.length / seconds, p50Ms: percentile(durations, 50), p99Ms: percentile(durations, 99), errors: failed, cut, requests };
}
