import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import * as net from "node:net";
import { fileURLToPath } from "node:url";

/**
 * The real process (`node --import tsx src/main.ts`) for end-to-end tests of signals, draining and TLS: spawn it
 * with an environment of our own, wait until it is ready, and kill whatever is left when the file is done.
 */

export const ROOT = fileURLToPath(new URL("../..", import.meta.url));
export const START_DEADLINE_MS = 15_000;

export interface Proc {
  readonly child: ChildProcess;
  stdout: string;
  stderr: string;
  /** Resolves once the process has exited. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** performance.now() when the process exited, once it has. */
  exitedAt?: number;
}

const procs = new Set<Proc>();

/** A port that was free a moment ago: bind port 0, read it, close. */
export async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((resolve, reject) => {
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", resolve);
  });
  const { port } = srv.address() as net.AddressInfo;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

/** The parent environment without anything Latchkey (or node:test) reads, plus `env`. */
function childEnv(env: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v === undefined) continue;
    if (k.startsWith("LATCHKEY_") || k === "LOG_LEVEL" || k === "MONGODB_URI" || k.startsWith("NODE_TEST")) continue;
    out[k] = v;
  }
  return { ...out, ...env };
}

export function spawnLatchkey(env: Record<string, string>): Proc {
  const child = spawn(process.execPath, ["--import", "tsx", "src/main.ts"], {
    cwd: ROOT,
    env: childEnv(env),
    stdio: ["ignore", "pipe", "pipe"],
  });
  const proc: Proc = {
    child,
    stdout: "",
    stderr: "",
    exited: new Promise((resolve) =>
      child.once("exit", (code, signal) => {
        proc.exitedAt = performance.now();
        resolve({ code, signal });
      }),
    ),
  };
  child.stdout?.setEncoding("utf8").on("data", (c: string) => (proc.stdout += c));
  child.stderr?.setEncoding("utf8").on("data", (c: string) => (proc.stderr += c));
  procs.add(proc);
  return proc;
}

export function isRunning(proc: Proc): boolean {
  return proc.child.exitCode === null && proc.child.signalCode === null;
}

export async function withDeadline<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls /readyz (plain http) until it answers 200; fails early if the process exits. */
export async function waitReady(proc: Proc, url: string): Promise<void> {
  const deadline = Date.now() + START_DEADLINE_MS;
  while (Date.now() < deadline) {
    if (!isRunning(proc)) assert.fail(`latchkey exited before it was ready; stderr: ${proc.stderr}\nstdout: ${proc.stdout}`);
    try {
      const res = await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(1_000) });
      await res.arrayBuffer();
      if (res.status === 200) return;
    } catch {
      // not listening yet
    }
    await sleep(50);
  }
  assert.fail(`latchkey not ready within ${START_DEADLINE_MS} ms; stderr: ${proc.stderr}\nstdout: ${proc.stdout}`);
}

/** Waits until the process logs `latchkey listening on` (for servers /readyz over plain http cannot reach). */
export async function waitListening(proc: Proc): Promise<void> {
  const deadline = Date.now() + START_DEADLINE_MS;
  while (Date.now() < deadline) {
    if (proc.stdout.includes("latchkey listening on")) return;
    if (!isRunning(proc)) assert.fail(`latchkey exited before it listened; stderr: ${proc.stderr}\nstdout: ${proc.stdout}`);
    await sleep(25);
  }
  assert.fail(`latchkey did not listen within ${START_DEADLINE_MS} ms; stderr: ${proc.stderr}`);
}

/** Runs a process that must exit by itself (bad configuration); returns its exit code. */
export async function runToExit(env: Record<string, string>): Promise<Proc & { code: number | null }> {
  const proc = spawnLatchkey({ LOG_LEVEL: "info", ...env });
  const { code } = await withDeadline(proc.exited, START_DEADLINE_MS, "exit on bad configuration");
  await sleep(20); // let the pipes drain
  return Object.assign(proc, { code });
}

/** SIGKILLs every process spawned here that is still running (for after()). */
export async function killAll(): Promise<void> {
  for (const proc of procs) {
    if (isRunning(proc)) {
      proc.child.kill("SIGKILL");
      await withDeadline(proc.exited, 5_000, "exit after SIGKILL").catch(() => undefined);
    }
  }
  procs.clear();
}

/** Whether a new TCP connection to the port is refused right now. */
export function connectRefused(port: number, host = "127.0.0.1"): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, host);
    const done = (refused: boolean) => {
      socket.destroy();
      resolve(refused);
    };
    socket.setTimeout(1_000, () => done(false));
    socket.once("connect", () => done(false));
    socket.once("error", (err: NodeJS.ErrnoException) => done(err.code === "ECONNREFUSED"));
  });
}
