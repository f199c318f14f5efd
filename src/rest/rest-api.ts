import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import type { AccessControl, Permission } from "../auth/access.js";
import { type ErrorCode, invalidArgument, LatchkeyError } from "../domain/errors.js";
import type { Principal } from "../domain/principal.js";
import { currentVersion, DEFAULT_STORE, type SecretDocument, type SecretKind } from "../domain/secret.js";
import { type StoreRecord, validateStoreName } from "../domain/store.js";
import type { Limits, Usage } from "../domain/usage.js";
import type { VarRecord } from "../domain/vars.js";
import type { RequestInfo } from "../http/request-info.js";
import type { Logger } from "../log/logger.js";
import type { Latchkey } from "../service/latchkey.js";
import type { OpenedSecret } from "../service/secret-manager.js";

export type HttpRequest = IncomingMessage | Http2ServerRequest;
export type HttpResponse = ServerResponse | Http2ServerResponse;

/**
 * The REST API: seed 003's routes for secrets, plus stores, vars and usage in the same style, all mapped onto the
 * Latchkey service the RPCs use.
 *
 * Bodies are snake_case JSON. Errors are `{ "error": "...", "code": "...", "request_id": "..." }` (plus `reason` and
 * `violations` when there are some) with the statuses below. Secret and var names may contain "/": the name is
 * everything after `/secrets/` (or `/vars/`), less an optional `/rotate` or `/verify` suffix for secrets.
 * `/v1/secrets/...` means the default store; `/v1/stores/{store}/secrets/...` names one.
 */
export interface RestApi {
  /** Whether this API owns the path (everything under /v1/ and the health routes). */
  handles(path: string): boolean;
  handle(req: HttpRequest, res: HttpResponse, info: RequestInfo): Promise<void>;
}

export const HTTP_STATUS: Record<ErrorCode, number> = {
  invalid_argument: 400,
  failed_precondition: 400,
  unauthenticated: 401,
  permission_denied: 403,
  not_found: 404,
  already_exists: 409,
  aborted: 409,
  resource_exhausted: 429,
  internal: 500,
  unavailable: 503,
};

const MAX_BODY = 256 * 1024;
const LIST_PAGE = 1000;

interface RouteContext {
  readonly req: HttpRequest;
  readonly res: HttpResponse;
  readonly principal: Principal;
  readonly store: string;
  readonly name: string;
  readonly query: URLSearchParams;
}

interface Route {
  readonly operation: string;
  readonly permission: Permission;
  run(ctx: RouteContext): Promise<void>;
}

type RouteTable = Partial<Record<string, Route>>;

/** RFC 3339 with an explicit +00:00 offset, as seed 003 writes times. */
export function isoTime(ms: number): string {
  return new Date(ms).toISOString().replace("Z", "+00:00");
}

/** REST's view of a secret with one value: seed 003's SecretValue. */
function secretValue(s: OpenedSecret) {
  return {
    name: s.doc.name,
    kind: s.doc.kind,
    version: s.version.version,
    value: s.value,
    created_at: isoTime(s.version.createdAt),
  };
}

/** REST's view of a secret's metadata. Never a value. */
export function secretMetadata(doc: SecretDocument) {
  const current = currentVersion(doc);
  return {
    id: doc.id,
    store: doc.store,
    name: doc.name,
    kind: doc.kind,
    description: doc.description,
    version: current.version,
    rotation_interval_secs: doc.rotation?.intervalSeconds ?? null,
    grace_period_secs: doc.gracePeriodSeconds,
    next_rotation_at: doc.rotation ? isoTime(doc.rotation.nextRotationAt) : null,
    last_rotated_at: isoTime(current.createdAt),
    created_at: isoTime(doc.createdAt),
    updated_at: isoTime(doc.updatedAt),
    revision: doc.revision,
  };
}

function storeView(s: StoreRecord) {
  return {
    name: s.name,
    description: s.description,
    managed_by: s.managedBy,
    created_at: isoTime(s.createdAt),
    updated_at: isoTime(s.updatedAt),
  };
}

function varView(v: VarRecord) {
  return { name: v.name, value: v.value, created_at: isoTime(v.createdAt), updated_at: isoTime(v.updatedAt) };
}

function usageView(u: { usage: Usage; limits: Limits }, store?: string) {
  return { ...(store === undefined ? {} : { store }), usage: u.usage, limits: u.limits };
}

