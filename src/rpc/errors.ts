import { Code, ConnectError } from "@connectrpc/connect";
import { type ErrorCode, LatchkeyError } from "../domain/errors.js";
import type { Logger } from "../log/logger.js";

const CODES: Record<ErrorCode, Code> = {
  invalid_argument: Code.InvalidArgument,
  not_found: Code.NotFound,
  already_exists: Code.AlreadyExists,
  failed_precondition: Code.FailedPrecondition,
  aborted: Code.Aborted,
  unauthenticated: Code.Unauthenticated,
  permission_denied: Code.PermissionDenied,
  resource_exhausted: Code.ResourceExhausted,
  unavailable: Code.Unavailable,
  internal: Code.Internal,
};

/** Connect's snake_case name of a code, as used on the wire by the Connect protocol. */
export function codeName(code: Code): string {
  return Code[code].replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase();
}

/**
 * Maps any thrown value to the ConnectError the caller sees. Expected failures keep their message; anything
 * else is logged with the request id and answered with a bare "internal error" that quotes the id.
 */
export function toConnectError(err: unknown, requestId: string, logger: Logger): ConnectError {
  if (err instanceof LatchkeyError) return new ConnectError(err.message, CODES[err.code]);
  if (err instanceof ConnectError) return err;
  logger.error({ err, request_id: requestId }, "internal error");
  return new ConnectError(`internal error (request id ${requestId})`, Code.Internal);
}
