import { checkQuota, type Limits, type Usage } from "../domain/usage.js";
import type { Storage } from "../storage/storage.js";

/** The limits in force: for the whole service and for each store. Absent dimensions are unlimited. */
export interface QuotaLimits {
  readonly global: Limits;
  readonly perStore: Limits;
}

/**
 * QuotaGuard admits writes that keep usage within the limits, and refuses the rest before they change anything.
 *
 * With no limit configured it costs nothing. Otherwise each admitted write is checked against usage measured in the
 * store and runs before the next check, so writes in one process cannot jointly overshoot; replicas sharing a
 * backend can overshoot a limit by at most the writes they admit at the same instant.
 */
export interface QuotaGuard {
  readonly limits: QuotaLimits;
  /**
   * Computes the write's growth, checks it against the store's and the service's limits, and runs `write` only if
   * it fits. Throws resource_exhausted (QUOTA_EXCEEDED) otherwise.
   */
  admit<T>(store: string, growth: () => Promise<Partial<Usage>> | Partial<Usage>, write: () => Promise<T>): Promise<T>;
}

export function createQuotaGuard(storage: Pick<Storage, "usage">, limits: QuotaLimits): QuotaGuard {
  const globalOn = Object.keys(limits.global).length > 0;
  const storeOn = Object.keys(limits.perStore).length > 0;
  let queue: Promise<unknown> = Promise.resolve();

  return {
    limits,
    admit(store, growth, write) {
      if (!globalOn && !storeOn) return write();
      const run = async () => {
        const delta = await growth();
        const touches = (l: Limits) => Object.entries(delta).some(([k, v]) => (v ?? 0) > 0 && k in l);
        if (storeOn && touches(limits.perStore)) checkQuota(`store "${store}"`, await storage.usage(store), delta, limits.perStore);
        if (globalOn && touches(limits.global)) checkQuota("the service", await storage.usage(), delta, limits.global);
        return write();
      };
      const result = queue.then(run, run);
      queue = result.catch(() => {});
      return result;
    },
  };
}
