import { randomBytes } from "node:crypto";
import * as http from "node:http";
import { join } from "node:path";
import Database from "better-sqlite3";
import { verifyAuditLog } from "../../src/service/audit-verify.js";
import { createSqliteStorage } from "../../src/storage/sqlite/sqlite-storage.js";
import { freePort, type Proc, sleep, spawnLatchkey, waitReady, withDeadline } from "./spawn.js";

/**
 * The crash loop behind test/e2e/crash-safety.test.ts and bench/crash-loop.ts: writers drive creates, updates and
 * atomic batches against the real process over keep-alive HTTP (REST and Connect JSON), the loop SIGKILLs the
 * process at a random moment, restarts it on the same data directory and checks what survived.
 *
 * Every write is either acknowledged (a 2xx carrying the version it made) or in flight when the process died (its
 * outcome unknown). After each restart: every acknowledged version reads back with exactly its value; an in-flight
 * write is all there (its value at the version after the last known one) or not there at all, and an atomic batch
 * in flight is all there or all absent; a secret has no version the writers did not make, and no gap. At the end:
 * PRAGMA integrity_check, the audit chain, and one audit entry with code "ok" for exactly the writes that landed.
 *
 * Each secret has one owner among the writers and that writer has one request in flight at a time, so the version
 * every write must get is known in advance.
 */

export const CRASH_ADMIN_TOKEN = "crash-admin-token-0123456789";
export const CRASH_MASTER_KEY = Buffer.alloc(32, 11).toString("base64");

export interface CrashLoopOptions {
  readonly dataDir: string;
  readonly cycles: number;
  /** Concurrent writers, one request in flight each. Default 8. */
  readonly writers?: number;
  /** The process is killed this long after the writers start: uniform in [min, max] ms. Default 50-1500. */
  readonly killAfterMs?: readonly [number, number];
  /** Seed of the choices (ops, values, kill moments); the summary reports it so a run can be repeated. */
  readonly seed?: number;
  /**
   * Every this many cycles, one more start is killed at a random moment while it opens the store (recovery,
   * migrations), before the cycle's own start. 0 for never. Default 4.
   */
  readonly killDuringStartEvery?: number;
  /** Run PRAGMA integrity_check (read-only) on the file left by each kill, before the restart. Default true. */
  readonly checkEachKill?: boolean;
  /** Progress lines. */
  readonly log?: (line: string) => void;
}

export interface CrashLoopSummary {
  readonly seed: number;
  readonly cycles: number;
  /** Starts killed before they were ready. */
  readonly startKills: number;
  readonly secrets: number;
  /** Writes answered 2xx (a batch counts once per item). */
  readonly acknowledged: number;
  /** Writes in flight at a kill, and how the restart found them. */
  readonly inFlight: number;
  readonly inFlightPresent: number;
  readonly inFlightAbsent: number;
  /** Batches in flight at a kill (each all present or all absent, else a violation). */
  readonly batchesInFlight: number;
  /** Versions read back and compared with what was acknowledged, over every restart. */
  readonly versionsChecked: number;
  readonly auditEntries: number;
  readonly integrity: string;
  readonly violations: readonly string[];
  readonly ms: number;
}

/** The summary as one line, for logs and the bench script. */
export function formatSummary(s: CrashLoopSummary): string {
  return (
    `crash-loop seed=${s.seed} cycles=${s.cycles} start_kills=${s.startKills} secrets=${s.secrets} acknowledged=${s.acknowledged} ` +
    `versions_checked=${s.versionsChecked} in_flight=${s.inFlight} present=${s.inFlightPresent} absent=${s.inFlightAbsent} ` +
    `batches_in_flight=${s.batchesInFlight} audit_entries=${s.auditEntries} integrity=${s.integrity} ` +
    `violations=${s.violations.length} ms=${s.ms}`
  );
}

/** mulberry32: a small seeded PRNG, so a failing run can be replayed with the same choices. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Pending {
  readonly value: string;
  readonly requestId: string;
  /** Set when the write was one item of an atomic batch. */
  readonly batch?: string;
}

interface Tracked {
  readonly name: string;
  /** values[v - 1] is the value of version v, for every version known to exist. */
  readonly values: string[];
  /** Versions up to this one were read back after the last restart. */
  checkedUpTo: number;
  pending?: Pending | undefined;
}

