import { createHash, timingSafeEqual } from "node:crypto";
import { BlockList, isIP } from "node:net";
import { LatchkeyError } from "../domain/errors.js";
import { ANONYMOUS, adminPrincipal, type Principal, type TokenPrincipal } from "../domain/principal.js";
import type { TokenRecord } from "../domain/token.js";
import type { Storage } from "../storage/storage.js";
import { type Action, can, IP_FENCED_ACTIONS } from "./policy.js";

/** The facts about a caller that access decisions use. */
export interface Caller {
  /** The `authorization` header, if any. */
  readonly authorization: string | undefined;
  /** The client IP (see clientIp), or undefined when it could not be determined. */
  readonly ip: string | undefined;
}

export interface AccessControl {
  /** The client IP: the TCP peer, or the X-Forwarded-For hop before the nearest trusted proxy. */
  clientIp(peer: string | undefined, forwardedFor: string | undefined): string | undefined;
  /**
   * Who the caller is: anonymous without an Authorization header, else the token's principal. Throws
   * unauthenticated (401) for a header that is not a valid, unexpired, unrevoked bearer token.
   */
  authenticate(authorization: string | undefined): Promise<Principal>;
  /**
   * Whether `principal`, calling from `ip`, may perform `action`. Throws unauthenticated (401) when the action
   * needs a token and none was sent, permission_denied (403) when the token's role or IP rules do not allow it, or
   * when a read comes from an IP outside LATCHKEY_ALLOWED_IPS.
   */
  authorize(action: Action, principal: Principal, ip: string | undefined): void;
  /** Forgets a cached token (after it was revoked), so the next call re-reads it. */
  forgetToken(hash: string): void;
}

export interface AccessOptions {
  readonly adminTokens: readonly string[];
  /** Tokens identifying services, which own managed stores. */
  readonly serviceTokens?: readonly { readonly service: string; readonly token: string }[];
  readonly allowedIps: readonly string[];
  readonly trustedProxies: readonly string[];
  /** Where tokens made with CreateToken are found. Without it only the bootstrap tokens work. */
  readonly tokens?: Pick<Storage, "findTokenByHash">;
  readonly clock?: { now(): number };
  /** How long a looked-up token is trusted before it is read again (revocation elsewhere). Default 5000 ms. */
  readonly tokenCacheMs?: number;
  /** Reads need a token too, not only an allowed IP (behind a sidecar, where every caller has its address). */
  readonly readsRequireToken?: boolean;
}

/** Strips the IPv4-mapped IPv6 prefix Node reports for IPv4 peers on a dual-stack socket. */
export function normalizeIp(ip: string): string {
  return ip.startsWith("::ffff:") && isIP(ip.slice(7)) === 4 ? ip.slice(7) : ip;
}

export function toBlockList(entries: readonly string[]): BlockList {
  const list = new BlockList();
  for (const entry of entries) {
    const [addr = "", bits] = entry.split("/");
    const family = isIP(addr) === 6 ? "ipv6" : "ipv4";
    if (bits === undefined) list.addAddress(addr, family);
    else list.addSubnet(addr, Number(bits), family);
  }
  return list;
}

/**
 * Whether `ip` is in `list`. BlockList.check builds a SocketAddress on every call, a visible cost per request, so
 * answers are remembered per list (a list never changes once built); at most MEMO_SIZE addresses each.
 */
function contains(list: BlockList, ip: string): boolean {
  let memo = memos.get(list);
  if (memo === undefined) {
    memo = new Map();
    memos.set(list, memo);
  }
  let hit = memo.get(ip);
  if (hit === undefined) {
    const family = isIP(ip);
    hit = family !== 0 && list.check(ip, family === 4 ? "ipv4" : "ipv6");
    if (memo.size >= MEMO_SIZE) memo.clear();
    memo.set(ip, hit);
  }
  return hit;
}

const memos = new WeakMap<BlockList, Map<string, boolean>>();
const MEMO_SIZE = 4096;

const sha256 = (s: string) => createHash("sha256").update(s, "utf8").digest();

/** The hex SHA-256 under which a token made with CreateToken is stored. */
export function tokenHash(token: string): string {
  return createHash("sha256").update(token, "utf8").digest("hex");
}

/** A public identifier of a bootstrap token: never the token, but stable, for logs and audit. */
export function tokenId(kind: string, token: string): string {
  return `${kind}:${sha256(`latchkey token id\0${token}`).toString("hex").slice(0, 12)}`;
}

/** The principal a stored token stands for. */
export function principalOf(t: TokenRecord): TokenPrincipal & { allowedIps: readonly string[] | null } {
  return {
    kind: "token",
    tokenId: t.id,
    role: t.role,
    service: t.service,
    stores: t.stores,
    prefixes: t.prefixes,
    allowedIps: t.allowedIps,
  };
}

