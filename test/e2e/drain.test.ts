import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, rmSync, statSync } from "node:fs";
import * as http from "node:http";
import * as http2 from "node:http2";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { SecretEventType } from "../../gen/latchkey/v1/secret_pb.js";
import { SecretService } from "../../gen/latchkey/v1/secret_service_pb.js";
import { createEnvelope, masterKeyFrom } from "../../src/crypto/envelope.js";
import { createSqliteStorage } from "../../src/storage/sqlite/sqlite-storage.js";
import { connectRefused, freePort, isRunning, killAll, type Proc, sleep, spawnLatchkey, waitReady, withDeadline } from "../support/spawn.js";

/**
 * Graceful drain of the real process: on SIGTERM it reports not ready for LATCHKEY_DRAIN_DELAY_MS while still
 * serving, then refuses new connections, lets the calls in flight finish (at most LATCHKEY_DRAIN_TIMEOUT_MS), ends
 * streams with UNAVAILABLE, closes the store and exits 0. A second signal during a drain exits at once.
 */

const ADMIN = "drain-admin-token-0123456789";
// 300 ms is enough on an idle machine; 1 s keeps "during the delay" observable when other suites load the CPUs.
const DELAY_MS = 1_000;
const TIMEOUT_MS = 3_000;
const MARGIN_MS = 2_000;
const CALL_MS = 5_000;
const THIRD_PARTY = fileURLToPath(new URL("../../third_party", import.meta.url));
const GET_SECRET = "/latchkey.v1.SecretService/GetSecret";
const STORE_SECRET = "/latchkey.v1.SecretService/StoreSecret";

interface Reply {
  readonly status: number;
  readonly body: any;
}

const parse = (text: string) => {
  try {
    return text === "" ? undefined : JSON.parse(text);
  } catch {
    return text;
  }
};

/** A Connect JSON unary call over an existing HTTP/2 session. */
function h2call(session: http2.ClientHttp2Session, path: string, message: unknown, headers: Record<string, string> = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const stream = session.request({ ":method": "POST", ":path": path, "content-type": "application/json", ...headers });
    const timer = setTimeout(() => stream.close(http2.constants.NGHTTP2_CANCEL), CALL_MS);
    let status = 0;
    let text = "";
    stream.on("response", (h) => (status = Number(h[":status"])));
    stream.setEncoding("utf8");
    stream.on("data", (c: string) => (text += c));
    stream.on("end", () => {
      clearTimeout(timer);
      resolve({ status, body: parse(text) });
    });
    stream.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    stream.end(JSON.stringify(message));
  });
}

/** A Connect JSON unary call over HTTP/1.1 through `agent` (keep-alive), or on a connection of its own. */
function h1call(port: number, path: string, message: unknown, headers: Record<string, string> = {}, agent: http.Agent | false = false): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const body = JSON.stringify(message);
    const req = http.request(
      { host: "127.0.0.1", port, method: "POST", path, agent, timeout: CALL_MS, headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body), ...headers } },
      (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => (text += c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body: parse(text) }));
        res.on("error", reject);
      },
    );
    req.on("timeout", () => req.destroy(new Error("timed out")));
    req.on("error", reject);
    req.end(body);
  });
}

/** A call whose body arrives in two parts: the server has it in flight until `finish()` sends the rest. */
interface SlowCall {
  finish(): void;
  readonly reply: Promise<Reply>;
  abort(): void;
}

function slowH1(port: number, path: string, message: unknown, headers: Record<string, string> = {}): SlowCall {
  const body = JSON.stringify(message);
  const half = Math.floor(body.length / 2);
  let req!: http.ClientRequest;
  const reply = new Promise<Reply>((resolve, reject) => {
    req = http.request(
      { host: "127.0.0.1", port, method: "POST", path, agent: false, headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body), ...headers } },
      (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => (text += c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body: parse(text) }));
        res.on("error", reject);
      },
    );
    req.on("error", reject);
  });
  reply.catch(() => {});
  req.write(body.slice(0, half));
  return { finish: () => req.end(body.slice(half)), reply, abort: () => req.destroy() };
}

