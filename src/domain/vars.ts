import { invalidArgument, LatchkeyError, type Violation } from "./errors.js";
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

/** At most this many vars are set in one call. */
export const MAX_VARS_PER_CALL = 1000;

/**
 * Checks a list of vars to set, of any shape (decoded JSON included), and returns it typed. Throws one
 * invalid_argument listing every problem of every item: wrong shape, unknown fields, names, values, duplicates.
 */
export function checkVarList(items: readonly unknown[], field = "vars"): { name: string; value: string }[] {
  if (items.length === 0) throw invalidArgument(field, "required", "at least one var is required");
  if (items.length > MAX_VARS_PER_CALL) throw invalidArgument(field, "too_many", `at most ${MAX_VARS_PER_CALL} vars per call`);
  const violations: Violation[] = [];
  const out: { name: string; value: string }[] = [];
  const seen = new Set<string>();
  items.forEach((item, i) => {
    const at = `${field}[${i}]`;
    if (typeof item !== "object" || item === null || Array.isArray(item)) {
      violations.push({ field: at, reason: "type", message: `${at} must be an object with name and value` });
      return;
    }
    const o = item as Record<string, unknown>;
    for (const k of Object.keys(o)) {
      if (k !== "name" && k !== "value") {
        violations.push({ field: `${at}.${k.slice(0, 64)}`, reason: "unknown_field", message: `unknown field "${k.slice(0, 64)}"` });
      }
    }
    const { name, value } = o;
    if (typeof name !== "string" || typeof value !== "string") {
      if (typeof name !== "string") violations.push({ field: `${at}.name`, reason: "type", message: `${at}.name must be a string` });
      if (typeof value !== "string") violations.push({ field: `${at}.value`, reason: "type", message: `${at}.value must be a string` });
      return;
    }
    try {
      validateVar(name, value, at);
      if (seen.has(name)) throw invalidArgument(`${at}.name`, "duplicate", `var "${name}" is given twice`);
      seen.add(name);
      out.push({ name, value });
    } catch (err) {
      if (!(err instanceof LatchkeyError)) throw err;
      violations.push(...err.violations);
    }
  });
  if (violations.length > 0) {
    throw new LatchkeyError("invalid_argument", violations.map((v) => v.message).join("; "), { violations });
  }
  return out;
}
