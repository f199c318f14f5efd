import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createContextValues } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { SecretService } from "../gen/latchkey/v1/secret_service_pb.js";
import { StoreService } from "../gen/latchkey/v1/store_service_pb.js";
import { VarService } from "../gen/latchkey/v1/var_service_pb.js";
import { TokenService } from "../gen/latchkey/v1/token_service_pb.js";
import { AuditService } from "../gen/latchkey/v1/audit_service_pb.js";
import { Health } from "../gen/grpc/health/v1/health_pb.js";
import * as ReflectionV1 from "../gen/grpc/reflection/v1/reflection_pb.js";
import * as ReflectionV1alpha from "../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { createAuditor } from "./audit/auditor.js";
import { REST_POLICY, RPC_POLICY } from "./auth/policy.js";
import { createMetrics, type Metrics } from "./metrics/metrics.js";
import { createHealthImpl } from "./rpc/health.js";
import { createReflection } from "./rpc/reflection.js";
import { createAuditServiceImpl, createTokenServiceImpl } from "./rpc/token-service.js";
import { createTokenManager } from "./service/tokens.js";
import { createVerifyLimiter } from "./service/verify-limiter.js";
import { createAccessControl } from "./auth/access.js";
import type { Config } from "./config/config.js";
import { createEnvelope, type MasterKey, masterKeyFrom } from "./crypto/envelope.js";
import { DEFAULT_STORE } from "./domain/secret.js";
import { type RequestInfo, requestIdFrom } from "./http/request-info.js";
import { instrumentRpcResponse } from "./http/rpc-instrument.js";
import { createDualServer, createTlsServer, type DualServer, type RequestHandler } from "./http/server.js";
import { createLogger, type Logger } from "./log/logger.js";
import { createRestApi } from "./rest/rest-api.js";
import { createRpcInterceptor, kRequestInfo } from "./rpc/interceptor.js";
import { createSecretServiceImpl } from "./rpc/secret-service.js";
import { createStoreServiceImpl } from "./rpc/store-service.js";
import { createVarServiceImpl } from "./rpc/var-service.js";
import { createUnaryFastPath, dropUnholdableTimeout, type ServiceRoute } from "./rpc/unary-fast-path.js";
import { type Clock, systemClock } from "./scheduler/clock.js";
import { createRotationScheduler, type RotationScheduler } from "./scheduler/rotation-scheduler.js";
import { createLatchkey, type Latchkey } from "./service/latchkey.js";
import { createQuotaGuard } from "./service/quotas.js";
import { createSecretManager, type SecretManager } from "./service/secret-manager.js";
import { createSqliteStorage } from "./storage/sqlite/sqlite-storage.js";
import type { Storage } from "./storage/storage.js";

/** A running Latchkey: one port, every protocol. */
export interface App {
  /** http://host:port of the listening socket. */
  readonly url: string;
  readonly port: number;
  readonly manager: SecretManager;
  readonly latchkey: Latchkey;
  readonly scheduler: RotationScheduler;
  readonly storage: Storage;
  readonly logger: Logger;
  readonly metrics: Metrics;
  /** Drains in-flight calls (at most `graceMs`), stops the scheduler and closes the store. */
  close(graceMs?: number): Promise<void>;
}

export interface AppOverrides {
  readonly logger?: Logger;
  readonly clock?: Clock;
  readonly storage?: Storage;
}

const DB_FILE = "latchkey.db";
const MASTER_KEY_FILE = "master.key";
const ADMIN_TOKEN_FILE = "admin.token";

