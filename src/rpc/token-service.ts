import type { Auditor } from "../audit/auditor.js";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { type AuditEvent, AuditEventSchema, AuditService } from "../../gen/latchkey/v1/audit_service_pb.js";
import { Role, type Token, TokenSchema, TokenService } from "../../gen/latchkey/v1/token_service_pb.js";
import type { AuditRecord } from "../domain/audit.js";
import type { Role as DomainRole } from "../domain/principal.js";
import type { TokenRecord } from "../domain/token.js";
import type { Storage } from "../storage/storage.js";
import { listAudit, type TokenManager } from "../service/tokens.js";
import { fromProtoTime } from "./convert.js";
import { kPrincipal } from "./interceptor.js";

const ROLES: Record<DomainRole, Role> = {
  admin: Role.ADMIN,
  writer: Role.WRITER,
  reader: Role.READER,
  verifier: Role.VERIFIER,
};

export function toProtoToken(t: TokenRecord): Token {
  return create(TokenSchema, {
    id: t.id,
    label: t.label,
    role: ROLES[t.role],
    service: t.service ?? "",
    stores: [...(t.stores ?? [])],
    prefixes: [...(t.prefixes ?? [])],
    allowedIps: [...(t.allowedIps ?? [])],
    expiresAt: t.expiresAt === null ? undefined : timestampFromMs(t.expiresAt),
    createdAt: timestampFromMs(t.createdAt),
    createdBy: t.createdBy,
    revokedAt: t.revokedAt === null ? undefined : timestampFromMs(t.revokedAt),
  });
}

export function toProtoAuditEvent(r: AuditRecord): AuditEvent {
  return create(AuditEventSchema, { ...r, seq: BigInt(r.seq), at: timestampFromMs(r.at) });
}

/** The TokenService handlers (admins only, by policy). */
export function createTokenServiceImpl({ tokens }: { tokens: TokenManager }): ServiceImpl<typeof TokenService> {
  const who = (ctx: HandlerContext) => ctx.values.get(kPrincipal);
  return {
    async createToken(req, ctx) {
      const role = (Object.entries(ROLES) as [DomainRole, Role][]).find(([, r]) => r === req.role)?.[0] ?? "";
      const made = await tokens.create(who(ctx), {
        label: req.label,
        role,
        service: req.service,
        stores: req.stores,
        prefixes: req.prefixes,
        allowedIps: req.allowedIps,
        expiresAt: fromProtoTime(req.expiresAt),
      });
      return { token: toProtoToken(made.token), secret: made.secret };
    },
    async listTokens(req) {
      const page = await tokens.list({ pageSize: req.pageSize, pageToken: req.pageToken });
      return { tokens: page.tokens.map(toProtoToken), nextPageToken: page.nextPageToken };
    },
    async revokeToken(req) {
      return { token: toProtoToken(await tokens.revoke(req.id)) };
    },
  };
}

/** The AuditService handlers (admins only, by policy). */
export function createAuditServiceImpl({
  storage,
  auditor,
}: {
  storage: Pick<Storage, "listAudit">;
  /** Entries of calls that ended are appended within moments; a query first appends them, so it sees them all. */
  auditor?: Pick<Auditor, "flush">;
}): ServiceImpl<typeof AuditService> {
  return {
    async listAuditEvents(req) {
      await auditor?.flush();
      const page = await listAudit(storage, {
        from: fromProtoTime(req.from),
        to: fromProtoTime(req.to),
        tokenId: req.tokenId || undefined,
        store: req.store || undefined,
        name: req.name || undefined,
        pageSize: req.pageSize,
        pageToken: req.pageToken,
      });
      return { events: page.events.map(toProtoAuditEvent), nextPageToken: page.nextPageToken };
    },
  };
}