export function createRestApi(deps: {
  latchkey: Latchkey;
  access: AccessControl;
  logger: Logger;
  ready: () => Promise<boolean>;
}): RestApi {
  const { latchkey: lk, access, logger } = deps;

  const health: Record<string, RouteTable> = {
    "/healthz": {
      GET: { operation: "GET /healthz", permission: "public", run: async ({ res }) => json(res, 200, { status: "ok" }) },
    },
    "/readyz": {
      GET: {
        operation: "GET /readyz",
        permission: "public",
        run: async ({ res }) => {
          const ready = await deps.ready().catch(() => false);
          json(res, ready ? 200 : 503, { status: ready ? "ready" : "not ready" });
        },
      },
    },
  };

  /** The secret routes, under a prefix (`/v1/secrets` or `/v1/stores/{store}/secrets`). */
  function secretRoutes(prefix: string) {
    const collection: RouteTable = {
      POST: {
        operation: `POST ${prefix}`,
        permission: "manage",
        run: async ({ req, res, principal, store }) => {
          const body = await readObject(req, ["name", "kind", "value", "description", "rotation_interval_secs", "grace_period_secs"]);
          const created = await lk.createSecret(principal, {
            store,
            name: requiredString(body, "name"),
            kind: kindOf(body) ?? "manual",
            value: optionalString(body, "value"),
            description: optionalString(body, "description"),
            rotationIntervalSeconds: optionalInt(body, "rotation_interval_secs"),
            gracePeriodSeconds: optionalInt(body, "grace_period_secs"),
          });
          json(res, 201, secretValue(created));
        },
      },
      GET: {
        operation: `GET ${prefix}`,
        permission: "manage",
        run: async ({ res, principal, store, query }) => {
          const prefixFilter = query.get("prefix") ?? undefined;
          const limit = limitOf(query);
          if (limit !== undefined) {
            const page = await lk.listSecrets(principal, {
              store,
              prefix: prefixFilter,
              pageSize: limit,
              pageToken: query.get("cursor") ?? undefined,
            });
            if (page.nextPageToken) res.setHeader("x-next-cursor", page.nextPageToken);
            json(res, 200, page.docs.map(secretMetadata));
            return;
          }
          // No limit: every secret, as seed 003 says, streamed page by page so memory stays flat.
          let page = await lk.listSecrets(principal, { store, prefix: prefixFilter, pageSize: LIST_PAGE });
          res.writeHead(200, { "content-type": "application/json", "cache-control": "no-store" });
          let first = true;
          for (;;) {
            for (const doc of page.docs) {
              writeChunk(res, (first ? "[" : ",") + JSON.stringify(secretMetadata(doc)));
              first = false;
            }
            if (!page.nextPageToken) break;
            page = await lk.listSecrets(principal, { store, prefix: prefixFilter, pageSize: LIST_PAGE, pageToken: page.nextPageToken });
          }
          res.end(first ? "[]" : "]");
        },
      },
    };
    const item: RouteTable = {
      GET: {
        operation: `GET ${prefix}/{name}`,
        permission: "read",
        run: async ({ res, principal, store, name, query }) => {
          const v = query.get("version");
          if (v !== null && !/^[1-9]\d{0,9}$/.test(v)) {
            throw invalidArgument("version", "out_of_range", "version must be a positive whole number");
          }
          json(res, 200, secretValue(await lk.getSecret(principal, { store, name }, v === null ? undefined : Number(v))));
        },
      },
      PUT: {
        operation: `PUT ${prefix}/{name}`,
        permission: "manage",
        run: async ({ req, res, principal, store, name }) => {
          const body = await readObject(req, ["value", "description", "kind", "rotation_interval_secs", "grace_period_secs"]);
          const doc = await lk.updateSecret(principal, { store, name }, {
            value: optionalString(body, "value"),
            description: optionalString(body, "description"),
            kind: kindOf(body),
            rotationIntervalSeconds: optionalInt(body, "rotation_interval_secs"),
            gracePeriodSeconds: optionalInt(body, "grace_period_secs"),
          });
          json(res, 200, secretMetadata(doc));
        },
      },
      DELETE: {
        operation: `DELETE ${prefix}/{name}`,
        permission: "manage",
        run: async ({ res, principal, store, name }) => {
          await lk.deleteSecret(principal, { store, name });
          noContent(res);
        },
      },
    };
    const rotate: RouteTable = {
      POST: {
        operation: `POST ${prefix}/{name}/rotate`,
        permission: "manage",
        run: async ({ req, res, principal, store, name }) => {
          await readObject(req, [], true);
          json(res, 200, secretValue(await lk.rotateSecret(principal, { store, name })));
        },
      },
    };
    const verify: RouteTable = {
      POST: {
        operation: `POST ${prefix}/{name}/verify`,
        permission: "read",
        run: async ({ req, res, principal, store, name }) => {
          const body = await readObject(req, ["value"]);
          const result = await lk.verifySecret(principal, { store, name }, requiredString(body, "value"));
          json(res, 200, { valid: result.valid, version: result.valid ? result.version : null });
        },
      },
    };
    return { collection, item, rotate, verify };
  }

  const defaultSecrets = secretRoutes("/v1/secrets");
  const storeSecrets = secretRoutes("/v1/stores/{store}/secrets");

  const usage: RouteTable = {
    GET: {
      operation: "GET /v1/usage",
      permission: "manage",
      run: async ({ res, principal }) => json(res, 200, usageView(await lk.usage(principal))),
    },
  };
  const stores: RouteTable = {
    POST: {
      operation: "POST /v1/stores",
      permission: "manage",
      run: async ({ req, res, principal }) => {
        const body = await readObject(req, ["name", "description", "managed_by"]);
        const rec = await lk.createStore(principal, {
          name: requiredString(body, "name"),
          description: optionalString(body, "description"),
          managedBy: optionalString(body, "managed_by"),
        });
        json(res, 201, storeView(rec));
      },
    },
    GET: {
      operation: "GET /v1/stores",
      permission: "manage",
      run: async ({ res, principal, query }) => {
        const page = await lk.listStores(principal, {
          pageSize: limitOf(query) ?? LIST_PAGE,
          pageToken: query.get("cursor") ?? undefined,
        });
        if (page.nextPageToken) res.setHeader("x-next-cursor", page.nextPageToken);
        json(res, 200, page.stores.map(storeView));
      },
    },
  };
  const store: RouteTable = {
    GET: {
      operation: "GET /v1/stores/{store}",
      permission: "manage",
      run: async ({ res, principal, store }) => json(res, 200, storeView(await lk.getStore(principal, store))),
    },
    DELETE: {
      operation: "DELETE /v1/stores/{store}",
      permission: "manage",
      run: async ({ res, principal, store, query }) => {
        const purge = query.get("purge");
        if (purge !== null && purge !== "true" && purge !== "false") {
          throw invalidArgument("purge", "type", "purge must be true or false");
        }
        await lk.deleteStore(principal, store, { purge: purge === "true" });
        noContent(res);
      },
    },
  };
  const storeUsage: RouteTable = {
    GET: {
      operation: "GET /v1/stores/{store}/usage",
      permission: "manage",
      run: async ({ res, principal, store }) => json(res, 200, usageView(await lk.usage(principal, validateStoreName(store)), store)),
    },
  };
  const vars: RouteTable = {
    GET: {
      operation: "GET /v1/stores/{store}/vars",
      permission: "read",
      run: async ({ res, principal, store, query }) => {
        const page = await lk.listVars(principal, {
          store,
          prefix: query.get("prefix") ?? undefined,
          pageSize: limitOf(query) ?? LIST_PAGE,
          pageToken: query.get("cursor") ?? undefined,
        });
        if (page.nextPageToken) res.setHeader("x-next-cursor", page.nextPageToken);
        json(res, 200, page.vars.map(varView));
      },
    },
    POST: {
      operation: "POST /v1/stores/{store}/vars",
      permission: "manage",
      run: async ({ req, res, principal, store }) => {
        const body = await readObject(req, ["vars"]);
        const list = body.vars;
        if (!Array.isArray(list)) throw invalidArgument("vars", "type", "vars must be an array of {name, value}");
        const input: unknown[] = list;
        json(res, 200, { vars: (await lk.setVars(principal, store, input)).map(varView) });
      },
    },
  };
  const varItem: RouteTable = {
    GET: {
      operation: "GET /v1/stores/{store}/vars/{name}",
      permission: "read",
      run: async ({ res, principal, store, name }) => json(res, 200, varView(await lk.getVar(principal, store, name))),
    },
    PUT: {
      operation: "PUT /v1/stores/{store}/vars/{name}",
      permission: "manage",
      run: async ({ req, res, principal, store, name }) => {
        const body = await readObject(req, ["value"]);
        if (typeof body.value !== "string") throw invalidArgument("value", body.value === undefined ? "required" : "type", "value must be a string");
        const [rec] = await lk.setVars(principal, store, [{ name, value: body.value }]);
        json(res, 200, varView(rec as VarRecord));
      },
    },
    DELETE: {
      operation: "DELETE /v1/stores/{store}/vars/{name}",
      permission: "manage",
      run: async ({ res, principal, store, name }) => {
        await lk.deleteVar(principal, store, name);
        noContent(res);
      },
    },
  };

  /** Finds the route table for a path, with the store and name it names. */
  function match(path: string): { table: RouteTable; store: string; name: string } | undefined {
    const h = health[path];
    if (h) return { table: h, store: "", name: "" };
    if (!path.startsWith("/v1/")) return undefined;
    const segs = path.slice(4).split("/");
    if (segs[segs.length - 1] === "" && segs.length > 1) segs.pop(); // one trailing slash
    const [head, ...rest] = segs;
    if (head === "secrets") return secretMatch(defaultSecrets, DEFAULT_STORE, rest);
    if (head === "usage" && rest.length === 0) return { table: usage, store: "", name: "" };
    if (head !== "stores") return undefined;
    if (rest.length === 0) return { table: stores, store: "", name: "" };
    const storeName = decodeSegment(rest[0] as string, "store");
    const [kind, ...tail] = rest.slice(1);
    if (kind === undefined) return { table: store, store: storeName, name: "" };
    if (kind === "usage" && tail.length === 0) return { table: storeUsage, store: storeName, name: "" };
    if (kind === "secrets") return secretMatch(storeSecrets, storeName, tail);
    if (kind === "vars") {
      if (tail.length === 0) return { table: vars, store: storeName, name: "" };
      return { table: varItem, store: storeName, name: tail.map((s) => decodeSegment(s, "name")).join("/") };
    }
    return undefined;
  }

  function secretMatch(routes: ReturnType<typeof secretRoutes>, storeName: string, tail: string[]) {
    if (tail.length === 0) return { table: routes.collection, store: storeName, name: "" };
    const last = tail[tail.length - 1];
    let table = routes.item;
    if (tail.length > 1 && (last === "rotate" || last === "verify")) {
      table = last === "rotate" ? routes.rotate : routes.verify;
      tail = tail.slice(0, -1);
    }
    return { table, store: storeName, name: tail.map((s) => decodeSegment(s, "name")).join("/") };
  }

  return {
    handles(path) {
      return path.startsWith("/v1/") || path === "/healthz" || path === "/readyz";
    },

    async handle(req, res, info) {
      const url = req.url ?? "/";
      const q = url.indexOf("?");
      const path = q === -1 ? url : url.slice(0, q);
      const query = new URLSearchParams(q === -1 ? "" : url.slice(q + 1));
      const method = req.method ?? "GET";
      try {
        const found = match(path);
        if (!found) {
          info.operation = `${method} ${path.slice(0, 64)}`;
          throw new LatchkeyError("not_found", "no such route", { reason: "ROUTE_NOT_FOUND" });
        }
        const route = found.table[method] ?? (method === "HEAD" ? found.table.GET : undefined);
        if (!route) {
          info.operation = `${method} ${path.slice(0, 64)}`;
          res.setHeader("allow", Object.keys(found.table).join(", "));
          json(res, 405, { error: `method ${method} not allowed here`, code: "method_not_allowed", request_id: info.id });
          info.code = "method_not_allowed";
          return;
        }
        info.operation = route.operation;
        const principal = access.authorize(route.permission, {
          authorization: headerValue(req.headers.authorization),
          ip: info.ip,
        });
        info.principal = principal;
        await route.run({ req, res, principal, store: found.store, name: found.name, query });
        info.code = "ok";
      } catch (err) {
        const e = toHttpError(err, info.id, logger);
        info.code = e.body.code;
        if (res.headersSent) {
          res.destroy();
          return;
        }
        if (e.retryAfter !== undefined) res.setHeader("retry-after", String(e.retryAfter));
        json(res, e.status, e.body);
      }
    },
  };
}