/** The composition root: builds every part from the config and starts listening. */
export async function createApp(config: Config, overrides: AppOverrides = {}): Promise<App> {
  const logger = overrides.logger ?? createLogger(config.logLevel);
  const clock = overrides.clock ?? systemClock;
  const masterKey = resolveMasterKey(config, logger, true) as MasterKey;
  const adminTokens =
    config.adminTokens.length > 0
      ? config.adminTokens
      : [embeddedSecret(config.dataDir, ADMIN_TOKEN_FILE, "admin token", logger, () => `lk_${randomBytes(32).toString("base64url")}`)];

  const metrics = createMetrics({ knownOps: knownOperations() });
  const storage = metrics.instrument(overrides.storage ?? (await openStorage(config, logger)));
  const envelope = createEnvelope({
    masterKey,
    previousMasterKeys: config.previousMasterKeys.map(masterKeyFrom),
    storage,
    clock,
  });
  const manager = createSecretManager({
    storage,
    envelope,
    clock,
    logger,
    maxVersions: config.maxVersions,
    deleteRetentionSeconds: config.deleteRetentionSeconds,
  });
  const latchkey = createLatchkey({
    storage,
    manager,
    envelope,
    quotas: createQuotaGuard(storage, config.quotas),
    clock,
    logger,
    maxVersions: config.maxVersions,
    verifyLimiter: createVerifyLimiter(config.verifyLimits, clock),
  });
  const auditor = createAuditor({ storage, logger, mirror: config.auditStdout });
  try {
    const rewrapped = await envelope.rewrapAll();
    if (rewrapped > 0) logger.info({ rewrapped }, `re-wrapped ${rewrapped} data keys under master key ${masterKey.id}`);
    await envelope.check(DEFAULT_STORE);
    await latchkey.ensureDefaultStore();
  } catch (err) {
    await storage.close();
    throw err;
  }

  const scheduler = createRotationScheduler({
    storage,
    rotate: async (doc) => {
      const dueAt = doc.deletion ? doc.deletion.purgeAt : (doc.rotation?.nextRotationAt ?? clock.now());
      const done = await auditor.system(doc.deletion ? "scheduler/purge" : "scheduler/rotate", () => manager.runDue(doc));
      if (done !== undefined) metrics.rotation(done === 0 ? "purged" : "rotated", (clock.now() - dueAt) / 1000);
      return done;
    },
    onChange: (at) => metrics.feedLag((clock.now() - at) / 1000),
    clock,
    logger,
  });

  const access = createAccessControl({
    adminTokens,
    serviceTokens: config.serviceTokens,
    allowedIps: config.allowedIps,
    trustedProxies: config.trustedProxies,
    tokens: storage,
    clock,
    readsRequireToken: config.readsRequireToken,
  });
  const tokens = createTokenManager({ storage, clock, onRevoke: (hash) => access.forgetToken(hash) });
  let draining = false;
  const drain = new AbortController();
  /** Ready: not draining, and the store answers. /readyz and the gRPC health service both report this. */
  const ready = async () => {
    if (draining) return false;
    await storage.ping();
    return true;
  };
  const served = [SecretService, StoreService, VarService, TokenService, AuditService];
  const reflection = createReflection([...served, Health, ReflectionV1.ServerReflection, ReflectionV1alpha.ServerReflection]);
  const rest = createRestApi({
    metrics,
    latchkey,
    access,
    auditor,
    tokens,
    auditLog: storage,
    logger,
    ready,
  });

  const infos = new WeakMap<object, RequestInfo>();
  const services: ServiceRoute[] = [
    { service: SecretService, impl: createSecretServiceImpl({ latchkey, drain: drain.signal }) },
    { service: StoreService, impl: createStoreServiceImpl({ latchkey }) },
    { service: VarService, impl: createVarServiceImpl({ latchkey }) },
    { service: TokenService, impl: createTokenServiceImpl({ tokens }) },
    { service: AuditService, impl: createAuditServiceImpl({ storage, auditor }) },
    { service: Health, impl: createHealthImpl({ ready, services: served.map((s) => s.typeName), drain: drain.signal }) },
    { service: ReflectionV1.ServerReflection, impl: reflection.v1 },
    { service: ReflectionV1alpha.ServerReflection, impl: reflection.v1alpha },
  ] as ServiceRoute[];
  const interceptors = [createRpcInterceptor({ access, auditor, logger })];
  // Batches carry up to 100 values of up to 64 KiB.
  const readMaxBytes = 8 * 1024 * 1024;
  const jsonOptions = { ignoreUnknownFields: false };
  const rpc = connectNodeAdapter({
    routes: (router) => {
      for (const { service, impl } of services) router.service(service, impl as never);
    },
    interceptors,
    contextValues: (req) => createContextValues().set(kRequestInfo, infos.get(req)),
    readMaxBytes,
    jsonOptions,
  });
  const fastPath = config.unaryFastPath
    ? createUnaryFastPath({
        services,
        interceptors,
        readMaxBytes,
        jsonOptions,
        contextValues: (info) => createContextValues().set(kRequestInfo, info),
      })
    : undefined;

  const handler: RequestHandler = (req, res) => {
    const peer = req.socket?.remoteAddress;
    const forwarded = req.headers["x-forwarded-for"];
    const info: RequestInfo = {
      id: requestIdFrom(req.headers),
      start: performance.now(),
      peer,
      ip: access.clientIp(peer, Array.isArray(forwarded) ? forwarded.join(",") : forwarded),
    };
    res.setHeader("x-request-id", info.id);
    res.once("close", () => {
      // Closed before the response was complete: the client went away (or the call was cut off at shutdown).
      if (info.code === undefined && !res.writableFinished) info.code = "canceled";
      logRequest(logger, metrics, info, req.method, res.statusCode);
    });
    const path = req.url ?? "/";
    if (rest.handles(path)) {
      void rest.handle(req, res, info);
      return;
    }
    // Until the interceptor runs, the path names the procedure; failures before it (undecodable requests) are
    // known only by the grpc-status sent, so watch for it.
    const q = path.indexOf("?");
    info.operation = (q === -1 ? path : path.slice(0, q)).slice(1, 160);
    if (fastPath?.(req, res, info)) return;
    dropUnholdableTimeout(req.headers);
    infos.set(req, info);
    instrumentRpcResponse(res, info, req);
    rpc(req, res);
  };

  let server: DualServer;
  let bound: { port: number; host: string };
  try {
    server = config.tls ? createTlsServer(handler, config.tls, config.connectionLimits) : createDualServer(handler, config.connectionLimits);
    bound = await server.listen(config.port, config.host);
  } catch (err) {
    await storage.close();
    throw err;
  }
  await scheduler.start();
  const host = bound.host.includes(":") ? `[${bound.host}]` : bound.host;

  let closing: Promise<void> | undefined;
  return {
    url: `${config.tls ? "https" : "http"}://${host}:${bound.port}`,
    port: bound.port,
    manager,
    latchkey,
    scheduler,
    storage,
    logger,
    metrics,
    close(graceMs = config.drainTimeoutMs) {
      closing ??= (async () => {
        // Not ready first (probes, health watches), so meshes and load balancers stop sending; then refuse new
        // connections, let calls in flight finish within the grace period, end the streams, close the store.
        draining = true;
        if (config.drainDelayMs > 0) await new Promise((r) => setTimeout(r, config.drainDelayMs));
        drain.abort();
        await server.close(graceMs);
        await scheduler.stop();
        await auditor.flush();
        await storage.close();
      })();
      return closing;
    },
  };
}

