import assert from "node:assert/strict";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import type { ConnectError } from "@connectrpc/connect";
import type { grpc } from "./clients.js";
import {
  assertConnectError,
  assertRestError,
  connectReason,
  grpcStatusDetails,
  type JsonReply,
  reasonOf,
} from "./clients.js";

/**
 * Small helpers shared by the end-to-end tests of the secret lifecycle (versions, soft delete, copy/rename/move,
 * batches, metadata and paging).
 */

/** Any value as JSON text: bigints as decimal strings, bytes as base64 (so a search for a value finds it either way). */
export function jsonText(x: unknown): string {
  return JSON.stringify(x, (_k, v: unknown) => {
    if (typeof v === "bigint") return v.toString();
    if (v instanceof Uint8Array) return Buffer.from(v).toString("base64");
    if (v && typeof v === "object" && (v as { type?: unknown }).type === "Buffer" && Array.isArray((v as { data?: unknown }).data)) {
      return Buffer.from((v as { data: number[] }).data).toString("base64");
    }
    return v;
  });
}

/** Asserts that none of `values` appears anywhere in `x` (a response, a body, headers...). */
export function assertNoValue(x: unknown, values: readonly string[], what = "response"): void {
  const text = typeof x === "string" ? x : jsonText(x);
  for (const v of values) assert.equal(text.includes(v), false, `${what} must not carry the value ${JSON.stringify(v.slice(0, 24))}`);
}

/** A REST error with its code and (when given) reason; returns the body. */
export function restFails(reply: JsonReply, status: number | readonly number[], code: string, reason?: string, what = "call"): any {
  const statuses = typeof status === "number" ? [status] : status;
  assert.ok(statuses.includes(reply.status), `${what}: HTTP status ${reply.status} not in ${statuses.join("/")} (${JSON.stringify(reply.body)})`);
  const body = assertRestError(reply, reply.status, code, what);
  if (reason !== undefined) assert.equal(body.reason, reason, `${what}: reason`);
  return body;
}

/** A Connect JSON error with its code and (when given) ErrorInfo reason; returns the body. */
export function connectFails(reply: JsonReply, status: number, code: string, reason?: string, what = "call"): any {
  const body = assertConnectError(reply, status, code, what);
  if (reason !== undefined) assert.equal(connectReason(body), reason, `${what}: reason`);
  return body;
}

/** Asserts the ErrorInfo reason of a ConnectError. */
export function assertReason(err: ConnectError, reason: string, what = "call"): void {
  assert.equal(reasonOf(err), reason, `${what}: reason (${err.rawMessage})`);
}

/** The ErrorInfo reason of a grpc-js call's trailers. */
export function grpcReason(trailers: grpc.Metadata): string | undefined {
  return grpcStatusDetails(trailers)?.errorInfo?.reason;
}

/** Milliseconds of a protobuf Timestamp (undefined when unset). */
export function tsMs(t: Timestamp | undefined): number | undefined {
  return t === undefined ? undefined : Number(t.seconds) * 1000 + Math.floor(t.nanos / 1e6);
}

/** A Timestamp for `ms`. */
export function ts(ms: number): { seconds: bigint; nanos: number } {
  return { seconds: BigInt(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1e6 };
}

/** Bounded sleep. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `probe` (bounded) until it returns true; fails with `what` otherwise. */
export async function waitUntil(probe: () => Promise<boolean>, ms: number, what: string, everyMs = 50): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    if (await probe()) return;
    if (Date.now() > end) assert.fail(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}
