import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import type { AccessControl, Permission } from "../auth/access.js";
import { type ErrorCode, invalidArgument, LatchkeyError } from "../domain/errors.js";
import { currentVersion, DEFAULT_STORE, type SecretDocument, type SecretKind } from "../domain/secret.js";
import type { RequestInfo } from "../http/request-info.js";
import type { Logger } from "../log/logger.js";
import type { OpenedSecret, SecretManager } from "../service/secret-manager.js";

export type HttpRequest = IncomingMessage | Http2ServerRequest;
export type HttpResponse = ServerResponse | Http2ServerResponse;

/**
 * The REST API of seed 003, mapped onto the same SecretManager as the RPCs.
 *
 * Bodies are snake_case JSON; errors are `{ "error": "..." }` with the statuses below. Secret names may contain
 * "/", so the name is everything between `/v1/secrets/` and an optional `/rotate` or `/verify` suffix.
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

interface Route {
  readonly operation: string;
  readonly permission: Permission;
  run(ctx: RouteContext): Promise<void>;
}

interface RouteContext {
  readonly req: HttpRequest;
  readonly res: HttpResponse;
  readonly name: string;
  readonly query: URLSearchParams;
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

/** RFC 3339 with an explicit +00:00 offset, as seed 003 writes times. */
export function isoTime(ms: number): string {
  return new Date(ms).toISOString().replace("Z", "+00:00");
}

