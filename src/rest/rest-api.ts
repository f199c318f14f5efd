import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import { type Auditor, noteTarget } from "../audit/auditor.js";
import type { AccessControl } from "../auth/access.js";
import { REST_POLICY } from "../auth/policy.js";
import { type ErrorCode, invalidArgument, LatchkeyError } from "../domain/errors.js";
import { ANONYMOUS, type Principal } from "../domain/principal.js";
import { outcomeCode } from "../rpc/interceptor.js";
import {
  currentVersion,
  DEFAULT_STORE,
  isExpired,
  type SecretDocument,
  type SecretKind,
  type SecretType,
  VERSION_STATES,
  validateBinaryValue,
  type VersionRecord,
  type VersionState,
  validVersions,
} from "../domain/secret.js";
import { type StoreRecord, validateStoreName } from "../domain/store.js";
import type { Limits, Usage } from "../domain/usage.js";
import type { VarRecord } from "../domain/vars.js";
import { readLimitedBody } from "../http/body.js";
import type { RequestInfo } from "../http/request-info.js";
import type { Logger } from "../log/logger.js";
import type { Metrics } from "../metrics/metrics.js";
import { etagMatches } from "../http/rpc-instrument.js";
import type { Latchkey } from "../service/latchkey.js";
import type { BatchItem, BatchResult, OpenedSecret } from "../service/secret-manager.js";
import { listAudit, type TokenManager } from "../service/tokens.js";
import type { ListState, Storage } from "../storage/storage.js";
import type { AuditRecord } from "../domain/audit.js";
import type { TokenRecord } from "../domain/token.js";

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
  /** The operation name of every route (the keys REST_POLICY must cover). */
  operations(): string[];
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
/** Batches carry up to 100 values of up to 64 KiB (binary, base64): a larger limit for them. */
const BATCH_BODY = 12 * 1024 * 1024;
const LIST_PAGE = 1000;

interface RouteContext {
  readonly req: HttpRequest;
  readonly res: HttpResponse;
  readonly principal: Principal;
  readonly store: string;
  readonly name: string;
  /** The version number in `.../versions/{n}` paths. */
  readonly version: number;
  readonly query: URLSearchParams;
  /** The client IP. */
  readonly ip: string | undefined;
}

/** A route: its operation name (method and path template, the key of REST_POLICY) and what it does. */
interface Route {
  readonly operation: string;
  run(ctx: RouteContext): Promise<void>;
}

type RouteTable = Partial<Record<string, Route>>;

/** RFC 3339 with an explicit +00:00 offset, as seed 003 writes times. */
export function isoTime(ms: number): string {
  return new Date(ms).toISOString().replace("Z", "+00:00");
}

const isoOrNull = (ms: number | null | undefined) => (ms === null || ms === undefined ? null : isoTime(ms));

/** REST's view of a secret with one value: seed 003's SecretValue (`value_base64` instead of `value` for bytes). */
function secretValue(s: OpenedSecret) {
  return {
    name: s.doc.name,
    kind: s.doc.kind,
    version: s.version.version,
    ...(s.binaryValue ? { value_base64: s.binaryValue.toString("base64") } : { value: s.value }),
    created_at: isoTime(s.version.createdAt),
  };
}

/** REST's view of a secret's metadata. Never a value. */
export function secretMetadata(doc: SecretDocument, now = Date.now()) {
  const current = currentVersion(doc);
  return {
    id: doc.id,
    store: doc.store,
    name: doc.name,
    kind: doc.kind,
    type: doc.type,
    description: doc.description,
    folder: doc.folder,
    tags: doc.tags,
    metadata: doc.metadata,
    version: current?.version ?? null,
    binary: current?.binary ?? false,
    rotation_interval_secs: doc.rotation?.intervalSeconds ?? null,
    grace_period_secs: doc.gracePeriodSeconds,
    next_rotation_at: doc.rotation && !doc.deletion ? isoTime(doc.rotation.nextRotationAt) : null,
    last_rotated_at: isoOrNull(current?.createdAt),
    expires_at: isoOrNull(doc.expiresAt),
    expired: isExpired(doc, now),
    ...(doc.deletion ? { deleted_at: isoTime(doc.deletion.deletedAt), purge_at: isoTime(doc.deletion.purgeAt) } : {}),
    created_at: isoTime(doc.createdAt),
    updated_at: isoTime(doc.updatedAt),
    revision: doc.revision,
  };
}

