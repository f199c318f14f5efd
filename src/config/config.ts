import { readFileSync } from "node:fs";
import { isIP } from "node:net";
import { resolve } from "node:path";
import { createSecureContext } from "node:tls";
import type { Limits, UsageDimension } from "../domain/usage.js";
import type { ConnectionLimits } from "../http/server.js";

/** Config is everything Latchkey reads from its environment, validated once at start. */
export interface Config {
  /** Interface to listen on (LATCHKEY_HOST, default 127.0.0.1). */
  readonly host: string;
  /** Port serving every protocol (LATCHKEY_PORT, default 8200; 0 picks a free port). */
  readonly port: number;
  /** Bearer tokens accepted for management calls (LATCHKEY_ADMIN_TOKEN, comma-separated). Empty: generate one. */
  readonly adminTokens: readonly string[];
  /** IPs and CIDRs allowed to read (LATCHKEY_ALLOWED_IPS, default loopback). */
  readonly allowedIps: readonly string[];
  /** Peers whose X-Forwarded-For is believed (LATCHKEY_TRUSTED_PROXIES, default none). */
  readonly trustedProxies: readonly string[];
  /** Directory of the embedded store, its key file and generated token (LATCHKEY_DATA_DIR, default ./data). */
  readonly dataDir: string;
  /** The 32-byte master key (LATCHKEY_MASTER_KEY, base64). Undefined: generate one into dataDir. */
  readonly masterKey: Buffer | undefined;
  /** pino level (LOG_LEVEL, default info). */
  readonly logLevel: string;
  /** Versions kept per secret; older ones are dropped with their ciphertext (LATCHKEY_MAX_VERSIONS, default 10). */
  readonly maxVersions: number;
  /** MongoDB connection string (MONGODB_URI). Set: MongoDB is the store; unset: the embedded SQLite store. */
  readonly mongodbUri: string | undefined;
  /** MongoDB database (LATCHKEY_MONGODB_DB, default "latchkey"). */
  readonly mongodbDb: string;
  /** Tokens of service identities, which own managed stores (LATCHKEY_SERVICE_TOKENS, service=token pairs). */
  readonly serviceTokens: readonly { readonly service: string; readonly token: string }[];
  /** Earlier master keys whose data keys are re-wrapped at start (LATCHKEY_PREVIOUS_MASTER_KEYS, comma-separated). */
  readonly previousMasterKeys: readonly Buffer[];
  /** How long a deleted secret stays restorable, in seconds; 0 deletes for good at once (LATCHKEY_DELETE_RETENTION, default 7 days). */
  readonly deleteRetentionSeconds: number;
  /** Failed verifications allowed per minute, per caller and per secret (LATCHKEY_VERIFY_FAILURES_PER_CALLER, _PER_SECRET). */
  readonly verifyLimits: { readonly perCaller: number; readonly perSecret: number };
  /** TLS (LATCHKEY_TLS_CERT, LATCHKEY_TLS_KEY: PEM file paths) and mutual TLS (LATCHKEY_TLS_CLIENT_CA). */
  readonly tls: { readonly cert: Buffer; readonly key: Buffer; readonly clientCa: Buffer | undefined } | undefined;
  /** On SIGTERM: report not ready for this long before refusing connections (LATCHKEY_DRAIN_DELAY_MS, default 0). */
  readonly drainDelayMs: number;
  /** Then wait at most this long for calls in flight (LATCHKEY_DRAIN_TIMEOUT_MS, default 10000). */
  readonly drainTimeoutMs: number;
  /** Mirror every audit entry to stdout as a JSON line (LATCHKEY_AUDIT_STDOUT=true). */
  readonly auditStdout: boolean;
  /**
   * Reads need a token as well as an allowed IP (LATCHKEY_READS_REQUIRE_TOKEN=true). Behind a sidecar every caller
   * comes from the sidecar's address, so the IP alone tells callers apart no more.
   */
  readonly readsRequireToken: boolean;
  /**
   * Answer unary gRPC and Connect calls on the lean path (LATCHKEY_UNARY_FAST_PATH, default true); false sends
   * every call through connect-node, for comparison or as a fallback.
   */
  readonly unaryFastPath: boolean;
  /** What one connection may take of the server: its time to send, its streams. */
  readonly connectionLimits: ConnectionLimits;
  /** Limits for the whole service and for each store (LATCHKEY_QUOTAS, LATCHKEY_STORE_QUOTAS). */
  readonly quotas: { readonly global: Limits; readonly perStore: Limits };
}

/** ConfigError lists every problem found in the environment. */
export class ConfigError extends Error {
  constructor(readonly problems: readonly string[]) {
    super(`invalid configuration: ${problems.join("; ")}`);
    this.name = "ConfigError";
  }
}

