import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { LatchkeyError } from "../../src/domain/errors.js";
import { newSecretDocument } from "../../src/domain/secret.js";
import { addUsage, type Usage, ZERO_USAGE } from "../../src/domain/usage.js";
import { createQuotaGuard, type QuotaLimits } from "../../src/service/quotas.js";
import { createSqliteStorage } from "../../src/storage/sqlite/sqlite-storage.js";

/** The quota guard: free without limits, checks per store and for the service, serializes admits in a process. */

const T0 = Date.UTC(2030, 0, 1);
const NO_LIMITS: QuotaLimits = { global: {}, perStore: {} };

const root = mkdtempSync(join(tmpdir(), "latchkey-quotas-"));
after(() => rmSync(root, { recursive: true, force: true }));

/** A storage whose usage is set by the test, recording every usage call (the store asked for, or undefined). */
function fakeUsage(perStore: Record<string, Partial<Usage>> = {}, global: Partial<Usage> = {}) {
  const fake = {
    calls: [] as (string | undefined)[],
    perStore,
    global,
    async usage(store?: string): Promise<Usage> {
      fake.calls.push(store);
      return addUsage(ZERO_USAGE, store === undefined ? fake.global : (fake.perStore[store] ?? {}));
    },
  };
  return fake;
}

function deferred<T = void>() {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

async function assertQuotaExceeded(p: Promise<unknown>, message?: RegExp): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof LatchkeyError, `a LatchkeyError, got ${String(err)}`);
    assert.equal(err.code, "resource_exhausted");
    assert.equal(err.reason, "QUOTA_EXCEEDED");
    if (message) assert.match(err.message, message);
    return true;
  });
}

