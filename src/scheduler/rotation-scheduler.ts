import type { SecretDocument } from "../domain/secret.js";
import type { Logger } from "../log/logger.js";
import type { Storage } from "../storage/storage.js";
import type { Clock } from "./clock.js";

/**
 * RotationScheduler rotates automatic secrets when they fall due.
 *
 * It keeps one timer, armed for the earliest `next_rotation_at` the store knows of, and is told of new schedules
 * through `notify`. On waking it asks the store for what is due (an indexed query, in bounded batches) and rotates
 * each secret by compare-and-set, so a secret changed meanwhile, or rotated by another process, is skipped. It never
 * holds more than one batch in memory and does nothing while nothing is due.
 */
export interface RotationScheduler {
  start(): Promise<void>;
  stop(): Promise<void>;
  /** A secret is now scheduled for `at` (ms): wake then if that is earlier than the current alarm. */
  notify(at: number): void;
  /** Rotates everything due now; resolves with how many rotations this process made. */
  tick(): Promise<number>;
}

export interface RotationSchedulerOptions {
  readonly storage: Pick<Storage, "findDueSecrets" | "nextRotationAt">;
  readonly rotate: (doc: SecretDocument) => Promise<number | undefined>;
  readonly clock: Clock;
  readonly logger: Logger;
  /** Due secrets fetched per query. Default 100. */
  readonly batchSize?: number;
  /** Rotations in flight at once. Default 8. */
  readonly concurrency?: number;
  /** Delay before retrying after a failed rotation. Default 1000 ms. */
  readonly retryMs?: number;
}

const MAX_TIMER_MS = 2 ** 31 - 1;

export function createRotationScheduler(opts: RotationSchedulerOptions): RotationScheduler {
  const { storage, rotate, clock, logger } = opts;
  const batchSize = opts.batchSize ?? 100;
  const concurrency = opts.concurrency ?? 8;
  const retryMs = opts.retryMs ?? 1000;

  let running = false;
  let timer: NodeJS.Timeout | undefined;
  let wakeAt: number | undefined;
  let active: Promise<unknown> | undefined;
  let again = false;

  function arm(at: number): void {
    if (!running) return;
    if (timer !== undefined && wakeAt !== undefined && wakeAt <= at) return;
    if (timer !== undefined) clearTimeout(timer);
    wakeAt = at;
    timer = setTimeout(wake, Math.min(Math.max(0, at - clock.now()), MAX_TIMER_MS));
    timer.unref();
  }

  function wake(): void {
    timer = undefined;
    wakeAt = undefined;
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
      if (next !== undefined) arm(next);
    } catch (err) {
      logger.error({ err }, "rotation scheduler failed; retrying");
      arm(clock.now() + retryMs);
    }
  }

  async function rotateDue(untilStopped: boolean): Promise<{ rotated: number; failed: number }> {
    let rotated = 0;
    let failed = 0;
    for (;;) {
      const due = await storage.findDueSecrets(clock.now(), batchSize);
      let cursor = 0;
      let batchFailed = 0;
      const worker = async () => {
        while (cursor < due.length) {
          const doc = due[cursor++] as SecretDocument;
          try {
            if ((await rotate(doc)) !== undefined) rotated++;
          } catch (err) {
            batchFailed++;
            logger.error({ err, store: doc.store, secret: doc.name }, "rotation failed");
          }
        }
      };
      await Promise.all(Array.from({ length: Math.min(concurrency, due.length) }, worker));
      failed += batchFailed;
      // A short batch was the last one; a batch that only failed would be fetched again unchanged.
      if (due.length < batchSize || batchFailed === due.length || (untilStopped && !running)) break;
    }
    return { rotated, failed };
  }

  return {
    async start() {
      running = true;
      wake();
    },
    async stop() {
      running = false;
      if (timer !== undefined) clearTimeout(timer);
      timer = undefined;
      wakeAt = undefined;
      await active;
    },
    notify(at) {
      arm(at);
    },
    async tick() {
      const { rotated } = await rotateDue(false);
      return rotated;
    },
  };
}