function slowH2(session: http2.ClientHttp2Session, path: string, message: unknown, headers: Record<string, string> = {}): SlowCall {
  const body = JSON.stringify(message);
  const half = Math.floor(body.length / 2);
  const stream = session.request({ ":method": "POST", ":path": path, "content-type": "application/json", ...headers });
  const reply = new Promise<Reply>((resolve, reject) => {
    let status = 0;
    let text = "";
    stream.on("response", (h) => (status = Number(h[":status"])));
    stream.setEncoding("utf8");
    stream.on("data", (c: string) => (text += c));
    stream.on("end", () => resolve({ status, body: parse(text) }));
    stream.on("error", reject);
  });
  reply.catch(() => {});
  stream.write(body.slice(0, half));
  return { finish: () => stream.end(body.slice(half)), reply, abort: () => stream.close(http2.constants.NGHTTP2_CANCEL) };
}

const healthPkg = grpc.loadPackageDefinition(
  protoLoader.loadSync("grpc/health/v1/health.proto", { includeDirs: [THIRD_PARTY], longs: String, enums: String, defaults: true, oneofs: true }),
) as any;

interface Started {
  readonly proc: Proc;
  readonly url: string;
  readonly port: number;
  readonly dataDir: string;
  readonly masterKey: Buffer;
}

const dirs: string[] = [];

async function start(extra: Record<string, string>): Promise<Started> {
  const dataDir = mkdtempSync(join(tmpdir(), "latchkey-drain-"));
  dirs.push(dataDir);
  const port = await freePort();
  const masterKey = randomBytes(32);
  const proc = spawnLatchkey({
    LATCHKEY_PORT: String(port),
    LATCHKEY_DATA_DIR: dataDir,
    LATCHKEY_ADMIN_TOKEN: ADMIN,
    LATCHKEY_MASTER_KEY: masterKey.toString("base64"),
    LOG_LEVEL: "info",
    ...extra,
  });
  const url = `http://127.0.0.1:${port}`;
  await waitReady(proc, url);
  return { proc, url, port, dataDir, masterKey };
}

