/**
 * Transport benchmark: GetSecret, VerifySecret, UpdateSecret and ListSecrets at 1, 16 and 64 calls in flight over
 * gRPC (h2c), Connect JSON (h2c and HTTP/1.1) and REST (HTTP/1.1), on the embedded store, each figure reported as a
 * ratio to the bare ceiling of its protocol measured in the same run (bench/ceilings.mjs), with the unary fast path
 * (after) and without it (before: every call on connect-node).
 *
 * The server runs on one core and the load generators (h2load for HTTP/2, wrk for HTTP/1.1, prebuilt bodies) on the
 * other. Latency percentiles are per request: h2load's --log-file, wrk's --latency. After each run the server's own
 * request counters are read, so a run with errors says so.
 *
 * Usage: npm run bench:transport [-- --seconds 5 --inflight 1,16,64 --ops get,verify,update,list --secrets 1000]
 * Needs h2load (Debian: nghttp2-client) and wrk.
 */
import { execFileSync, spawn } from "node:child_process";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { create, toBinary } from "@bufbuild/protobuf";
import {
  GetSecretRequestSchema,
  ListSecretsRequestSchema,
  UpdateSecretRequestSchema,
  VerifySecretRequestSchema,
} from "../gen/latchkey/v1/secret_service_pb.js";
import { tempDir } from "../test/support/server.js";
import {
  arg,
  BENCH_ADMIN_TOKEN as ADMIN_TOKEN,
  type Figure,
  fmt,
  freePort,
  grpcFrame,
  type H2Job,
  h2load as h2loadRun,
  killChildren,
  type LatchkeyProcess,
  pinned,
  pinSelf,
  rssKb,
  runPinned,
  startLatchkey as spawnLatchkey,
  stopper,
  writeResult,
} from "./support.js";

const SECONDS = Number(arg("seconds", "5"));
const WARMUP = Number(arg("warmup", "1"));
const INFLIGHT = arg("inflight", "1,16,64").split(",").map(Number);
const OPS = arg("ops", "get,verify,update,list").split(",") as Op[];
const SEEDED = Number(arg("secrets", "1000"));
const STOCK = arg("stock", "true") === "true";
const MASTER_KEY = Buffer.alloc(32, 5).toString("base64");
const SERVER_CORE = 0;
const LOAD_CORE = 1;
/** Secrets the update runs spread over (writes to one secret take turns, as they must). */
const UPDATE_SPREAD = 16;

type Op = "get" | "verify" | "update" | "list";
type Wire = "grpc" | "connect-h2" | "connect-h1" | "rest";

const work = tempDir("latchkey-bench-transport-");
const say = (s: string) => console.log(s);