const LOG_LEVELS = new Set(["fatal", "error", "warn", "info", "debug", "trace", "silent"]);
const LOOPBACK = ["127.0.0.0/8", "::1"];

/** Reads and validates the configuration; the only reader of the environment. Throws ConfigError. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const problems: string[] = [];
  const str = (key: string, fallback: string): string => {
    const v = env[key]?.trim();
    return v === undefined || v === "" ? fallback : v;
  };

  const host = str("LATCHKEY_HOST", "127.0.0.1");
  if (host !== "localhost" && isIP(host) === 0) problems.push(`LATCHKEY_HOST: "${host}" is not an IP address`);

  const portText = str("LATCHKEY_PORT", "8200");
  const port = Number(portText);
  if (!/^\d+$/.test(portText) || port > 65535) {
    // Kubernetes sets LATCHKEY_PORT=tcp://… for a Service named "latchkey" (service links).
    const hint = portText.startsWith("tcp://") ? " (a Kubernetes service link: set enableServiceLinks: false)" : "";
    problems.push(`LATCHKEY_PORT: "${portText}" is not a port number${hint}`);
  }

  const adminTokens = list(env.LATCHKEY_ADMIN_TOKEN);
  for (const t of adminTokens) {
    if (t.length < 16) problems.push("LATCHKEY_ADMIN_TOKEN: every token must be at least 16 characters");
    else if (!/^[\x21-\x7e]+$/.test(t)) problems.push("LATCHKEY_ADMIN_TOKEN: tokens must be printable ASCII without spaces");
  }

  const allowedIps = env.LATCHKEY_ALLOWED_IPS === undefined ? LOOPBACK : list(env.LATCHKEY_ALLOWED_IPS);
  for (const a of allowedIps) if (!isIpOrCidr(a)) problems.push(`LATCHKEY_ALLOWED_IPS: "${a}" is not an IP or CIDR`);
  const trustedProxies = list(env.LATCHKEY_TRUSTED_PROXIES);
  for (const a of trustedProxies) if (!isIpOrCidr(a)) problems.push(`LATCHKEY_TRUSTED_PROXIES: "${a}" is not an IP or CIDR`);

  const dataDir = resolve(str("LATCHKEY_DATA_DIR", "./data"));

  let masterKey: Buffer | undefined;
  const mk = env.LATCHKEY_MASTER_KEY?.trim();
  if (mk) {
    const decoded = /^[A-Za-z0-9+/_-]+={0,2}$/.test(mk) ? Buffer.from(mk, "base64") : Buffer.alloc(0);
    if (decoded.length !== 32) problems.push("LATCHKEY_MASTER_KEY: must be 32 bytes, base64-encoded (openssl rand -base64 32)");
    else masterKey = decoded;
  }

  const logLevel = str("LOG_LEVEL", "info").toLowerCase();
  if (!LOG_LEVELS.has(logLevel)) problems.push(`LOG_LEVEL: "${logLevel}" is not one of ${[...LOG_LEVELS].join(", ")}`);

  const mvText = str("LATCHKEY_MAX_VERSIONS", "10");
  const maxVersions = Number(mvText);
  if (!/^\d+$/.test(mvText) || maxVersions < 2 || maxVersions > 1000) {
    problems.push(`LATCHKEY_MAX_VERSIONS: "${mvText}" must be a whole number from 2 to 1000`);
  }

  const serviceTokens: { service: string; token: string }[] = [];
  for (const pair of list(env.LATCHKEY_SERVICE_TOKENS)) {
    const eq = pair.indexOf("=");
    const service = eq > 0 ? pair.slice(0, eq) : "";
    const token = eq > 0 ? pair.slice(eq + 1) : "";
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/.test(service)) {
      problems.push("LATCHKEY_SERVICE_TOKENS: each entry is service=token, the service named with letters, digits, _ . -");
    } else if (token.length < 16 || !/^[\x21-\x7e]+$/.test(token)) {
      problems.push(`LATCHKEY_SERVICE_TOKENS: the token of "${service}" must be at least 16 printable characters`);
    } else {
      serviceTokens.push({ service, token });
    }
  }
  if (new Set(adminTokens).size !== adminTokens.length) problems.push("LATCHKEY_ADMIN_TOKEN: a token is listed twice");
  const serviceSet = new Set(serviceTokens.map((s) => s.token));
  if (serviceSet.size !== serviceTokens.length || adminTokens.some((t) => serviceSet.has(t))) {
    problems.push("LATCHKEY_SERVICE_TOKENS: every token must be distinct, and none may also be an admin token");
  }

  const previousMasterKeys: Buffer[] = [];
  for (const text of list(env.LATCHKEY_PREVIOUS_MASTER_KEYS)) {
    const decoded = /^[A-Za-z0-9+/_-]+={0,2}$/.test(text) ? Buffer.from(text, "base64") : Buffer.alloc(0);
    if (decoded.length !== 32) problems.push("LATCHKEY_PREVIOUS_MASTER_KEYS: every key must be 32 bytes, base64-encoded");
    else previousMasterKeys.push(decoded);
  }

  const retentionText = str("LATCHKEY_DELETE_RETENTION", "604800");
  const deleteRetentionSeconds = Number(retentionText);
  if (!/^\d{1,10}$/.test(retentionText) || deleteRetentionSeconds > 315_360_000) {
    problems.push(`LATCHKEY_DELETE_RETENTION: "${retentionText}" must be a whole number of seconds (0 to 315360000)`);
  }

  const perCallerText = str("LATCHKEY_VERIFY_FAILURES_PER_CALLER", "20");
  const perSecretText = str("LATCHKEY_VERIFY_FAILURES_PER_SECRET", "60");
  for (const [key, text] of [
    ["LATCHKEY_VERIFY_FAILURES_PER_CALLER", perCallerText],
    ["LATCHKEY_VERIFY_FAILURES_PER_SECRET", perSecretText],
  ] as const) {
    if (!/^\d{1,7}$/.test(text) || Number(text) < 1) problems.push(`${key}: "${text}" must be a whole number of at least 1`);
  }
  const readPem = (key: string): Buffer | undefined => {
    const path = env[key]?.trim();
    if (!path) return undefined;
    try {
      return readFileSync(path);
    } catch {
      problems.push(`${key}: cannot read "${path}"`);
      return undefined;
    }
  };
  const cert = readPem("LATCHKEY_TLS_CERT");
  const tlsKey = readPem("LATCHKEY_TLS_KEY");
  const clientCa = readPem("LATCHKEY_TLS_CLIENT_CA");
  if ((cert === undefined) !== (tlsKey === undefined) && problems.every((p) => !p.startsWith("LATCHKEY_TLS"))) {
    problems.push("LATCHKEY_TLS_CERT and LATCHKEY_TLS_KEY: give both, or neither");
  }
  if (clientCa !== undefined && cert === undefined) problems.push("LATCHKEY_TLS_CLIENT_CA: needs LATCHKEY_TLS_CERT and LATCHKEY_TLS_KEY");
  const tls = cert && tlsKey ? { cert, key: tlsKey, clientCa } : undefined;
  if (tls) {
    // Load them now, so a file that is not a certificate, or a key that does not match it, is a configuration
    // error naming the variables rather than a failure at listen time.
    try {
      createSecureContext({ cert: tls.cert, key: tls.key });
    } catch (err) {
      problems.push(`LATCHKEY_TLS_CERT/LATCHKEY_TLS_KEY: not a usable PEM certificate and matching key (${tlsReason(err)})`);
    }
    if (tls.clientCa) {
      try {
        createSecureContext({ ca: tls.clientCa });
        if (!tls.clientCa.toString("latin1").includes("-----BEGIN CERTIFICATE-----")) throw new Error("no certificate");
      } catch (err) {
        problems.push(`LATCHKEY_TLS_CLIENT_CA: not a PEM CA certificate (${tlsReason(err)})`);
      }
    }
  }
  const msOf = (key: string, fallback: string): number => {
    const text = str(key, fallback);
    if (!/^\d{1,7}$/.test(text)) problems.push(`${key}: "${text}" must be a whole number of milliseconds`);
    return Number(text);
  };
  const drainDelayMs = msOf("LATCHKEY_DRAIN_DELAY_MS", "0");
  const drainTimeoutMs = msOf("LATCHKEY_DRAIN_TIMEOUT_MS", "10000");
  const positiveMs = (key: string, fallback: string): number => {
    const ms = msOf(key, fallback);
    if (ms === 0) problems.push(`${key}: must be at least 1 ms`);
    return ms;
  };
  const streamsText = str("LATCHKEY_MAX_CONCURRENT_STREAMS", "256");
  const connectionLimits: ConnectionLimits = {
    idleTimeoutMs: positiveMs("LATCHKEY_IDLE_TIMEOUT_MS", "10000"),
    headersTimeoutMs: positiveMs("LATCHKEY_HEADERS_TIMEOUT_MS", "15000"),
    requestTimeoutMs: positiveMs("LATCHKEY_REQUEST_TIMEOUT_MS", "60000"),
    maxConcurrentStreams: Number(streamsText),
  };
  if (connectionLimits.headersTimeoutMs > connectionLimits.requestTimeoutMs) {
    problems.push("LATCHKEY_HEADERS_TIMEOUT_MS: must not be longer than LATCHKEY_REQUEST_TIMEOUT_MS");
  }
  const streams = connectionLimits.maxConcurrentStreams;
  if (!Number.isInteger(streams) || streams < 1 || streams > 65_535) {
    problems.push(`LATCHKEY_MAX_CONCURRENT_STREAMS: "${streamsText}" must be a whole number from 1 to 65535`);
  }

  const bool = (key: string, fallback = false): boolean => {
    const text = str(key, String(fallback)).toLowerCase();
    if (text !== "true" && text !== "false") problems.push(`${key}: must be true or false`);
    return text === "true";
  };
  const auditStdout = bool("LATCHKEY_AUDIT_STDOUT");
  const readsRequireToken = bool("LATCHKEY_READS_REQUIRE_TOKEN");
  const unaryFastPath = bool("LATCHKEY_UNARY_FAST_PATH", true);

  const quotas = {
    global: parseLimits(env.LATCHKEY_QUOTAS, "LATCHKEY_QUOTAS", ["stores", "secrets", "versions", "vars", "bytes"], problems),
    perStore: parseLimits(env.LATCHKEY_STORE_QUOTAS, "LATCHKEY_STORE_QUOTAS", ["secrets", "versions", "vars", "bytes"], problems),
  };

  const mongodbUri = env.MONGODB_URI?.trim() || undefined;
  if (mongodbUri !== undefined && !/^mongodb(\+srv)?:\/\//.test(mongodbUri)) {
    problems.push("MONGODB_URI: must start with mongodb:// or mongodb+srv://");
  }
  const mongodbDb = str("LATCHKEY_MONGODB_DB", "latchkey");
  if (!/^[A-Za-z0-9_-]{1,63}$/.test(mongodbDb)) problems.push(`LATCHKEY_MONGODB_DB: "${mongodbDb}" is not a valid database name`);
  if (mongodbUri !== undefined) {
    // The generated key and token files are a convenience of the embedded store on one machine; replicas sharing
    // MongoDB must share one master key and token, so they must be given.
    if (!mk) problems.push("LATCHKEY_MASTER_KEY: required with MONGODB_URI (every replica needs the same master key)");
    if (adminTokens.length === 0) problems.push("LATCHKEY_ADMIN_TOKEN: required with MONGODB_URI");
  }

  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze({
    host,
    port,
    adminTokens: Object.freeze(adminTokens),
    allowedIps: Object.freeze(allowedIps),
    trustedProxies: Object.freeze(trustedProxies),
    dataDir,
    masterKey,
    logLevel,
    maxVersions,
    mongodbUri,
    mongodbDb,
    serviceTokens: Object.freeze(serviceTokens),
    previousMasterKeys: Object.freeze(previousMasterKeys),
    deleteRetentionSeconds,
    verifyLimits: Object.freeze({ perCaller: Number(perCallerText), perSecret: Number(perSecretText) }),
    auditStdout,
    readsRequireToken,
    unaryFastPath,
    tls,
    drainDelayMs,
    drainTimeoutMs,
    connectionLimits: Object.freeze(connectionLimits),
    quotas: Object.freeze({ global: Object.freeze(quotas.global), perStore: Object.freeze(quotas.perStore) }),
  });
}

/** Parses "secrets=1000,bytes=10485760" into limits, reporting unknown dimensions and bad numbers. */
function parseLimits(text: string | undefined, key: string, dims: readonly UsageDimension[], problems: string[]): Limits {
  const limits: Limits = {};
  for (const pair of list(text)) {
    const eq = pair.indexOf("=");
    const dim = eq < 0 ? pair : pair.slice(0, eq);
    const value = eq < 0 ? "" : pair.slice(eq + 1);
    if (!(dims as readonly string[]).includes(dim)) {
      problems.push(`${key}: "${dim}" is not one of ${dims.join(", ")}`);
    } else if (!/^\d{1,15}$/.test(value)) {
      problems.push(`${key}: ${dim} must be a whole number`);
    } else {
      limits[dim as UsageDimension] = Number(value);
    }
  }
  return limits;
}

function list(v: string | undefined): string[] {
  return (v ?? "")
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
}

/** Whether `s` is an IPv4/IPv6 address or a CIDR block of one. */
export function isIpOrCidr(s: string): boolean {
  const [addr, bits, extra] = s.split("/");
  if (extra !== undefined || addr === undefined) return false;
  const family = isIP(addr);
  if (family === 0) return false;
  if (bits === undefined) return true;
  if (!/^\d{1,3}$/.test(bits)) return false;
  return Number(bits) <= (family === 4 ? 32 : 128);
}

/** OpenSSL's reason without its error-code prefix ("error:0480006C:PEM routines::no start line" -> "no start line"). */
function tlsReason(err: unknown): string {
  const m = err instanceof Error ? err.message : String(err);
  return m.replace(/^error:[0-9A-F]+:[^:]*:[^:]*:/, "").trim() || m;
}