interface Reply {
  readonly status: number;
  // Response bodies are untyped JSON by nature.
  readonly body: any;
}

const REQUEST_TIMEOUT_MS = 10_000;
const MAX_VERSIONS = 1000;
/** A writer stops growing a secret past this many versions (LATCHKEY_MAX_VERSIONS is 1000, so none is dropped). */
const VERSION_CAP = 800;
const SECRETS_PER_WRITER_CAP = 60;

/** One request over `agent`; undefined when no complete answer came (refused, reset, cut off, timed out). */
function send(agent: http.Agent, port: number, method: string, path: string, body: unknown, requestId: string): Promise<Reply | undefined> {
  return new Promise((resolve) => {
    const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const req = http.request(
      {
        host: "127.0.0.1",
        port,
        method,
        path,
        agent,
        timeout: REQUEST_TIMEOUT_MS,
        headers: {
          authorization: `Bearer ${CRASH_ADMIN_TOKEN}`,
          "x-request-id": requestId,
          ...(data ? { "content-type": "application/json", "content-length": String(data.length) } : {}),
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("error", () => resolve(undefined));
        res.on("aborted", () => resolve(undefined));
        res.on("end", () => {
          if (!res.complete) return resolve(undefined);
          const text = Buffer.concat(chunks).toString("utf8");
          try {
            resolve({ status: res.statusCode ?? 0, body: text === "" ? undefined : JSON.parse(text) });
          } catch {
            resolve(undefined);
          }
        });
      },
    );
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", () => resolve(undefined));
    req.end(data);
  });
}

const enc = (name: string) => name.split("/").map(encodeURIComponent).join("/");

/** PRAGMA integrity_check on a database file, read-only: "ok" or what it found. */
export function integrityCheck(file: string): string {
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    const rows = db.pragma("integrity_check") as { integrity_check: string }[];
    return rows.map((r) => r.integrity_check).join("; ");
  } finally {
    db.close();
  }
}

