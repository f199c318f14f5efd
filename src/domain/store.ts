import { invalidArgument } from "./errors.js";

/**
 * A store: the namespace every secret and var lives in (an account's store, a named vault, a core instance).
 * Names are unique; a store may be owned by a service identity, which alone (besides admins) can see it.
 */
export interface StoreRecord {
  readonly name: string;
  readonly description: string;
  /** The service that owns the store, or null for an ordinary store. Set at creation, never changed. */
  readonly managedBy: string | null;
  /** "active", or "purging" while a purge removes its contents (the store is then invisible). */
  readonly state: "active" | "purging";
  readonly createdAt: number;
  readonly updatedAt: number;
  readonly revision: number;
}

const STORE_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;

/** Store names: 1 to 63 of [A-Za-z0-9_.-], starting with a letter or digit (they appear in URL paths). */
export function validateStoreName(name: string, field = "store"): string {
  if (name === "") throw invalidArgument(field, "required", `${field} is required`);
  if (!STORE_NAME.test(name)) {
    throw invalidArgument(
      field,
      "pattern",
      `${field} must be 1 to 63 letters, digits, "_", "." or "-", starting with a letter or digit`,
    );
  }
  return name;
}

export function newStoreRecord(
  input: { name: string; description: string; managedBy: string | null },
  now: number,
): StoreRecord {
  return { ...input, state: "active", createdAt: now, updatedAt: now, revision: 1 };
}
