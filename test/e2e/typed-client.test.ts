import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it, type TestContext } from "node:test";
import { fileURLToPath } from "node:url";
import {
  Code,
  ConnectError,
  createLatchkeyClient,
  type LatchkeyClient,
  type LatchkeyClientOptions,
  type SecretCache,
  SecretEventType,
  SecretKind,
} from "../../src/client/index.js";
import { tokenId } from "../../src/auth/access.js";
import { auditEntries, type RestAuditEntry } from "../support/access.js";
import { type FaultProxy, startFaultProxy } from "../support/fault-proxy.js";
import { ADMIN_TOKEN, startTestServer, type TestServer } from "../support/server.js";

/**
 * The typed client of the package (createLatchkeyClient) end to end, against in-process servers:
 *   - every protocol (gRPC; Connect binary and JSON over HTTP/1.1 and HTTP/2; gRPC-web) for unary calls and the
 *     WatchSecrets stream, with the bearer token reaching the server (the audit log names the token);
 *   - retries through a loopback proxy that breaks real requests: calls without side effects (and idempotent ones)
 *     are retried after transient failures and succeed; StoreSecret and RotateSecret are sent once, however they
 *     fail (the server's audit log and the proxy count the attempts); the backoff doubles;
 *   - the read-through cache: one fetch, then memory; RotateSecret, a scheduled rotation, an update, a deletion and
 *     a restore each drop the entry; a partition and a server restart on the same port and data dir lose no
 *     rotation (resume token); close() ends the watch; a watch that cannot open does not make reads hang;
 *   - every program in examples/ runs against a server and exits 0.
 */

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const ADMIN_ID = tokenId("admin", ADMIN_TOKEN);
const CALL = { timeoutMs: 5_000 };

type Transport = Pick<LatchkeyClientOptions, "protocol" | "httpVersion" | "json">;
const TRANSPORTS: { label: string; opts: Transport }[] = [
  { label: "gRPC (HTTP/2)", opts: { protocol: "grpc" } },
  { label: "Connect binary, HTTP/2", opts: { protocol: "connect", httpVersion: "2" } },
  { label: "Connect binary, HTTP/1.1", opts: { protocol: "connect", httpVersion: "1.1" } },
  { label: "Connect JSON, HTTP/1.1", opts: { protocol: "connect", json: true } },
  { label: "Connect JSON, HTTP/2", opts: { protocol: "connect", json: true, httpVersion: "2" } },
  { label: "gRPC-web, HTTP/1.1", opts: { protocol: "grpc-web" } },
  { label: "gRPC-web, HTTP/2", opts: { protocol: "grpc-web", httpVersion: "2" } },
];
/** The transports the retry tests go through: one per wire protocol and HTTP version family. */
const RETRY_TRANSPORTS = TRANSPORTS.filter((t) => ["gRPC (HTTP/2)", "Connect JSON, HTTP/1.1", "gRPC-web, HTTP/2"].includes(t.label));

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const slug = (label: string) => label.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "");

