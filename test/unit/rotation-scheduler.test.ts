import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, afterEach, beforeEach, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { createEnvelope, masterKeyFrom } from "../../src/crypto/envelope.js";
import { currentVersion,
  latestVersion, type SecretDocument } from "../../src/domain/secret.js";
import { createLogger } from "../../src/log/logger.js";
import type { Clock } from "../../src/scheduler/clock.js";
import {
  createRotationScheduler,
  type RotationScheduler,
  type RotationSchedulerOptions,
} from "../../src/scheduler/rotation-scheduler.js";
import { createSecretManager, type SecretManager } from "../../src/service/secret-manager.js";
import { createSqliteStorage } from "../../src/storage/sqlite/sqlite-storage.js";
import type { Storage } from "../../src/storage/storage.js";

/**
 * The rotation scheduler over real storage and a real manager. `tick()` is driven by a fake clock; the timer
 * behaviour (start, notify, stop, retry) runs against the real clock with due times tens of milliseconds away.
 */

const T0 = Date.UTC(2030, 0, 1);
const SEC = 1000;
const logger = createLogger("silent");

const root = mkdtempSync(join(tmpdir(), "latchkey-scheduler-"));
after(() => rmSync(root, { recursive: true, force: true }));

let counter = 0;
let t = T0;
const fakeClock: Clock = { now: () => t };
const systemClock: Clock = { now: () => Date.now() };

let storage: Storage;
let schedulers: RotationScheduler[];
/** How often the scheduler asked the store for due secrets. */
let dueQueries: number;

function setup(clock: Clock): SecretManager {
  const real = createSqliteStorage(join(root, `db-${++counter}`, "latchkey.db"));
  storage = {
    ...real,
    findDueSecrets(now, limit) {
      dueQueries++;
      return real.findDueSecrets(now, limit);
    },
  };
  return createSecretManager({
    storage,
    envelope: createEnvelope({ masterKey: masterKeyFrom(Buffer.alloc(32, 5)), storage, clock }),
    clock,
    logger,
    maxVersions: 10,
  });
}

function scheduler(opts: Partial<RotationSchedulerOptions> & Pick<RotationSchedulerOptions, "rotate" | "clock">) {
  const s = createRotationScheduler({ storage, logger, ...opts });
  schedulers.push(s);
  return s;
}

async function versionOf(name: string): Promise<number> {
  const doc = await storage.findSecret("default", name);
  assert.ok(doc, `${name} exists`);
  return latestVersion(doc).version;
}

/** Makes an existing automatic secret due at `at` (ms), as a write by another process would. */
async function dueAt(name: string, at: number): Promise<SecretDocument> {
  const doc = await storage.findSecret("default", name);
  assert.ok(doc?.rotation, `${name} is automatic`);
  const next = { ...doc, rotation: { ...doc.rotation, nextRotationAt: at }, revision: doc.revision + 1 };
  assert.equal(await storage.replaceSecret(next, doc.revision), true);
  return next;
}

/** Resolves with `p`, or fails the test after `ms` instead of hanging. */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** A rotate function that reports each successful rotation. */
function observedRotate(manager: SecretManager) {
  const rotated: string[] = [];
  let notify: (() => void) | undefined;
  return {
    rotated,
    rotate: async (doc: SecretDocument) => {
      const v = await manager.rotateIfDue(doc);
      if (v !== undefined) {
        rotated.push(doc.name);
        notify?.();
      }
      return v;
    },
    /** Resolves once `n` rotations have happened. */
    until(n: number): Promise<void> {
      return new Promise((resolve) => {
        const check = () => {
          if (rotated.length >= n) resolve();
        };
        notify = check;
        check();
      });
    },
  };
}

