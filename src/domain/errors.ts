/**
 * The closed set of error codes the domain raises. They are the Connect/gRPC codes; the RPC layer maps them 1:1
 * and the REST layer maps them to HTTP statuses.
 */
export type ErrorCode =
  | "invalid_argument"
  | "not_found"
  | "already_exists"
  | "failed_precondition"
  | "aborted"
  | "unauthenticated"
  | "permission_denied"
  | "resource_exhausted"
  | "unavailable"
  | "internal";

/** A machine-readable reason attached to an error: which field, which rule. */
export interface Violation {
  readonly field: string;
  /** A stable identifier of the broken rule, e.g. "required", "pattern", "too_long". */
  readonly reason: string;
  readonly message: string;
}

export interface ErrorOptions {
  /** Which fields broke which rules (invalid_argument). */
  readonly violations?: readonly Violation[];
  /** A stable, machine-readable reason in UPPER_SNAKE_CASE, e.g. "QUOTA_EXCEEDED", "STORE_NOT_EMPTY". */
  readonly reason?: string;
  /** The REST status when it is not the code's usual one (failed_precondition is 400 or 409 by case). */
  readonly httpStatus?: number;
  /** Seconds after which a retry may succeed (resource_exhausted). */
  readonly retryAfterSeconds?: number;
}

/**
 * LatchkeyError is an expected failure whose message is safe to show to the caller.
 *
 * Messages name secrets and fields, never values or tokens.
 */
export class LatchkeyError extends Error {
  readonly violations: readonly Violation[];
  readonly reason: string | undefined;
  readonly httpStatus: number | undefined;
  readonly retryAfterSeconds: number | undefined;

  constructor(
    readonly code: ErrorCode,
    message: string,
    opts: ErrorOptions = {},
  ) {
    super(message);
    this.name = "LatchkeyError";
    this.violations = opts.violations ?? [];
    this.reason = opts.reason;
    this.httpStatus = opts.httpStatus;
    this.retryAfterSeconds = opts.retryAfterSeconds;
  }
}

export function invalidArgument(field: string, reason: string, message: string): LatchkeyError {
  return new LatchkeyError("invalid_argument", message, { violations: [{ field, reason, message }] });
}

export function storeNotFound(store: string): LatchkeyError {
  return new LatchkeyError("not_found", `store "${store}" not found`, { reason: "STORE_NOT_FOUND" });
}

export function secretNotFound(name: string, version?: number): LatchkeyError {
  return new LatchkeyError(
    "not_found",
    version === undefined ? `secret "${name}" not found` : `version ${version} of secret "${name}" not found`,
    { reason: version === undefined ? "SECRET_NOT_FOUND" : "VERSION_NOT_FOUND" },
  );
}
