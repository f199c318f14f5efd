import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";

/**
 * The real process, as `npm run dev` starts it: configuration from the environment, first-run key and token
 * generation, signals, restarts on the same data directory, and what ends up on disk and in the log.
 */

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const START_DEADLINE_MS = 15_000;
const EXIT_DEADLINE_MS = 5_000;
const SERVICE_PATH = "/latchkey.v1.SecretService";

interface Proc {
  readonly child: ChildProcess;
  readonly env: Record<string, string>;
  stdout: string;
  stderr: string;
  /** Resolves once the process has exited. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

const procs = new Set<Proc>();
const dirs = new Set<string>();

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "latchkey-proc-"));
  dirs.add(dir);
  return dir;
}

/** A port that was free a moment ago: bind port 0, read it, close. */
async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((resolve, reject) => {
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", resolve);
  });
  const { port } = srv.address() as net.AddressInfo;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

/** The parent environment without anything Latchkey reads, plus `env`. */
function childEnv(env: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v === undefined) continue;
    if (k.startsWith("LATCHKEY_") || k === "LOG_LEVEL" || k === "MONGODB_URI" || k.startsWith("NODE_TEST")) continue;
    out[k] = v;
  }
  return { ...out, ...env };
}

function spawnLatchkey(env: Record<string, string>): Proc {
  const child = spawn(process.execPath, ["--import", "tsx", "src/main.ts"], {
    cwd: ROOT,
    env: childEnv(env),
    stdio: ["ignore", "pipe", "pipe"],
  });
  const proc: Proc = {
    child,
    env,
    stdout: "",
    stderr: "",
    exited: new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal }))),
  };
  child.stdout?.setEncoding("utf8").on("data", (c: string) => (proc.stdout += c));
  child.stderr?.setEncoding("utf8").on("data", (c: string) => (proc.stderr += c));
  procs.add(proc);
  return proc;
}

async function withDeadline<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
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

/** Polls /readyz until it answers 200; fails early if the process exits. */
async function waitReady(proc: Proc, url: string): Promise<void> {
  const deadline = Date.now() + START_DEADLINE_MS;
  let exited = false;
  void proc.exited.then(() => (exited = true));
  while (Date.now() < deadline) {
    if (exited) assert.fail(`latchkey exited before it was ready; stderr: ${proc.stderr}\nstdout: ${proc.stdout}`);
    try {
      const res = await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(1_000) });
      await res.arrayBuffer();
      if (res.status === 200) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.fail(`latchkey not ready within ${START_DEADLINE_MS} ms; stderr: ${proc.stderr}\nstdout: ${proc.stdout}`);
}

async function startLatchkey(dataDir: string, extra: Record<string, string> = {}): Promise<{ proc: Proc; url: string }> {
  const port = await freePort();
  const proc = spawnLatchkey({ LATCHKEY_PORT: String(port), LATCHKEY_DATA_DIR: dataDir, LOG_LEVEL: "info", ...extra });
  const url = `http://127.0.0.1:${port}`;
  await waitReady(proc, url);
  return { proc, url };
}

/** SIGTERM, then the exit status (bounded). */
async function stop(proc: Proc): Promise<{ code: number | null; signal: NodeJS.Signals | null; ms: number }> {
  const t0 = performance.now();
  proc.child.kill("SIGTERM");
  const result = await withDeadline(proc.exited, EXIT_DEADLINE_MS, "exit after SIGTERM");
  return { ...result, ms: performance.now() - t0 };
}

/** Runs a process that must exit by itself (bad configuration); returns its exit status. */
async function runToExit(env: Record<string, string>): Promise<Proc & { code: number | null; ms: number }> {
  const t0 = performance.now();
  const proc = spawnLatchkey({ LOG_LEVEL: "info", ...env });
  const { code } = await withDeadline(proc.exited, START_DEADLINE_MS, "exit on bad configuration");
  // Let the pipes drain.
  await new Promise((r) => setTimeout(r, 20));
  return Object.assign(proc, { code, ms: performance.now() - t0 });
}

function logLines(text: string): Record<string, unknown>[] {
  return text
    .split("\n")
    .filter((l) => l.trim() !== "")
    .map((l) => {
      try {
        return JSON.parse(l) as Record<string, unknown>;
      } catch {
        assert.fail(`a log line that is not JSON: ${l}`);
      }
    });
}

