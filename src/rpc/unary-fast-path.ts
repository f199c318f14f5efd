import type * as http from "node:http";
import type * as http2 from "node:http2";
import {
  create,
  type DescMessage,
  type DescMethodUnary,
  type DescService,
  fromBinary,
  fromJsonString,
  type JsonReadOptions,
  type JsonWriteOptions,
  toBinary,
  toJsonString,
} from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  type ContextValues,
  createContextValues,
  type HandlerContext,
  type Interceptor,
  type UnaryRequest,
  type UnaryResponse,
} from "@connectrpc/connect";
import { codeToHttpStatus, errorToJsonBytes } from "@connectrpc/connect/protocol-connect";
import { setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import { RequestInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { readLimitedBody } from "../http/body.js";
import type { RequestInfo } from "../http/request-info.js";
import { codeName } from "./errors.js";

type Request = http.IncomingMessage | http2.Http2ServerRequest;
type Response = http.ServerResponse | http2.Http2ServerResponse;

/** A service and its implementation, as given to the Connect router. */
export interface ServiceRoute {
  readonly service: DescService;
  // biome-ignore lint: the implementation of any service
  readonly impl: Record<string, (req: any, ctx: HandlerContext) => unknown>;
}

export interface UnaryFastPathOptions {
  readonly services: readonly ServiceRoute[];
  /** The same interceptors the Connect adapter runs: auth, audit and error mapping stay in one place. */
  readonly interceptors: readonly Interceptor[];
  /** Largest request message accepted, as the adapter's readMaxBytes. */
  readonly readMaxBytes: number;
  readonly jsonOptions: Partial<JsonReadOptions & JsonWriteOptions>;
  /** The key under which handlers find the RequestInfo (the adapter's contextValues). */
  readonly contextValues: (info: RequestInfo) => ContextValues;
}

/** Tries one request; true if it answered (or is answering) it, false to leave it to the Connect adapter. */
export type UnaryFastPath = (req: Request, res: Response, info: RequestInfo) => boolean;

type Wire = "grpc" | "proto" | "json";

interface Route {
  readonly method: DescMethodUnary;
  readonly next: (req: UnaryRequest) => Promise<UnaryResponse>;
}

const kContext = Symbol("handler context");
const GRPC_CONTENT_TYPE = "application/grpc+proto";
const MAX_TIMEOUT_MS = 0x7fffffff;

/**
 * The lean unary path. connect-node runs every call through a generic pipeline of async iterables, Headers
 * objects and abort signals that costs far more than the work of a secrets lookup. Unary calls over gRPC
 * (HTTP/2, uncompressed) and the Connect protocol (POST, uncompressed, JSON or binary) are answered here instead:
 * the same service implementations, behind the same interceptors, encoding replies and errors with connect's own
 * protocol functions, in one pass with no per-call allocation beyond what the call needs. Everything else
 * (streams, compression, gRPC-Web, Connect GET, timeouts that do not parse) stays with connect-node, so every
 * protocol keeps working on the one port.
 */
export function createUnaryFastPath(opts: UnaryFastPathOptions): UnaryFastPath {
  const routes = new Map<string, Route>();
  const { readMaxBytes } = opts;
  const jsonRead = { ignoreUnknownFields: opts.jsonOptions.ignoreUnknownFields ?? true };
  const jsonWrite = opts.jsonOptions;

  for (const { service, impl } of opts.services) {
    for (const method of service.methods) {
      if (method.methodKind !== "unary") continue;
      const fn = impl[method.localName];
      if (typeof fn !== "function") continue; // connect-node answers unimplemented methods
      const output: DescMessage = method.output;
      const call = async (req: UnaryRequest): Promise<UnaryResponse> => {
        const ctx = (req as unknown as { [kContext]: FastContext })[kContext];
        const message = create(output, (await fn.call(impl, req.message, ctx.forHandler(req))) as never);
        return {
          stream: false,
          service,
          method,
          header: ctx.responseHeader,
          trailer: ctx.responseTrailer,
          message,
        } as UnaryResponse;
      };
      const next = opts.interceptors.reduceRight<(req: UnaryRequest) => Promise<UnaryResponse>>(
        (n, interceptor) => interceptor(n as never) as never,
        call,
      );
      routes.set(`/${service.typeName}/${method.name}`, { method: method as DescMethodUnary, next });
    }
  }

  return (req, res, info) => {
    if (req.method !== "POST") return false;
    const route = routes.get(req.url ?? "");
    if (route === undefined) return false;
    const wire = wireOf(req);
    if (wire === undefined) return false;
    const timeout = timeoutOf(req.headers, wire);
    if (timeout === false) return false;

    const ctx = new FastContext(route.method, req, res, wire, timeout, opts.contextValues(info), jsonWrite);
    readBody(req, readMaxBytes, wire, (err, body) => {
      if (err) return ctx.fail(err, info);
      let message: unknown;
      try {
        message = decode(route.method, wire, body as Buffer, readMaxBytes, jsonRead);
      } catch (e) {
        return ctx.fail(e, info);
      }
      const ureq = {
        stream: false,
        service: route.method.parent,
        method: route.method,
        requestMethod: "POST",
        get url() {
          return ctx.url;
        },
        get signal() {
          return ctx.signal;
        },
        get header() {
          return ctx.requestHeader;
        },
        contextValues: ctx.values,
        message,
        [kContext]: ctx,
      } as unknown as UnaryRequest;
      route.next(ureq).then(
        (out) => ctx.reply(out),
        (e: unknown) => ctx.fail(e, info),
      );
    });
    return true;
  };
}

/** The wire format of a request the fast path takes, or undefined to leave it to connect-node. */
function wireOf(req: Request): Wire | undefined {
  const h = req.headers;
  const type = h["content-type"];
  if (type === "application/grpc" || type === "application/grpc+proto") {
    if (req.httpVersionMajor !== 2) return undefined;
    const enc = h["grpc-encoding"];
    return enc === undefined || enc === "identity" ? "grpc" : undefined;
  }
  let wire: Wire;
  if (type === "application/proto") wire = "proto";
  else if (type === "application/json" || (type !== undefined && /^application\/json;\s*charset=utf-?8$/i.test(type)))
    wire = "json";
  else return undefined;
  const enc = h["content-encoding"];
  if (enc !== undefined && enc !== "identity") return undefined;
  const version = h["connect-protocol-version"];
  return version === undefined || version === "1" ? wire : undefined;
}

/** The call's timeout in ms, undefined for none, or false if it does not parse (connect-node reports that). */
function timeoutOf(headers: http.IncomingHttpHeaders, wire: Wire): number | undefined | false {
  if (wire === "grpc") {
    const v = headers["grpc-timeout"];
    if (v === undefined) return undefined;
    const m = typeof v === "string" ? /^(\d{1,8})([HMSmun])$/.exec(v) : null;
    if (m === null) return false;
    const ms = Number(m[1]) * GRPC_UNITS[m[2] as keyof typeof GRPC_UNITS];
    return ms > MAX_TIMEOUT_MS ? undefined : ms;
  }
  const v = headers["connect-timeout-ms"];
  if (v === undefined) return undefined;
  if (typeof v !== "string" || !/^\d{1,10}$/.test(v)) return false;
  const ms = Number(v);
  return ms > MAX_TIMEOUT_MS ? undefined : ms;
}

/**
 * Drops a timeout header longer than a timer can hold (about 24.8 days; gRPC allows 99999999H). connect-node would
 * pass it to setTimeout, which fires such a timer at once: a call with a deadline years away failed as
 * deadline_exceeded. A deadline that far off is no deadline.
 */
export function dropUnholdableTimeout(headers: http.IncomingHttpHeaders): void {
  if (headers["grpc-timeout"] !== undefined && timeoutOf(headers, "grpc") === undefined) delete headers["grpc-timeout"];
  if (headers["connect-timeout-ms"] !== undefined && timeoutOf(headers, "json") === undefined) delete headers["connect-timeout-ms"];
}

const GRPC_UNITS = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 0.001, n: 0.000001 };

/** Reads the whole body, refusing more than the limit allows (5 bytes more for a gRPC envelope). */
function readBody(req: Request, max: number, wire: Wire, done: (err: unknown, body?: Buffer) => void): void {
  readLimitedBody(req, wire === "grpc" ? max + 5 : max, (r) => {
    if (r.ok) done(undefined, r.body);
    else if (r.reason === "too_large") done(tooLarge(r.size, max));
    else done(new ConnectError("request body: the client went away", Code.Canceled));
  });
}

function tooLarge(size: number, max: number): ConnectError {
  return new ConnectError(`message size ${size} is larger than configured readMaxBytes ${max}`, Code.ResourceExhausted);
}

/** The request message, or a ConnectError naming what is wrong with the bytes. */
function decode(method: DescMethodUnary, wire: Wire, body: Buffer, max: number, json: JsonReadOptions | object) {
  let bytes: Uint8Array = body;
  if (wire === "grpc") {
    if (body.length === 0) throw new ConnectError("protocol error: missing input message for unary method", Code.InvalidArgument);
    if (body.length < 5) throw new ConnectError("protocol error: incomplete envelope", Code.InvalidArgument);
    const flags = body[0] as number;
    const length = body.readUInt32BE(1);
    if (length > max) throw tooLarge(length, max);
    if (body.length < 5 + length) throw new ConnectError("protocol error: incomplete envelope", Code.InvalidArgument);
    if (body.length > 5 + length) {
      throw new ConnectError("protocol error: received extra input message for unary method", Code.InvalidArgument);
    }
    if ((flags & 0b1) !== 0) {
      throw new ConnectError("protocol error: received compressed envelope without grpc-encoding", Code.Internal);
    }
    bytes = body.subarray(5);
  }
  if (wire === "json") {
    try {
      return fromJsonString(method.input, body.toString("utf8"), json);
    } catch (e) {
      throw ConnectError.from(e, Code.InvalidArgument);
    }
  }
  try {
    return fromBinary(method.input, bytes);
  } catch (e) {
    // connect-node calls an undecodable message internal; it is the caller's bytes that are wrong.
    throw new ConnectError(`parse binary: ${e instanceof Error ? e.message : String(e)}`, Code.InvalidArgument);
  }
}

/** What a handler sees as its HandlerContext, built lazily: most calls never touch headers or the signal. */
class FastContext {
  readonly responseHeader = new Headers();
  readonly responseTrailer = new Headers();
  private controller?: AbortController;
  private reqHeader?: Headers;
  private handlerCtx?: HandlerContext;
  private readonly deadline: number | undefined;
  private answered = false;

  constructor(
    readonly method: DescMethodUnary,
    private readonly req: Request,
    private readonly res: Response,
    private readonly wire: Wire,
    timeoutMs: number | undefined,
    readonly values: ContextValues,
    private readonly jsonWrite: Partial<JsonWriteOptions>,
  ) {
    this.deadline = timeoutMs === undefined ? undefined : Date.now() + timeoutMs;
  }

  get url(): string {
    const host = this.req.headers[":authority"] ?? this.req.headers.host ?? "localhost";
    return `http://${String(host)}${this.req.url ?? "/"}`;
  }

  get signal(): AbortSignal {
    if (this.controller) return this.controller.signal;
    const controller = new AbortController();
    this.controller = controller;
    const abort = () => {
      if (!this.answered) controller.abort(new ConnectError("operation was aborted", Code.Canceled));
    };
    this.res.once("close", abort);
    if (this.deadline !== undefined) {
      const timer = setTimeout(
        () => controller.abort(new ConnectError("the operation timed out", Code.DeadlineExceeded)),
        Math.max(0, this.deadline - Date.now()),
      );
      timer.unref();
      this.res.once("close", () => clearTimeout(timer));
    }
    return controller.signal;
  }

  get requestHeader(): Headers {
    this.reqHeader ??= new NodeHeaders(this.req.headers) as unknown as Headers;
    return this.reqHeader;
  }

  /** The HandlerContext of connect's interface, for the implementation. */
  forHandler(req: UnaryRequest): HandlerContext {
    if (this.handlerCtx) return this.handlerCtx;
    const self = this;
    const deadline = this.deadline;
    this.handlerCtx = {
      method: this.method,
      service: this.method.parent,
      requestMethod: "POST",
      protocolName: this.wire === "grpc" ? "grpc" : "connect",
      get url() {
        return self.url;
      },
      get signal() {
        return req.signal;
      },
      get requestHeader() {
        return req.header;
      },
      timeoutMs: () => (deadline === undefined ? undefined : deadline - Date.now()),
      responseHeader: this.responseHeader,
      responseTrailer: this.responseTrailer,
      values: req.contextValues,
    } as HandlerContext;
    return this.handlerCtx;
  }

  reply(out: UnaryResponse): void {
    if (this.answered) return;
    const { output } = this.method;
    let body: Uint8Array;
    try {
      body = this.wire === "json" ? Buffer.from(toJsonString(output, out.message, this.jsonWrite)) : toBinary(output, out.message);
    } catch (e) {
      return this.fail(new ConnectError(`serialize: ${e instanceof Error ? e.message : String(e)}`, Code.Internal));
    }
    this.answered = true;
    const res = this.res as http.ServerResponse;
    const headers: Record<string, string> = {};
    for (const [k, v] of out.header) headers[k] = v;
    if (this.wire === "grpc") {
      headers["content-type"] = GRPC_CONTENT_TYPE;
      const trailers: Record<string, string> = {};
      for (const [k, v] of out.trailer) trailers[k] = v;
      trailers["grpc-status"] = "0";
      const frame = Buffer.allocUnsafe(5 + body.length);
      frame[0] = 0;
      frame.writeUInt32BE(body.length, 1);
      frame.set(body, 5);
      res.writeHead(200, headers);
      res.addTrailers(trailers);
      res.end(frame);
      return;
    }
    headers["content-type"] = this.wire === "json" ? "application/json" : "application/proto";
    for (const [k, v] of out.trailer) headers[`trailer-${k}`] = v;
    headers["content-length"] = String(body.length);
    res.writeHead(200, headers);
    res.end(body);
  }

  /**
   * Answers with an error. Errors from the interceptors are already mapped (safe message, details, request id);
   * errors before them (the body, its envelope, its encoding) get the request id here, as every error does.
   */
  fail(err: unknown, info?: RequestInfo): void {
    if (this.answered) return;
    this.answered = true;
    let ce = err instanceof ConnectError ? err : new ConnectError("internal error", Code.Internal);
    if (info) {
      if (info.code === undefined) info.code = codeName(ce.code);
      if (!ce.details.some((d) => "desc" in d && d.desc.typeName === RequestInfoSchema.typeName)) {
        ce = new ConnectError(ce.rawMessage, ce.code, ce.metadata, [
          ...(ce.details as ConstructorParameters<typeof ConnectError>[3] & object[]),
          { desc: RequestInfoSchema, value: create(RequestInfoSchema, { requestId: info.id }) },
        ]);
        ce.metadata.set("x-request-id", info.id);
      }
    }
    const res = this.res as http.ServerResponse;
    const headers: Record<string, string> = {};
    for (const [k, v] of this.responseHeader) headers[k] = v;
    if (this.wire === "grpc") {
      headers["content-type"] = GRPC_CONTENT_TYPE;
      const t = new Headers(this.responseTrailer);
      setTrailerStatus(t, ce);
      const trailers: Record<string, string> = {};
      for (const [k, v] of t) trailers[k] = v;
      res.writeHead(200, headers);
      res.addTrailers(trailers);
      res.end();
      return;
    }
    for (const [k, v] of ce.metadata) headers[k] = v;
    const body = errorToJsonBytes(ce, this.jsonWrite);
    headers["content-type"] = "application/json";
    headers["content-length"] = String(body.length);
    res.writeHead(codeToHttpStatus(ce.code), headers);
    res.end(body);
  }
}

/** Headers' methods, as methods (the DOM typings declare them as properties, which a subclass may not override). */
interface HeaderMethods {
  get(name: string): string | null;
  has(name: string): boolean;
  set(name: string, value: string): void;
  append(name: string, value: string): void;
  delete(name: string): void;
  getSetCookie(): string[];
  forEach(cb: (value: string, key: string, parent: HeaderMethods) => void, thisArg?: unknown): void;
  entries(): IterableIterator<[string, string]>;
  keys(): IterableIterator<string>;
  values(): IterableIterator<string>;
  [Symbol.iterator](): IterableIterator<[string, string]>;
}

/**
 * The request's headers as a fetch Headers, read from Node's header object: get and has (all the interceptors use,
 * for the token) look a name up directly; anything else copies the headers in first. Copying every header into a
 * Headers object on every call was a visible share of a call's cost.
 */
class NodeHeaders extends (Headers as unknown as new () => HeaderMethods) {
  #raw: http.IncomingHttpHeaders | undefined;

  constructor(raw: http.IncomingHttpHeaders) {
    super();
    this.#raw = raw;
  }

  #fill(): void {
    const raw = this.#raw;
    if (raw === undefined) return;
    this.#raw = undefined;
    const append = (Headers.prototype as unknown as HeaderMethods).append;
    for (const [k, v] of Object.entries(raw)) {
      if (k[0] === ":" || v === undefined) continue;
      if (Array.isArray(v)) for (const x of v) append.call(this, k, x);
      else append.call(this, k, v);
    }
  }

  override get(name: string): string | null {
    const raw = this.#raw;
    if (raw === undefined) return super.get(name);
    const key = name.toLowerCase();
    if (key[0] === ":") return null;
    const v = raw[key];
    return v === undefined ? null : Array.isArray(v) ? v.join(", ") : v;
  }

  override has(name: string): boolean {
    return this.get(name) !== null;
  }

  override set(name: string, value: string): void {
    this.#fill();
    super.set(name, value);
  }

  override append(name: string, value: string): void {
    this.#fill();
    super.append(name, value);
  }

  override delete(name: string): void {
    this.#fill();
    super.delete(name);
  }

  override getSetCookie(): string[] {
    this.#fill();
    return super.getSetCookie();
  }

  override forEach(cb: (value: string, key: string, parent: HeaderMethods) => void, thisArg?: unknown): void {
    this.#fill();
    super.forEach(cb, thisArg);
  }

  override entries(): IterableIterator<[string, string]> {
    this.#fill();
    return super.entries();
  }

  override keys(): IterableIterator<string> {
    this.#fill();
    return super.keys();
  }

  override values(): IterableIterator<string> {
    this.#fill();
    return super.values();
  }

  override [Symbol.iterator](): IterableIterator<[string, string]> {
    this.#fill();
    return super[Symbol.iterator]();
  }
}