function tool(name: string): string {
  try {
    return execFileSync(name, ["--version"], { encoding: "utf8" }).split("\n")[0]?.trim() ?? name;
  } catch (err) {
    const out = (err as { stdout?: string }).stdout ?? "";
    if (out) return out.split("\n")[0]?.trim() ?? name; // wrk --version exits 1
    throw new Error(`${name} not found: install it (Debian: apt install nghttp2-client wrk)`);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Servers

interface Server {
  readonly url: string;
  readonly pid: number;
  stop(): Promise<void>;
}

function startLatchkey(dataDir: string, fastPath: boolean): Promise<LatchkeyProcess> {
  return spawnLatchkey({ core: SERVER_CORE, dataDir, masterKey: MASTER_KEY, env: { LATCHKEY_UNARY_FAST_PATH: String(fastPath) } });
}

async function startCeiling(mode: "bare-h2" | "bare-h1" | "grpc-js"): Promise<Server> {
  const port = await freePort();
  const child = spawn(...pinned(SERVER_CORE, process.execPath, ["bench/ceilings.mjs", mode, String(port)]), {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const stop = stopper(child);
  await new Promise<void>((resolve, reject) => {
    child.stdout?.on("data", (c: Buffer) => c.toString().includes("ready") && resolve());
    child.once("exit", (code) => reject(new Error(`ceiling ${mode} exited ${code}`)));
  });
  return { url: `http://127.0.0.1:${port}`, pid: child.pid as number, stop };
}

// ---------------------------------------------------------------------------------------------------------------
// Load generators

/** h2load on one connection per job, all jobs at once (see support.ts). */
const h2load = (url: string, jobs: H2Job[]): Promise<Figure> => h2loadRun(url, jobs, { seconds: SECONDS, warmup: WARMUP, core: LOAD_CORE, work });

/** wrk on `connections` keep-alive HTTP/1.1 connections (one call in flight each), driven by a Lua script. */
async function wrk(url: string, connections: number, lua: string): Promise<Figure> {
  const script = join(work, "wrk.lua");
  writeFileSync(script, lua);
  const out = await runPinned(LOAD_CORE, "wrk", ["-t1", `-c${connections}`, `-d${SECONDS + WARMUP}s`, "--latency", "-s", script, url]);
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1]);
  const lat = (p: string) => {
    const m = new RegExp(`^\\s+${p}%\\s+([\\d.]+)(us|ms|s)`, "m").exec(out);
    if (!m) return Number.NaN;
    const v = Number(m[1]);
    return m[2] === "us" ? v / 1000 : m[2] === "s" ? v * 1000 : v;
  };
  const requests = Number(/(\d+) requests in/.exec(out)?.[1]);
  const non2xx = Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0);
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  const sockErrors = sock ? sock.slice(1).reduce((a, b) => a + Number(b), 0) : 0;
  if (!Number.isFinite(rps)) throw new Error(`unexpected wrk output: ${out}`);
  return { rps, p50Ms: lat("50"), p99Ms: lat("99"), errors: non2xx + sockErrors, requests };
}

const luaPost = (body: string, type: string, auth = false) => `
wrk.method = "POST"
wrk.body = ${JSON.stringify(body)}
wrk.headers["Content-Type"] = "${type}"
${auth ? `wrk.headers["Authorization"] = "Bearer ${ADMIN_TOKEN}"` : ""}
`;

/** Requests spread over paths: `paths` is a Lua expression of `i` (1-based counter). */
const luaVaried = (method: string, pathOf: string, body: string | undefined, type: string) => `
local i = 0
local headers = { ["Content-Type"] = "${type}", ["Authorization"] = "Bearer ${ADMIN_TOKEN}" }
request = function()
  i = i + 1
  return wrk.format("${method}", ${pathOf}, headers, ${body === undefined ? "nil" : JSON.stringify(body)})
end
`;

const luaGet = (auth: boolean) => `
wrk.method = "GET"
${auth ? `wrk.headers["Authorization"] = "Bearer ${ADMIN_TOKEN}"` : ""}
`;

// ---------------------------------------------------------------------------------------------------------------
// Request bodies

const VALUE = "s3cret-bench-value-0123456789abcdef";
const file = (name: string, bytes: Uint8Array | string) => {
  const path = join(work, name);
  writeFileSync(path, bytes);
  return path;
};
const frame = (name: string, message: Uint8Array) => grpcFrame(work, name, message);
const updateName = (i: number) => `bench/update-${i % UPDATE_SPREAD}`;

const BODIES = {
  grpc: {
    get: frame("get.grpc", toBinary(GetSecretRequestSchema, create(GetSecretRequestSchema, { name: "bench/target" }))),
    verify: frame("verify.grpc", toBinary(VerifySecretRequestSchema, create(VerifySecretRequestSchema, { name: "bench/target", value: VALUE }))),
    list: frame("list.grpc", toBinary(ListSecretsRequestSchema, create(ListSecretsRequestSchema, { pageSize: 50 }))),
    update: Array.from({ length: UPDATE_SPREAD }, (_, i) =>
      frame(`update-${i}.grpc`, toBinary(UpdateSecretRequestSchema, create(UpdateSecretRequestSchema, { name: updateName(i), value: `${VALUE}-u` }))),
    ),
  },
  json: {
    get: JSON.stringify({ name: "bench/target" }),
    verify: JSON.stringify({ name: "bench/target", value: VALUE }),
    list: JSON.stringify({ pageSize: 50 }),
    update: Array.from({ length: UPDATE_SPREAD }, (_, i) => JSON.stringify({ name: updateName(i), value: `${VALUE}-u` })),
  },
};
const jsonFiles = {
  get: file("get.json", BODIES.json.get),
  verify: file("verify.json", BODIES.json.verify),
  list: file("list.json", BODIES.json.list),
  update: BODIES.json.update.map((b, i) => file(`update-${i}.json`, b)),
};

const METHOD: Record<Op, string> = { get: "GetSecret", verify: "VerifySecret", update: "UpdateSecret", list: "ListSecrets" };
const AUTH_NEEDED: Record<Op, boolean> = { get: false, verify: false, update: true, list: true };

/** One operation at one concurrency over one wire format, against a Latchkey server. */
async function measure(url: string, op: Op, wire: Wire, inflight: number): Promise<Figure> {
  const auth: Record<string, string> = AUTH_NEEDED[op] ? { authorization: `Bearer ${ADMIN_TOKEN}` } : {};
  const path = `/latchkey.v1.SecretService/${METHOD[op]}`;
  if (wire === "grpc" || wire === "connect-h2") {
    const headers: Record<string, string> =
      wire === "grpc" ? { "content-type": "application/grpc", te: "trailers", ...auth } : { "content-type": "application/json", ...auth };
    const bodies = wire === "grpc" ? BODIES.grpc : jsonFiles;
    if (op === "update") {
      // One connection per secret (up to UPDATE_SPREAD), the calls in flight shared among them.
      const conns = Math.min(inflight, UPDATE_SPREAD);
      return h2load(
        url,
        Array.from({ length: conns }, (_, i) => ({ path, body: bodies.update[i] as string, headers, streams: Math.ceil(inflight / conns) })),
      );
    }
    return h2load(url, [{ path, body: bodies[op], headers, streams: inflight }]);
  }
  if (wire === "connect-h1") {
    if (op === "update") {
      const bodies = `{ ${BODIES.json.update.map((b) => JSON.stringify(b)).join(", ")} }`;
      return wrk(url, inflight, `
local bodies = ${bodies}
local i = 0
local headers = { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer ${ADMIN_TOKEN}" }
request = function()
  i = i + 1
  return wrk.format("POST", "${path}", headers, bodies[(i % #bodies) + 1])
end
`);
    }
    return wrk(`${url}${path}`, inflight, luaPost(BODIES.json[op], "application/json", AUTH_NEEDED[op]));
  }
  // REST
  switch (op) {
    case "get":
      return wrk(`${url}/v1/secrets/bench/target`, inflight, luaGet(false));
    case "verify":
      return wrk(`${url}/v1/secrets/bench/target/verify`, inflight, luaPost(JSON.stringify({ value: VALUE }), "application/json"));
    case "list":
      return wrk(`${url}/v1/secrets?limit=50`, inflight, luaGet(true));
    case "update":
      return wrk(url, inflight, luaVaried("PUT", `"/v1/secrets/bench/update-" .. (i % ${UPDATE_SPREAD})`, JSON.stringify({ value: `${VALUE}-u` }), "application/json"));
  }
}

/** Seeds the store through the REST API: the target, the update targets and `n` more. */
async function seed(url: string, n: number): Promise<void> {
  const post = (body: object) =>
    fetch(`${url}/v1/secrets`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${ADMIN_TOKEN}` },
      body: JSON.stringify(body),
    }).then((r) => {
      if (r.status !== 201) throw new Error(`seeding: ${r.status}`);
    });
  await post({ name: "bench/target", value: VALUE });
  for (let i = 0; i < UPDATE_SPREAD; i++) await post({ name: updateName(i), value: VALUE });
  for (let i = 0; i < n; i += 100) {
    const items = Array.from({ length: Math.min(100, n - i) }, (_, j) => ({ name: `bench/filler-${i + j}`, value: `filler-${i + j}` }));
    const r = await fetch(`${url}/v1/secrets:batchSet`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${ADMIN_TOKEN}` },
      body: JSON.stringify({ items }),
    });
    if (!r.ok) throw new Error(`seeding batch: ${r.status} ${await r.text()}`);
  }
}

