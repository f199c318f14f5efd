import { invalidArgument } from "./errors.js";
import { LIMITS, validateName } from "./secret.js";

/** A var: a non-sensitive name/value pair in a store (configuration, not a secret). Stored and listed in the clear. */
export interface VarRecord {
  readonly store: string;
  readonly name: string;
  readonly value: string;
  readonly createdAt: number;
  readonly updatedAt: number;
  readonly revision: number;
}

/** Checks a var: the name follows the secret-name rules; the value is 1 to 10,240 characters. */
export function validateVar(name: string, value: string, field = "vars"): void {
  validateName(name, `${field}.name`);
  if (value === "") throw invalidArgument(`${field}.value`, "empty", `the value of var "${name}" must not be empty`);
  if (value.length > LIMITS.valueMax && [...value].length > LIMITS.valueMax) {
    throw invalidArgument(`${field}.value`, "too_long", `the value of var "${name}" must be at most ${LIMITS.valueMax} characters`);
  }
}

/** The var after setting `value` at `now`: a new record, or the existing one updated. */
export function setVar(existing: VarRecord | undefined, store: string, name: string, value: string, now: number): VarRecord {
  if (!existing) return { store, name, value, createdAt: now, updatedAt: now, revision: 1 };
  return { ...existing, value, updatedAt: now, revision: existing.revision + 1 };
}
