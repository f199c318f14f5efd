import { LatchkeyError } from "./errors.js";
import type { StoreRecord } from "./store.js";

/**
 * Roles, from most to least powerful:
 * - admin: everything, every store (unless bound to a service);
 * - writer: read, list, verify and change secrets and vars; create and delete stores only for its service;
 * - reader: read, list and verify secrets; read vars and stores;
 * - verifier: verify presented values, nothing else.
 */
export type Role = "admin" | "writer" | "reader" | "verifier";
export const ROLES: readonly Role[] = ["admin", "writer", "reader", "verifier"];

/** A caller that presented a valid token: the bootstrap tokens of the environment, or one made with CreateToken. */
export interface TokenPrincipal {
  readonly kind: "token";
  /** Public id of the token (never the token). */
  readonly tokenId: string;
  readonly role: Role;
  /** The service identity the token speaks for: it sees and manages only the stores that service owns. */
  readonly service: string | null;
  /** Stores the token may touch; null: all it can see. */
  readonly stores: readonly string[] | null;
  /** Secret and var name prefixes the token may touch; null: all. */
  readonly prefixes: readonly string[] | null;
}

export interface AnonymousPrincipal {
  readonly kind: "anonymous";
}

/** Who is calling, as established from their credentials. */
export type Principal = TokenPrincipal | AnonymousPrincipal;

export const ANONYMOUS: Principal = Object.freeze({ kind: "anonymous" });

/** A principal with every power: what the bootstrap admin token stands for. */
export function adminPrincipal(tokenId: string): TokenPrincipal {
  return { kind: "token", tokenId, role: "admin", service: null, stores: null, prefixes: null };
}

export function isAdmin(p: Principal): boolean {
  return p.kind === "token" && p.role === "admin" && p.service === null;
}

/** The service a principal speaks for, if any. */
export function serviceOf(p: Principal): string | null {
  return p.kind === "token" ? p.service : null;
}

/**
 * Whether `principal` may see `store` at all. Whoever may not gets "not found", never "forbidden": a store owned by
 * a service is invisible to everyone but that service's tokens and unbound admins.
 */
export function canSee(principal: Principal, store: StoreRecord): boolean {
  if (store.state !== "active") return false;
  if (isAdmin(principal)) return true;
  return store.managedBy === serviceOf(principal);
}

/** The owner a store gets when `principal` creates it. */
export function ownerFor(principal: Principal, requested: string | undefined): string | null {
  const service = serviceOf(principal);
  if (service !== null) return service;
  return requested ? requested : null;
}

/**
 * Checks a token's scope: the store must be one it was given (if it was given any), and the name, when there is
 * one, must start with one of its prefixes. Out of scope is permission_denied: the token is valid, not allowed.
 */
export function checkScope(p: Principal, store: string, name?: string): void {
  if (p.kind !== "token") return;
  if (p.stores !== null && !p.stores.includes(store)) {
    throw new LatchkeyError("permission_denied", `this token is not scoped to store "${store}"`, { reason: "OUT_OF_SCOPE" });
  }
  if (name !== undefined && p.prefixes !== null && !p.prefixes.some((pre) => name.startsWith(pre))) {
    throw new LatchkeyError("permission_denied", `this token is not scoped to "${name}"`, { reason: "OUT_OF_SCOPE" });
  }
}

/** Checks that a list or watch under `prefix` stays within the token's name prefixes. */
export function checkPrefixScope(p: Principal, store: string, prefix: string): void {
  checkScope(p, store);
  if (p.kind === "token" && p.prefixes !== null && !p.prefixes.some((pre) => prefix.startsWith(pre))) {
    throw new LatchkeyError(
      "permission_denied",
      `this token may only list under ${p.prefixes.map((x) => `"${x}"`).join(", ")}: pass one as the name prefix`,
      { reason: "OUT_OF_SCOPE" },
    );
  }
}