/** MongoDB when MONGODB_URI is set, else the embedded SQLite file in the data directory. */
export async function openStorage(config: Config, logger: Logger): Promise<Storage> {
  if (config.mongodbUri) {
    // Loaded only when used: the driver is a tenth of a second of start-up on these machines.
    const { createMongoStorage } = await import("./storage/mongodb/mongo-storage.js");
    return createMongoStorage({ uri: config.mongodbUri, dbName: config.mongodbDb, logger });
  }
  return createSqliteStorage(join(config.dataDir, DB_FILE));
}

/** The Connect code an HTTP status stands for, when nothing more precise was recorded. */
const HTTP_CODES: Record<number, string> = {
  400: "invalid_argument",
  401: "unauthenticated",
  403: "permission_denied",
  404: "not_found",
  408: "deadline_exceeded",
  409: "already_exists",
  413: "resource_exhausted",
  429: "resource_exhausted",
  499: "canceled",
  501: "unimplemented",
  503: "unavailable",
  504: "deadline_exceeded",
};

/** Every operation name metrics may use as a label: REST route templates and RPC procedures. */
function knownOperations(): Set<string> {
  const rpcs = Object.keys(RPC_POLICY).map((k) => k.replace(/\.(\w+)$/, "/$1"));
  return new Set([...Object.keys(REST_POLICY), ...rpcs]);
}

function logRequest(logger: Logger, metrics: Metrics, info: RequestInfo, method: string | undefined, status: number): void {
  const probe =
    info.operation === "GET /healthz" || info.operation === "GET /readyz" || info.operation?.startsWith("grpc.health.v1.") === true;
  const entry = {
    request_id: info.id,
    op: info.operation ?? `${method ?? "?"} (unrouted)`,
    code: info.code ?? (status >= 400 ? (HTTP_CODES[status] ?? `http_${status}`) : "unknown"),
    status,
    duration_ms: Math.round((performance.now() - info.start) * 1000) / 1000,
    peer: info.ip,
  };
  metrics.request(entry.op, entry.code, entry.duration_ms / 1000);
  if (probe) logger.debug(entry, "request");
  else logger.info(entry, "request");
}

/**
 * The master key: LATCHKEY_MASTER_KEY, else (embedded store only) the key file in the data directory, generated
 * there on first start when `create` is set. Undefined when there is none and `create` is not set.
 */
export function resolveMasterKey(config: Config, logger: Logger, create: boolean): MasterKey | undefined {
  if (config.masterKey) return masterKeyFrom(config.masterKey);
  const path = join(config.dataDir, MASTER_KEY_FILE);
  if (!create && !existsSync(path)) return undefined;
  const text = embeddedSecret(config.dataDir, MASTER_KEY_FILE, "master key", logger, () => randomBytes(32).toString("base64"));
  const key = Buffer.from(text, "base64");
  if (key.length !== 32) throw new Error(`${path} does not hold a base64 32-byte key`);
  return masterKeyFrom(key);
}

/**
 * Reads a secret the embedded setup generates on first start (the master key, the admin token) from the data
 * directory, creating it with mode 0600 if absent.
 */
function embeddedSecret(dataDir: string, file: string, what: string, logger: Logger, generate: () => string): string {
  const path = join(dataDir, file);
  if (!existsSync(path)) {
    mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    try {
      writeFileSync(path, `${generate()}\n`, { mode: 0o600, flag: "wx" });
      logger.warn({ path }, `no ${what} configured: generated one into ${path} (keep it safe; set it explicitly in production)`);
    } catch (err) {
      // Another process sharing the data directory created it first: use theirs.
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    }
  }
  return readFileSync(path, "utf8").trim();
}
