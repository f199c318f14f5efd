import { randomBytes } from "node:crypto";
import { auditFor, noteTarget } from "../audit/auditor.js";
import { tokenHash } from "../auth/access.js";
import { isIpOrCidr } from "../config/config.js";
import type { AuditRecord } from "../domain/audit.js";
import { LatchkeyError } from "../domain/errors.js";
import { isAdmin, type Principal, type Role } from "../domain/principal.js";
import { type NewToken, type TokenRecord, validateNewToken } from "../domain/token.js";
import type { Clock } from "../scheduler/clock.js";
import type { AuditQuery, Storage } from "../storage/storage.js";
import { decodePageToken, encodePageToken, page, pageLimit } from "./paging.js";

/** Tokens made through the API: created (shown once), listed, revoked. Stored only as SHA-256 hashes. */
export interface TokenManager {
  create(p: Principal, input: NewToken): Promise<{ token: TokenRecord; secret: string }>;
  list(input: { pageSize?: number; pageToken?: string }): Promise<{ tokens: TokenRecord[]; nextPageToken: string }>;
  revoke(id: string): Promise<TokenRecord>;
}

/** A new bearer token: "lkt_" and 32 random bytes, base64url. */
export function newTokenSecret(): string {
  return `lkt_${randomBytes(32).toString("base64url")}`;
}

export function createTokenManager(deps: {
  storage: Pick<Storage, "insertToken" | "listTokens" | "revokeToken" | "findTokenById">;
  clock: Clock;
  /** Told of a revoked token's hash, so the cache of whoever authenticates forgets it. */
  onRevoke?: (hash: string) => void;
}): TokenManager {
  const { storage, clock } = deps;
  return {
    async create(p, input) {
      if (!(p.kind === "token" && isAdmin(p) && p.stores === null && p.prefixes === null)) {
        throw new LatchkeyError("permission_denied", "only an unrestricted admin token can create tokens", { reason: "ROLE_NOT_ALLOWED" });
      }
      validateNewToken(input, clock.now(), isIpOrCidr);
      const secret = newTokenSecret();
      const none = <T>(xs: readonly T[] | undefined) => (xs && xs.length > 0 ? [...xs] : null);
      const token: TokenRecord = {
        id: `tok_${randomBytes(8).toString("hex")}`,
        hash: tokenHash(secret),
        label: input.label,
        role: input.role as Role,
        service: input.service ? input.service : null,
        stores: none(input.stores),
        prefixes: none(input.prefixes),
        allowedIps: none(input.allowedIps),
        expiresAt: input.expiresAt ?? null,
        createdAt: clock.now(),
        createdBy: p.kind === "token" ? p.tokenId : "",
        revokedAt: null,
      };
      await storage.insertToken(token, auditFor({ name: token.id }));
      return { token, secret };
    },
    async list(input) {
      const limit = pageLimit(input.pageSize);
      const rows = await storage.listTokens({ after: decodePageToken(input.pageToken), limit: limit + 1 });
      const { items, nextPageToken } = page(rows, limit, (t) => t.id);
      return { tokens: items, nextPageToken };
    },
    async revoke(id) {
      noteTarget({ name: id });
      // Revoking twice is fine; revoking a token that never existed is not.
      await storage.revokeToken(id, clock.now(), auditFor({ name: id }));
      const token = await storage.findTokenById(id);
      if (!token) throw new LatchkeyError("not_found", `token "${id}" not found`, { reason: "TOKEN_NOT_FOUND" });
      deps.onRevoke?.(token.hash);
      return token;
    },
  };
}

/** Reads the audit log newest first, filtered, with opaque page tokens. */
export async function listAudit(
  storage: Pick<Storage, "listAudit">,
  input: Omit<AuditQuery, "before" | "limit"> & { pageSize?: number; pageToken?: string },
): Promise<{ events: AuditRecord[]; nextPageToken: string }> {
  const limit = pageLimit(input.pageSize);
  const raw = decodePageToken(input.pageToken);
  let before: AuditQuery["before"];
  if (raw) {
    const [at, seq, ...chain] = raw.split("|");
    before = { at: Number(at), seq: Number(seq), chain: chain.join("|") };
  }
  const rows = await storage.listAudit({ ...input, before, limit: limit + 1 });
  const more = rows.length > limit;
  const events = rows.slice(0, limit);
  const last = events[events.length - 1];
  return { events, nextPageToken: more && last ? encodePageToken(`${last.at}|${last.seq}|${last.chain}`) : "" };
}
