import { LatchkeyError } from "./errors.js";

/** What a store (or the whole service) holds. Bytes count sealed secret values and var values. */
export interface Usage {
  readonly stores: number;
  readonly secrets: number;
  readonly versions: number;
  readonly vars: number;
  readonly bytes: number;
}

export type UsageDimension = keyof Usage;

/** Limits per dimension; an absent dimension is unlimited. */
export type Limits = Partial<Record<UsageDimension, number>>;

export const ZERO_USAGE: Usage = Object.freeze({ stores: 0, secrets: 0, versions: 0, vars: 0, bytes: 0 });

export function addUsage(a: Usage, b: Partial<Usage>): Usage {
  return {
    stores: a.stores + (b.stores ?? 0),
    secrets: a.secrets + (b.secrets ?? 0),
    versions: a.versions + (b.versions ?? 0),
    vars: a.vars + (b.vars ?? 0),
    bytes: a.bytes + (b.bytes ?? 0),
  };
}

/**
 * Throws resource_exhausted if adding `delta` to `current` would go over a limit. Only dimensions the write grows
 * are checked, so a write that shrinks usage (or keeps it) always passes, even over a lowered limit.
 */
export function checkQuota(scope: string, current: Usage, delta: Partial<Usage>, limits: Limits): void {
  for (const [dim, add] of Object.entries(delta) as [UsageDimension, number][]) {
    const limit = limits[dim];
    if (limit === undefined || add <= 0) continue;
    if (current[dim] + add > limit) {
      throw new LatchkeyError(
        "resource_exhausted",
        `quota exceeded: ${scope} would hold ${current[dim] + add} ${dim} (limit ${limit})`,
        { reason: "QUOTA_EXCEEDED" },
      );
    }
  }
}
