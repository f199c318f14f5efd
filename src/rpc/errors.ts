import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  BadRequest_FieldViolationSchema,
  BadRequestSchema,
  ErrorInfoSchema,
  RequestInfoSchema,
  RetryInfoSchema,
} from "../../gen/google/rpc/error_details_pb.js";
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

/** The domain that qualifies ErrorInfo reasons. */
export const ERROR_DOMAIN = "latchkey";

/** Connect's snake_case name of a code, as used on the wire by the Connect protocol. */
export function codeName(code: Code): string {
  return Code[code].replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase();
}

/**
 * Maps any thrown value to the ConnectError the caller sees, with the standard google.rpc details: RequestInfo
 * (the request id to quote) always, ErrorInfo (a stable reason) and BadRequest (field violations) or RetryInfo
 * when known. Expected failures keep their message; anything else is logged with the request id and answered
 * with a bare "internal error" that quotes the id.
 */
export function toConnectError(err: unknown, requestId: string, logger: Logger): ConnectError {
  const requestInfo = { desc: RequestInfoSchema, value: create(RequestInfoSchema, { requestId }) };
  if (err instanceof LatchkeyError) {
    const details = [];
    if (err.reason) {
      details.push({ desc: ErrorInfoSchema, value: create(ErrorInfoSchema, { reason: err.reason, domain: ERROR_DOMAIN }) });
    }
    if (err.violations.length > 0) {
      const fieldViolations = err.violations.map((v) =>
        create(BadRequest_FieldViolationSchema, { field: v.field, description: v.message, reason: v.reason }),
      );
      details.push({ desc: BadRequestSchema, value: create(BadRequestSchema, { fieldViolations }) });
    }
    if (err.retryAfterSeconds !== undefined) {
      details.push({
        desc: RetryInfoSchema,
        value: create(RetryInfoSchema, { retryDelay: durationFromMs(err.retryAfterSeconds * 1000) }),
      });
    }
    details.push(requestInfo);
    return new ConnectError(err.message, CODES[err.code], undefined, details);
  }
  if (err instanceof ConnectError) return err;
  logger.error({ err, request_id: requestId }, "internal error");
  return new ConnectError(`internal error (request id ${requestId})`, Code.Internal, undefined, [requestInfo]);
}
