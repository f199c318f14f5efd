import type { Principal, Role } from "../domain/principal.js";

/**
 * The access policy, in one place: what every RPC and every REST route needs, and which roles have it.
 *
 * An RPC or route without an entry is refused (fail closed); tests walk the generated service descriptors and the
 * REST route table and fail if anything has no entry.
 */
export type Action =
  | "public"
  | "secrets.read"
  | "secrets.verify"
  | "secrets.list"
  | "secrets.write"
  | "vars.read"
  | "vars.write"
  | "stores.read"
  | "stores.write"
  | "tokens.manage"
  | "audit.read";

/** Actions allowed without a token (from an allowed IP), as seed 003's readers do. */
const ANONYMOUS_ACTIONS: ReadonlySet<Action> = new Set(["public", "secrets.read", "secrets.verify", "vars.read"]);

/** Reads of values: they also need the client IP in LATCHKEY_ALLOWED_IPS, token or not. */
export const IP_FENCED_ACTIONS: ReadonlySet<Action> = new Set(["secrets.read", "secrets.verify", "vars.read"]);

const GRANTS: Record<Role, ReadonlySet<Action>> = {
  admin: new Set<Action>([
    "public",
    "secrets.read",
    "secrets.verify",
    "secrets.list",
    "secrets.write",
    "vars.read",
    "vars.write",
    "stores.read",
    "stores.write",
    "tokens.manage",
    "audit.read",
  ]),
  writer: new Set<Action>([
    "public",
    "secrets.read",
    "secrets.verify",
    "secrets.list",
    "secrets.write",
    "vars.read",
    "vars.write",
    "stores.read",
    "stores.write",
  ]),
  reader: new Set<Action>(["public", "secrets.read", "secrets.verify", "secrets.list", "vars.read", "stores.read"]),
  verifier: new Set<Action>(["public", "secrets.verify"]),
};

/** Whether `p` may perform `action` (before store ownership and scopes, which the service layer checks). */
export function can(p: Principal, action: Action): boolean {
  if (p.kind === "anonymous") return ANONYMOUS_ACTIONS.has(action);
  // Tokens and the audit log are the whole service's: only an admin bound to no service and no scope may touch
  // them (a limited admin could otherwise mint itself an unlimited token).
  if (action === "tokens.manage" || action === "audit.read") {
    return p.role === "admin" && p.service === null && p.stores === null && p.prefixes === null;
  }
  // Writers manage stores only on behalf of a service, which then owns them.
  if (action === "stores.write" && p.role === "writer") return p.service !== null;
  return GRANTS[p.role].has(action);
}

const S = "latchkey.v1.SecretService";
const ST = "latchkey.v1.StoreService";
const V = "latchkey.v1.VarService";
const T = "latchkey.v1.TokenService";
const A = "latchkey.v1.AuditService";

/** What every RPC needs, by full procedure name ("package.Service.Method"). */
export const RPC_POLICY: Readonly<Record<string, Action>> = {
  [`${S}.StoreSecret`]: "secrets.write",
  [`${S}.GetSecret`]: "secrets.read",
  [`${S}.ListSecrets`]: "secrets.list",
  [`${S}.UpdateSecret`]: "secrets.write",
  [`${S}.DeleteSecret`]: "secrets.write",
  [`${S}.RotateSecret`]: "secrets.write",
  [`${S}.VerifySecret`]: "secrets.verify",
  [`${S}.WatchSecrets`]: "secrets.read",
  [`${S}.ListSecretVersions`]: "secrets.list",
  [`${S}.SetVersionState`]: "secrets.write",
  [`${S}.UndeleteSecret`]: "secrets.write",
  [`${S}.CopySecret`]: "secrets.write",
  [`${S}.RenameSecret`]: "secrets.write",
  [`${S}.MoveSecret`]: "secrets.write",
  [`${S}.BatchUpsertSecrets`]: "secrets.write",
  [`${S}.BatchDeleteSecrets`]: "secrets.write",
  [`${S}.BatchGetSecrets`]: "secrets.read",
  [`${ST}.CreateStore`]: "stores.write",
  [`${ST}.GetStore`]: "stores.read",
  [`${ST}.ListStores`]: "stores.read",
  [`${ST}.DeleteStore`]: "stores.write",
  [`${ST}.GetUsage`]: "stores.read",
  [`${V}.SetVars`]: "vars.write",
  [`${V}.GetVar`]: "vars.read",
  [`${V}.ListVars`]: "vars.read",
  [`${V}.DeleteVar`]: "vars.write",
  [`${T}.CreateToken`]: "tokens.manage",
  [`${T}.ListTokens`]: "tokens.manage",
  [`${T}.RevokeToken`]: "tokens.manage",
  [`${A}.ListAuditEvents`]: "audit.read",
  // Health and reflection are for probes and generic tools: they reveal readiness and the API's shape, no data.
  "grpc.health.v1.Health.Check": "public",
  "grpc.health.v1.Health.Watch": "public",
  "grpc.health.v1.Health.List": "public",
  "grpc.reflection.v1.ServerReflection.ServerReflectionInfo": "public",
  "grpc.reflection.v1alpha.ServerReflection.ServerReflectionInfo": "public",
};

/** What every REST route needs, by its operation name (method and path template). */
function secretRoutes(prefix: string): Record<string, Action> {
  return {
    [`POST ${prefix}`]: "secrets.write",
    [`GET ${prefix}`]: "secrets.list",
    [`POST ${prefix}:batchSet`]: "secrets.write",
    [`POST ${prefix}:batchGet`]: "secrets.read",
    [`POST ${prefix}:batchDelete`]: "secrets.write",
    [`GET ${prefix}/{name}`]: "secrets.read",
    [`PUT ${prefix}/{name}`]: "secrets.write",
    [`DELETE ${prefix}/{name}`]: "secrets.write",
    [`POST ${prefix}/{name}/rotate`]: "secrets.write",
    [`POST ${prefix}/{name}/verify`]: "secrets.verify",
    [`POST ${prefix}/{name}/undelete`]: "secrets.write",
    [`POST ${prefix}/{name}/copy`]: "secrets.write",
    [`POST ${prefix}/{name}/rename`]: "secrets.write",
    [`POST ${prefix}/{name}/move`]: "secrets.write",
    [`GET ${prefix}/{name}/versions`]: "secrets.list",
    [`PUT ${prefix}/{name}/versions/{version}`]: "secrets.write",
  };
}

export const REST_POLICY: Readonly<Record<string, Action>> = {
  "GET /healthz": "public",
  "GET /readyz": "public",
  "GET /metrics": "public",
  ...secretRoutes("/v1/secrets"),
  ...secretRoutes("/v1/stores/{store}/secrets"),
  "GET /v1/usage": "stores.read",
  "POST /v1/stores": "stores.write",
  "GET /v1/stores": "stores.read",
  "GET /v1/stores/{store}": "stores.read",
  "DELETE /v1/stores/{store}": "stores.write",
  "GET /v1/stores/{store}/usage": "stores.read",
  "GET /v1/stores/{store}/vars": "vars.read",
  "POST /v1/stores/{store}/vars": "vars.write",
  "GET /v1/stores/{store}/vars/{name}": "vars.read",
  "PUT /v1/stores/{store}/vars/{name}": "vars.write",
  "DELETE /v1/stores/{store}/vars/{name}": "vars.write",
  "POST /v1/tokens": "tokens.manage",
  "GET /v1/tokens": "tokens.manage",
  "DELETE /v1/tokens/{id}": "tokens.manage",
  "GET /v1/audit": "audit.read",
};
