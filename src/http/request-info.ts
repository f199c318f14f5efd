import { randomUUID } from "node:crypto";
import type { IncomingHttpHeaders } from "node:http";
import type { Principal } from "../domain/principal.js";

/**
 * RequestInfo follows one request from the socket to the log line: its id, who sent it, what it asked for and
 * how it ended. The HTTP layer creates it; the RPC and REST layers fill in the operation and the outcome.
 */
export interface RequestInfo {
  readonly id: string;
  /** performance.now() at arrival. */
  readonly start: number;
  /** The TCP peer address. */
  readonly peer: string | undefined;
  /** The client IP after trusted-proxy resolution; undefined if it could not be determined. */
  readonly ip: string | undefined;
  /** RPC procedure or REST route, once known. */
  operation?: string;
  /** Outcome: "ok" or an error code name, once known. */
  code?: string;
  /** Who called, once authenticated. */
  principal?: Principal;
}

const INBOUND_ID = /^[A-Za-z0-9._:-]{8,128}$/;

/** The caller's x-request-id if it looks like one (meshes propagate it), else a new one. */
export function requestIdFrom(headers: IncomingHttpHeaders): string {
  const given = headers["x-request-id"];
  return typeof given === "string" && INBOUND_ID.test(given) ? given : `req_${randomUUID().replaceAll("-", "")}`;
}