/** REST's view of a version. Never a value. */
function versionView(v: VersionRecord, doc: SecretDocument, now = Date.now()) {
  return {
    version: v.version,
    state: v.state,
    binary: v.binary,
    current: currentVersion(doc) === v,
    valid: validVersions(doc, now).includes(v),
    created_at: isoTime(v.createdAt),
    valid_until: isoOrNull(v.validUntil),
  };
}

function tokenView(t: TokenRecord) {
  return {
    id: t.id,
    label: t.label,
    role: t.role,
    service: t.service,
    stores: t.stores,
    prefixes: t.prefixes,
    allowed_ips: t.allowedIps,
    expires_at: isoOrNull(t.expiresAt),
    created_at: isoTime(t.createdAt),
    created_by: t.createdBy,
    revoked_at: isoOrNull(t.revokedAt),
  };
}

function auditView(r: AuditRecord) {
  return {
    chain: r.chain,
    seq: r.seq,
    at: isoTime(r.at),
    request_id: r.requestId,
    actor_kind: r.actorKind,
    token_id: r.tokenId,
    role: r.role,
    service: r.service,
    ip: r.ip,
    op: r.op,
    store: r.store,
    name: r.name,
    version: r.version,
    code: r.code,
    prev_hash: r.prevHash,
    hash: r.hash,
  };
}

