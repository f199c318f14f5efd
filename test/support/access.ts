import assert from "node:assert/strict";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import type { DescService } from "@bufbuild/protobuf";
import { type Client, createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { AuditService } from "../../gen/latchkey/v1/audit_service_pb.js";
import { SecretService } from "../../gen/latchkey/v1/secret_service_pb.js";
import { StoreService } from "../../gen/latchkey/v1/store_service_pb.js";
import { TokenService } from "../../gen/latchkey/v1/token_service_pb.js";
import { VarService } from "../../gen/latchkey/v1/var_service_pb.js";
import { CALL_TIMEOUT_MS, type JsonReply, rest } from "./clients.js";
import { ADMIN_TOKEN } from "./server.js";

/**
 * Helpers for the end-to-end tests of access control and the audit log: clients of every Latchkey service (gRPC
 * over h2c, or Connect JSON over HTTP/1.1), tokens made through the API, and reading the audit log.
 */

export interface AllClients {
  readonly secrets: Client<typeof SecretService>;
  readonly stores: Client<typeof StoreService>;
  readonly vars: Client<typeof VarService>;
  readonly tokens: Client<typeof TokenService>;
  readonly audit: Client<typeof AuditService>;
  readonly transport: Transport;
  close(): void;
}

function clientsOn(transport: Transport, close: () => void): AllClients {
  return {
    secrets: createClient(SecretService, transport),
    stores: createClient(StoreService, transport),
    vars: createClient(VarService, transport),
    tokens: createClient(TokenService, transport),
    audit: createClient(AuditService, transport),
    transport,
    close,
  };
}

/** Connect clients of every service speaking gRPC over one HTTP/2 (h2c) session. */
export function grpcAll(baseUrl: string): AllClients {
  const sessionManager = new Http2SessionManager(baseUrl);
  return clientsOn(createGrpcTransport({ baseUrl, sessionManager }), () => sessionManager.abort());
}

/** Connect clients of every service speaking the Connect protocol with JSON over HTTP/1.1. */
export function connectAll(baseUrl: string): AllClients {
  return clientsOn(createConnectTransport({ baseUrl, httpVersion: "1.1" }), () => {});
}

/** Call options: a bearer token (null: none), extra headers, a bounded wait, and the response's x-request-id (in `seen`). */
export function callOpts(token: string | null, extra: Record<string, string> = {}) {
  const seen: { requestId?: string | null } = {};
  return {
    headers: { ...(token === null ? {} : { authorization: `Bearer ${token}` }), ...extra },
    timeoutMs: CALL_TIMEOUT_MS,
    onHeader: (h: Headers) => {
      seen.requestId ??= h.get("x-request-id");
    },
    // A gRPC error may come as trailers only.
    onTrailer: (t: Headers) => {
      seen.requestId ??= t.get("x-request-id");
    },
    seen,
  };
}

export interface MadeToken {
  readonly id: string;
  readonly secret: string;
}

/** Makes a token through REST as the admin; `settings` in REST's snake_case. */
export async function makeToken(baseUrl: string, settings: Record<string, unknown>): Promise<MadeToken> {
  const r = await rest(baseUrl, "POST", "/v1/tokens", { label: "e2e", ...settings });
  assert.equal(r.status, 201, `create token ${JSON.stringify(settings)}: ${JSON.stringify(r.body)}`);
  assert.match(r.body.secret, /^lkt_/);
  assert.match(r.body.token.id, /^tok_/);
  return { id: r.body.token.id, secret: r.body.secret };
}

/** One audit entry as REST shows it. */
export interface RestAuditEntry {
  chain: string;
  seq: number;
  at: string;
  request_id: string;
  actor_kind: string;
  token_id: string;
  role: string;
  service: string;
  ip: string;
  op: string;
  store: string;
  name: string;
  version: number;
  code: string;
  prev_hash: string;
  hash: string;
}

/** Every audit entry matching `query` (REST query parameters), newest first, following the cursors. */
export async function auditEntries(baseUrl: string, query: Record<string, string> = {}, pageSize = 1000): Promise<RestAuditEntry[]> {
  const out: RestAuditEntry[] = [];
  let cursor: string | null = null;
  for (let pages = 0; pages < 100; pages++) {
    const q = new URLSearchParams({ ...query, limit: String(pageSize), ...(cursor ? { cursor } : {}) });
    const r: JsonReply = await rest(baseUrl, "GET", `/v1/audit?${q}`, undefined, ADMIN_TOKEN);
    assert.equal(r.status, 200, `GET /v1/audit: ${JSON.stringify(r.body)}`);
    out.push(...(r.body as RestAuditEntry[]));
    cursor = r.headers.get("x-next-cursor");
    if (!cursor) return out;
  }
  assert.fail("GET /v1/audit: too many pages");
}

/**
 * The audit entries of the given request ids, waiting (bounded) until each has at least one: entries of calls that
 * change nothing are appended just after the response.
 */
export async function auditFor(
  baseUrl: string,
  requestIds: readonly string[],
  query: Record<string, string> = {},
  ms = 3_000,
): Promise<Map<string, RestAuditEntry[]>> {
  const end = Date.now() + ms;
  for (;;) {
    const all = await auditEntries(baseUrl, query);
    const byId = new Map<string, RestAuditEntry[]>(requestIds.map((id) => [id, []]));
    for (const e of all) byId.get(e.request_id)?.push(e);
    const missing = requestIds.filter((id) => (byId.get(id) ?? []).length === 0);
    if (missing.length === 0) return byId;
    if (Date.now() > end) assert.fail(`no audit entry for request ids ${missing.join(", ")} after ${ms} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Every generated latchkey.* service, found by walking gen/latchkey (a new service is covered without edits). */
export async function latchkeyServices(): Promise<DescService[]> {
  const root = join(import.meta.dirname, "..", "..", "gen", "latchkey");
  const files = (function walk(dir: string): string[] {
    return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
      e.isDirectory() ? walk(join(dir, e.name)) : e.name.endsWith("_pb.ts") ? [join(dir, e.name)] : [],
    );
  })(root);
  const services = new Map<string, DescService>();
  for (const f of files) {
    const mod = (await import(pathToFileURL(f).href)) as Record<string, unknown>;
    for (const value of Object.values(mod)) {
      const desc = value as { kind?: unknown; typeName?: unknown };
      if (desc?.kind === "service" && typeof desc.typeName === "string" && desc.typeName.startsWith("latchkey.")) {
        services.set(desc.typeName, value as DescService);
      }
    }
  }
  return [...services.values()].sort((a, b) => a.typeName.localeCompare(b.typeName));
}

/** Every string of `needles` that occurs in `haystack`. */
export function leaks(haystack: string, needles: readonly string[]): string[] {
  return needles.filter((n) => n !== "" && haystack.includes(n));
}
