import { create, toBinary } from "@bufbuild/protobuf";
import { RequestInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { codeName } from "../rpc/errors.js";
import type { RequestInfo } from "./request-info.js";
import type { RequestHandler } from "./server.js";

/**
 * connect-node answers a binary message it cannot decode with internal (HTTP 500); the bytes are the caller's
 * mistake, so they become invalid_argument, as on the unary fast path.
 */
const PARSE_BINARY = "parse binary: ";
const PARSE_BINARY_GRPC = encodeURIComponent(PARSE_BINARY);

type Headers = Record<string, string | string[] | number | undefined> | undefined;
type Response = Parameters<RequestHandler>[1];

/**
 * Watches an RPC response for what happens before the RPC interceptor runs (or without it): it records the
 * grpc-status sent (trailers, or headers of a trailers-only response) as the call's outcome, and gives a Connect
 * unary error raised while decoding the request (bad JSON, unknown field) the google.rpc.RequestInfo detail every
 * other error carries.
 */
export function instrumentRpcResponse(res: Response, info: RequestInfo, req?: Parameters<RequestHandler>[0]): void {
  const r = res as unknown as {
    writeHead: (status: number, headers?: Headers) => unknown;
    addTrailers: (trailers: Headers) => void;
    write: (chunk: unknown, ...rest: unknown[]) => boolean;
    end: (chunk?: unknown, ...rest: unknown[]) => unknown;
  };
  const note = (h: Headers) => {
    const status = h?.["grpc-status"];
    if (info.code === undefined && status !== undefined) info.code = status === "0" ? "ok" : codeName(Number(status));
  };
  const { writeHead, addTrailers, write, end } = r;
  let held: { status: number; headers: Record<string, unknown>; chunks: Buffer[] } | undefined;
  let notModified = false;
  // Connect GET (cheap polling): a response whose ETag the caller already has becomes a bodiless 304.
  const ifNoneMatch = req?.method === "GET" ? req.headers["if-none-match"] : undefined;

  r.writeHead = function (this: unknown, status, headers) {
    if (held || notModified) return this; // connect-node writes the head again when it thinks none was sent
    // A GET answer may hold a secret value: no shared cache may keep it (REST answers say the same).
    if (req?.method === "GET" && typeof headers === "object") headers["cache-control"] = "no-store";
    if (ifNoneMatch && status === 200 && typeof headers === "object" && etagMatches(ifNoneMatch, headers.etag)) {
      notModified = true;
      if (info.code === undefined) info.code = "not_modified";
      const kept = Object.fromEntries(
        Object.entries(headers).filter(([k]) => k === "etag" || k === "x-request-id" || k === "cache-control"),
      );
      return writeHead.call(this, 304, kept);
    }
    if (typeof headers === "object") {
      note(headers);
      const type = String(headers["content-type"] ?? "");
      // A Connect unary error the interceptor did not see: hold it to add the request id.
      if (status >= 400 && info.code === undefined && type.startsWith("application/json") && !headers["content-encoding"]) {
        held = { status, headers: { ...headers }, chunks: [] };
        return this;
      }
    }
    return writeHead.call(this, status, headers);
  };
  r.addTrailers = function (this: unknown, trailers) {
    if (trailers?.["grpc-status"] === "13" && String(trailers["grpc-message"] ?? "").startsWith(PARSE_BINARY_GRPC)) {
      trailers["grpc-status"] = "3";
    }
    note(trailers);
    addTrailers.call(this, trailers);
  };
  r.write = function (this: unknown, chunk, ...rest) {
    if (notModified) {
      const cb = rest.find((a) => typeof a === "function") as (() => void) | undefined;
      if (cb) queueMicrotask(cb);
      return true;
    }
    if (!held) return write.call(this, chunk, ...rest);
    held.chunks.push(Buffer.from(chunk as Uint8Array));
    const cb = rest.find((a) => typeof a === "function") as (() => void) | undefined;
    if (cb) queueMicrotask(cb);
    return true;
  };
  r.end = function (this: unknown, chunk, ...rest) {
    if (notModified) return end.call(this, ...rest.filter((a) => typeof a === "function"));
    if (!held) return end.call(this, chunk, ...rest);
    const h = held;
    held = undefined;
    if (chunk !== undefined && typeof chunk !== "function") h.chunks.push(Buffer.from(chunk as Uint8Array));
    let text = withRequestInfo(Buffer.concat(h.chunks).toString("utf8"), info.id);
    if (h.status === 500 && connectCode(text) === "internal" && text.includes(`"message":"${PARSE_BINARY}`)) {
      h.status = 400;
      text = text.replace('"code":"internal"', '"code":"invalid_argument"');
    }
    for (const k of Object.keys(h.headers)) if (k.toLowerCase() === "content-length") delete h.headers[k];
    h.headers["content-length"] = Buffer.byteLength(text);
    if (info.code === undefined) info.code = connectCode(text);
    writeHead.call(this, h.status, h.headers as Headers);
    return end.call(this, text);
  };
}

/** Whether an If-None-Match header names the response's ETag (or is "*"). */
export function etagMatches(ifNoneMatch: string | string[], etag: unknown): boolean {
  if (typeof etag !== "string") return false;
  const header = Array.isArray(ifNoneMatch) ? ifNoneMatch.join(",") : ifNoneMatch;
  const strip = (t: string) => t.trim().replace(/^W\//, "");
  return header.split(",").some((t) => strip(t) === "*" || strip(t) === strip(etag));
}

/** Adds a RequestInfo detail to a Connect error body that has none. */
export function withRequestInfo(body: string, requestId: string): string {
  try {
    const parsed = JSON.parse(body) as { details?: { type: string; value: string }[] };
    if ((parsed.details ?? []).some((d) => d.type === "google.rpc.RequestInfo")) return body;
    const value = Buffer.from(toBinary(RequestInfoSchema, create(RequestInfoSchema, { requestId })))
      .toString("base64")
      .replace(/=+$/, "");
    parsed.details = [...(parsed.details ?? []), { type: "google.rpc.RequestInfo", value }];
    return JSON.stringify(parsed);
  } catch {
    return body;
  }
}

function connectCode(body: string): string | undefined {
  try {
    const code = (JSON.parse(body) as { code?: unknown }).code;
    return typeof code === "string" ? code : undefined;
  } catch {
    return undefined;
  }
}