export function createRestApi(deps: {
  manager: SecretManager;
  access: AccessControl;
  logger: Logger;
  ready: () => Promise<boolean>;
}): RestApi {
  const { manager, access, logger } = deps;
  const ref = (name: string) => ({ store: DEFAULT_STORE, name });

  const routes = {
    healthz: {
      GET: { operation: "GET /healthz", permission: "public", run: async ({ res }) => json(res, 200, { status: "ok" }) },
    },
    readyz: {
      GET: {
        operation: "GET /readyz",
        permission: "public",
        run: async ({ res }) => {
          const ready = await deps.ready().catch(() => false);
          json(res, ready ? 200 : 503, { status: ready ? "ready" : "not ready" });
        },
      },
    },
    collection: {
      POST: {
        operation: "POST /v1/secrets",
        permission: "admin",
        run: async ({ req, res }) => {
          const body = await readObject(req, [
            "name",
            "kind",
            "value",
            "description",
            "rotation_interval_secs",
            "grace_period_secs",
          ]);
          const created = await manager.create({
            store: DEFAULT_STORE,
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
        operation: "GET /v1/secrets",
        permission: "admin",
        run: async ({ res, query }) => {
          const prefix = query.get("prefix") ?? undefined;
          const limitText = query.get("limit");
          if (limitText !== null) {
            if (!/^\d{1,4}$/.test(limitText) || Number(limitText) < 1 || Number(limitText) > LIST_PAGE) {
              throw invalidArgument("limit", "out_of_range", `limit must be a whole number from 1 to ${LIST_PAGE}`);
            }
            const page = await manager.list({
              store: DEFAULT_STORE,
              prefix,
              pageSize: Number(limitText),
              pageToken: query.get("cursor") ?? undefined,
            });
            if (page.nextPageToken) res.setHeader("x-next-cursor", page.nextPageToken);
            json(res, 200, page.docs.map(secretMetadata));
            return;
          }
          // No limit: every secret, as seed 003 says, streamed page by page so memory stays flat.
          let page = await manager.list({ store: DEFAULT_STORE, prefix, pageSize: LIST_PAGE });
          res.writeHead(200, { "content-type": "application/json" });
          let first = true;
          for (;;) {
            for (const doc of page.docs) {
              (res as ServerResponse).write((first ? "[" : ",") + JSON.stringify(secretMetadata(doc)));
              first = false;
            }
            if (!page.nextPageToken) break;
            page = await manager.list({ store: DEFAULT_STORE, prefix, pageSize: LIST_PAGE, pageToken: page.nextPageToken });
          }
          res.end(first ? "[]" : "]");
        },
      },
    },
    item: {
      GET: {
        operation: "GET /v1/secrets/{name}",
        permission: "read",
        run: async ({ res, name, query }) => {
          const v = query.get("version");
          if (v !== null && !/^[1-9]\d{0,9}$/.test(v)) {
            throw invalidArgument("version", "out_of_range", "version must be a positive whole number");
          }
          json(res, 200, secretValue(await manager.get(ref(name), v === null ? undefined : Number(v))));
        },
      },
      PUT: {
        operation: "PUT /v1/secrets/{name}",
        permission: "admin",
        run: async ({ req, res, name }) => {
          const body = await readObject(req, ["value", "description", "kind", "rotation_interval_secs", "grace_period_secs"]);
          const doc = await manager.update(ref(name), {
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
        operation: "DELETE /v1/secrets/{name}",
        permission: "admin",
        run: async ({ res, name }) => {
          await manager.delete(ref(name));
          res.writeHead(204);
          res.end();
        },
      },
    },
    rotate: {
      POST: {
        operation: "POST /v1/secrets/{name}/rotate",
        permission: "admin",
        run: async ({ req, res, name }) => {
          await readObject(req, [], true);
          json(res, 200, secretValue(await manager.rotate(ref(name))));
        },
      },
    },
    verify: {
      POST: {
        operation: "POST /v1/secrets/{name}/verify",
        permission: "read",
        run: async ({ req, res, name }) => {
          const body = await readObject(req, ["value"]);
          const result = await manager.verify(ref(name), requiredString(body, "value"));
          json(res, 200, { valid: result.valid, version: result.valid ? result.version : null });
        },
      },
    },
  } satisfies Record<string, Partial<Record<string, Route>>>;

  type RouteTable = Partial<Record<string, Route>>;

  /** Finds the route table for a path and the secret name in it. */
  function match(path: string): { table: RouteTable; name: string } | undefined {
    if (path === "/healthz") return { table: routes.healthz, name: "" };
    if (path === "/readyz") return { table: routes.readyz, name: "" };
    if (path === "/v1/secrets" || path === "/v1/secrets/") return { table: routes.collection, name: "" };
    if (!path.startsWith("/v1/secrets/")) return undefined;
    const segments = path.slice("/v1/secrets/".length).split("/");
    const last = segments[segments.length - 1];
    let table: RouteTable = routes.item;
    if (segments.length > 1 && (last === "rotate" || last === "verify")) {
      table = last === "rotate" ? routes.rotate : routes.verify;
      segments.pop();
    }
    return { table, name: segments.map(decodeSegment).join("/") };
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
          throw new LatchkeyError("not_found", "no such route");
        }
        const route = found.table[method] ?? (method === "HEAD" ? found.table.GET : undefined);
        if (!route) {
          info.operation = `${method} ${path.slice(0, 64)}`;
          res.setHeader("allow", Object.keys(found.table).join(", "));
          json(res, 405, { error: `method ${method} not allowed here` });
          info.code = "method_not_allowed";
          return;
        }
        info.operation = route.operation;
        access.authorize(route.permission, {
          authorization: headerValue(req.headers.authorization),
          ip: info.ip,
        });
        await route.run({ req, res, name: found.name, query });
        info.code = "ok";
      } catch (err) {
        const { status, message, code } = toHttpError(err, info.id, logger);
        info.code = code;
        if (!res.headersSent) json(res, status, { error: message });
        else res.destroy();
      }
    },
  };
}

function toHttpError(err: unknown, requestId: string, logger: Logger): { status: number; message: string; code: string } {
  if (err instanceof LatchkeyError) return { status: HTTP_STATUS[err.code], message: err.message, code: err.code };
  if (err instanceof BodyError) return { status: err.status, message: err.message, code: err.code };
  logger.error({ err, request_id: requestId }, "internal error");
  return { status: 500, message: `internal error (request id ${requestId})`, code: "internal" };
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

function decodeSegment(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    throw invalidArgument("name", "encoding", "the secret name in the path is not valid percent-encoding");
  }
}

function headerValue(h: string | string[] | undefined): string | undefined {
  return Array.isArray(h) ? h[0] : h;
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

function optionalString(body: Record<string, unknown>, field: string): string | undefined {
  const v = body[field];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "string") throw invalidArgument(field, "type", `${field} must be a string`);
  return v;
}

function requiredString(body: Record<string, unknown>, field: string): string {
  const v = optionalString(body, field);
  if (v === undefined) throw invalidArgument(field, "required", `${field} is required`);
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