describe("rotation scheduler", () => {
  beforeEach(() => {
    t = T0;
    dueQueries = 0;
    schedulers = [];
  });
  afterEach(async () => {
    for (const s of schedulers) await s.stop();
    await storage.close();
  });

  describe("tick", () => {
    it("rotates only the secrets that are due", async () => {
      const manager = setup(fakeClock);
      await manager.create({ store: "default", name: "a60", kind: "automatic", rotationIntervalSeconds: 60 });
      await manager.create({ store: "default", name: "b120", kind: "automatic", rotationIntervalSeconds: 120 });
      await manager.create({ store: "default", name: "c3600", kind: "automatic", rotationIntervalSeconds: 3600 });
      await manager.create({ store: "default", name: "manual", kind: "manual", value: "v" });
      const s = scheduler({ rotate: (doc) => manager.rotateIfDue(doc), clock: fakeClock });

      assert.equal(await s.tick(), 0, "nothing is due at T0");
      t = T0 + 120 * SEC;
      assert.equal(await s.tick(), 2);
      assert.deepEqual(
        [await versionOf("a60"), await versionOf("b120"), await versionOf("c3600"), await versionOf("manual")],
        [2, 2, 1, 1],
      );
      assert.equal(await s.tick(), 0, "rotated secrets are scheduled again from now");
      t = T0 + 180 * SEC;
      assert.equal(await s.tick(), 1);
      assert.equal(await versionOf("a60"), 3);
    });

    it("rotates every due secret, across several batches", async () => {
      const manager = setup(fakeClock);
      for (let i = 0; i < 5; i++) {
        await manager.create({ store: "default", name: `s${i}`, kind: "automatic", rotationIntervalSeconds: 60 + i });
      }
      const s = scheduler({ rotate: (doc) => manager.rotateIfDue(doc), clock: fakeClock, batchSize: 2 });
      t = T0 + 3600 * SEC;
      assert.equal(await s.tick(), 5);
      for (let i = 0; i < 5; i++) assert.equal(await versionOf(`s${i}`), 2, `s${i}`);
    });

    it("counts only the rotations this process made", async () => {
      const manager = setup(fakeClock);
      await manager.create({ store: "default", name: "a", kind: "automatic", rotationIntervalSeconds: 60 });
      t = T0 + 61 * SEC;
      const s = scheduler({ rotate: async () => undefined, clock: fakeClock });
      assert.equal(await s.tick(), 0);
      assert.equal(await versionOf("a"), 1);
    });

    it("keeps rotating the others when one rotation fails", async () => {
      const manager = setup(fakeClock);
      for (const name of ["ok1", "bad", "ok2"]) {
        await manager.create({ store: "default", name, kind: "automatic", rotationIntervalSeconds: 60 });
      }
      t = T0 + 61 * SEC;
      const s = scheduler({
        rotate: async (doc) => {
          if (doc.name === "bad") throw new Error("boom");
          return manager.rotateIfDue(doc);
        },
        clock: fakeClock,
      });
      assert.equal(await s.tick(), 2);
      assert.deepEqual([await versionOf("ok1"), await versionOf("bad"), await versionOf("ok2")], [2, 1, 2]);
    });

    it("does nothing and queries nothing more than once when no secret is automatic", async () => {
      const manager = setup(fakeClock);
      await manager.create({ store: "default", name: "manual", kind: "manual", value: "v" });
      t = T0 + 10 ** 9;
      const s = scheduler({ rotate: (doc) => manager.rotateIfDue(doc), clock: fakeClock });
      assert.equal(await s.tick(), 0);
      assert.equal(dueQueries, 1);
    });
  });

  describe("timer", () => {
    it("arms a timer on start and rotates a secret when it falls due, without polling", async () => {
      const manager = setup(systemClock);
      await manager.create({ store: "default", name: "soon", kind: "automatic", rotationIntervalSeconds: 3600 });
      await dueAt("soon", Date.now() + 50);
      const obs = observedRotate(manager);
      const s = scheduler({ rotate: obs.rotate, clock: systemClock });
      await s.start();
      await within(obs.until(1), 2000, "the rotation");
      assert.equal(await versionOf("soon"), 2);
      const queriesAfterRotation = dueQueries;
      assert.ok(queriesAfterRotation <= 4, `a start-up query and one or two on waking, got ${queriesAfterRotation}`);
      await sleep(150);
      assert.equal(dueQueries, queriesAfterRotation, "idle until the next rotation an hour away");
    });

    it("rotates at once on start what is already overdue", async () => {
      const manager = setup(systemClock);
      await manager.create({ store: "default", name: "late", kind: "automatic", rotationIntervalSeconds: 3600 });
      await dueAt("late", Date.now() - 60_000);
      const obs = observedRotate(manager);
      await scheduler({ rotate: obs.rotate, clock: systemClock }).start();
      await within(obs.until(1), 2000, "the rotation");
      assert.equal(await versionOf("late"), 2);
    });

    it("wakes early when the change feed reports an earlier schedule", async () => {
      const manager = setup(systemClock);
      await manager.create({ store: "default", name: "later", kind: "automatic", rotationIntervalSeconds: 3600 });
      const obs = observedRotate(manager);
      const s = scheduler({ rotate: obs.rotate, clock: systemClock });
      await s.start();
      await sleep(50); // the start-up run has armed the timer for an hour from now
      // Another process makes it due soon: the scheduler hears of it only through the feed.
      await dueAt("later", Date.now() + 40);
      await within(obs.until(1), 3000, "the rotation after the feed event");
      assert.equal(await versionOf("later"), 2);
    });

    it("keeps the earlier alarm when the feed reports a later schedule", async () => {
      const manager = setup(systemClock);
      await manager.create({ store: "default", name: "soon", kind: "automatic", rotationIntervalSeconds: 3600 });
      await manager.create({ store: "default", name: "far", kind: "automatic", rotationIntervalSeconds: 3600 });
      await dueAt("soon", Date.now() + 150);
      const obs = observedRotate(manager);
      const s = scheduler({ rotate: obs.rotate, clock: systemClock });
      await s.start();
      await sleep(20);
      await dueAt("far", Date.now() + 3_000_000);
      await within(obs.until(1), 3000, "the rotation");
      assert.deepEqual(obs.rotated, ["soon"]);
    });

    it("hears of new and changed schedules through the change feed", async () => {
      const manager = setup(systemClock);
      const obs = observedRotate(manager);
      const s = scheduler({ rotate: obs.rotate, clock: systemClock });
      await s.start();
      await sleep(20);
      const created = await manager.create({ store: "default", name: "fresh", kind: "automatic", rotationIntervalSeconds: 3600 });
      // Shorten the schedule through the manager: the interval is re-based on the creation time.
      await manager.update({ store: "default", name: "fresh" }, { rotationIntervalSeconds: 1 });
      assert.equal((await storage.findSecret("default", "fresh"))?.rotation?.nextRotationAt, created.doc.createdAt + 1000);
      await within(obs.until(1), 3000, "the rotation one second after creation");
      assert.equal(await versionOf("fresh"), 2);
    });

    it("stops: no rotation after stop, even when the feed reports a due secret", async () => {
      const manager = setup(systemClock);
      await manager.create({ store: "default", name: "soon", kind: "automatic", rotationIntervalSeconds: 3600 });
      await dueAt("soon", Date.now() + 60);
      const obs = observedRotate(manager);
      const s = scheduler({ rotate: obs.rotate, clock: systemClock });
      await s.start();
      await s.stop();
      await dueAt("soon", Date.now() + 10);
      await sleep(200);
      assert.equal(obs.rotated.length, 0);
      assert.equal(await versionOf("soon"), 1);
    });

    it("rescans and keeps its feed position across a restart", async () => {
      const manager = setup(systemClock);
      await manager.create({ store: "default", name: "r", kind: "automatic", rotationIntervalSeconds: 3600 });
      const obs = observedRotate(manager);
      const first = scheduler({ rotate: obs.rotate, clock: systemClock, saveEveryMs: 0 });
      await first.start();
      await sleep(50);
      await first.stop();
      assert.ok(await storage.loadResumeToken("rotation-scheduler"), "position saved on stop");
      // While no scheduler runs, the secret falls due.
      await dueAt("r", Date.now() - 1000);
      const second = scheduler({ rotate: obs.rotate, clock: systemClock });
      await second.start();
      await within(obs.until(1), 3000, "the rotation after restart");
      assert.equal(await versionOf("r"), 2);
    });

    it("waits for a rotation in flight before stop resolves", async () => {
      const manager = setup(systemClock);
      await manager.create({ store: "default", name: "due", kind: "automatic", rotationIntervalSeconds: 3600 });
      await dueAt("due", Date.now() - 1);
      let release: () => void = () => {};
      const gate = new Promise<void>((resolve) => {
        release = resolve;
      });
      let entered: () => void = () => {};
      const started = new Promise<void>((resolve) => {
        entered = resolve;
      });
      const s = scheduler({
        rotate: async (doc) => {
          entered();
          await gate;
          return manager.rotateIfDue(doc);
        },
        clock: systemClock,
      });
      await s.start();
      await within(started, 2000, "the rotation to start");
      let stopped = false;
      const stopping = s.stop().then(() => {
        stopped = true;
      });
      await sleep(20);
      assert.equal(stopped, false, "stop waits for the rotation in flight");
      release();
      await within(stopping, 2000, "stop");
      assert.equal(await versionOf("due"), 2);
    });
  });

  describe("failures", () => {
    it("does not spin when a rotation keeps failing", async () => {
      const manager = setup(fakeClock);
      await manager.create({ store: "default", name: "broken", kind: "automatic", rotationIntervalSeconds: 60 });
      t = T0 + 3600 * SEC; // frozen: the secret stays due
      let calls = 0;
      const s = scheduler({
        rotate: async () => {
          calls++;
          throw new Error("rotation backend down");
        },
        clock: fakeClock,
        retryMs: 100,
      });
      await s.start();
      await sleep(300);
      assert.ok(calls >= 1, "it tried");
      assert.ok(calls <= 5, `a retry every 100 ms, not a hot loop: ${calls} calls in 300 ms`);
      assert.ok(dueQueries <= 6, `${dueQueries} due queries in 300 ms`);
    });

    it("retries a failed rotation later and then succeeds", async () => {
      const manager = setup(fakeClock);
      await manager.create({ store: "default", name: "flaky", kind: "automatic", rotationIntervalSeconds: 60 });
      t = T0 + 61 * SEC;
      let failuresLeft = 2;
      const obs = observedRotate(manager);
      const s = scheduler({
        rotate: async (doc) => {
          if (failuresLeft > 0) {
            failuresLeft--;
            throw new Error("transient");
          }
          return obs.rotate(doc);
        },
        clock: fakeClock,
        retryMs: 30,
      });
      await s.start();
      await within(obs.until(1), 2000, "the retried rotation");
      assert.equal(failuresLeft, 0);
      assert.equal(await versionOf("flaky"), 2);
    });

    it("retries after the store itself fails", async () => {
      const manager = setup(fakeClock);
      await manager.create({ store: "default", name: "a", kind: "automatic", rotationIntervalSeconds: 60 });
      t = T0 + 61 * SEC;
      let storeFailures = 1;
      const obs = observedRotate(manager);
      const s = createRotationScheduler({
        storage: {
          findDueSecrets: async (now, limit) => {
            if (storeFailures-- > 0) throw new Error("store unavailable");
            return storage.findDueSecrets(now, limit);
          },
          nextRotationAt: () => storage.nextRotationAt(),
          changes: (o) => storage.changes(o),
          loadResumeToken: (c) => storage.loadResumeToken(c),
          saveResumeToken: (c, t) => storage.saveResumeToken(c, t),
        },
        rotate: obs.rotate,
        clock: fakeClock,
        logger,
        retryMs: 30,
      });
      schedulers.push(s);
      await s.start();
      await within(obs.until(1), 2000, "the rotation after the store recovered");
    });
  });
});
