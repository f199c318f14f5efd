import type { DescMethod } from "@bufbuild/protobuf";
import { Code, type Client, ConnectError, createClient, type Interceptor, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { MethodOptions_IdempotencyLevel as Idempotency } from "@bufbuild/protobuf/wkt";
import { Health } from "../../gen/grpc/health/v1/health_pb.js";
import { AuditService } from "../../gen/latchkey/v1/audit_service_pb.js";
import { SecretEventType } from "../../gen/latchkey/v1/secret_pb.js";
import { SecretService } from "../../gen/latchkey/v1/secret_service_pb.js";
import { StoreService } from "../../gen/latchkey/v1/store_service_pb.js";
import { TokenService } from "../../gen/latchkey/v1/token_service_pb.js";
import { VarService } from "../../gen/latchkey/v1/var_service_pb.js";

export { Code, ConnectError } from "@connectrpc/connect";
export * from "../../gen/latchkey/v1/secret_pb.js";
export * from "../../gen/latchkey/v1/secret_service_pb.js";
export * from "../../gen/latchkey/v1/store_pb.js";
export * from "../../gen/latchkey/v1/store_service_pb.js";
export * from "../../gen/latchkey/v1/var_service_pb.js";
export * from "../../gen/latchkey/v1/token_service_pb.js";
export * from "../../gen/latchkey/v1/audit_service_pb.js";

export interface LatchkeyClientOptions {
  /** e.g. "http://127.0.0.1:8200". */
  readonly baseUrl: string;
  /** A bearer token; reads from an allowed IP work without one. */
  readonly token?: string | undefined;
  /** Wire protocol: "grpc" (default, HTTP/2), "connect" (JSON or binary, HTTP/1.1 or 2) or "grpc-web". */
  readonly protocol?: "grpc" | "connect" | "grpc-web";
  /** For "connect" and "grpc-web": "1.1" (default for those) or "2". */
  readonly httpVersion?: "1.1" | "2";
  /** For "connect": JSON instead of binary protobuf. Default false. */
  readonly json?: boolean;
  /** Retries of idempotent calls after a transient failure. Default 3. */
  readonly retries?: number;
  /** First retry delay; each next one doubles, with jitter. Default 100 ms. */
  readonly retryBaseMs?: number;
  /** TLS settings for https URLs (a private CA, a client certificate for mutual TLS). */
  readonly tls?: { readonly ca?: string | Buffer; readonly cert?: string | Buffer; readonly key?: string | Buffer };
}

/** Typed clients for every Latchkey service over one transport, plus a read-through cache of secret values. */
export interface LatchkeyClient {
  readonly secrets: Client<typeof SecretService>;
  readonly stores: Client<typeof StoreService>;
  readonly vars: Client<typeof VarService>;
  readonly tokens: Client<typeof TokenService>;
  readonly audit: Client<typeof AuditService>;
  readonly health: Client<typeof Health>;
  readonly transport: Transport;
  /** A cache of secret values of one store (and name prefix), kept fresh by WatchSecrets. */
  cache(opts?: SecretCacheOptions): SecretCache;
}

/** Codes worth another try: the server (or the path to it) was unavailable, or the call was cut off. */
const TRANSIENT = new Set([Code.Unavailable, Code.DeadlineExceeded, Code.Aborted, Code.Unknown]);

/** Socket errors connect-node reports as INTERNAL although the connection, not the server, failed. */
const NETWORK_ERRNOS = new Set(["EPIPE", "ECONNRESET", "ECONNREFUSED", "ETIMEDOUT"]);

/**
 * Whether a failed call is worth another try. Besides the transient codes: CANCELED when the caller did not cancel
 * (an HTTP/2 connection closed by the peer or a proxy fails its streams with CANCEL), and INTERNAL caused by a
 * socket error (an HTTP/1.1 request written to a connection the peer had just closed: EPIPE).
 */
function isTransient(err: ConnectError, signal: AbortSignal): boolean {
  if (TRANSIENT.has(err.code)) return true;
  if (err.code === Code.Canceled) return !signal.aborted;
  const errno = (err.cause as { code?: unknown } | undefined)?.code;
  return err.code === Code.Internal && typeof errno === "string" && NETWORK_ERRNOS.has(errno);
}

/** Resolves after `ms`, or as soon as `signal` aborts. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

/** Whether a method can be retried safely: it has no side effects, or repeating it changes nothing more. */
export function isIdempotent(method: DescMethod): boolean {
  return (
    method.methodKind === "unary" &&
    (method.idempotency === Idempotency.NO_SIDE_EFFECTS || method.idempotency === Idempotency.IDEMPOTENT)
  );
}

/**
 * Retries idempotent unary calls after transient failures, with exponential backoff and full jitter. Calls with
 * side effects are never retried: a "lost" response may hide a write that happened.
 */
export function retryInterceptor(retries: number, baseMs: number): Interceptor {
  return (next) => async (req) => {
    if (!isIdempotent(req.method)) return next(req);
    for (let attempt = 0; ; attempt++) {
      try {
        return await next(req);
      } catch (err) {
        const ce = ConnectError.from(err);
        if (attempt >= retries || req.signal.aborted || !isTransient(ce, req.signal)) throw err;
        // Aborted while waiting: the next attempt fails at once with the caller's reason (canceled or deadline).
        await sleep(Math.random() * baseMs * 2 ** attempt, req.signal);
      }
    }
  };
}

function bearer(token: string): Interceptor {
  return (next) => (req) => {
    req.header.set("authorization", `Bearer ${token}`);
    return next(req);
  };
}

/** Creates clients for a Latchkey server. */
export function createLatchkeyClient(opts: LatchkeyClientOptions): LatchkeyClient {
  const interceptors: Interceptor[] = [retryInterceptor(opts.retries ?? 3, opts.retryBaseMs ?? 100)];
  if (opts.token) interceptors.push(bearer(opts.token));
  const nodeOptions = opts.tls ? { ...opts.tls } : undefined;
  const protocol = opts.protocol ?? "grpc";
  const transport =
    protocol === "grpc"
      ? createGrpcTransport({ baseUrl: opts.baseUrl, interceptors, nodeOptions })
      : protocol === "connect"
        ? createConnectTransport({
            baseUrl: opts.baseUrl,
            httpVersion: opts.httpVersion ?? "1.1",
            useBinaryFormat: !opts.json,
            interceptors,
            nodeOptions,
          })
        : createGrpcWebTransport({ baseUrl: opts.baseUrl, httpVersion: opts.httpVersion ?? "1.1", interceptors, nodeOptions });
  const client: LatchkeyClient = {
    secrets: createClient(SecretService, transport),
    stores: createClient(StoreService, transport),
    vars: createClient(VarService, transport),
    tokens: createClient(TokenService, transport),
    audit: createClient(AuditService, transport),
    health: createClient(Health, transport),
    transport,
    cache: (cacheOpts) => createSecretCache(client.secrets, cacheOpts),
  };
  return client;
}

export interface SecretCacheOptions {
  /** Default "default". */
  readonly store?: string;
  /** Only secrets under this name prefix are watched (and may be cached). */
  readonly prefix?: string;
  /** Told of watch failures (the cache reconnects by itself). */
  readonly onError?: (err: unknown) => void;
  /** Delay before reconnecting a failed watch; doubles up to 10 s. Default 200 ms. */
  readonly reconnectMs?: number;
  /**
   * While the watch is down, reads go to the server; if the server cannot be reached either, a value cached at
   * most this long ago is served rather than failing the read. Default 300000 (5 minutes); 0 never serves one.
   */
  readonly maxStaleMs?: number;
}

export interface CachedSecret {
  readonly value: string;
  readonly binaryValue: Uint8Array;
  readonly version: number;
}

/**
 * A read-through cache of secret values. The first read of a name fetches it; later reads are answered from
 * memory. A WatchSecrets stream drops an entry when its secret is rotated, updated, deleted or restored, so the
 * next read fetches the new value; a reset of the stream (history lost) drops everything. Values are cached only
 * once the watch has opened, so no change can slip between a fetch and the watch.
 *
 * Reads wait for the watch to open or to fail. Until it has opened once (the server unreachable, watching refused)
 * and after close(), reads go to the server and nothing is cached, so errors surface instead of a hang. While a
 * watch that had opened is down, reads go to the server too (nothing would tell the cache of a change); only when
 * the server cannot be reached is a cached value served, if it is recent enough (maxStaleMs). The watch resumes
 * where it stopped, so what changed meanwhile still drops its entry.
 */
export interface SecretCache {
  get(name: string): Promise<CachedSecret>;
  /** Resolves once the watch is open. */
  readonly ready: Promise<void>;
  /** How many times a cached entry was dropped because its secret changed. */
  readonly invalidations: number;
  /** Stops the watch and empties the cache; later reads go to the server. */
  close(): void;
}

interface Entry {
  readonly fetched: Promise<CachedSecret>;
  /** Once fetched: the value and when it was fetched. */
  value?: CachedSecret;
  at?: number;
}

export function createSecretCache(secrets: Client<typeof SecretService>, opts: SecretCacheOptions = {}): SecretCache {
  const store = opts.store ?? "default";
  const prefix = opts.prefix ?? "";
  const reconnectMs = opts.reconnectMs ?? 200;
  const maxStaleMs = opts.maxStaleMs ?? 300_000;
  const entries = new Map<string, Entry>();
  const ac = new AbortController();
  let invalidations = 0;
  // True from the first STARTED on: from then a resume token covers every later change, even across reconnects.
  let watching = false;
  // True while the watch stream is open.
  let connected = false;
  let markReady: () => void = () => {};
  const ready = new Promise<void>((r) => {
    markReady = r;
  });
  // Settles when the watch first opens or first fails, or the cache is closed: reads wait for this, not for ready.
  let markSettled: () => void = () => {};
  const settled = new Promise<void>((r) => {
    markSettled = r;
  });

  const drop = (name: string) => {
    if (entries.delete(name)) invalidations++;
  };

  const fetchSecret = (name: string): Promise<CachedSecret> =>
    secrets.getSecret({ store, name }).then((r) => ({
      value: r.value,
      binaryValue: r.binaryValue,
      version: r.version?.version ?? 0,
    }));

  /** Fetches a name into the cache; a failed fetch leaves no entry (unless a newer one replaced it). */
  function load(name: string): Entry {
    const entry: Entry = { fetched: fetchSecret(name) };
    entries.set(name, entry);
    entry.fetched.then(
      (value) => {
        entry.value = value;
        entry.at = Date.now();
      },
      () => {
        if (entries.get(name) === entry) entries.delete(name);
      },
    );
    return entry;
  }

  async function watch(): Promise<void> {
    let resumeToken = "";
    let backoff = reconnectMs;
    while (!ac.signal.aborted) {
      try {
        for await (const ev of secrets.watchSecrets({ store, namePrefix: prefix, resumeToken }, { signal: ac.signal })) {
          // Keep the last position the server gave (a RESET may carry none).
          if (ev.resumeToken) resumeToken = ev.resumeToken;
          backoff = reconnectMs;
          if (ev.type === SecretEventType.STARTED) {
            watching = true;
            connected = true;
            markReady();
            markSettled();
          } else if (ev.type === SecretEventType.RESET) {
            invalidations += entries.size;
            entries.clear();
          } else if (ev.name) drop(ev.name);
        }
      } catch (err) {
        if (ac.signal.aborted) return;
        opts.onError?.(err);
      }
      connected = false;
      markSettled();
      // Disconnected: whatever changed meanwhile arrives on resume; wait a little before reconnecting.
      await sleep(backoff, ac.signal);
      backoff = Math.min(backoff * 2, 10_000);
    }
  }
  void watch();

  /** A read while the watch is down: the server's answer, else (server unreachable) a recent cached value. */
  async function readThrough(name: string): Promise<CachedSecret> {
    const old = entries.get(name);
    const entry = load(name);
    try {
      return await entry.fetched;
    } catch (err) {
      const unreachable = err instanceof ConnectError && isTransient(err, ac.signal);
      if (unreachable && old?.value && old.at !== undefined && Date.now() - old.at <= maxStaleMs && !entries.has(name)) {
        entries.set(name, old);
        return old.value;
      }
      throw err;
    }
  }

  return {
    ready,
    get invalidations() {
      return invalidations;
    },
    async get(name) {
      if (!name.startsWith(prefix)) throw new ConnectError(`"${name}" is outside this cache's prefix "${prefix}"`, Code.InvalidArgument);
      await settled;
      if (!watching || ac.signal.aborted) return fetchSecret(name);
      if (!connected) return readThrough(name);
      return (entries.get(name) ?? load(name)).fetched;
    },
    close() {
      ac.abort();
      entries.clear();
      markSettled();
    },
  };
}
