import assert from "node:assert/strict";
import * as net from "node:net";
import { after, before, describe, it } from "node:test";
import type { DescMethod } from "@bufbuild/protobuf";
import type { UnaryRequest, UnaryResponse } from "@connectrpc/connect";
import {
  type CachedSecret,
  Code,
  ConnectError,
  createLatchkeyClient,
  type LatchkeyClient,
  type LatchkeyClientOptions,
  retryInterceptor,
  SecretKind,
  SecretService,
} from "../../src/client/index.js";
import * as pkg from "../../src/index.js";
import { ADMIN_TOKEN, startTestServer, type TestServer } from "../support/server.js";

/**
 * The typed client (src/client) against a real in-process server: every call over each protocol, the bearer
 * token, retries (with a fake `next`, and through a loopback proxy that breaks real connections) and the
 * WatchSecrets-backed cache.
 */

const PROTOCOLS: { name: string; opts: Pick<LatchkeyClientOptions, "protocol" | "json"> }[] = [
  { name: "grpc", opts: { protocol: "grpc" } },
  { name: "connect", opts: { protocol: "connect" } },
  { name: "connect-json", opts: { protocol: "connect", json: true } },
];

const CALL = { timeoutMs: 5_000 };

async function fails(p: Promise<unknown>, code: Code, what: string): Promise<ConnectError> {
  try {
    await p;
  } catch (err) {
    const ce = ConnectError.from(err);
    assert.equal(ce.code, code, `${what}: expected ${Code[code]}, got ${Code[ce.code]} (${ce.rawMessage})`);
    return ce;
  }
  assert.fail(`${what}: expected ${Code[code]}, but the call succeeded`);
}

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

