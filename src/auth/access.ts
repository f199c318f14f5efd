import { createHash, timingSafeEqual } from "node:crypto";
import { BlockList, isIP } from "node:net";
import { LatchkeyError } from "../domain/errors.js";
import { ANONYMOUS, type Principal } from "../domain/principal.js";

/**
 * What a call needs:
 * - "manage": a valid bearer token, admin or service (everything but reads and health);
 * - "read": a client IP in the allowlist (GetSecret, VerifySecret, WatchSecrets, vars); a token is optional and,
 *   if sent, must be valid (it decides which stores the caller sees);
 * - "public": nothing (health).
 * Which stores a principal may touch is decided in the service layer.
 */
export type Permission = "manage" | "read" | "public";

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
   * Establishes who the caller is and whether they may make a call guarded by `permission`. Throws
   * unauthenticated (401: a token is needed, or the one sent is not valid) or permission_denied (403: the client
   * IP may not read).
   */
  authorize(permission: Permission, caller: Caller): Principal;
}

export interface AccessOptions {
  readonly adminTokens: readonly string[];
  /** Tokens identifying services, which own managed stores. */
  readonly serviceTokens?: readonly { readonly service: string; readonly token: string }[];
  readonly allowedIps: readonly string[];
  readonly trustedProxies: readonly string[];
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

function contains(list: BlockList, ip: string): boolean {
  const family = isIP(ip);
  if (family === 0) return false;
  return list.check(ip, family === 4 ? "ipv4" : "ipv6");
}

const sha256 = (s: string) => createHash("sha256").update(s, "utf8").digest();

/** A public identifier of a token: never the token, but stable, for logs and audit. */
export function tokenId(kind: string, token: string): string {
  return `${kind}:${sha256(`latchkey token id\0${token}`).toString("hex").slice(0, 12)}`;
}

export function createAccessControl(opts: AccessOptions): AccessControl {
  const allowed = toBlockList(opts.allowedIps);
  const trusted = toBlockList(opts.trustedProxies);
  const known: { digest: Buffer; principal: Principal }[] = [
    ...opts.adminTokens.map((t) => ({ digest: sha256(t), principal: { kind: "admin", tokenId: tokenId("admin", t) } as Principal })),
    ...(opts.serviceTokens ?? []).map((s) => ({
      digest: sha256(s.token),
      principal: { kind: "service", service: s.service, tokenId: tokenId(`service:${s.service}`, s.token) } as Principal,
    })),
  ];

  /** The principal a token stands for, or undefined. */
  function lookup(token: string): Principal | undefined {
    const presented = sha256(token);
    let found: Principal | undefined;
    // Compare against every token so the time taken does not say which one (or whether any) matched.
    for (const k of known) if (timingSafeEqual(k.digest, presented) && found === undefined) found = k.principal;
    return found;
  }

  function authenticate(header: string | undefined): Principal {
    if (header === undefined || header === "") return ANONYMOUS;
    const m = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(header);
    const principal = m ? lookup(m[1] as string) : undefined;
    if (!principal) throw new LatchkeyError("unauthenticated", "invalid bearer token");
    return principal;
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

    authorize(permission, caller) {
      if (permission === "public") return ANONYMOUS;
      if (permission === "read") {
        if (caller.ip === undefined || !contains(allowed, caller.ip)) {
          throw new LatchkeyError(
            "permission_denied",
            `client IP ${caller.ip ?? "(unknown)"} is not allowed to read secrets`,
          );
        }
        return authenticate(caller.authorization);
      }
      if (caller.authorization === undefined || caller.authorization === "") {
        throw new LatchkeyError("unauthenticated", "missing bearer token: send Authorization: Bearer <token>");
      }
      return authenticate(caller.authorization);
    },
  };
}