interface HttpError {
  status: number;
  retryAfter?: number;
  body: { error: string; code: string; reason?: string; violations?: unknown[]; request_id: string };
}

function toHttpError(err: unknown, requestId: string, logger: Logger): HttpError {
  if (err instanceof LatchkeyError) {
    return {
      status: err.httpStatus ?? HTTP_STATUS[err.code],
      ...(err.retryAfterSeconds === undefined ? {} : { retryAfter: err.retryAfterSeconds }),
      body: {
        error: err.message,
        code: err.code,
        ...(err.reason ? { reason: err.reason } : {}),
        ...(err.violations.length > 0 ? { violations: err.violations.map((v) => ({ ...v })) } : {}),
        request_id: requestId,
      },
    };
  }
  if (err instanceof BodyError) {
    return { status: err.status, body: { error: err.message, code: err.code, request_id: requestId } };
  }
  logger.error({ err, request_id: requestId }, "internal error");
  return { status: 500, body: { error: `internal error (request id ${requestId})`, code: "internal", request_id: requestId } };
}

/** A problem with the request body itself (size, JSON syntax), reported before any domain rule runs. */
class BodyError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

function decodeSegment(s: string, field: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    throw invalidArgument(field, "encoding", `the ${field} in the path is not valid percent-encoding`);
  }
}

