import type { SecretDocument } from "../domain/secret.js";
import type { Logger } from "../log/logger.js";
import type { Storage } from "../storage/storage.js";
import type { Clock } from "./clock.js";

/**
 * RotationScheduler rotates automatic secrets when they fall due, safely on any number of replicas.
 *
 * Its only inputs are the storage port's change feed and its due-rotation query. State lives in the store, not
 * here: the scheduler keeps one timer, armed for the earliest `next_rotation_at` it knows of. Change events (a new
 * automatic secret, a changed interval, a rotation by anyone) can only bring that alarm forward; on waking it
 * asks the store what is due (an indexed query, in bounded batches), rotates each secret by compare-and-set on the
 * revision it read, and re-arms from the store's earliest next rotation. A replica that loses a race sees its
 * write refused and moves on, so each due rotation happens once. Nothing is polled while nothing is due, and a
 * lost feed position or a restart just means one rescan.
 */
export interface RotationScheduler {
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Rotates everything due now, in batches; resolves with how many rotations this process made. */
  tick(): Promise<number>;
}

export interface RotationSchedulerOptions {
  readonly storage: Pick<
    Storage,
    "findDueSecrets" | "nextRotationAt" | "changes" | "loadResumeToken" | "saveResumeToken"
  >;
  /** Rotates `doc` if still due, by compare-and-set; resolves with the new version, or undefined if it lost. */
  readonly rotate: (doc: SecretDocument) => Promise<number | undefined>;
  readonly clock: Clock;
  readonly logger: Logger;
  /** Due secrets fetched per query. Default 100. */
  readonly batchSize?: number;
  /** Rotations in flight at once. Default 16. */
  readonly concurrency?: number;
  /** Delay before retrying after a failed rotation or store error. Default 1000 ms. */
  readonly retryMs?: number;
  /** Each wake-up is delayed by a random 0..jitterMs, so replicas do not hit the store at the same instant. Default 25. */
  readonly jitterMs?: number;
  /** Name under which the feed position is saved. Default "rotation-scheduler". */
  readonly consumer?: string;
  /** Minimum time between saves of the feed position. Default 5000 ms. */
  readonly saveEveryMs?: number;
  /** Told the time of each change read from the feed (feed lag metrics). */
  readonly onChange?: (at: number) => void;
}

const MAX_TIMER_MS = 2 ** 31 - 1;