/** Settles with `p`, or fails after `ms`: a hang becomes a test failure, not a stuck run. */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Polls `check` every 10 ms until it holds; fails after `ms`. */
async function eventually(check: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) assert.fail(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

/** Awaits a call that must fail with one of `codes`; returns the error. */
async function fails(p: Promise<unknown>, codes: Code | readonly Code[], what: string): Promise<ConnectError> {
  const wanted = typeof codes === "number" ? [codes] : codes;
  try {
    await p;
  } catch (err) {
    const ce = ConnectError.from(err);
    assert.ok(wanted.includes(ce.code), `${what}: expected ${wanted.map((c) => Code[c]).join("/")}, got ${Code[ce.code]} (${ce.rawMessage})`);
    return ce;
  }
  assert.fail(`${what}: expected ${wanted.map((c) => Code[c]).join("/")}, but the call succeeded`);
}

/** What a caller sees when the connection under a call breaks (the client's own classification may vary). */
const BROKEN = [Code.Unavailable, Code.Aborted, Code.Unknown, Code.Canceled, Code.Internal, Code.DeadlineExceeded];

/**
 * The audit entries of one secret's calls of `method`, once the count has settled (entries of calls that change
 * nothing are appended just after the response; GET /v1/audit flushes what is pending).
 */
async function audited(s: TestServer, name: string, method: string, store?: string): Promise<RestAuditEntry[]> {
  const read = async () =>
    (await auditEntries(s.url, { name, ...(store ? { store } : {}) })).filter((e) => e.op === `latchkey.v1.SecretService/${method}`);
  let last = await read();
  for (let i = 0; i < 20; i++) {
    await sleep(40);
    const now = await read();
    if (now.length === last.length) return now;
    last = now;
  }
  return last;
}

// ---------------------------------------------------------------------------------------------------------------

describe("typed client: protocols and the token", () => {
  let s: TestServer;
  let direct: LatchkeyClient;
  before(async () => {
    s = await startTestServer();
    direct = createLatchkeyClient({ baseUrl: s.url, token: ADMIN_TOKEN });
  });
  after(() => s.stop());

  for (const t of TRANSPORTS) {
    it(`${t.label}: unary calls and WatchSecrets, with the token sent`, async () => {
      const c = createLatchkeyClient({ baseUrl: s.url, token: ADMIN_TOKEN, ...t.opts });
      const prefix = `proto/${slug(t.label)}/`;
      const name = `${prefix}key`;

      // A watch first, so the calls below are seen as events over this transport too.
      const ac = new AbortController();
      const events: { type: SecretEventType; name: string; version: number }[] = [];
      const watching = (async () => {
        for await (const ev of c.secrets.watchSecrets({ namePrefix: prefix }, { signal: ac.signal })) {
          events.push({ type: ev.type, name: ev.name, version: ev.version });
          if (ev.type === SecretEventType.DELETED) return;
        }
      })().catch((err: unknown) => {
        if (!ac.signal.aborted) throw err;
      });
      try {
        await eventually(() => events.length > 0, 3_000, "STARTED");

        const stored = await c.secrets.storeSecret({ name, kind: SecretKind.AUTOMATIC, rotationInterval: { seconds: 3600n } }, CALL);
        assert.equal(stored.version?.version, 1);
        const got = await c.secrets.getSecret({ name }, CALL);
        assert.equal(got.value, stored.value);
        assert.ok((await c.secrets.verifySecret({ name, value: stored.value }, CALL)).valid);
        const rotated = await c.secrets.rotateSecret({ name }, CALL);
        assert.equal(rotated.version?.version, 2);
        const listed = await c.secrets.listSecrets({ namePrefix: prefix }, CALL);
        assert.deepEqual(
          listed.secrets.map((x) => [x.name, x.currentVersion]),
          [[name, 2]],
        );
        assert.equal((await c.stores.getStore({ name: "default" }, CALL)).store?.name, "default");
        assert.ok((await c.health.check({}, CALL)).status > 0, "health answers");
        await c.secrets.deleteSecret({ name }, CALL);
        await within(watching, 3_000, "the watch to see the deletion");
      } finally {
        ac.abort();
      }
      assert.deepEqual(
        events.map((e) => [SecretEventType[e.type], e.name, e.version]),
        [
          ["STARTED", "", 0],
          ["CREATED", name, 1],
          ["ROTATED", name, 2],
          ["DELETED", name, 2],
        ],
      );

      // The bearer token reached the server with every call: the audit log names it.
      const entries = (await auditEntries(s.url, { name })).filter((e) => e.op.startsWith("latchkey.v1.SecretService/"));
      const ops = entries.map((e) => e.op.split("/")[1]).sort();
      assert.deepEqual(ops, ["DeleteSecret", "GetSecret", "RotateSecret", "StoreSecret", "VerifySecret"]);
      for (const e of entries) {
        assert.equal(e.token_id, ADMIN_ID, `${e.op}: made with the admin token`);
        assert.equal(e.code, "ok", `${e.op}: ok`);
      }
    });
  }

  it("without a token: writes are refused, reads from an allowed IP work and are anonymous; a wrong token is refused", async () => {
    await direct.secrets.storeSecret({ name: "anon/key", value: "anonymous-read-value" }, CALL);
    for (const t of [TRANSPORTS[0], TRANSPORTS[3]]) {
      const anon = createLatchkeyClient({ baseUrl: s.url, ...t?.opts });
      await fails(anon.secrets.storeSecret({ name: "anon/other", value: "x" }, CALL), Code.Unauthenticated, `${t?.label}: store without a token`);
      assert.equal((await anon.secrets.getSecret({ name: "anon/key" }, CALL)).value, "anonymous-read-value");
      const wrong = createLatchkeyClient({ baseUrl: s.url, token: "not-a-token-0123456789", ...t?.opts });
      await fails(wrong.secrets.getSecret({ name: "anon/key" }, CALL), Code.Unauthenticated, `${t?.label}: a wrong token`);
    }
    const reads = await audited(s, "anon/key", "GetSecret");
    assert.deepEqual(
      reads.map((e) => [e.actor_kind, e.code]).sort(),
      [
        ["anonymous", "ok"],
        ["anonymous", "ok"],
        ["anonymous", "unauthenticated"],
        ["anonymous", "unauthenticated"],
      ],
    );
  });
});

// ---------------------------------------------------------------------------------------------------------------

describe("typed client: retries", () => {
  let s: TestServer;
  let proxy: FaultProxy;
  let direct: LatchkeyClient;
  before(async () => {
    s = await startTestServer();
    proxy = await startFaultProxy(s.port);
    direct = createLatchkeyClient({ baseUrl: s.url, token: ADMIN_TOKEN });
  });
  after(async () => {
    await proxy.close();
    await s.stop();
  });

  /** A client through the proxy; short backoff so the tests stay quick. */
  const through = (t: Transport, extra: Partial<LatchkeyClientOptions> = {}) =>
    createLatchkeyClient({ baseUrl: proxy.url, token: ADMIN_TOKEN, retryBaseMs: 10, ...t, ...extra });

  /** Runs `fn` with a fresh plan of faults; returns how many requests reached the proxy meanwhile. */
  async function attempts(faults: Parameters<FaultProxy["plan"]>[0], fn: () => Promise<void>): Promise<number> {
    proxy.plan(faults);
    const before = proxy.requests.length;
    try {
      await fn();
    } finally {
      proxy.plan([]);
    }
    return proxy.requests.length - before;
  }

  /** Runs a call that must fail as calls over a broken connection do; returns how many requests it made. */
  const brokenAttempts = (faults: Parameters<FaultProxy["plan"]>[0], call: () => Promise<unknown>, what: string) =>
    attempts(faults, async () => {
      await fails(call(), BROKEN, what);
    });

  for (const t of RETRY_TRANSPORTS) {
    const label = t.label;
    const base = `retry/${slug(label)}`;

    it(`${label}: reads are retried after refused and lost requests, and succeed`, async () => {
      const name = `${base}/read`;
      await direct.secrets.storeSecret({ name, value: "retried-read-value" }, CALL);
      const c = through(t.opts);
      // Warm the connection, so the faults below hit requests rather than connection setup.
      await c.health.check({}, CALL);

      let got = "";
      const n = await attempts(["refuse", "lose-response"], async () => {
        got = (await c.secrets.getSecret({ name }, CALL)).value;
      });
      assert.equal(got, "retried-read-value");
      assert.equal(n, 3, "refused, lost, then answered");
      // The refused request never reached the server; the lost one did, and so did the last.
      assert.equal((await audited(s, name, "GetSecret")).length, 2);

      // ListSecrets has no side effects either; DeleteSecret is idempotent.
      let listed: string[] = [];
      assert.equal(
        await attempts(["lose-response"], async () => {
          listed = (await c.secrets.listSecrets({ namePrefix: `${base}/` }, CALL)).secrets.map((x) => x.name);
        }),
        2,
      );
      assert.deepEqual(listed, [name]);
      assert.equal(
        await attempts(["refuse"], async () => {
          await c.secrets.deleteSecret({ name }, CALL);
        }),
        2,
      );
      await fails(direct.secrets.getSecret({ name }, CALL), Code.NotFound, "deleted by the retried call");
    });

    it(`${label}: StoreSecret and RotateSecret are sent once, whether the request or its response was lost`, async () => {
      const c = through(t.opts, { retries: 5 });
      await c.health.check({}, CALL);

      // The response is lost after the server stored the secret: a retry would find it there (or store it twice).
      const lost = `${base}/store-lost`;
      const stored = () => c.secrets.storeSecret({ name: lost, value: "stored-once" }, CALL);
      assert.equal(await brokenAttempts(["lose-response"], stored, "store"), 1, "sent once");
      assert.equal((await direct.secrets.getSecret({ name: lost }, CALL)).version?.version, 1, "the write happened");
      assert.deepEqual(
        (await audited(s, lost, "StoreSecret")).map((e) => e.code),
        ["ok"],
        "the server saw one StoreSecret",
      );

      // The request is refused before it reaches the server: still not retried (the client cannot tell).
      const refused = `${base}/store-refused`;
      const store = () => c.secrets.storeSecret({ name: refused, value: "x" }, CALL);
      assert.equal(await brokenAttempts(["refuse", "refuse"], store, "store"), 1, "sent once");
      await fails(direct.secrets.getSecret({ name: refused }, CALL), Code.NotFound, "never stored");

      // A lost RotateSecret response: the secret was rotated once, not once per attempt.
      const auto = `${base}/rotate`;
      await direct.secrets.storeSecret({ name: auto, kind: SecretKind.AUTOMATIC, rotationInterval: { seconds: 3600n } }, CALL);
      const rotate = () => c.secrets.rotateSecret({ name: auto }, CALL);
      assert.equal(await brokenAttempts(["lose-response"], rotate, "rotate"), 1, "sent once");
      assert.equal((await direct.secrets.getSecret({ name: auto }, CALL)).version?.version, 2, "rotated exactly once");
      assert.equal((await audited(s, auto, "RotateSecret")).length, 1, "the server saw one RotateSecret");
    });
  }

  for (const t of RETRY_TRANSPORTS) {
    it(`${t.label}: a retried call gives up after \`retries\` retries with the transient error`, async () => {
      const name = `retry/give-up-${slug(t.label)}`;
      await direct.secrets.storeSecret({ name, value: "x" }, CALL);
      const c = through(t.opts, { retries: 2 });
      await c.health.check({}, CALL);
      const n = await brokenAttempts(["refuse", "refuse", "refuse", "refuse", "refuse"], () => c.secrets.getSecret({ name }, CALL), "get");
      assert.equal(n, 3, "the first attempt and 2 retries");
    });
  }

  it("errors that are not transient are not retried", async () => {
    const c = through(TRANSPORTS[0]?.opts ?? {}, { retries: 5 });
    const n = await attempts([], () => fails(c.secrets.getSecret({ name: "retry/missing" }, CALL), Code.NotFound, "missing").then(() => {}));
    assert.equal(n, 1);
    assert.equal((await audited(s, "retry/missing", "GetSecret")).length, 1);
  });

  it("the backoff doubles with every retry (jitter pinned to its maximum), and scales with the jitter", async (t: TestContext) => {
    await direct.secrets.storeSecret({ name: "retry/backoff", value: "x" }, CALL);
    const baseMs = 50;
    const c = through(TRANSPORTS[0]?.opts ?? {}, { retries: 4, retryBaseMs: baseMs });
    await c.health.check({}, CALL);

    const random = t.mock.method(Math, "random", () => 0.999);
    const first = proxy.requests.length;
    let start = Date.now();
    await attempts(["refuse", "refuse", "refuse", "refuse"], async () => {
      await c.secrets.getSecret({ name: "retry/backoff" }, CALL);
    });
    const pinned = Date.now() - start;
    const at = proxy.requests.slice(first);
    assert.equal(at.length, 5);
    const gaps = at.slice(1).map((x, i) => x - (at[i] as number));
    // Each wait is the base delay doubled per retry (times the jitter factor), plus a reconnect.
    for (const [i, gap] of gaps.entries()) {
      const delay = 0.999 * baseMs * 2 ** i;
      assert.ok(gap >= delay - 3, `retry ${i + 1} waited ${gap} ms, at least ${delay.toFixed(0)} (gaps ${gaps.join(", ")})`);
      assert.ok(gap < delay + 250, `retry ${i + 1} waited ${gap} ms, about ${delay.toFixed(0)} (gaps ${gaps.join(", ")})`);
    }
    assert.ok((gaps[3] as number) > (gaps[0] as number) + 4 * baseMs, `the backoff grows: ${gaps.join(", ")}`);

    // Full jitter: the wait is a random fraction of that; with the random factor at 0 the retries follow at once.
    random.mock.mockImplementation(() => 0);
    start = Date.now();
    await attempts(["refuse", "refuse", "refuse", "refuse"], async () => {
      await c.secrets.getSecret({ name: "retry/backoff" }, CALL);
    });
    const unjittered = Date.now() - start;
    assert.ok(unjittered < pinned / 2, `no wait without jitter: ${unjittered} ms, against ${pinned} ms at the maximum`);
  });

  it("a deadline or a cancel cuts the backoff short", async (t: TestContext) => {
    await direct.secrets.storeSecret({ name: "retry/deadline", value: "x" }, CALL);
    t.mock.method(Math, "random", () => 0.999);
    // Over HTTP/1.1 a refused request fails as ABORTED (ECONNRESET), which every version of the client retries.
    const c = through({ protocol: "connect", json: true }, { retries: 3, retryBaseMs: 4_000 });
    await c.health.check({}, CALL);
    let start = Date.now();
    await attempts(["refuse", "refuse", "refuse", "refuse"], () =>
      fails(c.secrets.getSecret({ name: "retry/deadline" }, { timeoutMs: 300 }), [Code.DeadlineExceeded, ...BROKEN], "deadline").then(() => {}),
    );
    assert.ok(Date.now() - start < 1_500, `gave up at the 300 ms deadline, not after the 4 s backoff: ${Date.now() - start} ms`);

    const ac = new AbortController();
    start = Date.now();
    setTimeout(() => ac.abort(), 300);
    await attempts(["refuse", "refuse", "refuse", "refuse"], () =>
      fails(c.secrets.getSecret({ name: "retry/deadline" }, { signal: ac.signal }), Code.Canceled, "cancelled").then(() => {}),
    );
    assert.ok(Date.now() - start < 1_500, `gave up when cancelled, not after the 4 s backoff: ${Date.now() - start} ms`);
  });
});

// ---------------------------------------------------------------------------------------------------------------

describe("typed client: the secret cache", () => {
  let s: TestServer;
  let direct: LatchkeyClient;
  const caches: SecretCache[] = [];
  /** A cache that after() closes, whatever happens. */
  const track = (cache: SecretCache) => {
    caches.push(cache);
    return cache;
  };
  before(async () => {
    s = await startTestServer();
    direct = createLatchkeyClient({ baseUrl: s.url, token: ADMIN_TOKEN });
  });
  after(async () => {
    for (const cache of caches) cache.close();
    await s.stop();
  });

  const fetches = async (name: string, store?: string) => (await audited(s, name, "GetSecret", store)).length;

  for (const t of [TRANSPORTS[0], TRANSPORTS[3], TRANSPORTS[5]]) {
    it(`${t?.label}: the first read fetches, later and concurrent reads come from memory`, async () => {
      const prefix = `cache1/${slug(t?.label ?? "")}/`;
      const name = `${prefix}a`;
      const stored = await direct.secrets.storeSecret({ name, kind: SecretKind.AUTOMATIC }, CALL);
      const c = createLatchkeyClient({ baseUrl: s.url, token: ADMIN_TOKEN, ...t?.opts });
      const cache = track(c.cache({ prefix }));
      await within(cache.ready, 3_000, "the watch to open");

      const concurrent = await within(Promise.all(Array.from({ length: 10 }, () => cache.get(name))), 3_000, "reads");
      for (const r of concurrent) assert.deepEqual([r.value, r.version], [stored.value, 1]);
      for (let i = 0; i < 50; i++) assert.equal((await cache.get(name)).value, stored.value);
      assert.equal(await fetches(name), 1, "one GetSecret for 60 reads");
      assert.equal(cache.invalidations, 0);
      cache.close();
    });
  }

  it("RotateSecret, a new value and a metadata update each drop the entry; the next read fetches", async () => {
    const name = "cache2/key";
    const v1 = await direct.secrets.storeSecret({ name, kind: SecretKind.AUTOMATIC, rotationInterval: { seconds: 3600n } }, CALL);
    const cache = track(createLatchkeyClient({ baseUrl: s.url, token: ADMIN_TOKEN }).cache({ prefix: "cache2/" }));
    assert.equal((await within(cache.get(name), 3_000, "read")).value, v1.value);

    const v2 = await direct.secrets.rotateSecret({ name }, CALL);
    await eventually(() => cache.invalidations === 1, 3_000, "the rotation to reach the cache");
    assert.deepEqual(
      await cache.get(name).then((r) => [r.value, r.version]),
      [v2.value, 2],
    );
    assert.equal((await cache.get(name)).version, 2);

    await direct.secrets.updateSecret({ name, value: "a-new-value-given-by-hand" }, CALL);
    await eventually(() => cache.invalidations === 2, 3_000, "the update to reach the cache");
    assert.deepEqual(
      await cache.get(name).then((r) => [r.value, r.version]),
      ["a-new-value-given-by-hand", 3],
    );

    await direct.secrets.updateSecret({ name, description: "metadata only" }, CALL);
    await eventually(() => cache.invalidations === 3, 3_000, "the metadata update to reach the cache");
    assert.equal((await cache.get(name)).version, 3);
    assert.equal(await fetches(name), 4, "one fetch per change, the rest from memory");
    cache.close();
  });

  it("a rotation by the scheduler (1 s interval) drops the entry and the next read returns the new value", async () => {
    const name = "cache3/fast";
    const v1 = await direct.secrets.storeSecret(
      { name, kind: SecretKind.AUTOMATIC, rotationInterval: { seconds: 1n }, gracePeriod: { seconds: 0n } },
      CALL,
    );
    const cache = track(createLatchkeyClient({ baseUrl: s.url, token: ADMIN_TOKEN }).cache({ prefix: "cache3/" }));
    const first = await within(cache.get(name), 3_000, "read");
    assert.equal(first.value, v1.value);
    await eventually(() => cache.invalidations >= 1, 4_000, "a scheduled rotation to reach the cache");
    const next = await cache.get(name);
    assert.ok(next.version >= 2, `a newer version: ${next.version}`);
    assert.notEqual(next.value, v1.value);
    assert.equal(next.value, (await direct.secrets.getSecret({ name, version: next.version }, CALL)).value);
    cache.close();
    await direct.secrets.deleteSecret({ name, purge: true }, CALL);
  });

  it("deletion drops the entry (reads then fail with NOT_FOUND); a restore is picked up too", async () => {
    const name = "cache4/key";
    await direct.secrets.storeSecret({ name, value: "value-before-delete" }, CALL);
    const cache = track(createLatchkeyClient({ baseUrl: s.url, token: ADMIN_TOKEN }).cache({ prefix: "cache4/" }));
    assert.equal((await within(cache.get(name), 3_000, "read")).value, "value-before-delete");
    await direct.secrets.deleteSecret({ name }, CALL);
    await eventually(() => cache.invalidations === 1, 3_000, "the deletion to reach the cache");
    await fails(cache.get(name), Code.NotFound, "a deleted secret");
    await fails(cache.get(name), Code.NotFound, "still deleted (a failed read is not cached as a value)");
    await direct.secrets.undeleteSecret({ name }, CALL);
    await eventually(async () => (await cache.get(name).then((r) => r.value).catch(() => "")) === "value-before-delete", 3_000, "the restore");
    cache.close();
  });

  it("names outside the cache's prefix are refused", async () => {
    const cache = track(createLatchkeyClient({ baseUrl: s.url, token: ADMIN_TOKEN }).cache({ prefix: "cache5/" }));
    await fails(cache.get("elsewhere/key"), Code.InvalidArgument, "outside the prefix");
    cache.close();
  });

  it("close() ends the watch on the server; the closed cache serves no stale values", async () => {
    await direct.stores.createStore({ name: "closing" }, CALL);
    const name = "k";
    const v1 = await direct.secrets.storeSecret({ store: "closing", name, kind: SecretKind.AUTOMATIC }, CALL);
    const cache = track(createLatchkeyClient({ baseUrl: s.url, token: ADMIN_TOKEN }).cache({ store: "closing" }));
    assert.equal((await within(cache.get(name), 3_000, "read")).value, v1.value);
    const watches = async () => (await auditEntries(s.url, { store: "closing" })).filter((e) => e.op.endsWith("/WatchSecrets"));
    assert.equal((await watches()).length, 0, "the watch is open (a watch is audited when it ends)");

    cache.close();
    await eventually(async () => (await watches()).length === 1, 3_000, "the server to see the watch end");
    const v2 = await direct.secrets.rotateSecret({ store: "closing", name }, CALL);
    await sleep(200);
    assert.equal(cache.invalidations, 0, "no events after close");
    // Whatever a closed cache does with reads, it must not answer with the value it had cached before the rotation.
    const later = await within(cache.get(name), 3_000, "a read after close").then(
      (r) => r.value,
      () => undefined,
    );
    if (later !== undefined) assert.equal(later, v2.value, "a closed cache serves no stale value");
  });

  it("a watch that cannot open (missing store, unreachable server) makes reads fail, not hang", async () => {
    const c = createLatchkeyClient({ baseUrl: s.url, token: ADMIN_TOKEN });
    const errors: unknown[] = [];
    const missing = track(c.cache({ store: "no-such-store", onError: (e) => errors.push(e) }));
    await fails(within(missing.get("key"), 3_000, "read through a refused watch"), Code.NotFound, "missing store");
    assert.ok(errors.length >= 1, "onError was told");
    missing.close();

    const proxy = await startFaultProxy(s.port);
    proxy.block();
    try {
      const down = createLatchkeyClient({ baseUrl: proxy.url, token: ADMIN_TOKEN, retries: 1, retryBaseMs: 10 });
      const cache = track(down.cache({ reconnectMs: 50 }));
      await fails(within(cache.get("key"), 3_000, "read with the server unreachable"), BROKEN, "unreachable");
      cache.close();
    } finally {
      await proxy.close();
    }
  });
});

// ---------------------------------------------------------------------------------------------------------------

describe("typed client: the cache across a partition and a server restart", () => {
  let s: TestServer | undefined;
  let proxy: FaultProxy | undefined;
  let cache: SecretCache | undefined;
  let dataDir = "";
  after(async () => {
    cache?.close();
    await proxy?.close();
    await s?.stop();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  it("misses no rotation made while it was cut off: it resumes from its last event on the restarted server", async () => {
    s = await startTestServer({}, {}, { keepDataDir: true });
    dataDir = s.dataDir;
    const port = s.port;
    const admin = () => createLatchkeyClient({ baseUrl: `http://127.0.0.1:${port}`, token: ADMIN_TOKEN });
    const v1 = await admin().secrets.storeSecret({ name: "restart/key", kind: SecretKind.AUTOMATIC }, CALL);

    // The cache reaches the server through a proxy, which can cut it off.
    proxy = await startFaultProxy(port);
    const errors: unknown[] = [];
    cache = createLatchkeyClient({ baseUrl: proxy.url, token: ADMIN_TOKEN }).cache({
      prefix: "restart/",
      reconnectMs: 50,
      onError: (e) => errors.push(e),
    });
    assert.equal((await within(cache.get("restart/key"), 3_000, "read")).value, v1.value);

    // Cut off; the server restarts on the same port and data; the secret is rotated while the cache cannot hear.
    proxy.block();
    await s.stop();
    s = await startTestServer({ LATCHKEY_PORT: String(port), LATCHKEY_DATA_DIR: dataDir });
    assert.equal(s.port, port);
    const v2 = await admin().secrets.rotateSecret({ name: "restart/key" }, CALL);
    await eventually(() => errors.length >= 2, 3_000, "the watch to fail and retry while cut off");
    assert.equal((await cache.get("restart/key")).value, v1.value, "meanwhile the cached value is served");
    assert.equal(cache.invalidations, 0);

    // Back: the watch resumes after its last event, so the rotation it missed arrives and drops the entry.
    proxy.unblock();
    await eventually(() => cache?.invalidations === 1, 5_000, "the missed rotation to arrive on resume");
    assert.deepEqual(
      await cache.get("restart/key").then((r) => [r.value, r.version]),
      [v2.value, 2],
    );

    // And it keeps following the new server.
    const v3 = await admin().secrets.rotateSecret({ name: "restart/key" }, CALL);
    await eventually(() => cache?.invalidations === 2, 3_000, "a live rotation after the resume");
    assert.equal((await cache.get("restart/key")).value, v3.value);
  });
});

// ---------------------------------------------------------------------------------------------------------------

describe("examples/", () => {
  let s: TestServer;
  before(async () => {
    s = await startTestServer();
  });
  after(() => s.stop());

  const dir = join(ROOT, "examples");
  const files = readdirSync(dir).filter((f) => f.endsWith(".ts") || f.endsWith(".sh"));

  /** Runs one example to its end (killed after `ms`); resolves with its exit code and output. */
  function run(file: string, ms: number): Promise<{ code: number | null; out: string }> {
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(process.env)) {
      if (v !== undefined && !k.startsWith("LATCHKEY_") && !k.startsWith("NODE_TEST")) env[k] = v;
    }
    Object.assign(env, {
      LATCHKEY_ADDR: s.url,
      LATCHKEY_TOKEN: ADMIN_TOKEN,
      // Short bounds for the examples that wait for something; the watch example on a prefix of its own, so the
      // events it counts are its demo's and not those of the examples running beside it.
      WATCH_DEMO: "1",
      WATCH_PREFIX: "watch-example/",
      WATCH_EVENTS: "2",
      WATCH_SECONDS: "6",
      CACHE_READS: "200",
      CACHE_WAIT_SECONDS: "6",
      LATCHKEY_EXAMPLE_DEADLINE_MS: "8000",
    });
    const [cmd, args] = file.endsWith(".sh") ? ["bash", [join(dir, file)]] : [process.execPath, ["--import", "tsx", join(dir, file)]];
    const child = spawn(cmd, args, { cwd: ROOT, env, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => (out += d));
    child.stderr.setEncoding("utf8").on("data", (d: string) => (out += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), ms);
    return new Promise((resolve) =>
      child.once("close", (code) => {
        clearTimeout(timer);
        resolve({ code, out });
      }),
    );
  }

  it("runs every examples/*.ts (and the curl script, if curl is here) against a server: each exits 0", async (t: TestContext) => {
    assert.ok(files.some((f) => f.endsWith(".ts")), "there are examples");
    const hasCurl = await new Promise<boolean>((resolve) => {
      const p = spawn("curl", ["--version"], { stdio: "ignore" });
      p.once("error", () => resolve(false));
      p.once("close", (code) => resolve(code === 0));
    });
    const todo = files.filter((f) => f.endsWith(".ts") || hasCurl);
    if (!hasCurl) t.diagnostic("curl not found: the .sh examples are skipped");
    // Two at a time: each is a node process with its own TypeScript loader.
    const results = new Map<string, { code: number | null; out: string }>();
    const queue = [...todo];
    await Promise.all(
      [0, 1].map(async () => {
        for (let f = queue.shift(); f !== undefined; f = queue.shift()) results.set(f, await run(f, 15_000));
      }),
    );
    for (const f of todo) {
      const r = results.get(f);
      assert.equal(r?.code, 0, `${f} exited ${r?.code}:\n${r?.out}`);
      assert.ok((r?.out.trim().length ?? 0) > 0, `${f} says what it did`);
    }
    // The examples that state their checks all passed them.
    for (const f of ["store-and-read.ts", "cached-reads.ts", "batch-and-versions.ts", "connect-json-curl.sh"]) {
      const r = results.get(f);
      if (r) assert.match(r.out, /passed/, `${f} reports its checks passed`);
    }
    const watch = results.get("watch-rotations.ts");
    if (watch) assert.match(watch.out, /CREATED .*\n.*ROTATED/, "the watch example printed the demo's events");
  });
});

// ---------------------------------------------------------------------------------------------------------------

describe("typed client: the cache while its watch is down", () => {
  let s: TestServer | undefined;
  let proxy: FaultProxy | undefined;
  const caches: SecretCache[] = [];
  let dataDir = "";
  after(async () => {
    for (const c of caches) c.close();
    await proxy?.close();
    await s?.stop();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  it("reads go to the server while the watch reconnects, so a change made meanwhile is never hidden", async () => {
    s = await startTestServer({}, {}, { keepDataDir: true });
    dataDir = s.dataDir;
    const port = s.port;
    const admin = () => createLatchkeyClient({ baseUrl: `http://127.0.0.1:${port}`, token: ADMIN_TOKEN });
    const v1 = await admin().secrets.storeSecret({ name: "down/key", kind: SecretKind.AUTOMATIC }, CALL);
    const errors: unknown[] = [];
    // A long reconnect delay: after the restart the server answers, but the watch is not back for a while.
    const cache = admin().cache({ prefix: "down/", reconnectMs: 30_000, onError: (e) => errors.push(e) });
    caches.push(cache);
    assert.equal((await within(cache.get("down/key"), 3_000, "first read")).value, v1.value);

    await s.stop();
    await eventually(() => errors.length >= 1, 3_000, "the watch to fail");
    s = await startTestServer({ LATCHKEY_PORT: String(port), LATCHKEY_DATA_DIR: dataDir });
    const v2 = await admin().secrets.rotateSecret({ name: "down/key" }, CALL);
    assert.equal((await within(cache.get("down/key"), 3_000, "read while the watch is down")).value, v2.value);
  });

  it("with the server unreachable too, a value older than maxStaleMs is not served", async () => {
    assert.ok(s);
    proxy = await startFaultProxy(s.port);
    const client = createLatchkeyClient({ baseUrl: proxy.url, token: ADMIN_TOKEN, retries: 0 });
    const fresh = client.cache({ prefix: "down/", reconnectMs: 50 });
    const strict = client.cache({ prefix: "down/", reconnectMs: 50, maxStaleMs: 0 });
    caches.push(fresh, strict);
    const before = (await within(fresh.get("down/key"), 3_000, "read")).value;
    await within(strict.get("down/key"), 3_000, "read");
    proxy.block();
    await new Promise((r) => setTimeout(r, 200)); // the watches notice and reconnect (to a blocked proxy)
    assert.equal((await within(fresh.get("down/key"), 3_000, "stale read")).value, before, "recent enough: served");
    await fails(within(strict.get("down/key"), 3_000, "strict read"), BROKEN, "maxStaleMs 0: the read fails");
    proxy.unblock();
  });
});