/** Runs the crash loop; never throws for a violation (they are in the summary), only for a broken harness. */
export async function runCrashLoop(opts: CrashLoopOptions): Promise<CrashLoopSummary> {
  const t0 = performance.now();
  const seed = opts.seed ?? randomBytes(4).readUInt32LE(0);
  const rand = prng(seed);
  const writers = opts.writers ?? 8;
  const [killMin, killMax] = opts.killAfterMs ?? [50, 1500];
  const log = opts.log ?? (() => undefined);
  const file = join(opts.dataDir, "latchkey.db");
  const tag = `crash-${seed.toString(36)}`;
  const env = {
    LATCHKEY_DATA_DIR: opts.dataDir,
    LATCHKEY_MASTER_KEY: CRASH_MASTER_KEY,
    LATCHKEY_ADMIN_TOKEN: CRASH_ADMIN_TOKEN,
    LATCHKEY_MAX_VERSIONS: String(MAX_VERSIONS),
    LOG_LEVEL: "warn",
  };

  const violations: string[] = [];
  const violation = (s: string) => {
    violations.push(s);
    log(`VIOLATION ${s}`);
  };
  const owned: Tracked[][] = Array.from({ length: writers }, () => []);
  const all = () => owned.flat();
  /** Request id -> what it wrote, for the audit cross-check: acknowledged, or in flight and then found present/absent. */
  const landed = new Map<string, { names: string[] }>();
  const lost = new Set<string>();
  let requests = 0;
  let acknowledged = 0;
  let inFlight = 0;
  let inFlightPresent = 0;
  let inFlightAbsent = 0;
  let batchesInFlight = 0;
  let versionsChecked = 0;
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)] as T;
  const newValue = (w: number) => {
    const n = 8 + Math.floor(rand() ** 3 * 1500);
    const core = `${tag}-w${w}-${requests}-`;
    return core + "x".repeat(Math.max(0, n - core.length)) + randomBytes(6).toString("hex");
  };

  /** One writer's loop for one life of the process: stops at the kill, or at the first write without an answer. */
  async function writer(w: number, port: number, agent: http.Agent, killed: () => boolean): Promise<void> {
    const mine = owned[w] as Tracked[];
    while (!killed()) {
      const requestId = `${tag}-${++requests}`;
      const absent = mine.find((s) => s.values.length === 0);
      const room = mine.filter((s) => s.values.length > 0 && s.values.length < VERSION_CAP);
      const r = rand();
      let targets: Tracked[];
      let kind: "create" | "update" | "batch";
      if (absent) {
        targets = [absent];
        kind = "create";
      } else if (room.length === 0 || (r < 0.06 && mine.length < SECRETS_PER_WRITER_CAP)) {
        const s: Tracked = { name: `crash/w${w}/s${mine.length}`, values: [], checkedUpTo: 0 };
        mine.push(s);
        targets = [s];
        kind = "create";
      } else if (r < 0.35 && room.length >= 2) {
        const shuffled = [...room].sort(() => rand() - 0.5);
        targets = shuffled.slice(0, 2 + Math.floor(rand() * 2));
        kind = "batch";
      } else {
        targets = [pick(room)];
        kind = "update";
      }
      const values = targets.map(() => newValue(w));
      const connect = rand() < 0.5;
      const batch = kind === "batch" ? requestId : undefined;
      targets.forEach((s, i) => (s.pending = { value: values[i] as string, requestId, ...(batch ? { batch } : {}) }));

      const t = targets[0] as Tracked;
      let reply: Reply | undefined;
      if (kind === "create") {
        reply = connect
          ? await send(agent, port, "POST", "/latchkey.v1.SecretService/StoreSecret", { name: t.name, value: values[0] }, requestId)
          : await send(agent, port, "POST", "/v1/secrets", { name: t.name, value: values[0] }, requestId);
      } else if (kind === "update") {
        reply = connect
          ? await send(agent, port, "POST", "/latchkey.v1.SecretService/UpdateSecret", { name: t.name, value: values[0] }, requestId)
          : await send(agent, port, "PUT", `/v1/secrets/${enc(t.name)}`, { value: values[0] }, requestId);
      } else {
        const items = targets.map((s, i) => ({ name: s.name, value: values[i] }));
        reply = connect
          ? await send(agent, port, "POST", "/latchkey.v1.SecretService/BatchUpsertSecrets", { items, atomic: true }, requestId)
          : await send(agent, port, "POST", "/v1/secrets:batchSet", { items, atomic: true }, requestId);
      }
      if (reply === undefined) {
        // No answer: the outcome is unknown until the restart. This writer is done for this life of the process.
        inFlight += targets.length;
        if (batch) batchesInFlight++;
        lost.add(requestId);
        if (!killed()) violation(`${kind} ${requestId} got no answer while the process was running`);
        return;
      }
      if (reply.status < 200 || reply.status > 299) {
        violation(`${kind} ${requestId} (${connect ? "connect" : "rest"}) answered ${reply.status}: ${JSON.stringify(reply.body)}`);
        // Its outcome is unknown too: leave it pending, so the restart decides.
        inFlight += targets.length;
        lost.add(requestId);
        return;
      }
      const versions: number[] =
        kind === "batch"
          ? (reply.body?.results ?? []).map((x: { version?: number }) => Number(x.version ?? 0))
          : kind === "create"
            ? [Number(connect ? reply.body?.version?.version : reply.body?.version)]
            : [Number(connect ? reply.body?.secret?.currentVersion : reply.body?.version)];
      targets.forEach((s, i) => {
        const expected = s.values.length + 1;
        if (versions[i] !== expected) violation(`${kind} ${requestId} on ${s.name} acknowledged version ${versions[i]}, expected ${expected}`);
        s.values.push(values[i] as string);
        s.pending = undefined;
        acknowledged++;
      });
      landed.set(requestId, { names: targets.map((s) => s.name) });
    }
  }

  /** Checks one secret after a restart: resolves its in-flight write, then reads back the versions not yet checked. */
  async function verifySecret(agent: http.Agent, port: number, s: Tracked, full: boolean): Promise<"present" | "absent" | undefined> {
    const rid = () => `${tag}-check-${++requests}`;
    const known = s.values.length;
    const list = await send(agent, port, "GET", `/v1/secrets/${enc(s.name)}/versions`, undefined, rid());
    let outcome: "present" | "absent" | undefined;
    if (!list) {
      violation(`${s.name}: no answer to the versions list`);
      return undefined;
    }
    let max = 0;
    if (list.status === 200) {
      const vs = ((list.body?.versions ?? []) as { version: number }[]).map((v) => v.version).sort((a, b) => a - b);
      max = vs.length;
      if (vs.some((v, i) => v !== i + 1)) violation(`${s.name}: versions are not 1..${vs.length}: ${vs.join(",")}`);
    } else if (list.status !== 404) {
      violation(`${s.name}: the versions list answered ${list.status}: ${JSON.stringify(list.body)}`);
      return undefined;
    }
    if (s.pending) {
      const p = s.pending;
      if (max === known + 1) {
        const got = await send(agent, port, "GET", `/v1/secrets/${enc(s.name)}?version=${max}`, undefined, rid());
        if (got?.status !== 200 || got.body?.value !== p.value) {
          violation(`${s.name}: in-flight ${p.requestId} left version ${max} without its value (${got?.status}: ${String(got?.body?.value).slice(0, 60)})`);
        } else {
          s.values.push(p.value);
          landed.set(p.requestId, { names: [...(landed.get(p.requestId)?.names ?? []), s.name] });
          outcome = "present";
        }
      } else if (max === known) {
        outcome = "absent";
      } else {
        violation(`${s.name}: ${max} versions after a restart, expected ${known} or ${known + 1} (in-flight ${p.requestId})`);
      }
      s.pending = undefined;
    } else if (max !== known) {
      violation(`${s.name}: ${max} versions after a restart, expected ${known} (every write to it was acknowledged)`);
    }
    const from = full ? 1 : s.checkedUpTo + 1;
    for (let v = from; v <= Math.min(known, max); v++) {
      const got = await send(agent, port, "GET", `/v1/secrets/${enc(s.name)}?version=${v}`, undefined, rid());
      versionsChecked++;
      if (got?.status !== 200) violation(`${s.name}: acknowledged version ${v} reads ${got?.status}: ${JSON.stringify(got?.body)}`);
      else if (got.body?.value !== s.values[v - 1]) violation(`${s.name}: acknowledged version ${v} reads another value`);
    }
    if (s.values.length > 0) {
      const cur = await send(agent, port, "GET", `/v1/secrets/${enc(s.name)}`, undefined, rid());
      if (cur?.status !== 200 || cur.body?.version !== s.values.length || cur.body?.value !== s.values[s.values.length - 1]) {
        violation(`${s.name}: current is ${cur?.status} version ${cur?.body?.version}, expected version ${s.values.length} with the last value written`);
      }
    }
    s.checkedUpTo = s.values.length;
    return outcome;
  }

  /** Checks every secret (8 at a time); tallies in-flight outcomes and atomic batches split by the crash. */
  async function verifyAll(port: number, full: boolean): Promise<void> {
    const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });
    try {
      const secrets = all();
      const batches = new Map<string, ("present" | "absent" | undefined)[]>();
      let next = 0;
      await Promise.all(
        Array.from({ length: 8 }, async () => {
          while (next < secrets.length) {
            const s = secrets[next++] as Tracked;
            const batch = s.pending?.batch;
            const outcome = await verifySecret(agent, port, s, full);
            if (outcome === "present") inFlightPresent++;
            if (outcome === "absent") inFlightAbsent++;
            if (batch) batches.set(batch, [...(batches.get(batch) ?? []), outcome]);
          }
        }),
      );
      for (const [id, outcomes] of batches) {
        if (new Set(outcomes).size > 1) violation(`atomic batch ${id} is half there after the crash: ${outcomes.join(",")}`);
      }
    } finally {
      agent.destroy();
    }
  }

  async function start(): Promise<{ proc: Proc; port: number } | undefined> {
    const port = await freePort();
    const proc = spawnLatchkey({ ...env, LATCHKEY_PORT: String(port) });
    try {
      await waitReady(proc, `http://127.0.0.1:${port}`);
      return { proc, port };
    } catch (err) {
      violation(`the process did not become ready on the data left by the last kill: ${(err as Error).message.slice(0, 2000)}`);
      proc.child.kill("SIGKILL");
      await proc.exited;
      return undefined;
    }
  }

  let cycles = 0;
  let startKills = 0;
  const startKillEvery = opts.killDuringStartEvery ?? 4;
  for (let cycle = 1; cycle <= opts.cycles; cycle++) {
    if (startKillEvery > 0 && cycle % startKillEvery === 0) {
      const doomed = spawnLatchkey({ ...env, LATCHKEY_PORT: String(await freePort()) });
      const after = rand() * 1200;
      await sleep(after);
      doomed.child.kill("SIGKILL");
      await withDeadline(doomed.exited, 5_000, "exit after SIGKILL");
      startKills++;
      log(`cycle ${cycle}: a start killed after ${Math.round(after)} ms`);
    }
    const tStart = performance.now();
    const started = await start();
    if (!started) break;
    const { proc, port } = started;
    const tReady = performance.now();
    await verifyAll(port, false);
    const tChecked = performance.now();
    const agent = new http.Agent({ keepAlive: true, maxSockets: writers });
    let dead = false;
    const running = Array.from({ length: writers }, (_, w) => writer(w, port, agent, () => dead));
    const before = acknowledged;
    const killAt = killMin + rand() * (killMax - killMin);
    await sleep(killAt);
    dead = true;
    proc.child.kill("SIGKILL");
    await withDeadline(proc.exited, 5_000, "exit after SIGKILL");
    await withDeadline(Promise.all(running), REQUEST_TIMEOUT_MS + 2_000, "writers after the kill");
    agent.destroy();
    cycles = cycle;
    const inFlightNow = all().filter((s) => s.pending).length;
    log(
      `cycle ${cycle}: ready in ${Math.round(tReady - tStart)} ms, checked in ${Math.round(tChecked - tReady)} ms, ` +
        `killed after ${Math.round(killAt)} ms of writes (${acknowledged - before} acknowledged), ${inFlightNow} in flight`,
    );
    if (opts.checkEachKill ?? true) {
      const check = integrityCheck(file);
      if (check !== "ok") violation(`integrity_check after kill ${cycle}: ${check}`);
    }
  }

  // The last restart: every version ever acknowledged, then a clean stop and the file itself.
  let integrity = "not run";
  let auditEntries = 0;
  const last = await start();
  if (last) {
    await verifyAll(last.port, true);
    last.proc.child.kill("SIGTERM");
    const { code } = await withDeadline(last.proc.exited, 10_000, "exit after SIGTERM");
    if (code !== 0) violation(`the last process exited ${code} on SIGTERM: ${last.proc.stderr.slice(0, 2000)}`);
    integrity = integrityCheck(file);
    if (integrity !== "ok") violation(`integrity_check after the last stop: ${integrity}`);
    auditEntries = checkAudit(file, tag, landed, lost, violation);
    const storage = createSqliteStorage(file);
    try {
      const chain = await verifyAuditLog(storage);
      if (!chain.ok) violation(`the audit chain does not verify: ${JSON.stringify(chain.chains)}`);
    } finally {
      await storage.close();
    }
  }

  return {
    seed,
    cycles,
    startKills,
    secrets: all().length,
    acknowledged,
    inFlight,
    inFlightPresent,
    inFlightAbsent,
    batchesInFlight,
    versionsChecked,
    auditEntries,
    integrity,
    violations,
    ms: Math.round(performance.now() - t0),
  };
}