export function createRotationScheduler(opts: RotationSchedulerOptions): RotationScheduler {
  const { storage, rotate, clock, logger } = opts;
  const batchSize = opts.batchSize ?? 100;
  const concurrency = opts.concurrency ?? 16;
  const retryMs = opts.retryMs ?? 1000;
  const jitterMs = opts.jitterMs ?? 25;
  const consumer = opts.consumer ?? "rotation-scheduler";
  const saveEveryMs = opts.saveEveryMs ?? 5000;

  let running = false;
  let feedAbort: AbortController | undefined;
  let feedDone: Promise<void> | undefined;
  let timer: NodeJS.Timeout | undefined;
  let wakeAt: number | undefined;
  let active: Promise<void> | undefined;
  let again = false;

  /** Sets the alarm for `at` unless one is already set no later. */
  function arm(at: number): void {
    if (!running) return;
    if (timer !== undefined && wakeAt !== undefined && wakeAt <= at) return;
    if (timer !== undefined) clearTimeout(timer);
    wakeAt = at;
    const delay = Math.max(0, at - clock.now()) + Math.random() * jitterMs;
    timer = setTimeout(wake, Math.min(delay, MAX_TIMER_MS));
    timer.unref();
  }

  function wake(): void {
    timer = undefined;
    wakeAt = undefined;
    if (!running) return;
    if (active) {
      again = true;
      return;
    }
    active = runOnce().finally(() => {
      active = undefined;
      if (again && running) {
        again = false;
        wake();
      }
    });
  }

  async function runOnce(): Promise<void> {
    try {
      const { failed } = await rotateDue(true);
      if (!running) return;
      if (failed > 0) {
        arm(clock.now() + retryMs);
        return;
      }
      const next = await storage.nextRotationAt();
      // A secret still due after a full pass is one we could not rotate (another writer keeps winning): back off
      // rather than spin.
      if (next !== undefined) arm(next <= clock.now() ? clock.now() + Math.min(retryMs, 100) : next);
    } catch (err) {
      logger.error({ err }, "rotation scheduler failed; retrying");
      arm(clock.now() + retryMs);
    }
  }

  async function rotateDue(untilStopped: boolean): Promise<{ rotated: number; failed: number }> {
    let rotated = 0;
    let failed = 0;
    for (;;) {
      const due = shuffle(await storage.findDueSecrets(clock.now(), batchSize));
      let cursor = 0;
      let batchFailed = 0;
      let batchRotated = 0;
      const worker = async () => {
        while (cursor < due.length) {
          const doc = due[cursor++] as SecretDocument;
          try {
            if ((await rotate(doc)) !== undefined) batchRotated++;
          } catch (err) {
            batchFailed++;
            logger.error({ err, store: doc.store, secret: doc.name }, "rotation failed");
          }
        }
      };
      await Promise.all(Array.from({ length: Math.min(concurrency, due.length) }, worker));
      rotated += batchRotated;
      failed += batchFailed;
      // A short batch was the last; a batch where nothing was rotated would come back unchanged.
      if (due.length < batchSize || batchRotated === 0 || (untilStopped && !running)) break;
    }
    return { rotated, failed };
  }

  /** Follows the change feed: every event can only bring the alarm forward; a reset means rescan. */
  async function follow(signal: AbortSignal): Promise<void> {
    let backoff = 100;
    let lastSaved = 0;
    let token = await storage.loadResumeToken(consumer).catch(() => undefined);
    while (!signal.aborted) {
      try {
        for await (const item of storage.changes({ resumeAfter: token, signal })) {
          backoff = 100;
          if (item.op === "reset") {
            arm(clock.now());
          } else if (item.op !== "start") {
            opts.onChange?.(item.at);
            // Rotations and purges of deleted secrets alike: whatever the secret is next due for.
            const due = item.dueAt ?? item.nextRotationAt;
            if (due !== null) arm(due);
          }
          if (item.token !== undefined) token = item.token;
          if (token !== undefined && clock.now() - lastSaved >= saveEveryMs) {
            lastSaved = clock.now();
            await storage.saveResumeToken(consumer, token).catch((err: unknown) => {
              logger.warn({ err: String(err) }, "could not save the scheduler's feed position");
            });
          }
        }
      } catch (err) {
        if (signal.aborted) break;
        logger.warn({ err: String(err), retry_ms: backoff }, "change feed failed; rescanning and reopening");
        arm(clock.now());
        await new Promise((r) => setTimeout(r, backoff).unref());
        backoff = Math.min(backoff * 2, 5000);
      }
    }
    if (token !== undefined) await storage.saveResumeToken(consumer, token).catch(() => {});
  }

  return {
    async start() {
      if (running) return;
      running = true;
      feedAbort = new AbortController();
      feedDone = follow(feedAbort.signal);
      arm(clock.now()); // rescan: whatever fell due while nobody was watching
    },
    async stop() {
      running = false;
      feedAbort?.abort();
      if (timer !== undefined) clearTimeout(timer);
      timer = undefined;
      wakeAt = undefined;
      await active;
      await feedDone;
    },
    async tick() {
      const { rotated } = await rotateDue(false);
      return rotated;
    },
  };
}

/** Random order, so replicas reading the same due batch mostly work on different secrets. */
function shuffle<T>(items: T[]): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [items[i], items[j]] = [items[j] as T, items[i] as T];
  }
  return items;
}