export function createAccessControl(opts: AccessOptions): AccessControl {
  const allowed = toBlockList(opts.allowedIps);
  const trusted = toBlockList(opts.trustedProxies);
  const clock = opts.clock ?? { now: Date.now };
  const cacheMs = opts.tokenCacheMs ?? 5000;
  const bootstrap: { digest: Buffer; principal: Principal }[] = [
    ...opts.adminTokens.map((t) => ({ digest: sha256(t), principal: adminPrincipal(tokenId("admin", t)) })),
    ...(opts.serviceTokens ?? []).map((s) => ({
      digest: sha256(s.token),
      principal: {
        kind: "token",
        tokenId: tokenId(`service:${s.service}`, s.token),
        role: "writer",
        service: s.service,
        stores: null,
        prefixes: null,
      } satisfies Principal,
    })),
  ];
  const cache = new Map<string, { token: TokenRecord | undefined; at: number }>();
  const ipLists = new WeakMap<readonly string[], BlockList>();

  /** The bootstrap principal a token stands for, or undefined. */
  function bootstrapPrincipal(token: string): Principal | undefined {
    const presented = sha256(token);
    let found: Principal | undefined;
    // Compare against every token so the time taken does not say which one (or whether any) matched.
    for (const k of bootstrap) if (timingSafeEqual(k.digest, presented) && found === undefined) found = k.principal;
    return found;
  }

  /** A token made with CreateToken, by the hash of what was presented (cached briefly). */
  async function storedToken(token: string): Promise<TokenRecord | undefined> {
    if (!opts.tokens) return undefined;
    const hash = tokenHash(token);
    const hit = cache.get(hash);
    if (hit && clock.now() - hit.at < cacheMs) return hit.token;
    const found = await opts.tokens.findTokenByHash(hash);
    if (cache.size > 10_000) cache.clear();
    cache.set(hash, { token: found, at: clock.now() });
    return found;
  }

  function ipAllowedFor(principal: Principal, ip: string | undefined): boolean {
    const list = (principal as { allowedIps?: readonly string[] | null }).allowedIps;
    if (!list) return true;
    let block = ipLists.get(list);
    if (!block) {
      block = toBlockList(list);
      ipLists.set(list, block);
    }
    return ip !== undefined && contains(block, ip);
  }

  return {
    clientIp(peer, forwardedFor) {
      if (peer === undefined) return undefined;
      const direct = normalizeIp(peer);
      if (!forwardedFor || !contains(trusted, direct)) return direct;
      const hops = forwardedFor.split(",").map((h) => normalizeIp(h.trim()));
      for (let i = hops.length - 1; i >= 0; i--) {
        const hop = hops[i] as string;
        // A malformed hop means the chain cannot be trusted: no IP, so IP-gated calls are refused.
        if (isIP(hop) === 0) return undefined;
        if (!contains(trusted, hop) || i === 0) return hop;
      }
      return direct;
    },

    async authenticate(header) {
      if (header === undefined || header === "") return ANONYMOUS;
      const m = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(header);
      if (!m) throw new LatchkeyError("unauthenticated", "invalid bearer token");
      const token = m[1] as string;
      const boot = bootstrapPrincipal(token);
      if (boot) return boot;
      const stored = await storedToken(token);
      if (!stored) throw new LatchkeyError("unauthenticated", "invalid bearer token");
      if (stored.revokedAt !== null) throw new LatchkeyError("unauthenticated", "this token was revoked", { reason: "TOKEN_REVOKED" });
      if (stored.expiresAt !== null && stored.expiresAt <= clock.now()) {
        throw new LatchkeyError("unauthenticated", "this token has expired", { reason: "TOKEN_EXPIRED" });
      }
      return principalOf(stored);
    },

    authorize(action, principal, ip) {
      if (action === "public") return;
      if (IP_FENCED_ACTIONS.has(action) && (ip === undefined || !contains(allowed, ip))) {
        throw new LatchkeyError("permission_denied", `client IP ${ip ?? "(unknown)"} is not allowed to read secrets`, {
          reason: "IP_NOT_ALLOWED",
        });
      }
      if (principal.kind === "anonymous") {
        if (can(principal, action) && !opts.readsRequireToken) return;
        throw new LatchkeyError("unauthenticated", "missing bearer token: send Authorization: Bearer <token>");
      }
      if (!ipAllowedFor(principal, ip)) {
        throw new LatchkeyError("permission_denied", `this token may not be used from ${ip ?? "an unknown address"}`, {
          reason: "TOKEN_IP_NOT_ALLOWED",
        });
      }
      if (!can(principal, action)) {
        throw new LatchkeyError("permission_denied", `a ${principal.role} token may not ${action.replace(".", " ")}`, {
          reason: "ROLE_NOT_ALLOWED",
        });
      }
    },

    forgetToken(hash) {
      cache.delete(hash);
    },
  };
}
