import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { type DescMessage, fromBinary, type MessageShape } from "@bufbuild/protobuf";
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import { type Client, Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import {
  type BadRequest,
  BadRequestSchema,
  type ErrorInfo,
  ErrorInfoSchema,
  RequestInfoSchema,
} from "../../gen/google/rpc/error_details_pb.js";
import { SecretService } from "../../gen/latchkey/v1/secret_service_pb.js";
import { StoreService } from "../../gen/latchkey/v1/store_service_pb.js";
import { VarService } from "../../gen/latchkey/v1/var_service_pb.js";
import { ADMIN_TOKEN } from "./server.js";

/**
 * Clients for the end-to-end tests of stores, vars, usage, service-owned stores and request ids: the same calls
 * over gRPC (a Connect client on h2c, and an independent grpc-js client), Connect JSON (raw fetch, as curl users
 * send it) and REST (raw fetch).
 */

export const CALL_TIMEOUT_MS = 5_000;

/** `authorization` header for a bearer token; none for null. */
export function bearer(token: string | null): Record<string, string> {
  return token === null ? {} : { authorization: `Bearer ${token}` };
}

// ---------------------------------------------------------------------------------------------------------------
// Connect client over gRPC (h2c)

export interface RpcClients {
  readonly secrets: Client<typeof SecretService>;
  readonly stores: Client<typeof StoreService>;
  readonly vars: Client<typeof VarService>;
  close(): void;
}

/** Connect clients speaking gRPC over one HTTP/2 session; `close` aborts the session. */
export function rpcClients(baseUrl: string): RpcClients {
  const sessionManager = new Http2SessionManager(baseUrl);
  const transport = createGrpcTransport({ baseUrl, sessionManager });
  return {
    secrets: createClient(SecretService, transport),
    stores: createClient(StoreService, transport),
    vars: createClient(VarService, transport),
    close: () => sessionManager.abort(),
  };
}

/** Call options with a bearer token (admin by default; null for none) and a bounded wait. */
export function opts(token: string | null = ADMIN_TOKEN, extra: Record<string, string> = {}) {
  return { headers: { ...bearer(token), ...extra }, timeoutMs: CALL_TIMEOUT_MS };
}

/** Awaits a call that must fail with `code`; returns the ConnectError. */
export async function rpcFails(p: Promise<unknown>, code: Code, what = "call"): Promise<ConnectError> {
  try {
    await p;
  } catch (err) {
    const ce = ConnectError.from(err);
    assert.equal(ce.code, code, `${what}: expected ${Code[code]}, got ${Code[ce.code]} (${ce.rawMessage})`);
    return ce;
  }
  assert.fail(`${what}: expected ${Code[code]}, but the call succeeded`);
}

/** The ErrorInfo reason of a ConnectError, if any. */
export function reasonOf(err: ConnectError): string | undefined {
  return err.findDetails(ErrorInfoSchema)[0]?.reason;
}

/** The RequestInfo request id of a ConnectError, if any. */
export function requestIdOf(err: ConnectError): string | undefined {
  return err.findDetails(RequestInfoSchema)[0]?.requestId;
}

/** The BadRequest field violations of a ConnectError as [field, reason] pairs. */
export function violationsOf(err: ConnectError): [string, string][] {
  return (err.findDetails(BadRequestSchema)[0]?.fieldViolations ?? []).map((v) => [v.field, v.reason]);
}

// ---------------------------------------------------------------------------------------------------------------
// Connect JSON (raw fetch)

export interface JsonReply {
  readonly status: number;
  readonly headers: Headers;
  // Response bodies are untyped JSON by nature.
  readonly body: any;
}

/** A unary Connect call in JSON, as `curl -H 'content-type: application/json' -d '{...}'` sends it. */
export async function connectJson(
  baseUrl: string,
  procedure: string,
  body: unknown,
  token: string | null = ADMIN_TOKEN,
  headers: Record<string, string> = {},
): Promise<JsonReply> {
  const res = await fetch(`${baseUrl}/latchkey.v1.${procedure}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...bearer(token), ...headers },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(CALL_TIMEOUT_MS),
  });
  const text = await res.text();
  return { status: res.status, headers: res.headers, body: text === "" ? undefined : JSON.parse(text) };
}

/** A Connect JSON error detail, decoded from its base64 `value` (not from the optional `debug` copy). */
export function connectDetail<Desc extends DescMessage>(body: any, schema: Desc): MessageShape<Desc> | undefined {
  const d = (body?.details ?? []).find((x: { type?: string }) => x.type === schema.typeName);
  if (!d) return undefined;
  return fromBinary(schema, Buffer.from(String(d.value), "base64"));
}

/** Asserts a Connect JSON error: HTTP status, code; returns the body. */
export function assertConnectError(reply: JsonReply, status: number, code: string, what = "call"): any {
  assert.equal(reply.status, status, `${what}: HTTP status (body ${JSON.stringify(reply.body)})`);
  assert.equal(reply.body?.code, code, `${what}: code`);
  return reply.body;
}

/** [field, reason] pairs of a Connect JSON error's google.rpc.BadRequest detail. */
export function connectViolations(body: any): [string, string][] {
  return (connectDetail(body, BadRequestSchema)?.fieldViolations ?? []).map((v) => [v.field, v.reason]);
}

export function connectReason(body: any): string | undefined {
  return connectDetail(body, ErrorInfoSchema)?.reason;
}

export function connectRequestId(body: any): string | undefined {
  return connectDetail(body, RequestInfoSchema)?.requestId;
}

// ---------------------------------------------------------------------------------------------------------------
// REST (raw fetch)

/** A REST call with a JSON body (if any) and a bearer token (admin by default; null for none). */
export async function rest(
  baseUrl: string,
  method: string,
  path: string,
  body?: unknown,
  token: string | null = ADMIN_TOKEN,
  headers: Record<string, string> = {},
): Promise<JsonReply> {
  const res = await fetch(baseUrl + path, {
    method,
    headers: { ...(body === undefined ? {} : { "content-type": "application/json" }), ...bearer(token), ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(CALL_TIMEOUT_MS),
  });
  const text = await res.text();
  return { status: res.status, headers: res.headers, body: text === "" ? undefined : JSON.parse(text) };
}

/** Asserts a REST error: status, code and that the body's request_id is the x-request-id header. */
export function assertRestError(reply: JsonReply, status: number, code: string, what = "call"): any {
  assert.equal(reply.status, status, `${what}: HTTP status (body ${JSON.stringify(reply.body)})`);
  assert.equal(reply.body?.code, code, `${what}: code`);
  assert.equal(reply.body?.request_id, reply.headers.get("x-request-id"), `${what}: request_id is the header`);
  return reply.body;
}

/** [field, reason] pairs of a REST error body's violations. */
export function restViolations(body: any): [string, string][] {
  return ((body?.violations ?? []) as { field: string; reason: string }[]).map((v) => [v.field, v.reason]);
}

// ---------------------------------------------------------------------------------------------------------------
// grpc-js + proto-loader: an independent gRPC peer with no generated code of ours

const PROTO_DIR = fileURLToPath(new URL("../../proto", import.meta.url));
const THIRD_PARTY_DIR = fileURLToPath(new URL("../../third_party", import.meta.url));

export const grpcDefinition = protoLoader.loadSync(
  [
    "latchkey/v1/secret_service.proto",
    "latchkey/v1/store_service.proto",
    "latchkey/v1/var_service.proto",
    "google/rpc/error_details.proto",
  ],
  { includeDirs: [PROTO_DIR, THIRD_PARTY_DIR], longs: String, enums: String, defaults: true, oneofs: true },
);
// The loaded package is untyped by nature.
const grpcPkg = grpc.loadPackageDefinition(grpcDefinition) as any;

export interface GrpcClients {
  readonly secrets: grpc.Client;
  readonly stores: grpc.Client;
  readonly vars: grpc.Client;
  close(): void;
}

export function grpcClients(port: number): GrpcClients {
  const target = `127.0.0.1:${port}`;
  const make = (name: string) => new (grpcPkg.latchkey.v1[name] as grpc.ServiceClientConstructor)(target, grpc.credentials.createInsecure());
  const secrets = make("SecretService");
  const stores = make("StoreService");
  const vars = make("VarService");
  return {
    secrets,
    stores,
    vars,
    close() {
      secrets.close();
      stores.close();
      vars.close();
    },
  };
}

export function grpcMd(token: string | null = ADMIN_TOKEN, extra: Record<string, string> = {}): grpc.Metadata {
  const md = new grpc.Metadata();
  if (token !== null) md.set("authorization", `Bearer ${token}`);
  for (const [k, v] of Object.entries(extra)) md.set(k, v);
  return md;
}

type Msg = Record<string, any>;

export interface GrpcOutcome {
  readonly res?: Msg;
  readonly err?: grpc.ServiceError;
  /** The initial metadata (response headers). */
  readonly headers: grpc.Metadata;
  /** The trailers, from the call's status. */
  readonly trailers: grpc.Metadata;
  readonly code: grpc.status;
}

/** A unary grpc-js call; resolves once the status (with the trailers) has arrived, whether it failed or not. */
export function grpcCall(client: grpc.Client, method: string, req: Msg, md: grpc.Metadata = grpcMd()): Promise<GrpcOutcome> {
  return new Promise((resolve, reject) => {
    const fn = (client as unknown as Record<string, Function | undefined>)[method];
    if (typeof fn !== "function") {
      reject(new Error(`the client has no method ${method}`));
      return;
    }
    let headers = new grpc.Metadata();
    let result: { res?: Msg; err?: grpc.ServiceError } | undefined;
    let status: grpc.StatusObject | undefined;
    const settle = () => {
      if (result && status) resolve({ ...result, headers, trailers: status.metadata, code: status.code });
    };
    const call = fn.call(client, req, md, { deadline: Date.now() + CALL_TIMEOUT_MS }, (err: grpc.ServiceError | null, res: Msg) => {
      result = err ? { err } : { res };
      settle();
    }) as grpc.ClientUnaryCall;
    call.on("metadata", (m: grpc.Metadata) => {
      headers = m;
    });
    call.on("status", (s: grpc.StatusObject) => {
      status = s;
      settle();
    });
  });
}

/** A grpc-js call that must succeed; returns the response. */
export async function grpcOk(client: grpc.Client, method: string, req: Msg, md?: grpc.Metadata): Promise<Msg> {
  const out = await grpcCall(client, method, req, md);
  if (out.err) assert.fail(`${method} failed: ${grpc.status[out.err.code]} ${out.err.details}`);
  return out.res as Msg;
}

/** A grpc-js call that must fail with `code`; returns the outcome (err is set). */
export async function grpcFails(
  client: grpc.Client,
  method: string,
  req: Msg,
  code: grpc.status,
  md?: grpc.Metadata,
): Promise<GrpcOutcome & { err: grpc.ServiceError }> {
  const out = await grpcCall(client, method, req, md);
  if (!out.err) assert.fail(`${method} should have failed with ${grpc.status[code]}, got ${JSON.stringify(out.res)}`);
  assert.equal(out.err.code, code, `${method}: expected ${grpc.status[code]}, got ${grpc.status[out.err.code]} (${out.err.details})`);
  return out as GrpcOutcome & { err: grpc.ServiceError };
}

export interface GrpcStatusDetails {
  readonly code: number;
  readonly message: string;
  readonly errorInfo?: ErrorInfo;
  readonly badRequest?: BadRequest;
  readonly requestId?: string;
  readonly types: string[];
}

/**
 * Decodes the google.rpc.Status in the `grpc-status-details-bin` trailer by hand (code = 1, message = 2,
 * details = 3 as google.protobuf.Any { type_url = 1, value = 2 }), then each detail with its schema.
 */
export function grpcStatusDetails(md: grpc.Metadata): GrpcStatusDetails | undefined {
  const raw = md.get("grpc-status-details-bin")[0];
  if (raw === undefined) return undefined;
  const r = new BinaryReader(typeof raw === "string" ? Buffer.from(raw, "base64") : raw);
  let code = 0;
  let message = "";
  const anys: { typeUrl: string; value: Uint8Array }[] = [];
  while (r.pos < r.len) {
    const [no, wt] = r.tag();
    if (no === 1 && wt === WireType.Varint) code = r.int32();
    else if (no === 2 && wt === WireType.LengthDelimited) message = r.string();
    else if (no === 3 && wt === WireType.LengthDelimited) {
      const a = new BinaryReader(r.bytes());
      let typeUrl = "";
      let value: Uint8Array = new Uint8Array();
      while (a.pos < a.len) {
        const [ano, awt] = a.tag();
        if (ano === 1 && awt === WireType.LengthDelimited) typeUrl = a.string();
        else if (ano === 2 && awt === WireType.LengthDelimited) value = a.bytes();
        else a.skip(awt, ano);
      }
      anys.push({ typeUrl, value });
    } else r.skip(wt, no);
  }
  const typeName = (u: string) => u.slice(u.lastIndexOf("/") + 1);
  const find = <Desc extends DescMessage>(schema: Desc): MessageShape<Desc> | undefined => {
    const a = anys.find((x) => typeName(x.typeUrl) === schema.typeName);
    return a ? fromBinary(schema, a.value) : undefined;
  };
  return {
    code,
    message,
    errorInfo: find(ErrorInfoSchema),
    badRequest: find(BadRequestSchema),
    requestId: find(RequestInfoSchema)?.requestId,
    types: anys.map((a) => typeName(a.typeUrl)),
  };
}

/** The single string value of a metadata key, or undefined. */
export function mdValue(md: grpc.Metadata, key: string): string | undefined {
  const v = md.get(key);
  return v.length === 0 ? undefined : String(v[0]);
}

export { grpc };

// ---------------------------------------------------------------------------------------------------------------
// Misc

/** The JSON lines of a server's log that carry `requestId`. */
export function logLinesFor(logs: readonly string[], requestId: string): Record<string, unknown>[] {
  return logs
    .map((l) => {
      try {
        return JSON.parse(l) as Record<string, unknown>;
      } catch {
        return undefined;
      }
    })
    .filter((o): o is Record<string, unknown> => o !== undefined && o.request_id === requestId);
}

/** Waits (bounded) until `check` passes. */
export async function eventually(check: () => boolean, ms = 2_000, what = "condition"): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** The sealed size of a secret value of `bytes` UTF-8 bytes: "v1." + 16-char key id + "." + base64(nonce|ct|tag). */
export function sealedBytes(bytes: number): number {
  return 3 + 16 + 1 + Math.ceil((12 + bytes + 16) / 3) * 4;
}

export interface GrpcStream {
  /** Messages received so far. */
  readonly messages: Msg[];
  readonly headers: Promise<grpc.Metadata>;
  /** Resolves when the call ends, with its status (code, details, trailers). */
  readonly done: Promise<grpc.StatusObject>;
  /** Waits (bounded) until `pred` holds for the messages received so far. */
  waitFor(pred: (msgs: Msg[]) => boolean, ms?: number, what?: string): Promise<void>;
  cancel(): void;
}

/** A server-streaming grpc-js call, with a deadline of `ms`. */
export function grpcStream(client: grpc.Client, method: string, req: Msg, md: grpc.Metadata = grpcMd(), ms = CALL_TIMEOUT_MS): GrpcStream {
  const fn = (client as unknown as Record<string, Function | undefined>)[method];
  if (typeof fn !== "function") throw new Error(`the client has no method ${method}`);
  const call = fn.call(client, req, md, { deadline: Date.now() + ms }) as grpc.ClientReadableStream<Msg>;
  const messages: Msg[] = [];
  let ended = false;
  const headers = new Promise<grpc.Metadata>((resolve) => call.on("metadata", resolve));
  const done = new Promise<grpc.StatusObject>((resolve) => {
    call.on("status", (s: grpc.StatusObject) => {
      ended = true;
      resolve(s);
    });
  });
  call.on("data", (m: Msg) => messages.push(m));
  call.on("error", () => {}); // the status carries the outcome
  return {
    messages,
    headers,
    done,
    async waitFor(pred, waitMs = 3_000, what = "stream messages") {
      const end = Date.now() + waitMs;
      while (!pred(messages)) {
        if (ended || Date.now() > end) assert.fail(`${what}: not seen (got ${JSON.stringify(messages)})`);
        await new Promise((r) => setTimeout(r, 10));
      }
    },
    cancel: () => call.cancel(),
  };
}

export interface ConnectJsonStream {
  readonly messages: any[];
  /** Response status and headers, once they arrive. */
  readonly response: Promise<Response>;
  /** Resolves when the stream ends: the end-of-stream message (with `error` on failure), or undefined if cancelled. */
  readonly done: Promise<any>;
  waitFor(pred: (msgs: any[]) => boolean, ms?: number, what?: string): Promise<void>;
  cancel(): void;
}

/**
 * A server-streaming call in the Connect protocol with JSON, by hand: the request is one enveloped message
 * (flags, 4-byte big-endian length, JSON), and so is every response message; flag 0x02 marks the end-of-stream.
 */
export function connectJsonStream(
  baseUrl: string,
  procedure: string,
  body: unknown,
  token: string | null = ADMIN_TOKEN,
  ms = CALL_TIMEOUT_MS,
): ConnectJsonStream {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), ms);
  const json = Buffer.from(JSON.stringify(body), "utf8");
  const frame = Buffer.alloc(5 + json.length);
  frame.writeUInt32BE(json.length, 1);
  json.copy(frame, 5);
  const messages: any[] = [];
  let ended = false;
  const response = fetch(`${baseUrl}/latchkey.v1.${procedure}`, {
    method: "POST",
    headers: { "content-type": "application/connect+json", ...bearer(token) },
    body: frame,
    signal: ac.signal,
  });
  const done = (async () => {
    try {
      const res = await response;
      if (!res.body) return undefined;
      let buf = Buffer.alloc(0);
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        buf = Buffer.concat([buf, chunk]);
        while (buf.length >= 5) {
          const len = buf.readUInt32BE(1);
          if (buf.length < 5 + len) break;
          const flags = buf[0] ?? 0;
          const payload = JSON.parse(buf.subarray(5, 5 + len).toString("utf8"));
          buf = buf.subarray(5 + len);
          if (flags & 0x02) return payload;
          messages.push(payload);
        }
      }
      return undefined;
    } catch (err) {
      if (ac.signal.aborted) return undefined;
      throw err;
    } finally {
      ended = true;
      clearTimeout(timer);
    }
  })();
  done.catch(() => {});
  return {
    messages,
    response,
    done,
    async waitFor(pred, waitMs = 3_000, what = "stream messages") {
      const end = Date.now() + waitMs;
      while (!pred(messages)) {
        if (ended || Date.now() > end) assert.fail(`${what}: not seen (got ${JSON.stringify(messages)})`);
        await new Promise((r) => setTimeout(r, 10));
      }
    },
    cancel: () => ac.abort(),
  };
}

export interface RpcStream<T> {
  readonly messages: T[];
  /** Resolves when the stream ends: undefined when it ended normally or was cancelled, else the ConnectError. */
  readonly done: Promise<ConnectError | undefined>;
  waitFor(pred: (msgs: T[]) => boolean, ms?: number, what?: string): Promise<void>;
  cancel(): void;
}

/** Consumes a Connect server stream in the background; `open` receives the abort signal to pass to the call. */
export function rpcStream<T>(open: (signal: AbortSignal) => AsyncIterable<T>, ms = CALL_TIMEOUT_MS): RpcStream<T> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), ms);
  const messages: T[] = [];
  let ended = false;
  const done = (async () => {
    try {
      for await (const m of open(ac.signal)) messages.push(m);
      return undefined;
    } catch (err) {
      const ce = ConnectError.from(err);
      return ce.code === Code.Canceled && ac.signal.aborted ? undefined : ce;
    } finally {
      ended = true;
      clearTimeout(timer);
    }
  })();
  return {
    messages,
    done,
    async waitFor(pred, waitMs = 3_000, what = "stream messages") {
      const end = Date.now() + waitMs;
      while (!pred(messages)) {
        if (ended || Date.now() > end) assert.fail(`${what}: not seen (got ${messages.length} messages)`);
        await new Promise((r) => setTimeout(r, 10));
      }
    },
    cancel: () => ac.abort(),
  };
}