/** Polls `check` until it holds; fails after `ms`. */
async function eventually(check: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

// ---------------------------------------------------------------------------------------------------------------
// A loopback TCP proxy that breaks the first connections it accepts

type Fault =
  /** RST as soon as the connection is accepted (the client sees ECONNRESET). */
  | "reset"
  /** FIN as soon as the connection is accepted (HTTP/2: the stream fails with CANCEL; HTTP/1.1: EPIPE or a hang-up). */
  | "close"
  /** Forward the request, then RST instead of relaying the response: the server did the work, the client never hears. */
  | "lose-response";

interface FaultProxy {
  readonly url: string;
  /** Connections accepted so far, broken or not. */
  readonly accepted: number;
  close(): Promise<void>;
}

async function startFaultProxy(targetPort: number, fault: Fault, breakFirst: number): Promise<FaultProxy> {
  let accepted = 0;
  const sockets = new Set<net.Socket>();
  const track = (sock: net.Socket) => {
    sockets.add(sock);
    sock.on("close", () => sockets.delete(sock));
    sock.on("error", () => {});
  };
  const server = net.createServer((client) => {
    track(client);
    const broken = accepted++ < breakFirst;
    if (broken && fault === "reset") return client.resetAndDestroy();
    if (broken && fault === "close") return client.destroy();
    const upstream = net.connect(targetPort, "127.0.0.1");
    track(upstream);
    client.pipe(upstream);
    if (broken) upstream.once("data", () => client.resetAndDestroy());
    else upstream.pipe(client);
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    get accepted() {
      return accepted;
    },
    async close() {
      for (const sock of sockets) sock.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

// ---------------------------------------------------------------------------------------------------------------

describe("typed client", () => {
  let s: TestServer;
  /** An admin client over gRPC straight to the server, to check what the client under test did. */
  let direct: LatchkeyClient;

  /** Requests the server finished for a SecretService method, whatever their outcome. */
  async function served(method: string): Promise<number> {
    const metric = await s.app.metrics.registry.getSingleMetric("latchkey_requests_total")?.get();
    return (metric?.values ?? [])
      .filter((v) => v.labels.op === `latchkey.v1.SecretService/${method}`)
      .reduce((sum, v) => sum + v.value, 0);
  }

  before(async () => {
    s = await startTestServer();
    direct = createLatchkeyClient({ baseUrl: s.url, token: ADMIN_TOKEN });
  });
  after(() => s.stop());

  it("is exported from the package entry point", () => {
    assert.equal(pkg.createLatchkeyClient, createLatchkeyClient);
    assert.equal(pkg.retryInterceptor, retryInterceptor);
  });

  for (const { name: protocol, opts } of PROTOCOLS) {
    describe(`over ${protocol}`, () => {
      const prefix = `client-${protocol}/`;
      let client: LatchkeyClient;
      before(() => {
        client = createLatchkeyClient({ baseUrl: s.url, token: ADMIN_TOKEN, ...opts });
      });

      it("stores, reads, verifies, lists, updates, rotates and deletes", async () => {
        const { secrets } = client;
        const manual = `${prefix}db-password`;
        const automatic = `${prefix}api-key`;

        const stored = await secrets.storeSecret({ name: manual, value: "s3cr3t", description: "db" }, CALL);
        assert.equal(stored.version?.version, 1);
        const read = await secrets.getSecret({ name: manual }, CALL);
        assert.equal(read.value, "s3cr3t");
        assert.equal(read.secret?.description, "db");
        assert.deepEqual(
          [(await secrets.verifySecret({ name: manual, value: "s3cr3t" }, CALL)).valid, (await secrets.verifySecret({ name: manual, value: "nope" }, CALL)).valid],
          [true, false],
        );

        const generated = await secrets.storeSecret(
          { name: automatic, kind: SecretKind.AUTOMATIC, rotationInterval: { seconds: 3600n } },
          CALL,
        );
        assert.ok(generated.value.length >= 16, "an automatic secret gets a generated value");
        const listed = await secrets.listSecrets({ namePrefix: prefix }, CALL);
        assert.deepEqual(
          listed.secrets.map((x) => [x.name, x.currentVersion]),
          [
            [automatic, 1],
            [manual, 1],
          ],
        );

        const updated = await secrets.updateSecret({ name: manual, value: "n3w", description: "db, updated" }, CALL);
        assert.equal(updated.secret?.currentVersion, 2);
        const reread = await secrets.getSecret({ name: manual }, CALL);
        assert.deepEqual([reread.value, reread.version?.version, reread.secret?.description], ["n3w", 2, "db, updated"]);

        const rotated = await secrets.rotateSecret({ name: automatic }, CALL);
        assert.equal(rotated.version?.version, 2);
        assert.notEqual(rotated.value, generated.value);
        assert.equal((await secrets.getSecret({ name: automatic }, CALL)).value, rotated.value);

        for (const name of [manual, automatic]) await secrets.deleteSecret({ name, purge: true }, CALL);
        await fails(secrets.getSecret({ name: manual }, CALL), Code.NotFound, "read after delete");
        assert.deepEqual((await secrets.listSecrets({ namePrefix: prefix }, CALL)).secrets, []);
      });

      it("sends its bearer token, on unary calls and streams", async () => {
        const name = `${prefix}token-check`;
        const anonymous = createLatchkeyClient({ baseUrl: s.url, ...opts });
        const wrong = createLatchkeyClient({ baseUrl: s.url, token: "not-the-token", ...opts });
        await fails(anonymous.secrets.storeSecret({ name, value: "v" }, CALL), Code.Unauthenticated, "store without a token");
        await fails(anonymous.secrets.listSecrets({}, CALL), Code.Unauthenticated, "list without a token");
        await fails(wrong.secrets.storeSecret({ name, value: "v" }, CALL), Code.Unauthenticated, "store with a wrong token");
        await client.secrets.storeSecret({ name, value: "v" }, CALL);
        assert.ok((await client.secrets.listSecrets({ namePrefix: prefix }, CALL)).secrets.some((x) => x.name === name));
        await client.secrets.deleteSecret({ name, purge: true }, CALL);
      });
    });
  }

  describe("retryInterceptor, with a fake next", () => {
    const m = SecretService.method;

    /** Runs one call through retryInterceptor(retries, 1 ms) with a `next` failing with `codes` in turn, then succeeding. */
    async function run(method: DescMethod, codes: Code[], retries = 3, signal = new AbortController().signal) {
      let calls = 0;
      const response = { stream: false, message: {} } as unknown as UnaryResponse;
      const next = async (req: UnaryRequest) => {
        const code = codes[calls++];
        if (req.signal.aborted) throw new ConnectError("canceled by the caller", Code.Canceled);
        if (code !== undefined) throw new ConnectError(`attempt ${calls} failed`, code);
        return response;
      };
      const req = { stream: false, method, service: SecretService, signal, header: new Headers(), message: {} } as unknown as UnaryRequest;
      const intercepted = retryInterceptor(retries, 1)(next as Parameters<ReturnType<typeof retryInterceptor>>[0]);
      try {
        const res = await intercepted(req);
        assert.equal(res, response);
        return { calls, error: undefined };
      } catch (err) {
        return { calls, error: ConnectError.from(err) };
      }
    }

    it("retries side-effect-free and idempotent calls after UNAVAILABLE", async () => {
      for (const method of [m.getSecret, m.listSecrets, m.batchGetSecrets, m.deleteSecret]) {
        const { calls, error } = await run(method, [Code.Unavailable, Code.Unavailable]);
        assert.deepEqual([calls, error], [3, undefined], method.name);
      }
    });

    it("never retries calls with side effects", async () => {
      for (const method of [m.storeSecret, m.updateSecret, m.rotateSecret, m.verifySecret, m.batchUpsertSecrets]) {
        const { calls, error } = await run(method, [Code.Unavailable]);
        assert.equal(calls, 1, method.name);
        assert.equal(error?.code, Code.Unavailable, method.name);
      }
    });

    it("gives up after `retries` more attempts", async () => {
      const { calls, error } = await run(m.getSecret, [Code.Unavailable, Code.Unavailable, Code.Unavailable], 2);
      assert.deepEqual([calls, error?.code], [3, Code.Unavailable]);
      assert.equal((await run(m.getSecret, [Code.Unavailable], 0)).calls, 1, "retries: 0 turns retrying off");
    });

    it("retries transport failures but not answers", async () => {
      for (const code of [Code.DeadlineExceeded, Code.Aborted, Code.Canceled]) {
        assert.equal((await run(m.getSecret, [code])).calls, 2, Code[code]);
      }
      for (const code of [Code.NotFound, Code.PermissionDenied, Code.Unauthenticated, Code.InvalidArgument, Code.ResourceExhausted]) {
        const { calls, error } = await run(m.getSecret, [code]);
        assert.deepEqual([calls, error?.code], [1, code], Code[code]);
      }
    });

    it("does not retry once the caller cancelled, even while waiting to retry", async () => {
      const aborted = new AbortController();
      aborted.abort();
      assert.equal((await run(m.getSecret, [Code.Canceled], 3, aborted.signal)).calls, 1);

      // A long backoff (up to a minute) ends as soon as the caller aborts.
      const ac = new AbortController();
      let calls = 0;
      const next = async () => {
        calls++;
        if (calls === 1) setTimeout(() => ac.abort(), 20);
        throw new ConnectError(ac.signal.aborted ? "canceled" : "unavailable", ac.signal.aborted ? Code.Canceled : Code.Unavailable);
      };
      const req = { stream: false, method: m.getSecret, signal: ac.signal, header: new Headers() } as unknown as UnaryRequest;
      const started = Date.now();
      const err = await within(
        retryInterceptor(5, 60_000)(next as Parameters<ReturnType<typeof retryInterceptor>>[0])(req).catch((e: unknown) => ConnectError.from(e)),
        2_000,
        "an aborted backoff",
      );
      assert.equal((err as ConnectError).code, Code.Canceled);
      assert.ok(Date.now() - started < 2_000);
      assert.ok(calls <= 2, `no attempts after the abort (${calls})`);
    });
  });

  for (const protocol of ["grpc", "connect"] as const) {
    describe(`retries over real connections (${protocol})`, () => {
      const prefix = `retry-${protocol}/`;
      const proxies: FaultProxy[] = [];
      const through = async (fault: Fault, breakFirst: number, retries = 3) => {
        const proxy = await startFaultProxy(s.port, fault, breakFirst);
        proxies.push(proxy);
        return { proxy, client: createLatchkeyClient({ baseUrl: proxy.url, token: ADMIN_TOKEN, protocol, retries, retryBaseMs: 5 }) };
      };
      before(async () => {
        await direct.secrets.storeSecret({ name: `${prefix}read-me`, value: "v1" }, CALL);
      });
      after(async () => {
        for (const p of proxies) await p.close();
      });

      it("retries GetSecret when the first connections are reset", async () => {
        const { proxy, client } = await through("reset", 2);
        const res = await client.secrets.getSecret({ name: `${prefix}read-me` }, CALL);
        assert.equal(res.value, "v1");
        assert.equal(proxy.accepted, 3, "two broken connections, then one that worked");
      });

      it("retries GetSecret when the peer closes the connection at once", async () => {
        const { proxy, client } = await through("close", 1);
        assert.equal((await client.secrets.getSecret({ name: `${prefix}read-me` }, CALL)).value, "v1");
        assert.equal(proxy.accepted, 2);
      });

      it("gives up after the configured retries", async () => {
        const { proxy, client } = await through("reset", 10, 2);
        await fails(client.secrets.getSecret({ name: `${prefix}read-me` }, CALL), Code.Aborted, "read through a dead proxy");
        assert.equal(proxy.accepted, 3);
      });

      it("does not retry StoreSecret or UpdateSecret", async () => {
        const store = await through("reset", 1);
        const created = `${prefix}created`;
        const err = await fails(store.client.secrets.storeSecret({ name: created, value: "x" }, CALL), Code.Aborted, "store");
        assert.match(err.rawMessage, /ECONNRESET/);
        assert.equal(store.proxy.accepted, 1, "one attempt only");
        await fails(direct.secrets.getSecret({ name: created }, CALL), Code.NotFound, "the store never reached the server");

        const update = await through("reset", 1);
        await fails(update.client.secrets.updateSecret({ name: `${prefix}read-me`, value: "v2" }, CALL), Code.Aborted, "update");
        assert.equal(update.proxy.accepted, 1, "one attempt only");
        assert.equal((await direct.secrets.getSecret({ name: `${prefix}read-me` }, CALL)).value, "v1");
      });

      if (protocol === "connect") {
        it("does not repeat a write whose response was lost, but does repeat a read", async () => {
          const write = await through("lose-response", 1);
          const name = `${prefix}lost-response`;
          await fails(write.client.secrets.storeSecret({ name, value: "once" }, CALL), Code.Aborted, "store, response lost");
          assert.equal(write.proxy.accepted, 1, "not repeated");
          const stored = await direct.secrets.getSecret({ name }, CALL);
          assert.deepEqual([stored.value, stored.version?.version], ["once", 1], "the server did store it");

          const read = await through("lose-response", 1);
          assert.equal((await read.client.secrets.getSecret({ name }, CALL)).value, "once");
          assert.equal(read.proxy.accepted, 2);
        });
      }
    });
  }

  for (const protocol of ["grpc", "connect"] as const) {
    describe(`cache (${protocol})`, () => {
      const prefix = `cache-${protocol}/`;
      let client: LatchkeyClient;
      before(() => {
        client = createLatchkeyClient({ baseUrl: s.url, token: ADMIN_TOKEN, protocol });
      });

      it("serves repeated reads from memory and refreshes after RotateSecret", async () => {
        const name = `${prefix}api-key`;
        const first = await client.secrets.storeSecret(
          { name, kind: SecretKind.AUTOMATIC, rotationInterval: { seconds: 3600n } },
          CALL,
        );
        const cache = client.cache({ prefix });
        try {
          await within(cache.ready, 5_000, "the watch to open");
          const before = await served("GetSecret");

          const a = await cache.get(name);
          assert.deepEqual([a.value, a.version], [first.value, 1]);
          await eventually(async () => (await served("GetSecret")) === before + 1, 2_000, "the first read to reach the server");
          const b = await cache.get(name);
          assert.equal(b, a, "the second read is the cached entry");

          const rotated = await client.secrets.rotateSecret({ name }, CALL);
          let seen: CachedSecret = a;
          await eventually(
            async () => {
              seen = await cache.get(name);
              return seen.value === rotated.value;
            },
            3_000,
            "the cache to pick up the rotation",
          );
          assert.equal(seen.version, 2);
          assert.equal(cache.invalidations, 1);
          // Every read between the rotation and its event came from memory: two server reads in all.
          await client.secrets.listSecrets({ namePrefix: prefix }, CALL);
          await eventually(async () => (await served("GetSecret")) >= before + 2, 2_000, "the refresh to reach the server");
          assert.equal(await served("GetSecret"), before + 2);
        } finally {
          cache.close();
          await client.secrets.deleteSecret({ name, purge: true }, CALL);
        }
      });

      it("close() ends the watch, and later reads go to the server", async () => {
        const name = `${prefix}closing`;
        await client.secrets.storeSecret({ name, value: "v1" }, CALL);
        const watchesBefore = await served("WatchSecrets");
        const cache = client.cache({ prefix });
        await within(cache.ready, 5_000, "the watch to open");
        assert.equal((await cache.get(name)).value, "v1");
        cache.close();
        await eventually(async () => (await served("WatchSecrets")) === watchesBefore + 1, 3_000, "the server to see the watch end");

        await client.secrets.updateSecret({ name, value: "v2" }, CALL);
        assert.equal((await cache.get(name)).value, "v2", "nothing stale is served after close");
        assert.equal(cache.invalidations, 0, "no watch, no events");
        await client.secrets.deleteSecret({ name, purge: true }, CALL);
      });
    });
  }

  describe("cache against a server whose reads need a token", () => {
    let strict: TestServer;
    before(async () => {
      strict = await startTestServer({ LATCHKEY_READS_REQUIRE_TOKEN: "true" });
      await createLatchkeyClient({ baseUrl: strict.url, token: ADMIN_TOKEN }).secrets.storeSecret({ name: "app/key", value: "k1" }, CALL);
    });
    after(() => strict.stop());

    it("watches with the token", async () => {
      const cache = createLatchkeyClient({ baseUrl: strict.url, token: ADMIN_TOKEN }).cache({ prefix: "app/" });
      try {
        await within(cache.ready, 5_000, "the watch to open with a token");
        assert.equal((await cache.get("app/key")).value, "k1");
      } finally {
        cache.close();
      }
    });

    it("fails reads instead of hanging when the watch is refused", async () => {
      const errors: unknown[] = [];
      const cache = createLatchkeyClient({ baseUrl: strict.url }).cache({ prefix: "app/", onError: (e) => errors.push(e) });
      try {
        await fails(within(cache.get("app/key"), 3_000, "a read without a watch"), Code.Unauthenticated, "read without a token");
        assert.equal(ConnectError.from(errors[0]).code, Code.Unauthenticated, "the refused watch is reported");
      } finally {
        cache.close();
      }
    });
  });

  it("a cache fails reads instead of hanging when the server is unreachable", async () => {
    const proxy = await startFaultProxy(s.port, "reset", Number.POSITIVE_INFINITY);
    await proxy.close(); // nothing listens on its port any more
    const cache = createLatchkeyClient({ baseUrl: proxy.url, retries: 0 }).cache({ onError: () => {} });
    try {
      await fails(within(cache.get("anything"), 3_000, "a read with the server down"), Code.Unavailable, "read with the server down");
    } finally {
      cache.close();
    }
  });
});
