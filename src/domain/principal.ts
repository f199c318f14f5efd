import type { StoreRecord } from "./store.js";

/**
 * Who is calling, as established from their credentials.
 * - admin: an admin token; sees and manages every store.
 * - service: a service token; sees and manages only the stores its service owns.
 * - anonymous: no token; may only read (from an allowed IP) in stores no service owns.
 */
export type Principal =
  | { readonly kind: "admin"; readonly tokenId: string }
  | { readonly kind: "service"; readonly service: string; readonly tokenId: string }
  | { readonly kind: "anonymous" };

export const ANONYMOUS: Principal = Object.freeze({ kind: "anonymous" });

/** Whether `principal` may see `store` at all. Whoever may not gets "not found", never "forbidden". */
export function canSee(principal: Principal, store: StoreRecord): boolean {
  if (store.state !== "active") return false;
  switch (principal.kind) {
    case "admin":
      return true;
    case "service":
      return store.managedBy === principal.service;
    case "anonymous":
      return store.managedBy === null;
  }
}

/** The owner a store gets when `principal` creates it. */
export function ownerFor(principal: Principal, requested: string | undefined): string | null {
  if (principal.kind === "service") return principal.service;
  return requested ? requested : null;
}