// The three processes start at once: loading takes a second or two each.
let main: Promise<Started>;
let second: Promise<[Started, Started]>;
before(() => {
  const long = { LATCHKEY_DRAIN_DELAY_MS: "0", LATCHKEY_DRAIN_TIMEOUT_MS: "30000" };
  main = start({ LATCHKEY_DRAIN_DELAY_MS: String(DELAY_MS), LATCHKEY_DRAIN_TIMEOUT_MS: String(TIMEOUT_MS) });
  second = Promise.all([start(long), start(long)]);
  main.catch(() => {});
  second.catch(() => {});
});
after(async () => {
  await killAll();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe("SIGTERM with calls in flight", () => {
  let s: Started;
  /** What the scenario saw, for the assertions below. */
  const seen = {
    ran: false,
    readyzDuringDelay: [] as number[],
    healthzDuringDelay: 0,
    burst: [] as { via: string; status: number; value?: string; error?: string }[],
    duringDelayOnSession: undefined as (Reply & { at: number }) | undefined,
    refusedAfterMs: undefined as number | undefined,
    aliveWhenRefused: false,
    newStreamOnDrainedSession: "" as string,
    slowGet: undefined as Reply | undefined,
    slowStore: undefined as Reply | undefined,
    watchEvents: [] as string[],
    watchEnd: undefined as ConnectError | undefined,
    healthStatuses: [] as string[],
    healthEnd: undefined as grpc.StatusObject | undefined,
    exit: undefined as { code: number | null; signal: NodeJS.Signals | null } | undefined,
    exitMs: 0,
    exitAfterLastCallMs: 0,
  };

  before(async () => {
    s = await main;
  });

  it("runs the scenario: watchers, slow calls and a burst in flight, then SIGTERM", async () => {
    const auth = { authorization: `Bearer ${ADMIN}` };
    const created = await h1call(s.port, STORE_SECRET, { name: "drain/db", value: "drain-value-1" }, auth);
    assert.equal(created.status, 200, JSON.stringify(created.body));

    // One HTTP/2 connection and an HTTP/1.1 keep-alive pool of 20 connections, all warm.
    const session = http2.connect(s.url);
    session.on("error", () => {});
    const agent = new http.Agent({ keepAlive: true, maxSockets: 20 });
    try {
      assert.equal((await h2call(session, GET_SECRET, { name: "drain/db" })).status, 200);
      const warm = await Promise.all(Array.from({ length: 20 }, () => h1call(s.port, GET_SECRET, { name: "drain/db" }, {}, agent)));
      assert.ok(warm.every((r) => r.status === 200));

      // Streams: a WatchSecrets (connect-node, gRPC) and a health Watch (grpc-js).
      const watchAc = new AbortController();
      const watchClient = createClient(SecretService, createGrpcTransport({ baseUrl: s.url, sessionManager: new Http2SessionManager(s.url) }));
      const watchDone = (async () => {
        try {
          for await (const ev of watchClient.watchSecrets({ namePrefix: "drain/" }, { signal: watchAc.signal, headers: auth })) {
            seen.watchEvents.push(SecretEventType[ev.type]);
          }
        } catch (err) {
          seen.watchEnd = ConnectError.from(err);
        }
      })();
      const health = new healthPkg.grpc.health.v1.Health(`127.0.0.1:${s.port}`, grpc.credentials.createInsecure()) as grpc.Client;
      const healthCall = (health as any).Watch({ service: "" }) as grpc.ClientReadableStream<{ status: string }>;
      healthCall.on("data", (d: { status: string }) => seen.healthStatuses.push(d.status));
      healthCall.on("error", () => {});
      const healthDone = new Promise<void>((resolve) =>
        healthCall.on("status", (st: grpc.StatusObject) => {
          seen.healthEnd = st;
          resolve();
        }),
      );
      const deadline = Date.now() + CALL_MS;
      while (seen.watchEvents.length === 0 || seen.healthStatuses.length === 0) {
        assert.ok(Date.now() < deadline, "the watches started");
        await sleep(10);
      }

      // Calls the server is in the middle of: their bodies are only half sent.
      const slowGet = slowH1(s.port, GET_SECRET, { name: "drain/db" }, { "x-request-id": "drain-slow-h1-get" });
      const slowStore = slowH2(session, STORE_SECRET, { name: "drain/in-flight", value: "written-while-draining" }, { ...auth, "x-request-id": "drain-slow-h2-store" });
      await sleep(100);

      // A burst of unary calls over the one HTTP/2 connection and the HTTP/1.1 keep-alive pool, sent as the signal is.
      const record = (via: string, p: Promise<Reply>) =>
        p.then(
          (r) => seen.burst.push({ via, status: r.status, value: r.body?.value }),
          (err: Error) => seen.burst.push({ via, status: 0, error: err.message }),
        );
      const burst = [
        ...Array.from({ length: 20 }, (_, i) => record("h2", h2call(session, GET_SECRET, { name: "drain/db" }, { "x-request-id": `drain-burst-h2-${i}` }))),
        ...Array.from({ length: 20 }, (_, i) => record("h1", h1call(s.port, GET_SECRET, { name: "drain/db" }, { "x-request-id": `drain-burst-h1-${i}` }, agent))),
      ];
      const t0 = performance.now();
      s.proc.child.kill("SIGTERM");

      // During the delay: calls on the open HTTP/2 connection are still served; /readyz says 503; /healthz 200.
      await sleep(100);
      const duringDelay = h2call(session, GET_SECRET, { name: "drain/db" }, { "x-request-id": "drain-during-delay" }).then(
        (r) => ({ ...r, at: performance.now() - t0 }),
        (err: Error) => ({ status: 0, body: err.message, at: performance.now() - t0 }),
      );
      while (performance.now() - t0 < DELAY_MS + 2_000) {
        const r = await fetch(`${s.url}/readyz`, { signal: AbortSignal.timeout(1_000) }).then(
          async (res) => {
            await res.arrayBuffer();
            return res.status;
          },
          () => 0,
        );
        seen.readyzDuringDelay.push(r);
        if (r === 503 || (r === 0 && (await connectRefused(s.port)))) break;
        await sleep(15);
      }
      seen.healthzDuringDelay = await fetch(`${s.url}/healthz`, { signal: AbortSignal.timeout(1_000) }).then(
        (res) => res.arrayBuffer().then(() => res.status),
        () => 0,
      );
      seen.duringDelayOnSession = await duringDelay;
      await Promise.all(burst);

      // After the delay: new connections are refused, while the slow calls keep the process draining.
      while (performance.now() - t0 < DELAY_MS + 2_000) {
        if (await connectRefused(s.port)) {
          seen.refusedAfterMs = performance.now() - t0;
          seen.aliveWhenRefused = isRunning(s.proc);
          break;
        }
        await sleep(20);
      }
      // The drained HTTP/2 connection takes no new streams (GOAWAY), though its open stream goes on.
      seen.newStreamOnDrainedSession = await h2call(session, GET_SECRET, { name: "drain/db" }).then(
        (r) => `served ${r.status}`,
        (err: Error) => `refused: ${err.message}`,
      );

      // Now the slow calls finish sending: they must complete.
      slowGet.finish();
      slowStore.finish();
      [seen.slowGet, seen.slowStore] = await withDeadline(Promise.all([slowGet.reply, slowStore.reply]), CALL_MS, "the slow calls");
      const lastCallAt = performance.now();

      await withDeadline(Promise.all([watchDone, healthDone]), CALL_MS, "the watches ending");
      watchAc.abort();
      health.close();

      seen.exit = await withDeadline(s.proc.exited, DELAY_MS + TIMEOUT_MS + MARGIN_MS, "exit after SIGTERM");
      seen.exitMs = (s.proc.exitedAt ?? performance.now()) - t0;
      seen.exitAfterLastCallMs = (s.proc.exitedAt ?? performance.now()) - lastCallAt;
      seen.ran = true;
    } finally {
      session.destroy();
      agent.destroy();
    }
  });

  const ran = () => assert.ok(seen.ran, "the scenario ran to the end");

  it("reports not ready (503) during the delay, while staying alive", () => {
    ran();
    assert.equal(seen.readyzDuringDelay.at(-1), 503, `/readyz during the delay, before connections were refused: ${seen.readyzDuringDelay.join(", ")}`);
    assert.equal(seen.healthzDuringDelay, 200, "/healthz (liveness) stays 200");
  });

  it("completes every unary call in flight or sent during the delay, over HTTP/2 and HTTP/1.1 keep-alive", () => {
    ran();
    assert.equal(seen.burst.length, 40);
    const failed = seen.burst.filter((b) => b.status !== 200 || b.value !== "drain-value-1");
    assert.deepEqual(failed, [], "every call of the burst succeeded with the value");
    assert.equal(
      seen.duringDelayOnSession?.status,
      200,
      `a call on the open connection during the delay is served (${JSON.stringify(seen.duringDelayOnSession)})`,
    );
    assert.equal(seen.slowGet?.status, 200, `the slow GetSecret (HTTP/1.1): ${JSON.stringify(seen.slowGet?.body)}`);
    assert.equal(seen.slowGet?.body?.value, "drain-value-1");
    assert.equal(seen.slowStore?.status, 200, `the slow StoreSecret (HTTP/2): ${JSON.stringify(seen.slowStore?.body)}`);
    assert.equal(seen.slowStore?.body?.value, "written-while-draining");
  });

  it("refuses new connections once the delay is over, while calls in flight still run", () => {
    ran();
    assert.ok(seen.refusedAfterMs !== undefined, "new connections were refused");
    assert.ok(seen.refusedAfterMs >= DELAY_MS * 0.8, `refused ${Math.round(seen.refusedAfterMs)} ms after SIGTERM: not before the delay`);
    assert.ok(seen.aliveWhenRefused, "the process was still draining then");
    assert.match(seen.newStreamOnDrainedSession, /^refused/, "no new stream on the drained HTTP/2 connection");
  });

  it("ends the watch streams with UNAVAILABLE, not silently", () => {
    ran();
    assert.equal(seen.watchEvents[0], "STARTED");
    assert.ok(seen.watchEnd, "WatchSecrets ended with an error, not a silent end");
    assert.equal(seen.watchEnd.code, Code.Unavailable, `WatchSecrets: ${Code[seen.watchEnd.code]} ${seen.watchEnd.rawMessage}`);
    assert.match(seen.watchEnd.rawMessage, /draining/, "the server said why");
    assert.deepEqual(seen.healthStatuses, ["SERVING", "NOT_SERVING"], "health Watch: NOT_SERVING before the end");
    assert.equal(seen.healthEnd?.code, grpc.status.UNAVAILABLE, `health Watch: ${seen.healthEnd?.details}`);
  });

  it("exits 0 within delay + timeout + margin, and without waiting out the timeout once the calls are done", () => {
    ran();
    assert.deepEqual(seen.exit, { code: 0, signal: null }, `exit; stderr: ${s.proc.stderr}`);
    assert.ok(seen.exitMs < DELAY_MS + TIMEOUT_MS + MARGIN_MS, `exited ${Math.round(seen.exitMs)} ms after SIGTERM`);
    assert.ok(seen.exitAfterLastCallMs < 2_000, `exited ${Math.round(seen.exitAfterLastCallMs)} ms after the last call ended`);
    const lines = s.proc.stdout.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.ok(lines.some((l) => l.msg === "draining" && l.signal === "SIGTERM"));
    assert.ok(lines.some((l) => l.msg === "stopped"));
    assert.equal(s.proc.stderr, "", "nothing on stderr");
  });

  it("closed the store cleanly: it reopens with the write made while draining and the audit of the calls in flight", async () => {
    ran();
    const file = join(s.dataDir, "latchkey.db");
    const wal = `${file}-wal`;
    assert.ok(!existsSync(wal) || statSync(wal).size === 0, "the WAL was checkpointed on close");
    const storage = createSqliteStorage(file);
    try {
      await storage.ping();
      const kept = await storage.findSecret("default", "drain/db");
      assert.ok(kept, "the secret written before the drain");
      const inFlight = await storage.findSecret("default", "drain/in-flight");
      assert.ok(inFlight, "the secret written by the call in flight during the drain");
      assert.equal(inFlight.versions.length, 1);
      // And the values open with the master key: the data keys were committed too.
      const envelope = createEnvelope({ masterKey: masterKeyFrom(s.masterKey), storage, clock: { now: () => Date.now() } });
      const open = async (doc: typeof kept) => {
        const v = doc.versions[doc.versions.length - 1];
        assert.ok(v);
        return (await envelope.open(doc.store, doc.id, v.version, v.sealed)).toString("utf8");
      };
      assert.equal(await open(kept), "drain-value-1");
      assert.equal(await open(inFlight), "written-while-draining");
      const audit = await storage.listAudit({ limit: 1000 });
      const ids = new Set(audit.map((a) => a.requestId));
      for (const id of ["drain-slow-h1-get", "drain-slow-h2-store", "drain-during-delay", "drain-burst-h2-0", "drain-burst-h1-19"]) {
        assert.ok(ids.has(id), `the audit entry of ${id} was written before the store closed`);
      }
      const watchEntry = audit.find((a) => a.op === "latchkey.v1.SecretService/WatchSecrets");
      assert.ok(watchEntry, "the watch stream's audit entry too");
      assert.equal(watchEntry.code, "unavailable");
    } finally {
      await storage.close();
    }
  });
});

describe("a second signal during a drain exits at once", () => {
  for (const [index, signal] of [
    [0, "SIGTERM"],
    [1, "SIGINT"],
  ] as const) {
    it(`SIGTERM, then ${signal} while a call that cannot finish holds the drain: exits at once, non-zero`, async () => {
      const s = (await second)[index];
      // A call whose body never completes: the drain would wait the whole LATCHKEY_DRAIN_TIMEOUT_MS (30 s) for it.
      const stuck = slowH1(s.port, GET_SECRET, { name: "never/finished" });
      try {
        await sleep(100);
        s.proc.child.kill("SIGTERM");
        const deadline = Date.now() + 3_000;
        while (!s.proc.stdout.includes('"draining"') || !(await connectRefused(s.port))) {
          assert.ok(Date.now() < deadline, `the drain began: ${s.proc.stdout}`);
          await sleep(20);
        }
        await sleep(300);
        assert.ok(isRunning(s.proc), "still draining: the stuck call holds it");
        const t0 = performance.now();
        s.proc.child.kill(signal);
        const exit = await withDeadline(s.proc.exited, 3_000, `exit after the second signal (${signal})`);
        const ms = (s.proc.exitedAt ?? performance.now()) - t0;
        assert.equal(exit.signal, null, "it exited by itself");
        assert.notEqual(exit.code, 0, "a non-zero code: the drain did not finish");
        assert.ok(ms < 2_000, `exited ${Math.round(ms)} ms after the second signal, not after the 30 s drain timeout`);
        assert.match(s.proc.stdout, /second signal/);
      } finally {
        stuck.abort();
      }
    });
  }
});