/**
 * The audit log against what the writers saw: one entry with code "ok" for each write that landed (acknowledged,
 * or in flight and found present), none for an in-flight write found absent. Returns the number of entries.
 */
function checkAudit(
  file: string,
  tag: string,
  landed: ReadonlyMap<string, { names: string[] }>,
  lost: ReadonlySet<string>,
  violation: (s: string) => void,
): number {
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    const total = (db.prepare("SELECT COUNT(*) AS n FROM audit").get() as { n: number }).n;
    const rows = db.prepare("SELECT request_id, code, name FROM audit WHERE request_id LIKE ?").all(`${tag}-%`) as {
      request_id: string;
      code: string;
      name: string;
    }[];
    const ok = new Map<string, number>();
    for (const r of rows) if (r.code === "ok") ok.set(r.request_id, (ok.get(r.request_id) ?? 0) + 1);
    for (const [id, { names }] of landed) {
      const n = ok.get(id) ?? 0;
      if (n !== 1) violation(`write ${id} (${names.join(",")}) landed but has ${n} audit entries with code ok`);
    }
    for (const id of lost) {
      if (!landed.has(id) && ok.has(id)) violation(`in-flight write ${id} is absent but its audit entry says ok`);
    }
    return total;
  } finally {
    db.close();
  }
}
