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

/**
 * LatchkeyError is an expected failure whose message is safe to show to the caller.
 *
 * Messages name secrets and fields, never values or tokens.
 */
export class LatchkeyError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly violations: readonly Violation[] = [],
  ) {
    super(message);
    this.name = "LatchkeyError";
  }
}

export function invalidArgument(field: string, reason: string, message: string): LatchkeyError {
  return new LatchkeyError("invalid_argument", message, [{ field, reason, message }]);
}

export function secretNotFound(name: string, version?: number): LatchkeyError {
  return new LatchkeyError(
    "not_found",
    version === undefined ? `secret "${name}" not found` : `version ${version} of secret "${name}" not found`,
  );
}