function headerValue(h: string | string[] | undefined): string | undefined {
  return Array.isArray(h) ? h[0] : h;
}

function limitOf(query: URLSearchParams): number | undefined {
  const text = query.get("limit");
  if (text === null) return undefined;
  if (!/^\d{1,4}$/.test(text) || Number(text) < 1 || Number(text) > LIST_PAGE) {
    throw invalidArgument("limit", "out_of_range", `limit must be a whole number from 1 to ${LIST_PAGE}`);
  }
  return Number(text);
}

function json(res: HttpResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(text),
    "cache-control": "no-store",
  });
  res.end(text);
}

function noContent(res: HttpResponse): void {
  res.writeHead(204);
  res.end();
}

function writeChunk(res: HttpResponse, chunk: string): void {
  (res as ServerResponse).write(chunk);
}

/**
 * Reads a JSON object body of at most MAX_BODY bytes, whatever the content type (curl -d sends a form type).
 * Fields other than `allowed` are rejected, so a misspelt field is an error rather than silently ignored.
 */
async function readObject(req: HttpRequest, allowed: readonly string[], optional = false): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY) throw new BodyError(413, "resource_exhausted", `request body is larger than ${MAX_BODY} bytes`);
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString("utf8");
  if (text.trim() === "") {
    if (optional) return {};
    throw new BodyError(400, "invalid_argument", "request body must be a JSON object");
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new BodyError(400, "invalid_argument", "request body is not valid JSON");
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new BodyError(400, "invalid_argument", "request body must be a JSON object");
  }
  for (const key of Object.keys(parsed)) {
    if (!allowed.includes(key)) {
      throw invalidArgument(key.slice(0, 64), "unknown_field", `unknown field "${key.slice(0, 64)}"`);
    }
  }
  return parsed as Record<string, unknown>;
}

function optionalString(body: Record<string, unknown>, key: string, field = key): string | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "string") throw invalidArgument(field, "type", `${field} must be a string`);
  return v;
}

/** A required string; `allowEmpty` leaves the empty string to the domain rule (which gives its own reason). */
function requiredString(body: Record<string, unknown>, key: string, field = key, allowEmpty = false): string {
  const v = optionalString(body, key, field);
  if (v === undefined || (v === "" && !allowEmpty)) throw invalidArgument(field, "required", `${field} is required`);
  return v;
}

function optionalInt(body: Record<string, unknown>, field: string): number | undefined {
  const v = body[field];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || !Number.isSafeInteger(v)) throw invalidArgument(field, "type", `${field} must be a whole number`);
  return v;
}

function kindOf(body: Record<string, unknown>): SecretKind | undefined {
  const v = body.kind;
  if (v === undefined || v === null) return undefined;
  if (v !== "manual" && v !== "automatic") throw invalidArgument("kind", "enum", 'kind must be "manual" or "automatic"');
  return v;
}