function batchView(r: BatchResult) {
  return {
    name: r.name,
    ok: r.ok,
    ...(r.created === undefined ? {} : { created: r.created }),
    ...(r.version === undefined ? {} : { version: r.version }),
    ...(r.revision === undefined ? {} : { revision: r.revision }),
    ...(r.error ? { error: r.error } : {}),
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
  metrics: Metrics;
  latchkey: Latchkey;
  access: AccessControl;
  auditor: Auditor;
  tokens: TokenManager;
  auditLog: Pick<Storage, "listAudit">;
  logger: Logger;
  ready: () => Promise<boolean>;
}): RestApi {
  const { latchkey: lk, access, auditor, logger } = deps;

  const health: Record<string, RouteTable> = {
    "/healthz": {
      GET: { operation: "GET /healthz", run: async ({ res }) => json(res, 200, { status: "ok" }) },
    },
    "/metrics": {
      GET: {
        operation: "GET /metrics",
        run: async ({ res }) => {
          const text = await deps.metrics.render();
          res.writeHead(200, { "content-type": deps.metrics.registry.contentType, "cache-control": "no-store" });
          res.end(text);
        },
      },
    },
    "/readyz": {
      GET: {
        operation: "GET /readyz",
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
        run: async ({ req, res, principal, store }) => {
          const body = await readObject(req, [
            "name",
            "kind",
            "value",
            "value_base64",
            "description",
            "type",
            "folder",
            "tags",
            "metadata",
            "expires_at",
            "rotation_interval_secs",
            "grace_period_secs",
          ]);
          const created = await lk.createSecret(principal, {
            store,
            name: requiredString(body, "name"),
            kind: kindOf(body) ?? "manual",
            ...valueOf(body),
            ...metadataOf(body),
          });
          res.setHeader("etag", etag(created.doc.revision));
          json(res, 201, secretValue(created));
        },
      },
      GET: {
        operation: `GET ${prefix}`,
        run: async ({ res, principal, store, query }) => {
          const filters = {
            store,
            prefix: query.get("prefix") ?? undefined,
            folder: query.get("folder") ?? undefined,
            tag: query.get("tag") ?? undefined,
            state: listStateOf(query.get("state")),
          };
          const limit = limitOf(query);
          if (limit !== undefined) {
            const page = await lk.listSecrets(principal, { ...filters, pageSize: limit, pageToken: query.get("cursor") ?? undefined });
            if (page.nextPageToken) res.setHeader("x-next-cursor", page.nextPageToken);
            if (page.prevPageToken) res.setHeader("x-prev-cursor", page.prevPageToken);
            json(res, 200, page.docs.map((d) => secretMetadata(d)));
            return;
          }
          // No limit: every secret, as seed 003 says, streamed page by page so memory stays flat.
          let page = await lk.listSecrets(principal, { ...filters, pageSize: LIST_PAGE });
          res.writeHead(200, { "content-type": "application/json", "cache-control": "no-store" });
          let first = true;
          for (;;) {
            for (const doc of page.docs) {
              writeChunk(res, (first ? "[" : ",") + JSON.stringify(secretMetadata(doc)));
              first = false;
            }
            if (!page.nextPageToken) break;
            page = await lk.listSecrets(principal, { ...filters, pageSize: LIST_PAGE, pageToken: page.nextPageToken });
          }
          res.end(first ? "[]" : "]");
        },
      },
    };
    const batchSet: RouteTable = {
      POST: {
        operation: `POST ${prefix}:batchSet`,
        run: async ({ req, res, principal, store }) => {
          const body = await readObject(req, ["items", "atomic"], false, BATCH_BODY);
          if (!Array.isArray(body.items)) throw invalidArgument("items", "type", "items must be an array");
          const items = body.items.map((raw, i) => batchItemOf(raw, i));
          const results = await lk.batchUpsert(principal, store, items, optionalBool(body, "atomic") ?? true);
          json(res, results.every((r) => r.ok) ? 200 : 207, { results: results.map(batchView) });
        },
      },
    };
    const batchGet: RouteTable = {
      POST: {
        operation: `POST ${prefix}:batchGet`,
        run: async ({ req, res, principal, store }) => {
          const body = await readObject(req, ["names"]);
          const results = await lk.batchGet(principal, store, stringList(body, "names"));
          json(res, results.every((r) => r.secret) ? 200 : 207, {
            results: results.map((r) => (r.secret ? { ok: true, ...secretValue(r.secret) } : { name: r.name, ok: false, error: r.error })),
          });
        },
      },
    };
    const batchDelete: RouteTable = {
      POST: {
        operation: `POST ${prefix}:batchDelete`,
        run: async ({ req, res, principal, store }) => {
          const body = await readObject(req, ["names", "atomic", "purge"]);
          const results = await lk.batchDelete(principal, store, stringList(body, "names"), {
            atomic: optionalBool(body, "atomic") ?? true,
            purge: optionalBool(body, "purge") ?? false,
          });
          json(res, results.every((r) => r.ok) ? 200 : 207, { results: results.map(batchView) });
        },
      },
    };
    const item: RouteTable = {
      GET: {
        operation: `GET ${prefix}/{name}`,
        run: async ({ req, res, principal, store, name, query }) => {
          const v = query.get("version");
          if (v !== null && !/^[1-9]\d{0,9}$/.test(v)) {
            throw invalidArgument("version", "out_of_range", "version must be a positive whole number");
          }
          const got = await lk.getSecret(principal, { store, name }, v === null ? undefined : Number(v));
          const tag = etag(got.doc.revision);
          res.setHeader("etag", tag);
          const inm = headerValue(req.headers["if-none-match"]);
          if (inm !== undefined && etagMatches(inm, tag)) {
            res.writeHead(304);
            res.end();
            return;
          }
          json(res, 200, secretValue(got));
        },
      },
      PUT: {
        operation: `PUT ${prefix}/{name}`,
        run: async ({ req, res, principal, store, name }) => {
          const body = await readObject(req, [
            "value",
            "value_base64",
            "description",
            "kind",
            "type",
            "folder",
            "tags",
            "metadata",
            "expires_at",
            "rotation_interval_secs",
            "grace_period_secs",
            "expected_revision",
          ]);
          const doc = await lk.updateSecret(principal, { store, name }, {
            ...valueOf(body),
            ...metadataOf(body),
            kind: kindOf(body),
            expectedRevision: expectedRevisionOf(req, body),
          });
          res.setHeader("etag", etag(doc.revision));
          json(res, 200, secretMetadata(doc));
        },
      },
      DELETE: {
        operation: `DELETE ${prefix}/{name}`,
        run: async ({ req, res, principal, store, name, query }) => {
          await lk.deleteSecret(principal, { store, name }, {
            purge: boolParam(query, "purge"),
            expectedRevision: expectedRevisionOf(req, {}),
          });
          noContent(res);
        },
      },
    };
    const action = (suffix: string, fields: string[], run: (ctx: RouteContext, body: Record<string, unknown>) => Promise<void>): RouteTable => ({
      POST: {
        operation: `POST ${prefix}/{name}/${suffix}`,
        run: async (ctx) => run(ctx, await readObject(ctx.req, fields, true)),
      },
    });
    const rotate = action("rotate", ["previous_state", "expected_revision"], async ({ req, res, principal, store, name }, body) => {
      const prev = optionalString(body, "previous_state");
      if (prev !== undefined && (!isVersionState(prev) || prev === "active")) {
        throw invalidArgument("previous_state", "enum", "previous_state must be deactivated, suspended, compromised or destroyed");
      }
      const rotated = await lk.rotateSecret(principal, { store, name }, {
        previousState: prev as Exclude<VersionState, "active"> | undefined,
        expectedRevision: expectedRevisionOf(req, body),
      });
      res.setHeader("etag", etag(rotated.doc.revision));
      json(res, 200, secretValue(rotated));
    });
    const verify = action("verify", ["value", "value_base64"], async ({ res, principal, store, name, ip }, body) => {
      const given = valueOf(body);
      if (given.value === undefined && given.binaryValue === undefined) throw invalidArgument("value", "required", "value is required");
      const result = await lk.verifySecret(principal, { store, name }, given, ip);
      json(res, 200, { valid: result.valid, version: result.valid ? result.version : null });
    });
    const undelete = action("undelete", ["id"], async ({ res, principal, store, name }, body) => {
      json(res, 200, secretMetadata(await lk.undeleteSecret(principal, { store, name }, { id: optionalString(body, "id") })));
    });
    const copy = action("copy", ["to_store", "to_name"], async ({ res, principal, store, name }, body) => {
      const to = { store: optionalString(body, "to_store") ?? store, name: requiredString(body, "to_name") };
      const copied = await lk.copySecret(principal, { store, name }, to);
      json(res, 201, secretMetadata(copied.doc));
    });
    const renameRoute = action("rename", ["new_name", "expected_revision"], async ({ req, res, principal, store, name }, body) => {
      const doc = await lk.renameSecret(principal, { store, name }, requiredString(body, "new_name"), expectedRevisionOf(req, body));
      json(res, 200, secretMetadata(doc));
    });
    const moveRoute = action("move", ["to_store", "to_name", "expected_revision"], async ({ req, res, principal, store, name }, body) => {
      const to = { store: requiredString(body, "to_store"), name: optionalString(body, "to_name") ?? name };
      json(res, 200, secretMetadata(await lk.moveSecret(principal, { store, name }, to, expectedRevisionOf(req, body))));
    });
    const versions: RouteTable = {
      GET: {
        operation: `GET ${prefix}/{name}/versions`,
        run: async ({ res, principal, store, name }) => {
          const doc = await lk.listVersions(principal, { store, name });
          res.setHeader("etag", etag(doc.revision));
          json(res, 200, { name: doc.name, revision: doc.revision, versions: doc.versions.map((v) => versionView(v, doc)) });
        },
      },
    };
    const version: RouteTable = {
      PUT: {
        operation: `PUT ${prefix}/{name}/versions/{version}`,
        run: async ({ req, res, principal, store, name, version: n }) => {
          const body = await readObject(req, ["state", "expected_revision"]);
          const state = requiredString(body, "state");
          if (!isVersionState(state)) throw invalidArgument("state", "enum", `state must be one of ${VERSION_STATES.join(", ")}`);
          const doc = await lk.setVersionState(principal, { store, name }, n, state, expectedRevisionOf(req, body));
          const v = doc.versions.find((x) => x.version === n) as VersionRecord;
          res.setHeader("etag", etag(doc.revision));
          json(res, 200, versionView(v, doc));
        },
      },
    };
    return { collection, batchSet, batchGet, batchDelete, item, rotate, verify, undelete, copy, rename: renameRoute, move: moveRoute, versions, version };
  }

  const defaultSecrets = secretRoutes("/v1/secrets");
  const storeSecrets = secretRoutes("/v1/stores/{store}/secrets");

  const usage: RouteTable = {
    GET: {
      operation: "GET /v1/usage",
      run: async ({ res, principal }) => json(res, 200, usageView(await lk.usage(principal))),
    },
  };
  const stores: RouteTable = {
    POST: {
      operation: "POST /v1/stores",
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
      run: async ({ res, principal, store }) => json(res, 200, storeView(await lk.getStore(principal, store))),
    },
    DELETE: {
      operation: "DELETE /v1/stores/{store}",
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
      run: async ({ res, principal, store }) => json(res, 200, usageView(await lk.usage(principal, validateStoreName(store)), store)),
    },
  };
  const vars: RouteTable = {
    GET: {
      operation: "GET /v1/stores/{store}/vars",
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
      run: async ({ res, principal, store, name }) => json(res, 200, varView(await lk.getVar(principal, store, name))),
    },
    PUT: {
      operation: "PUT /v1/stores/{store}/vars/{name}",
      run: async ({ req, res, principal, store, name }) => {
        const body = await readObject(req, ["value"]);
        if (typeof body.value !== "string") throw invalidArgument("value", body.value === undefined ? "required" : "type", "value must be a string");
        const [rec] = await lk.setVars(principal, store, [{ name, value: body.value }]);
        json(res, 200, varView(rec as VarRecord));
      },
    },
    DELETE: {
      operation: "DELETE /v1/stores/{store}/vars/{name}",
      run: async ({ res, principal, store, name }) => {
        await lk.deleteVar(principal, store, name);
        noContent(res);
      },
    },
  };

  const tokensRoute: RouteTable = {
    POST: {
      operation: "POST /v1/tokens",
      run: async ({ req, res, principal }) => {
        const body = await readObject(req, ["label", "role", "service", "stores", "prefixes", "allowed_ips", "expires_at"]);
        const list = (f: string) => (body[f] === undefined || body[f] === null ? undefined : stringList(body, f));
        const made = await deps.tokens.create(principal, {
          label: optionalString(body, "label") ?? "",
          role: requiredString(body, "role"),
          service: optionalString(body, "service"),
          stores: list("stores"),
          prefixes: list("prefixes"),
          allowedIps: list("allowed_ips"),
          expiresAt: timeOf(body, "expires_at") ?? undefined,
        });
        json(res, 201, { token: tokenView(made.token), secret: made.secret });
      },
    },
    GET: {
      operation: "GET /v1/tokens",
      run: async ({ res, query }) => {
        const page = await deps.tokens.list({ pageSize: limitOf(query) ?? LIST_PAGE, pageToken: query.get("cursor") ?? undefined });
        if (page.nextPageToken) res.setHeader("x-next-cursor", page.nextPageToken);
        json(res, 200, page.tokens.map(tokenView));
      },
    },
  };
  const tokenItem: RouteTable = {
    DELETE: {
      operation: "DELETE /v1/tokens/{id}",
      run: async ({ res, name }) => json(res, 200, tokenView(await deps.tokens.revoke(name))),
    },
  };
  const audit: RouteTable = {
    GET: {
      operation: "GET /v1/audit",
      run: async ({ res, query }) => {
        await auditor.flush();
        const page = await listAudit(deps.auditLog, {
          from: timeParam(query, "from"),
          to: timeParam(query, "to"),
          tokenId: query.get("token_id") ?? undefined,
          store: query.get("store") ?? undefined,
          name: query.get("name") ?? undefined,
          pageSize: limitOf(query) ?? 100,
          pageToken: query.get("cursor") ?? undefined,
        });
        if (page.nextPageToken) res.setHeader("x-next-cursor", page.nextPageToken);
        json(res, 200, page.events.map(auditView));
      },
    },
  };

  /** Finds the route table for a path, with the store and name it names. */
  function match(path: string): { table: RouteTable; store: string; name: string; version?: number } | undefined {
    const h = health[path];
    if (h) return { table: h, store: "", name: "" };
    if (!path.startsWith("/v1/")) return undefined;
    const segs = path.slice(4).split("/");
    if (segs[segs.length - 1] === "" && segs.length > 1) segs.pop(); // one trailing slash
    const [head, ...rest] = segs;
    if (head === "secrets" || head?.startsWith("secrets:")) {
      return secretMatch(defaultSecrets, DEFAULT_STORE, rest, head.slice("secrets:".length));
    }
    if (head === "usage" && rest.length === 0) return { table: usage, store: "", name: "" };
    if (head === "tokens" && rest.length === 0) return { table: tokensRoute, store: "", name: "" };
    if (head === "tokens" && rest.length === 1) return { table: tokenItem, store: "", name: decodeSegment(rest[0] as string, "id") };
    if (head === "audit" && rest.length === 0) return { table: audit, store: "", name: "" };
    if (head !== "stores") return undefined;
    if (rest.length === 0) return { table: stores, store: "", name: "" };
    const storeName = decodeSegment(rest[0] as string, "store");
    const [kind, ...tail] = rest.slice(1);
    if (kind === undefined) return { table: store, store: storeName, name: "" };
    if (kind === "usage" && tail.length === 0) return { table: storeUsage, store: storeName, name: "" };
    if (kind === "secrets" || kind.startsWith("secrets:")) {
      return secretMatch(storeSecrets, storeName, tail, kind.slice("secrets:".length));
    }
    if (kind === "vars") {
      if (tail.length === 0) return { table: vars, store: storeName, name: "" };
      return { table: varItem, store: storeName, name: tail.map((s) => decodeSegment(s, "name")).join("/") };
    }
    return undefined;
  }

  /** The route a path below `.../secrets` names: the collection, a batch method, or a secret and an action. */
  function secretMatch(routes: ReturnType<typeof secretRoutes>, storeName: string, tail: string[], method: string) {
    if (method !== "") {
      const batch = { batchSet: routes.batchSet, batchGet: routes.batchGet, batchDelete: routes.batchDelete }[method];
      return batch && tail.length === 0 ? { table: batch, store: storeName, name: "", version: 0 } : undefined;
    }
    if (tail.length === 0) return { table: routes.collection, store: storeName, name: "", version: 0 };
    const last = tail[tail.length - 1] as string;
    let table = routes.item;
    let version = 0;
    const actions: Record<string, RouteTable> = {
      rotate: routes.rotate,
      verify: routes.verify,
      undelete: routes.undelete,
      copy: routes.copy,
      rename: routes.rename,
      move: routes.move,
      versions: routes.versions,
    };
    if (tail.length > 2 && tail[tail.length - 2] === "versions" && /^[1-9]\d{0,9}$/.test(last)) {
      table = routes.version;
      version = Number(last);
      tail = tail.slice(0, -2);
    } else if (tail.length > 1 && actions[last]) {
      table = actions[last] as RouteTable;
      tail = tail.slice(0, -1);
    }
    return { table, store: storeName, name: tail.map((s) => decodeSegment(s, "name")).join("/"), version };
  }

  const allTables: RouteTable[] = [
    ...Object.values(health),
    ...Object.values(defaultSecrets),
    ...Object.values(storeSecrets),
    usage,
    stores,
    store,
    storeUsage,
    vars,
    varItem,
    tokensRoute,
    tokenItem,
    audit,
  ];

  return {
    handles(path) {
      return path.startsWith("/v1/") || path === "/healthz" || path === "/readyz" || path === "/metrics";
    },
    operations() {
      return allTables.flatMap((t) => Object.values(t).map((r) => (r as Route).operation));
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
        // The policy decides (fail closed for a route it does not know); the decision is audited with the call.
        const action = REST_POLICY[route.operation];
        let principal: Principal = ANONYMOUS;
        let denied: unknown;
        try {
          if (action === undefined) throw new LatchkeyError("permission_denied", "no access policy for this route");
          principal = await access.authenticate(headerValue(req.headers.authorization));
          access.authorize(action, principal, info.ip);
        } catch (err) {
          denied = err;
        }
        info.principal = principal;
        const ctx = { req, res, principal, store: found.store, name: found.name, version: found.version ?? 0, query, ip: info.ip };
        if (action === "public") await route.run(ctx);
        else {
          await auditor.run(
            { requestId: info.id, principal, ip: info.ip, op: route.operation },
            async () => {
              // The entry names what the path names, even for a call refused before it ran.
              noteTarget({ store: found.store || undefined, name: found.name || undefined });
              if (denied !== undefined) throw denied;
              await route.run(ctx);
            },
            outcomeCode,
          );
        }
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
  logger.error({ err, request_id: requestId }, "internal error");
  return { status: 500, body: { error: `internal error (request id ${requestId})`, code: "internal", request_id: requestId } };
}

/** A problem with the request body itself (size, JSON syntax), reported before any domain rule runs. */
function bodyError(status: 400 | 413, message: string): LatchkeyError {
  return status === 413
    ? new LatchkeyError("resource_exhausted", message, { reason: "BODY_TOO_LARGE", httpStatus: 413 })
    : new LatchkeyError("invalid_argument", message, { reason: "BAD_BODY" });
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

/** Reads a request body of at most `maxBytes` (see readLimitedBody); a body the client abandons is a bad body. */
function readBody(req: HttpRequest, maxBytes: number): Promise<Buffer> {
  return new Promise((resolve, reject) =>
    readLimitedBody(req, maxBytes, (r) => {
      if (r.ok) resolve(r.body);
      else if (r.reason === "too_large") reject(bodyError(413, `request body is larger than ${maxBytes} bytes`));
      else reject(bodyError(400, "request body ended early: the client went away"));
    }),
  );
}

/** Whether a parsed JSON value holds a string (or key) with an unpaired UTF-16 surrogate. Iterative: any depth. */
function hasLoneSurrogate(value: unknown): boolean {
  const pending: unknown[] = [value];
  while (pending.length > 0) {
    const v = pending.pop();
    if (typeof v === "string") {
      if (LONE_SURROGATE.test(v)) return true;
    } else if (Array.isArray(v)) {
      for (const x of v) pending.push(x);
    } else if (typeof v === "object" && v !== null) {
      for (const [k, x] of Object.entries(v)) {
        if (LONE_SURROGATE.test(k)) return true;
        pending.push(x);
      }
    }
  }
  return false;
}

/** With the u flag, surrogate pairs are one code point: only unpaired halves are of category Cs. */
const LONE_SURROGATE = /\p{Cs}/u;

/**
 * Reads a JSON object body of at most MAX_BODY bytes, whatever the content type (curl -d sends a form type).
 * Fields other than `allowed` are rejected, so a misspelt field is an error rather than silently ignored.
 */
async function readObject(
  req: HttpRequest,
  allowed: readonly string[],
  optional = false,
  maxBytes = MAX_BODY,
): Promise<Record<string, unknown>> {
  const text = (await readBody(req, maxBytes)).toString("utf8");
  if (text.trim() === "") {
    if (optional) return {};
    throw bodyError(400, "request body must be a JSON object");
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw bodyError(400, "request body is not valid JSON");
  }
  if (hasLoneSurrogate(parsed)) {
    // Such a string cannot be stored as UTF-8: values would be sealed as U+FFFD and verify any other lone
    // surrogate. The RPCs refuse the same text ("invalid UTF8"); so does REST.
    throw bodyError(400, "request body is not valid Unicode: a \\u escape names half of a surrogate pair");
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw bodyError(400, "request body must be a JSON object");
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

function optionalBool(body: Record<string, unknown>, field: string): boolean | undefined {
  const v = body[field];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "boolean") throw invalidArgument(field, "type", `${field} must be true or false`);
  return v;
}

function boolParam(query: URLSearchParams, name: string): boolean {
  const v = query.get(name);
  if (v === null || v === "false") return false;
  if (v === "true") return true;
  throw invalidArgument(name, "type", `${name} must be true or false`);
}

function stringList(body: Record<string, unknown>, field: string): string[] {
  const v = body[field];
  if (!Array.isArray(v) || !v.every((x) => typeof x === "string")) {
    throw invalidArgument(field, "type", `${field} must be an array of strings`);
  }
  return v as string[];
}

function stringMap(body: Record<string, unknown>, field: string): Record<string, string> | undefined {
  const v = body[field];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "object" || Array.isArray(v) || !Object.values(v).every((x) => typeof x === "string")) {
    throw invalidArgument(field, "type", `${field} must be an object of strings`);
  }
  return v as Record<string, string>;
}

/** A time in RFC 3339; null clears it. */
function timeOf(body: Record<string, unknown>, field: string): number | null | undefined {
  const v = body[field];
  if (v === undefined) return undefined;
  if (v === null) return null;
  const ms = typeof v === "string" ? Date.parse(v) : Number.NaN;
  if (Number.isNaN(ms)) throw invalidArgument(field, "type", `${field} must be an RFC 3339 time, e.g. 2027-01-01T00:00:00Z`);
  return ms;
}

/** `value` (text) or `value_base64` (bytes). */
function valueOf(body: Record<string, unknown>): { value?: string; binaryValue?: Buffer } {
  const value = optionalString(body, "value");
  const b64 = optionalString(body, "value_base64");
  if (value !== undefined && b64 !== undefined) throw invalidArgument("value_base64", "exclusive", "give value or value_base64, not both");
  if (b64 === undefined) return value === undefined ? {} : { value };
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(b64) || b64.length % 4 !== 0) {
    throw invalidArgument("value_base64", "encoding", "value_base64 must be standard base64");
  }
  return { binaryValue: Buffer.from(validateBinaryValue(Buffer.from(b64, "base64"), "value_base64")) };
}

function metadataOf(body: Record<string, unknown>) {
  const type = optionalString(body, "type");
  if (type !== undefined && type !== "secret" && type !== "token") throw invalidArgument("type", "enum", 'type must be "secret" or "token"');
  const tags = body.tags === undefined || body.tags === null ? undefined : stringList(body, "tags");
  return {
    description: optionalString(body, "description"),
    type: type as SecretType | undefined,
    folder: optionalString(body, "folder"),
    tags,
    metadata: stringMap(body, "metadata"),
    expiresAt: timeOf(body, "expires_at"),
    rotationIntervalSeconds: optionalInt(body, "rotation_interval_secs"),
    gracePeriodSeconds: optionalInt(body, "grace_period_secs"),
  };
}

function batchItemOf(raw: unknown, i: number): BatchItem {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw invalidArgument(`items[${i}]`, "type", `items[${i}] must be an object`);
  }
  const body = raw as Record<string, unknown>;
  const allowed = new Set(["name", "kind", "value", "value_base64", "description", "type", "folder", "tags", "metadata", "expires_at", "rotation_interval_secs", "grace_period_secs", "expected_revision"]);
  for (const k of Object.keys(body)) {
    if (!allowed.has(k)) throw invalidArgument(`items[${i}].${k.slice(0, 64)}`, "unknown_field", `unknown field "${k.slice(0, 64)}"`);
  }
  return {
    name: requiredString(body, "name", `items[${i}].name`),
    kind: kindOf(body),
    ...valueOf(body),
    ...metadataOf(body),
    expectedRevision: optionalInt(body, "expected_revision"),
  };
}

function timeParam(query: URLSearchParams, name: string): number | undefined {
  const v = query.get(name);
  if (v === null) return undefined;
  const ms = Date.parse(v);
  if (Number.isNaN(ms)) throw invalidArgument(name, "type", `${name} must be an RFC 3339 time`);
  return ms;
}

function listStateOf(v: string | null): ListState | undefined {
  if (v === null || v === "" || v === "live") return undefined;
  if (v === "active" || v === "expired" || v === "deleted") return v;
  throw invalidArgument("state", "enum", "state must be live, active, expired or deleted");
}

function isVersionState(s: string): s is VersionState {
  return (VERSION_STATES as readonly string[]).includes(s);
}

/** A strong ETag: the secret's revision. */
function etag(revision: number): string {
  return `"${revision}"`;
}

/** The revision a write is conditional on: If-Match (an ETag) or `expected_revision`; they must agree. */
function expectedRevisionOf(req: HttpRequest, body: Record<string, unknown>): number | undefined {
  const fromBody = optionalInt(body, "expected_revision");
  const header = headerValue(req.headers["if-match"]);
  let fromHeader: number | undefined;
  if (header !== undefined) {
    const m = /^\s*(?:W\/)?"?(\d{1,15})"?\s*$/.exec(header);
    if (!m) throw invalidArgument("If-Match", "format", 'If-Match must be an ETag of this API, e.g. "12"');
    fromHeader = Number(m[1]);
  }
  if (fromBody !== undefined && fromHeader !== undefined && fromBody !== fromHeader) {
    throw invalidArgument("expected_revision", "conflict", "If-Match and expected_revision disagree");
  }
  return fromHeader ?? fromBody;
}

function kindOf(body: Record<string, unknown>): SecretKind | undefined {
  const v = body.kind;
  if (v === undefined || v === null) return undefined;
  if (v !== "manual" && v !== "automatic") throw invalidArgument("kind", "enum", 'kind must be "manual" or "automatic"');
  return v;
}
