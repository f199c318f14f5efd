import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { connectJson, grpc, grpcCall, grpcClients, type GrpcClients, grpcMd, rest } from "../support/clients.js";
import { sleep } from "../support/lifecycle.js";
import { ADMIN_TOKEN, startTestServer, type TestServer } from "../support/server.js";

/**
 * GET /metrics as Prometheus scrapes it: plain HTTP, no token, the text format. Requests are counted by operation
 * and code and timed; scheduled rotations are counted with their lag; the change feed's lag and the store's
 * latency are exported, as are the process metrics. Nothing secret (a value, a token, a secret's name) may appear.
 */

const WAIT_MS = 5_000;

interface Sample {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
}

interface Exposition {
  readonly text: string;
  readonly samples: Sample[];
  /** Metric family name -> type, from the `# TYPE` lines. */
  readonly types: Map<string, string>;
  /** Metric family name -> help text, from the `# HELP` lines. */
  readonly helps: Map<string, string>;
}

const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\["\\n])*)"(,|$)/y;
const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: (-?\d+))?$/;

/** Parses the text exposition format (0.0.4), failing on any line that is not a comment, a sample or blank. */
function parse(text: string): Exposition {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  const helps = new Map<string, string>();
  for (const line of text.split("\n")) {
    if (line === "") continue;
    const meta = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line);
    if (meta) {
      (meta[1] === "TYPE" ? types : helps).set(meta[2] as string, meta[3] as string);
      continue;
    }
    assert.ok(!line.startsWith("#"), `an unknown comment line: ${line}`);
    const m = SAMPLE.exec(line);
    assert.ok(m, `not a sample line: ${JSON.stringify(line)}`);
    const labels: Record<string, string> = {};
    const body = m[2] ?? "";
    LABEL.lastIndex = 0;
    while (LABEL.lastIndex < body.length) {
      const l = LABEL.exec(body);
      assert.ok(l, `bad labels in ${JSON.stringify(line)}`);
      labels[l[1] as string] = (l[2] as string).replace(/\\(["\\n])/g, (_, c: string) => (c === "n" ? "\n" : c));
    }
    // Prometheus parses values with Go's ParseFloat, which takes "NaN" and "Inf" in any case (prom-client writes "Nan").
    const raw = m[3] as string;
    const value = /^nan$/i.test(raw) ? Number.NaN : Number(raw.replace(/^([+-]?)inf$/i, "$1Infinity"));
    assert.ok(!Number.isNaN(value) || /^nan$/i.test(raw), `bad value in ${JSON.stringify(line)}`);
    samples.push({ name: m[1] as string, labels, value });
  }
  return { text, samples, types, helps };
}

/** The family a sample belongs to: histogram and summary series carry suffixes. */
function familyOf(name: string, types: Map<string, string>): string | undefined {
  if (types.has(name)) return name;
  for (const suffix of ["_bucket", "_sum", "_count", "_total", "_created"]) {
    if (name.endsWith(suffix) && types.has(name.slice(0, -suffix.length))) return name.slice(0, -suffix.length);
  }
  return undefined;
}

/** The value of the one sample named `name` whose labels include `labels`; undefined if there is none. */
function value(e: Exposition, name: string, labels: Record<string, string> = {}): number | undefined {
  const hits = e.samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  assert.ok(hits.length <= 1, `${name} ${JSON.stringify(labels)} matches ${hits.length} samples`);
  return hits[0]?.value;
}

/** The buckets of one histogram series, in the order of their bounds. */
function buckets(e: Exposition, name: string, labels: Record<string, string> = {}): [number, number][] {
  return e.samples
    .filter((s) => s.name === `${name}_bucket` && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .map((s): [number, number] => [Number((s.labels.le as string).replace("+Inf", "Infinity")), s.value])
    .sort((a, b) => a[0] - b[0]);
}

/** A histogram series is well formed: cumulative buckets, +Inf equal to _count, and a _sum. */
function assertHistogram(e: Exposition, name: string, labels: Record<string, string> = {}): { count: number; sum: number } {
  const bs = buckets(e, name, labels);
  const what = `${name}${JSON.stringify(labels)}`;
  // A labelled series appears with its first observation.
  if (bs.length === 0 && Object.keys(labels).length > 0) return { count: 0, sum: 0 };
  assert.ok(bs.length >= 2, `${what}: buckets`);
  for (let i = 1; i < bs.length; i++) assert.ok((bs[i]?.[1] ?? 0) >= (bs[i - 1]?.[1] ?? 0), `${what}: buckets are cumulative`);
  const last = bs[bs.length - 1] as [number, number];
  assert.equal(last[0], Number.POSITIVE_INFINITY, `${what}: a +Inf bucket`);
  const count = value(e, `${name}_count`, labels);
  const sum = value(e, `${name}_sum`, labels);
  assert.equal(last[1], count, `${what}: +Inf bucket = _count`);
  assert.ok(sum !== undefined && count !== undefined, `${what}: _sum and _count`);
  return { count, sum };
}

describe("/metrics", () => {
  let s: TestServer;
  let g: GrpcClients;
  let offset = 0;
  const marker = () => randomBytes(9).toString("hex");
  /** Every value, token and secret name this file uses: none may appear in /metrics. */
  const secrets: string[] = [];
  const remember = <T extends string>(x: T): T => {
    secrets.push(x);
    return x;
  };

  const scrape = async (): Promise<Exposition> => {
    const res = await fetch(`${s.url}/metrics`, { signal: AbortSignal.timeout(WAIT_MS) });
    assert.equal(res.status, 200);
    return parse(await res.text());
  };
  /** Scrapes until `pred` holds (metrics are recorded when the response has closed, a moment after the client has it). */
  const scrapeUntil = async (pred: (e: Exposition) => boolean, what: string): Promise<Exposition> => {
    const deadline = Date.now() + WAIT_MS;
    for (;;) {
      const e = await scrape();
      if (pred(e)) return e;
      if (Date.now() > deadline) assert.fail(`${what}: not within ${WAIT_MS} ms`);
      await sleep(25);
    }
  };
  const requests = (e: Exposition, op: string, code: string) => value(e, "latchkey_requests_total", { op, code }) ?? 0;

  before(async () => {
    // Reads need a token here: /metrics answering without one is on purpose, not because everything is open.
    s = await startTestServer(
      { LATCHKEY_READS_REQUIRE_TOKEN: "true", LATCHKEY_DELETE_RETENTION: "60" },
      { clock: { now: () => Date.now() + offset } },
    );
    g = grpcClients(s.port);
    secrets.push(ADMIN_TOKEN);
  });
  after(async () => {
    g?.close();
    await s?.stop();
  });

  it("serves the Prometheus text format over plain HTTP without a token", async () => {
    const res = await fetch(`${s.url}/metrics`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
    const e = parse(await res.text());
    assert.ok(e.samples.length > 50, `samples: ${e.samples.length}`);
    for (const sample of e.samples) {
      const family = familyOf(sample.name, e.types);
      assert.ok(family, `${sample.name} has a # TYPE line`);
      assert.ok(e.helps.get(family), `${family} has a # HELP line`);
    }
    for (const [name, type] of [
      ["latchkey_requests_total", "counter"],
      ["latchkey_request_duration_seconds", "histogram"],
      ["latchkey_rotations_total", "counter"],
      ["latchkey_rotation_lag_seconds", "histogram"],
      ["latchkey_store_duration_seconds", "histogram"],
      ["latchkey_change_feed_lag_seconds", "gauge"],
    ]) {
      assert.equal(e.types.get(name as string), type, `${name} is a ${type}`);
    }
    // The same caller is refused a value without a token.
    const get = await fetch(`${s.url}/v1/secrets/metrics/anything`);
    assert.equal(get.status, 401);
    await get.arrayBuffer();
  });

  it("counts requests by operation and code across REST, Connect and gRPC, and times them", async () => {
    const name = remember(`metrics/${marker()}`);
    const value1 = remember(`value-${marker()}`);
    assert.equal((await rest(s.url, "POST", "/v1/secrets", { name, value: value1 })).status, 201);
    const opRest = "GET /v1/secrets/{name}";
    const opRpc = "latchkey.v1.SecretService/GetSecret";
    const before = await scrape();

    for (let i = 0; i < 3; i++) assert.equal((await rest(s.url, "GET", `/v1/secrets/${name}`)).status, 200);
    assert.equal((await rest(s.url, "GET", `/v1/secrets/${remember(`metrics/${marker()}`)}`)).status, 404);
    assert.equal((await connectJson(s.url, "SecretService/GetSecret", { name })).status, 200);
    assert.equal((await connectJson(s.url, "SecretService/GetSecret", { name: remember(`metrics/${marker()}`) })).status, 404);
    const ok = await grpcCall(g.secrets, "GetSecret", { name }, grpcMd());
    assert.equal(ok.code, grpc.status.OK, ok.err?.details);
    const bogus = remember(`lk_bogus_${marker()}`);
    const unauth = await grpcCall(g.secrets, "GetSecret", { name }, grpcMd(bogus));
    assert.equal(unauth.code, grpc.status.UNAUTHENTICATED);
    const bad = await grpcCall(g.secrets, "GetSecret", { name: "not a name!" }, grpcMd());
    assert.equal(bad.code, grpc.status.INVALID_ARGUMENT);

    const want: [string, string, number][] = [
      [opRest, "ok", 3],
      [opRest, "not_found", 1],
      [opRpc, "ok", 2],
      [opRpc, "not_found", 1],
      [opRpc, "unauthenticated", 1],
      [opRpc, "invalid_argument", 1],
    ];
    const after = await scrapeUntil(
      (e) => want.every(([op, code, n]) => requests(e, op, code) - requests(before, op, code) >= n),
      "every request counted",
    );
    for (const [op, code, n] of want) {
      assert.equal(requests(after, op, code) - requests(before, op, code), n, `latchkey_requests_total{op="${op}",code="${code}"}`);
    }

    // Latency: one observation per request, whatever the outcome, in the documented buckets.
    for (const [op, n] of [
      [opRest, 4],
      [opRpc, 5],
    ] as const) {
      const was = assertHistogram(before, "latchkey_request_duration_seconds", { op });
      const now = assertHistogram(after, "latchkey_request_duration_seconds", { op });
      assert.equal(now.count - was.count, n, `${op}: observations`);
      assert.ok(now.sum > was.sum, `${op}: time was added`);
      assert.deepEqual(
        buckets(after, "latchkey_request_duration_seconds", { op }).map(([le]) => le),
        [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, Number.POSITIVE_INFINITY],
        `${op}: bucket bounds`,
      );
    }
  });

  it("labels anything unrouted 'other', so paths never become labels", async () => {
    const before = await scrape();
    const rpc = await fetch(`${s.url}/latchkey.v1.SecretService/${remember(`No${marker()}`)}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{}",
    });
    assert.equal(rpc.status, 404);
    await rpc.arrayBuffer();
    const after = await scrapeUntil((e) => requests(e, "other", "not_found") > requests(before, "other", "not_found"), "the unrouted call");
    const ops = new Set(after.samples.filter((x) => x.name === "latchkey_requests_total").map((x) => x.labels.op));
    for (const op of ops) {
      assert.ok(op === "other" || /^(GET|POST|PUT|PATCH|DELETE) \/|^(latchkey\.v1|grpc\.)[\w.]*\/\w+$/.test(op ?? ""), `op label ${op}`);
    }
  });

  it("counts scheduled rotations and purges, and how late each rotation was", async () => {
    const auto = remember(`metrics/auto-${marker()}`);
    const created = await rest(s.url, "POST", "/v1/secrets", { name: auto, kind: "automatic", rotation_interval_secs: 60 });
    assert.equal(created.status, 201);
    remember(created.body.value);
    const doomed = remember(`metrics/doomed-${marker()}`);
    assert.equal((await rest(s.url, "POST", "/v1/secrets", { name: doomed, value: remember(`value-${marker()}`) })).status, 201);
    assert.equal((await rest(s.url, "DELETE", `/v1/secrets/${doomed}`)).status, 204);
    const before = await scrape();
    assert.equal(value(before, "latchkey_rotations_total", { kind: "rotated" }) ?? 0, 0);
    assert.equal(assertHistogram(before, "latchkey_rotation_lag_seconds").count, 0);

    // 75 s later by the server's clock: the rotation is 15 s overdue and the deleted secret's 60 s are up.
    offset += 75_000;
    // The scheduler's own pass; its timer may get there first, and each is done once either way.
    const made = await s.app.scheduler.tick();
    assert.ok(made <= 2, `rotations and purges made by the pass: ${made}`);
    const after = await scrapeUntil(
      (e) => (value(e, "latchkey_rotations_total", { kind: "rotated" }) ?? 0) >= 1 && (value(e, "latchkey_rotations_total", { kind: "purged" }) ?? 0) >= 1,
      "the rotation and the purge counted",
    );
    assert.equal(value(after, "latchkey_rotations_total", { kind: "rotated" }), 1);
    assert.equal(value(after, "latchkey_rotations_total", { kind: "purged" }), 1);
    const lag = assertHistogram(after, "latchkey_rotation_lag_seconds");
    assert.equal(lag.count, 1, "one lag observation: purges have none");
    // At least the 15 s it was overdue, plus however long this machine took since (generously bounded).
    assert.ok(lag.sum >= 15 && lag.sum < 75, `lag ${lag.sum} s`);
    const lagBuckets = new Map(buckets(after, "latchkey_rotation_lag_seconds"));
    assert.equal(lagBuckets.get(10), 0, "not within 10 s");
    assert.equal(lagBuckets.get(Number.POSITIVE_INFINITY), 1);

    const rotated = await rest(s.url, "GET", `/v1/secrets/${auto}`);
    assert.equal(rotated.body.version, 2, "the secret really was rotated");
    remember(rotated.body.value);
    assert.equal((await rest(s.url, "GET", `/v1/secrets/${doomed}`)).status, 404);
  });

  it("reports how far behind the change feed the scheduler is", async () => {
    // The scheduler stops reading; a write happens; 20 s pass by the server's clock; the scheduler catches up.
    await s.app.scheduler.stop();
    try {
      const name = remember(`metrics/feed-${marker()}`);
      assert.equal((await rest(s.url, "POST", "/v1/secrets", { name, value: remember(`value-${marker()}`) })).status, 201);
      offset += 20_000;
    } finally {
      await s.app.scheduler.start();
    }
    const e = await scrapeUntil((x) => (value(x, "latchkey_change_feed_lag_seconds") ?? 0) >= 20, "a feed lag of 20 s or more");
    const lag = value(e, "latchkey_change_feed_lag_seconds") as number;
    assert.ok(lag < 80, `feed lag ${lag} s`);
  });

  it("times store calls by method", async () => {
    const before = await scrape();
    const pings = (e: Exposition) => value(e, "latchkey_store_duration_seconds_count", { method: "ping" }) ?? 0;
    for (let i = 0; i < 2; i++) {
      const ready = await fetch(`${s.url}/readyz`);
      assert.equal(ready.status, 200);
      await ready.arrayBuffer();
    }
    const after = await scrapeUntil((e) => pings(e) >= pings(before) + 2, "two pings timed");
    assert.equal(pings(after) - pings(before), 2, "one ping per /readyz");
    const methods = new Set(after.samples.filter((x) => x.name === "latchkey_store_duration_seconds_count").map((x) => x.labels.method));
    for (const m of ["ping", "findSecret", "insertSecret", "replaceSecret", "appendAudit"]) {
      if (!methods.has(m)) assert.fail(`store method ${m} timed; methods: ${[...methods].join(", ")}`);
    }
    for (const m of methods) assertHistogram(after, "latchkey_store_duration_seconds", { method: m as string });
    assert.ok(!methods.has("changes"), "the change feed is a stream, not a timed call");
  });

  it("exports the process metrics", async () => {
    const e = await scrape();
    // Found by their standard names' ends, whatever the prefix (see the next test).
    const find = (suffix: string) => e.samples.find((x) => x.name.endsWith(suffix) && Object.keys(x.labels).length === 0)?.value;
    const rss = find("process_resident_memory_bytes");
    assert.ok(rss !== undefined && rss > 10 * 1024 * 1024, `resident memory ${rss}`);
    const start = find("process_start_time_seconds") as number;
    assert.ok(Math.abs(start - Date.now() / 1000) < 600, `start time ${start}`);
    assert.ok((find("process_cpu_seconds_total") ?? 0) > 0, "cpu time");
    assert.ok((find("process_open_fds") ?? 0) > 0, "open fds");
    assert.ok((find("nodejs_heap_size_used_bytes") ?? 0) > 0, "heap used");
    assert.ok([...e.types.keys()].some((n) => n.endsWith("nodejs_eventloop_lag_seconds")), "event loop lag");
  });

  it(
    "names the process metrics as dashboards expect: process_*/nodejs_*, or latchkey_process_*, not latchkey_process_process_*",
    async () => {
      const names = [...(await scrape()).types.keys()];
      const rss = names.filter((n) => n.endsWith("resident_memory_bytes"));
      assert.deepEqual(
        rss.filter((n) => !/^(latchkey_)?process_resident_memory_bytes$/.test(n)),
        [],
        `resident memory exported as ${rss.join(", ")}`,
      );
      assert.ok(rss.length === 1, "resident memory exported once");
    },
  );

  it("never shows a value, a token or a secret's name", async () => {
    const reader = await rest(s.url, "POST", "/v1/tokens", { label: "metrics", role: "reader" });
    assert.equal(reader.status, 201);
    remember(reader.body.secret);
    const name = remember(`metrics/${marker()}`);
    const value1 = remember(`value-${marker()}`);
    assert.equal((await rest(s.url, "POST", "/v1/secrets", { name, value: value1, description: remember(`desc-${marker()}`) })).status, 201);
    assert.equal((await rest(s.url, "GET", `/v1/secrets/${name}`, undefined, reader.body.secret)).status, 200);
    assert.equal((await rest(s.url, "GET", `/v1/secrets/${name}?${remember(`q${marker()}`)}=1`)).status, 200);
    const verify = await connectJson(s.url, "SecretService/VerifySecret", { name, value: remember(`guess-${marker()}`) }, reader.body.secret);
    assert.equal(verify.status, 200);
    assert.equal((await rest(s.url, "PUT", `/v1/secrets/${name}`, { value: remember(`value-${marker()}`) })).status, 200);
    const wrong = await grpcCall(g.secrets, "GetSecret", { name }, grpcMd(remember(`lkt_${marker()}`)));
    assert.equal(wrong.code, grpc.status.UNAUTHENTICATED);
    await sleep(50); // let the last responses close and be counted

    const text = (await scrape()).text;
    const encodings = (x: string) => [x, Buffer.from(x).toString("base64").replace(/=+$/, ""), Buffer.from(x).toString("hex")];
    const found = secrets.flatMap((x) => encodings(x).filter((enc) => text.includes(enc)));
    assert.deepEqual(found, [], "nothing secret in /metrics");
    assert.ok(secrets.length >= 15, `checked ${secrets.length} strings`);
  });
});