describe("quota guard", () => {
  it("exposes the limits it enforces", () => {
    const limits: QuotaLimits = { global: { stores: 3 }, perStore: { secrets: 2 } };
    assert.equal(createQuotaGuard(fakeUsage(), limits).limits, limits);
  });

  describe("without limits", () => {
    it("runs the write without measuring usage or computing growth", async () => {
      const storage = fakeUsage();
      const guard = createQuotaGuard(storage, NO_LIMITS);
      let growthCalls = 0;
      const result = await guard.admit(
        "a",
        () => {
          growthCalls++;
          return { secrets: 1_000_000 };
        },
        async () => "written",
      );
      assert.equal(result, "written");
      assert.deepEqual(storage.calls, []);
      assert.equal(growthCalls, 0);
    });

    it("passes the write's failure through", async () => {
      const guard = createQuotaGuard(fakeUsage(), NO_LIMITS);
      await assert.rejects(
        guard.admit("a", () => ({ secrets: 1 }), async () => {
          throw new Error("disk full");
        }),
        /disk full/,
      );
    });
  });

  describe("with per-store limits", () => {
    it("admits a write up to the limit and refuses one past it, without running it", async () => {
      const storage = fakeUsage({ a: { secrets: 2 } });
      const guard = createQuotaGuard(storage, { global: {}, perStore: { secrets: 3 } });
      let writes = 0;
      const write = async () => ++writes;

      assert.equal(await guard.admit("a", () => ({ secrets: 1, versions: 1, bytes: 100 }), write), 1);
      assert.deepEqual(storage.calls, ["a"], "measured the store, not the service");

      storage.perStore.a = { secrets: 3 };
      await assertQuotaExceeded(guard.admit("a", () => ({ secrets: 1 }), write), /store "a".*4 secrets.*limit 3/);
      assert.equal(writes, 1, "the refused write never ran");
    });

    it("measures each store on its own", async () => {
      const storage = fakeUsage({ full: { vars: 5 }, empty: {} });
      const guard = createQuotaGuard(storage, { global: {}, perStore: { vars: 5 } });
      await assertQuotaExceeded(guard.admit("full", () => ({ vars: 1 }), async () => assert.fail("must not run")));
      assert.equal(await guard.admit("empty", () => ({ vars: 5 }), async () => "ok"), "ok");
      assert.deepEqual(storage.calls, ["full", "empty"]);
    });

    it("does not measure for writes that grow no limited dimension", async () => {
      const storage = fakeUsage({ a: { secrets: 100 } });
      const guard = createQuotaGuard(storage, { global: {}, perStore: { secrets: 3 } });
      assert.equal(await guard.admit("a", () => ({ vars: 1, bytes: 10 }), async () => "unlimited dims"), "unlimited dims");
      assert.equal(await guard.admit("a", () => ({ secrets: -1, bytes: -10 }), async () => "shrinks"), "shrinks");
      assert.equal(await guard.admit("a", () => ({ secrets: 0 }), async () => "keeps"), "keeps");
      assert.equal(await guard.admit("a", () => ({}), async () => "nothing"), "nothing");
      assert.deepEqual(storage.calls, []);
    });
  });

  describe("with service-wide limits", () => {
    it("measures the whole service and refuses past the limit", async () => {
      const storage = fakeUsage({}, { stores: 2 });
      const guard = createQuotaGuard(storage, { global: { stores: 3 }, perStore: {} });
      assert.equal(await guard.admit("s3", () => ({ stores: 1 }), async () => "created"), "created");
      assert.deepEqual(storage.calls, [undefined]);

      storage.global = { stores: 3 };
      let ran = false;
      await assertQuotaExceeded(
        guard.admit("s4", () => ({ stores: 1 }), async () => {
          ran = true;
        }),
        /the service.*4 stores.*limit 3/,
      );
      assert.equal(ran, false);
    });

    it("refuses when the store is within its limit but the service is not", async () => {
      const storage = fakeUsage({ a: { secrets: 1 } }, { secrets: 10 });
      const guard = createQuotaGuard(storage, { global: { secrets: 10 }, perStore: { secrets: 5 } });
      let ran = false;
      await assertQuotaExceeded(
        guard.admit("a", () => ({ secrets: 1 }), async () => {
          ran = true;
        }),
        /the service/,
      );
      assert.equal(ran, false);
      assert.deepEqual(storage.calls, ["a", undefined]);
    });

    it("refuses when the service is within its limit but the store is not", async () => {
      const storage = fakeUsage({ a: { bytes: 100 } }, { bytes: 100 });
      const guard = createQuotaGuard(storage, { global: { bytes: 1000 }, perStore: { bytes: 100 } });
      await assertQuotaExceeded(guard.admit("a", () => ({ bytes: 1 }), async () => assert.fail("must not run")), /store "a"/);
    });
  });

  describe("serialization", () => {
    it("keeps working after a refused write, a failed growth and a failed write", async () => {
      const storage = fakeUsage({ a: { secrets: 0 } });
      const guard = createQuotaGuard(storage, { global: {}, perStore: { secrets: 1 } });
      await assertQuotaExceeded(guard.admit("a", () => ({ secrets: 2 }), async () => assert.fail("must not run")));
      await assert.rejects(
        guard.admit(
          "a",
          async () => {
            throw new Error("growth failed");
          },
          async () => assert.fail("must not run"),
        ),
        /growth failed/,
      );
      await assert.rejects(
        guard.admit("a", () => ({ secrets: 1 }), async () => {
          throw new Error("write failed");
        }),
        /write failed/,
      );
      assert.equal(await guard.admit("a", () => ({ secrets: 1 }), async () => "ok"), "ok");
    });

    it("evaluates each growth inside the queue, after the previous write finished", async () => {
      const storage = fakeUsage({ a: {} });
      const guard = createQuotaGuard(storage, { global: {}, perStore: { versions: 100 } });
      const events: string[] = [];
      const firstWrite = deferred();

      const first = guard.admit(
        "a",
        () => {
          events.push("growth 1");
          return { versions: 1 };
        },
        async () => {
          events.push("write 1 start");
          await firstWrite.promise;
          events.push("write 1 end");
          return 1;
        },
      );
      const second = guard.admit(
        "a",
        async () => {
          events.push("growth 2");
          return { versions: 1 };
        },
        async () => {
          events.push("write 2");
          return 2;
        },
      );

      // Let every ready microtask and I/O callback run: the second admit must still be waiting.
      await new Promise((r) => setImmediate(r));
      assert.deepEqual(events, ["growth 1", "write 1 start"]);
      firstWrite.resolve();
      assert.deepEqual(await Promise.all([first, second]), [1, 2]);
      assert.deepEqual(events, ["growth 1", "write 1 start", "write 1 end", "growth 2", "write 2"]);
    });

    it("lets concurrent admits in one process not jointly overshoot a limit (real SQLite usage)", async () => {
      const storage = createSqliteStorage(join(root, "concurrent", "latchkey.db"));
      try {
        const guard = createQuotaGuard(storage, { global: {}, perStore: { secrets: 3 } });
        let written = 0;
        const admits = Array.from({ length: 10 }, (_, i) =>
          guard.admit("s", () => ({ secrets: 1, versions: 1 }), async () => {
            const doc = newSecretDocument({ id: `id-${i}`, store: "s", name: `secret-${i}`, kind: "manual", description: "" }, "v1.x.y", T0);
            assert.equal(await storage.insertSecret(doc), true);
            written++;
            return i;
          }),
        );
        const results = await Promise.allSettled(admits);
        const ok = results.filter((r) => r.status === "fulfilled");
        const refused = results.filter((r): r is PromiseRejectedResult => r.status === "rejected");
        assert.equal(ok.length, 3);
        assert.equal(written, 3);
        assert.equal(refused.length, 7);
        for (const r of refused) {
          assert.ok(r.reason instanceof LatchkeyError);
          assert.equal(r.reason.reason, "QUOTA_EXCEEDED");
        }
        assert.deepEqual(
          ok.map((r) => (r as PromiseFulfilledResult<number>).value),
          [0, 1, 2],
          "admitted in call order",
        );
        assert.equal((await storage.usage("s")).secrets, 3);
        assert.equal((await storage.usage()).secrets, 3);
      } finally {
        await storage.close();
      }
    });

    it("does not serialize anything when no limit is set", async () => {
      const guard = createQuotaGuard(fakeUsage(), NO_LIMITS);
      const gate = deferred();
      const events: string[] = [];
      const first = guard.admit("a", () => ({}), async () => {
        events.push("write 1 start");
        await gate.promise;
        events.push("write 1 end");
      });
      const second = guard.admit("a", () => ({}), async () => {
        events.push("write 2");
      });
      await second;
      assert.deepEqual(events, ["write 1 start", "write 2"]);
      gate.resolve();
      await first;
    });
  });
});
