import { createHash, timingSafeEqual } from "node:crypto";
import { BlockList, isIP } from "node:net";
import { LatchkeyError } from "../domain/errors.js";

/**
 * What a call needs:
 * - "admin": a configured bearer token (management);
 * - "read": a client IP in the allowlist (GetSecret, VerifySecret);
 * - "public": nothing (health).
 */
export type Permission = "admin" | "read" | "public";

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
  /** Throws unauthenticated (401) or permission_denied (403) if `caller` may not do what `permission` guards. */
  authorize(permission: Permission, caller: Caller): void;
}

export interface AccessOptions {
  readonly adminTokens: readonly string[];
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

export function createAccessControl(opts: AccessOptions): AccessControl {
  const allowed = toBlockList(opts.allowedIps);
  const trusted = toBlockList(opts.trustedProxies);
  const tokenDigests = opts.adminTokens.map(sha256);

  function isAdmin(token: string): boolean {
    const presented = sha256(token);
    let ok = false;
    // Compare against every token so the time taken does not say which one (or whether any) matched.
    for (const d of tokenDigests) ok = timingSafeEqual(d, presented) || ok;
    return ok;
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
      if (permission === "public") return;
      if (permission === "read") {
        if (caller.ip === undefined || !contains(allowed, caller.ip)) {
          throw new LatchkeyError(
            "permission_denied",
            `client IP ${caller.ip ?? "(unknown)"} is not allowed to read secrets`,
          );
        }
        return;
      }
      const header = caller.authorization;
      if (header === undefined || header === "") {
        throw new LatchkeyError("unauthenticated", "missing bearer token: send Authorization: Bearer <token>");
      }
      const m = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(header);
      if (!m || !isAdmin(m[1] as string)) throw new LatchkeyError("unauthenticated", "invalid bearer token");
    },
  };
}