// ---------------------------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  pinSelf(LOAD_CORE);
  const tools = `${tool("h2load")}; ${tool("wrk")}`;
  say(`tools: ${tools}`);
  const lines: string[] = [
    `Load generators: ${tools}; ${SECONDS} s per run after ${WARMUP} s warm-up; server on core ${SERVER_CORE}, load on core ${LOAD_CORE}; ${SEEDED + UPDATE_SPREAD + 1} secrets in the store.`,
  ];

  // Ceilings, per protocol and concurrency.
  const ceilings = new Map<string, Figure>();
  for (const mode of ["bare-h2", "bare-h1", "grpc-js"] as const) {
    const c = await startCeiling(mode);
    for (const n of INFLIGHT) {
      if (mode === "bare-h1") {
        ceilings.set(`h1 ${n}`, await wrk(c.url, n, luaPost(BODIES.json.get, "application/json")));
        say(`ceiling bare node:http (HTTP/1.1), ${n} in flight: ${fmt(ceilings.get(`h1 ${n}`) as Figure)}`);
        continue;
      }
      const grpcHeaders = { "content-type": "application/grpc", te: "trailers" };
      const key = mode === "bare-h2" ? `grpc ${n}` : `grpc-js ${n}`;
      ceilings.set(key, await h2load(c.url, [{ path: "/latchkey.v1.SecretService/GetSecret", body: BODIES.grpc.get, headers: grpcHeaders, streams: n }]));
      say(`ceiling ${mode} gRPC, ${n} in flight: ${fmt(ceilings.get(key) as Figure)}`);
      if (mode === "bare-h2") {
        ceilings.set(`h2json ${n}`, await h2load(c.url, [{ path: "/x", body: jsonFiles.get, headers: { "content-type": "application/json" }, streams: n }]));
        say(`ceiling bare node:http2 JSON, ${n} in flight: ${fmt(ceilings.get(`h2json ${n}`) as Figure)}`);
      }
    }
    await c.stop();
  }
  lines.push(
    "",
    "| ceiling | " + INFLIGHT.map((n) => `${n} in flight`).join(" | ") + " |",
    "|---|" + INFLIGHT.map(() => "---").join("|") + "|",
    ...[
      ["bare node:http2, gRPC-framed reply", "grpc"],
      ["bare node:http2, JSON reply", "h2json"],
      ["bare node:http (HTTP/1.1), JSON reply", "h1"],
      ["@grpc/grpc-js, trivial handler", "grpc-js"],
    ].map(([label, key]) => `| ${label} | ${INFLIGHT.map((n) => fmt(ceilings.get(`${key} ${n}`) as Figure)).join(" | ")} |`),
    "",
  );

  const ceilingOf = (wire: Wire, n: number) =>
    (ceilings.get(wire === "grpc" ? `grpc ${n}` : wire === "connect-h2" ? `h2json ${n}` : `h1 ${n}`) as Figure).rps;
  const ceilingName: Record<Wire, string> = { grpc: "bare h2 gRPC", "connect-h2": "bare h2 JSON", "connect-h1": "bare HTTP/1.1", rest: "bare HTTP/1.1" };

  const results = new Map<string, Figure>();
  for (const fastPath of STOCK ? [true, false] : [true]) {
    const dataDir = join(work, fastPath ? "data-fast" : "data-stock");
    mkdirSync(dataDir, { recursive: true });
    const server = await startLatchkey(dataDir, fastPath);
    await seed(server.url, SEEDED);
    const path = fastPath ? "fast path" : "connect-node";
    const wires: Wire[] = fastPath ? ["grpc", "connect-h2", "connect-h1", "rest"] : ["grpc", "connect-h2", "connect-h1"];
    for (const op of OPS) {
      for (const wire of wires) {
        for (const n of INFLIGHT) {
          const f = await measure(server.url, op, wire, n);
          f.errors += await server.errors();
          results.set(`${path} ${op} ${wire} ${n}`, f);
          say(`${path}: ${METHOD[op]} over ${wire}, ${n} in flight: ${fmt(f)} = ${(f.rps / ceilingOf(wire, n)).toFixed(2)} of ${ceilingName[wire]}`);
        }
      }
    }
    const rss = rssKb(server.pid);
    say(`${path}: server RSS ${Math.round(rss.current / 1024)} MB (peak ${Math.round(rss.peak / 1024)} MB) after the runs, ${SEEDED + UPDATE_SPREAD + 1} secrets`);
    lines.push("", `${path}: server RSS after the runs ${Math.round(rss.current / 1024)} MB (peak ${Math.round(rss.peak / 1024)} MB).`);
    await server.stop();
  }

  // The table: throughput, latency and ratio to the protocol's ceiling, after (fast path) and before.
  const wireName: Record<Wire, string> = {
    grpc: "gRPC h2c",
    "connect-h2": "Connect JSON h2c",
    "connect-h1": "Connect JSON HTTP/1.1",
    rest: "REST HTTP/1.1",
  };
  lines.push(
    "",
    "Errors: calls answered with an error status, or failed connections, or (wrk) calls slower than its 2 s timeout; the server's own counters are read after each run and any call it ended with an error other than canceled is printed. Cut at stop: streams h2load still had open when the run's time was up (it reports them as errored).",
    "",
    "Each cell: calls/s, p50 / p99 latency, and the ratio to the bare ceiling of the protocol at the same concurrency (bare h2 gRPC for gRPC, bare h2 JSON for Connect h2c, bare node:http for HTTP/1.1). Before = every call on connect-node (LATCHKEY_UNARY_FAST_PATH=false); REST does not go through connect-node either way.",
    "",
    "| call | protocol | path | " + INFLIGHT.map((n) => `${n} in flight`).join(" | ") + " |",
    "|---|---|---|" + INFLIGHT.map(() => "---").join("|") + "|",
  );
  for (const op of OPS) {
    for (const wire of ["grpc", "connect-h2", "connect-h1", "rest"] as Wire[]) {
      for (const path of ["fast path", "connect-node"]) {
        const cells = INFLIGHT.map((n) => results.get(`${path} ${op} ${wire} ${n}`));
        if (cells.every((c) => c === undefined)) continue;
        const cell = (f: Figure | undefined, n: number) =>
          f ? `${Math.round(f.rps)}/s, ${f.p50Ms.toFixed(2)} / ${f.p99Ms.toFixed(2)} ms, **${(f.rps / ceilingOf(wire, n)).toFixed(2)}**${f.errors ? `, ${f.errors} errors` : ""}${f.cut ? `, ${f.cut} cut at stop` : ""}` : "";
        const label = wire === "rest" ? "REST" : path === "fast path" ? "after (fast path)" : "before (connect-node)";
        lines.push(`| ${METHOD[op]} | ${wireName[wire]} | ${label} | ${cells.map((f, i) => cell(f, INFLIGHT[i] as number)).join(" | ")} |`);
      }
    }
  }

  // The targets of issue 9, checked against this run's figures.
  const get = (path: string, op: Op, wire: Wire, n: number) => results.get(`${path} ${op} ${wire} ${n}`);
  const checks: string[] = [];
  for (const n of INFLIGHT.filter((x) => x >= 16)) {
    const g = get("fast path", "get", "grpc", n);
    const gjs = ceilings.get(`grpc-js ${n}`);
    if (g) {
      checks.push(
        `GetSecret gRPC at ${n} in flight: ${(g.rps / ceilingOf("grpc", n)).toFixed(2)} of bare h2 (target >= 0.5), ${(g.rps / (gjs?.rps ?? Number.NaN)).toFixed(2)} of grpc-js, p99 ${g.p99Ms.toFixed(2)} ms (target < 5 ms)`,
      );
    }
    const cj = get("fast path", "get", "connect-h2", n);
    if (cj) checks.push(`GetSecret Connect JSON h2c at ${n} in flight: ${(cj.rps / ceilingOf("connect-h2", n)).toFixed(2)} of bare h2 JSON (target >= 0.3)`);
    const v = get("fast path", "verify", "grpc", n);
    if (g && v) checks.push(`VerifySecret / GetSecret over gRPC at ${n} in flight: ${(v.rps / g.rps).toFixed(2)} (target >= 0.9)`);
    const u = get("fast path", "update", "grpc", n);
    if (u) checks.push(`UpdateSecret over gRPC at ${n} in flight: ${Math.round(u.rps)}/s (target >= 2000/s)`);
  }
  lines.push("", "Targets:", "", ...checks.map((c) => `- ${c}`));
  for (const c of checks) say(c);

  writeResult("transport", {
    title: "Transport: calls over every protocol against their ceilings",
    command: `npm run bench:transport -- ${process.argv.slice(2).join(" ")}`.trim(),
    lines,
    markdown: true,
  });
  rmSync(work, { recursive: true, force: true });
}

main().catch((err) => {
  console.error(err);
  killChildren();
  rmSync(work, { recursive: true, force: true });
  process.exit(1);
});