function nonEmptyLines(text: string): string[] {
  return text.split("\n").filter((l) => l.trim() !== "");
}

/** Every regular file under `dir`, recursively. */
function allFiles(dir: string): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...allFiles(p));
    else if (entry.isFile()) out.push(p);
  }
  return out;
}

/** The encodings a plaintext could hide in: utf8, base64 (padded and url-safe) and hex. */
function encodings(value: string): Buffer[] {
  const utf8 = Buffer.from(value, "utf8");
  const b64 = utf8.toString("base64");
  return [utf8, Buffer.from(b64), Buffer.from(b64.replace(/=+$/, "")), Buffer.from(utf8.toString("base64url")), Buffer.from(utf8.toString("hex"))];
}

function findLeaks(haystacks: [string, Buffer][], needles: string[]): string[] {
  const hits: string[] = [];
  for (const [where, data] of haystacks) {
    for (const needle of needles) {
      for (const enc of encodings(needle)) if (data.includes(enc)) hits.push(`${where} contains ${enc.toString()}`);
    }
  }
  return hits;
}

after(async () => {
  for (const proc of procs) {
    if (proc.child.exitCode === null && proc.child.signalCode === null) {
      proc.child.kill("SIGKILL");
      await withDeadline(proc.exited, EXIT_DEADLINE_MS, "exit after SIGKILL").catch(() => undefined);
    }
  }
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

describe("the latchkey process: first run, restart, plaintext at rest", () => {
  const dataDir = tempDir();
  let first: { proc: Proc; url: string };
  let token = "";
  let masterKey = "";
  const requestIds: string[] = [];
  const canaries: string[] = [];
  /** Name -> { value, version } as served before the restart. */
  const served = new Map<string, { value: string; version: number }>();

  const api = async (url: string, method: string, path: string, body?: unknown, auth = true) => {
    const res = await fetch(url + path, {
      method,
      headers: { "content-type": "application/json", ...(auth ? { authorization: `Bearer ${token}` } : {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(5_000),
    });
    const id = res.headers.get("x-request-id");
    if (id) requestIds.push(id);
    const text = await res.text();
    return { status: res.status, body: text === "" ? undefined : JSON.parse(text) };
  };

  before(async () => {
    first = await startLatchkey(dataDir);
  });

  it("generates master.key and admin.token with mode 0600 and says where, without printing them", () => {
    const keyPath = join(dataDir, "master.key");
    const tokenPath = join(dataDir, "admin.token");
    for (const p of [keyPath, tokenPath]) {
      assert.ok(existsSync(p), `${p} exists`);
      assert.equal(statSync(p).mode & 0o777, 0o600, `${p} is 0600`);
    }
    token = readFileSync(tokenPath, "utf8").trim();
    masterKey = readFileSync(keyPath, "utf8").trim();
    assert.ok(token.length >= 32);
    assert.equal(Buffer.from(masterKey, "base64").length, 32);

    const lines = logLines(first.proc.stdout);
    const warns = lines.filter((l) => l.level === "warn");
    assert.ok(
      warns.some((l) => l.path === keyPath && String(l.msg).includes(keyPath)),
      `a warn line points at ${keyPath}: ${first.proc.stdout}`,
    );
    assert.ok(warns.some((l) => l.path === tokenPath && String(l.msg).includes(tokenPath)), `a warn line points at ${tokenPath}`);
    assert.ok(lines.some((l) => l.level === "info" && String(l.msg).startsWith("latchkey listening on")));
    for (const out of [first.proc.stdout, first.proc.stderr]) {
      assert.ok(!out.includes(token), "the admin token is not printed");
      assert.ok(!out.includes(masterKey), "the master key is not printed");
      assert.ok(!out.includes(Buffer.from(masterKey, "base64").toString("hex")), "nor its hex");
    }
    assert.equal(first.proc.stderr, "", "nothing on stderr on a clean start");
  });

  it("uses the generated admin token for management calls", async () => {
    assert.equal((await api(first.url, "GET", "/v1/secrets", undefined, false)).status, 401);
    const list = await api(first.url, "GET", "/v1/secrets");
    assert.equal(list.status, 200);
    assert.deepEqual(list.body, []);
  });

  it("stores secrets through REST and Connect", async () => {
    for (let i = 0; i < 4; i++) canaries.push(`plaintext-canary-${randomBytes(8).toString("hex")}-${i}`);
    const [c0, c1, c2, c3] = canaries as [string, string, string, string];

    let r = await api(first.url, "POST", "/v1/secrets", { name: "proc/db/password", value: c0, description: "db" });
    assert.equal(r.status, 201);
    r = await api(first.url, "PUT", "/v1/secrets/proc/db/password", { value: c1, grace_period_secs: 3600 });
    assert.equal(r.status, 200);
    assert.equal(r.body.version, 2);
    r = await api(first.url, "POST", "/v1/secrets", { name: "proc/api/key", value: c2 });
    assert.equal(r.status, 201);
    r = await api(first.url, "POST", "/v1/secrets", { name: "proc/auto", kind: "automatic", rotation_interval_secs: 86400 });
    assert.equal(r.status, 201);
    canaries.push(r.body.value);
    r = await api(first.url, "POST", "/v1/secrets/proc/auto/rotate");
    assert.equal(r.status, 200);
    assert.equal(r.body.version, 2);
    canaries.push(r.body.value);
    // Connect JSON through the same process.
    r = await api(first.url, "POST", `${SERVICE_PATH}/StoreSecret`, { name: "proc/rpc", value: c3 });
    assert.equal(r.status, 200);
    assert.equal(r.body.value, c3);
    // Failures carrying a value, which must not end up in the log either.
    assert.equal((await api(first.url, "POST", "/v1/secrets", { name: "proc/api/key", value: c2 })).status, 409);
    assert.equal((await api(first.url, "POST", `${SERVICE_PATH}/StoreSecret`, { name: "bad name!", value: c3 })).status, 400);
    assert.equal((await api(first.url, "GET", "/v1/secrets/proc/nothing", undefined, false)).status, 404);

    for (const name of ["proc/db/password", "proc/api/key", "proc/auto", "proc/rpc"]) {
      const got = await api(first.url, "GET", `/v1/secrets/${name}`, undefined, false);
      assert.equal(got.status, 200);
      served.set(name, { value: got.body.value, version: got.body.version });
    }
    assert.deepEqual(served.get("proc/db/password"), { value: c1, version: 2 });
    const v1 = await api(first.url, "GET", "/v1/secrets/proc/db/password?version=1", undefined, false);
    assert.equal(v1.body.value, c0);
  });

  it("keeps no plaintext in the data directory while running (database, WAL, anything)", () => {
    const files = allFiles(dataDir);
    assert.ok(files.some((f) => f.endsWith("latchkey.db")));
    const hits = findLeaks(
      files.map((f) => [f, readFileSync(f)]),
      canaries,
    );
    assert.deepEqual(hits, []);
  });

  it("logs one line per request with request_id, op, code and duration_ms", async () => {
    await new Promise((r) => setTimeout(r, 50));
    const lines = logLines(first.proc.stdout).filter((l) => l.msg === "request");
    assert.ok(requestIds.length >= 12);
    for (const id of requestIds) {
      const mine = lines.filter((l) => l.request_id === id);
      assert.equal(mine.length, 1, `exactly one log line for ${id}`);
      const line = mine[0] as Record<string, unknown>;
      assert.equal(typeof line.op, "string");
      assert.equal(typeof line.code, "string");
      assert.equal(typeof line.duration_ms, "number");
    }
    const ops = new Map(lines.map((l) => [l.op, l.code]));
    assert.ok(ops.has("POST /v1/secrets"));
    assert.ok(ops.has("latchkey.v1.SecretService/StoreSecret"));
    assert.ok(lines.some((l) => l.op === "GET /v1/secrets/{name}" && l.code === "not_found"));
    assert.ok(lines.some((l) => l.op === "latchkey.v1.SecretService/StoreSecret" && l.code === "invalid_argument"));
    assert.ok(lines.some((l) => l.op === "POST /v1/secrets" && l.code === "already_exists"));
  });

  it("exits 0 within a few seconds of SIGTERM", async () => {
    const { code, signal, ms } = await stop(first.proc);
    assert.equal(signal, null);
    assert.equal(code, 0, `exit code; stderr: ${first.proc.stderr}`);
    assert.ok(ms < EXIT_DEADLINE_MS);
    const lines = logLines(first.proc.stdout);
    assert.ok(lines.some((l) => l.msg === "draining"));
    assert.ok(lines.some((l) => l.msg === "stopped"));
  });

  it("leaves no plaintext, token or key in any file, the log or stderr", () => {
    const files = allFiles(dataDir);
    const hits = findLeaks(
      [
        ...files.map((f): [string, Buffer] => [f, readFileSync(f)]),
        ["stdout", Buffer.from(first.proc.stdout)],
        ["stderr", Buffer.from(first.proc.stderr)],
      ],
      canaries,
    );
    assert.deepEqual(hits, []);
    const output = first.proc.stdout + first.proc.stderr;
    assert.ok(!output.includes(token), "the admin token is never logged");
    assert.ok(!output.includes(masterKey), "the master key is never logged");
  });

  it("restarts on the same data directory with the same data and no new key or token", async () => {
    const again = await startLatchkey(dataDir);
    try {
      assert.equal(readFileSync(join(dataDir, "admin.token"), "utf8").trim(), token);
      assert.equal(readFileSync(join(dataDir, "master.key"), "utf8").trim(), masterKey);
      assert.ok(!logLines(again.proc.stdout).some((l) => l.level === "warn"), "nothing generated this time");
      for (const [name, before] of served) {
        const got = await api(again.url, "GET", `/v1/secrets/${name}`, undefined, false);
        assert.equal(got.status, 200, name);
        assert.deepEqual({ value: got.body.value, version: got.body.version }, before, name);
      }
      const v1 = await api(again.url, "GET", "/v1/secrets/proc/db/password?version=1", undefined, false);
      assert.equal(v1.body.value, canaries[0]);
      const verify = await api(again.url, "POST", "/v1/secrets/proc/db/password/verify", { value: canaries[0] }, false);
      assert.deepEqual(verify.body, { valid: true, version: 1 }, "the grace window survives a restart");
      const list = await api(again.url, "GET", "/v1/secrets");
      assert.deepEqual(
        list.body.map((m: { name: string }) => m.name),
        ["proc/api/key", "proc/auto", "proc/db/password", "proc/rpc"],
      );
    } finally {
      const { code } = await stop(again.proc);
      assert.equal(code, 0);
    }
  });

  it("refuses to start with a different master key than the one that sealed the data: one clear line", async () => {
    const other = randomBytes(32).toString("base64");
    const port = await freePort();
    const proc = await runToExit({ LATCHKEY_PORT: String(port), LATCHKEY_DATA_DIR: dataDir, LATCHKEY_MASTER_KEY: other });
    assert.notEqual(proc.code, 0);
    const lines = nonEmptyLines(proc.stderr);
    assert.equal(lines.length, 1, `one line on stderr: ${proc.stderr}`);
    assert.match(lines[0] ?? "", /^latchkey: .*master key/);
    assert.ok(!proc.stderr.includes(other) && !proc.stdout.includes(other), "the key is not echoed");
    assert.ok(!proc.stderr.includes(masterKey));
  });

  it("starts with the generated key given explicitly through LATCHKEY_MASTER_KEY", async () => {
    const explicit = await startLatchkey(dataDir, { LATCHKEY_MASTER_KEY: masterKey, LATCHKEY_ADMIN_TOKEN: token });
    try {
      const got = await api(explicit.url, "GET", "/v1/secrets/proc/api/key", undefined, false);
      assert.equal(got.body.value, canaries[2]);
      assert.ok(!explicit.proc.stdout.includes(masterKey));
    } finally {
      assert.equal((await stop(explicit.proc)).code, 0);
    }
  });
});

describe("the latchkey process: shutdown with a connection still open", () => {
  it("exits promptly on SIGTERM even when a client has connected but not sent anything yet", async () => {
    const { proc, url } = await startLatchkey(tempDir(), {
      LATCHKEY_ADMIN_TOKEN: "shutdown-admin-token-0123",
      LATCHKEY_MASTER_KEY: randomBytes(32).toString("base64"),
    });
    // Load balancer health checks and connection pools open TCP connections before they have a request to send.
    const silent = net.connect(Number(new URL(url).port), "127.0.0.1");
    silent.on("error", () => undefined);
    try {
      await new Promise<void>((resolve, reject) => {
        silent.once("connect", resolve);
        silent.once("error", reject);
      });
      await new Promise((r) => setTimeout(r, 100));
      const t0 = performance.now();
      proc.child.kill("SIGTERM");
      const { code } = await withDeadline(proc.exited, 3_500, "exit after SIGTERM with a silent connection open");
      const ms = performance.now() - t0;
      assert.equal(code, 0);
      assert.ok(ms < 3_000, `exited ${Math.round(ms)} ms after SIGTERM`);
    } finally {
      silent.destroy();
    }
  });
});

describe("the latchkey process: bad configuration", { concurrency: 2 }, () => {
  const cases: [string, Record<string, string>, RegExp[]][] = [
    ["LATCHKEY_PORT=abc", { LATCHKEY_PORT: "abc" }, [/LATCHKEY_PORT/]],
    ["LATCHKEY_MASTER_KEY=short", { LATCHKEY_MASTER_KEY: "short" }, [/LATCHKEY_MASTER_KEY/]],
    // 31 bytes of key: almost right, and secret enough that it must not be echoed back.
    ["LATCHKEY_MASTER_KEY of 31 bytes", { LATCHKEY_MASTER_KEY: randomBytes(31).toString("base64") }, [/LATCHKEY_MASTER_KEY/]],
    [
      "several bad variables",
      { LATCHKEY_ADMIN_TOKEN: "tiny", LOG_LEVEL: "loud", LATCHKEY_ALLOWED_IPS: "10.0.0.0/99" },
      [/LATCHKEY_ADMIN_TOKEN/, /LOG_LEVEL/, /LATCHKEY_ALLOWED_IPS/],
    ],
  ];
  for (const [what, env, variables] of cases) {
    it(`${what}: exits non-zero at once with one line on stderr naming every problem`, async () => {
      const dataDir = join(tempDir(), "never-created");
      const proc = await runToExit({ LATCHKEY_DATA_DIR: dataDir, ...env });
      assert.notEqual(proc.code, 0);
      assert.ok(proc.ms < 10_000, `exited in ${Math.round(proc.ms)} ms`);
      const lines = nonEmptyLines(proc.stderr);
      assert.equal(lines.length, 1, `exactly one line on stderr: ${proc.stderr}`);
      for (const variable of variables) assert.match(lines[0] ?? "", variable);
      assert.match(lines[0] ?? "", /^latchkey: /);
      assert.doesNotMatch(proc.stderr, /\n\s+at /, "no stack trace");
      for (const secret of [env.LATCHKEY_MASTER_KEY, env.LATCHKEY_ADMIN_TOKEN]) {
        if (secret) assert.ok(!proc.stderr.includes(secret), "a key or token given in the environment is not echoed");
      }
      assert.equal(proc.stdout, "");
      assert.ok(!existsSync(dataDir), "the data directory was not touched");
    });
  }

  it("a port already in use: exits non-zero with one line saying so", async () => {
    const busy = net.createServer();
    await new Promise<void>((resolve) => busy.listen(0, "127.0.0.1", resolve));
    try {
      const port = (busy.address() as net.AddressInfo).port;
      const proc = await runToExit({
        LATCHKEY_PORT: String(port),
        LATCHKEY_DATA_DIR: tempDir(),
        LATCHKEY_ADMIN_TOKEN: "busy-port-admin-token-0123",
        LATCHKEY_MASTER_KEY: randomBytes(32).toString("base64"),
      });
      assert.notEqual(proc.code, 0);
      const lines = nonEmptyLines(proc.stderr);
      assert.equal(lines.length, 1, `exactly one line on stderr: ${proc.stderr}`);
      assert.match(lines[0] ?? "", /^latchkey: cannot start: .*EADDRINUSE/);
    } finally {
      await new Promise<void>((resolve) => busy.close(() => resolve()));
    }
  });
});
