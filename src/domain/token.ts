import { invalidArgument } from "./errors.js";
import { ROLES, type Role } from "./principal.js";
import { validateStoreName } from "./store.js";

/** A token made with CreateToken, as stored: only the SHA-256 of the secret part, never the token. */
export interface TokenRecord {
  /** Public id, e.g. "tok_3f9a…"; shown in lists and the audit log. */
  readonly id: string;
  /** Hex SHA-256 of the whole token string. */
  readonly hash: string;
  readonly label: string;
  readonly role: Role;
  readonly service: string | null;
  readonly stores: readonly string[] | null;
  readonly prefixes: readonly string[] | null;
  /** IPs and CIDRs the token may be used from; null: anywhere. */
  readonly allowedIps: readonly string[] | null;
  readonly expiresAt: number | null;
  readonly createdAt: number;
  /** The id of the token that made it. */
  readonly createdBy: string;
  readonly revokedAt: number | null;
}

export interface NewToken {
  readonly label: string;
  readonly role: string;
  readonly service?: string | undefined;
  readonly stores?: readonly string[] | undefined;
  readonly prefixes?: readonly string[] | undefined;
  readonly allowedIps?: readonly string[] | undefined;
  readonly expiresAt?: number | undefined;
}

const SERVICE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;

/** Checks the settings of a new token; `isIpOrCidr` comes from the config module (no network code here). */
export function validateNewToken(t: NewToken, now: number, isIpOrCidr: (s: string) => boolean): void {
  if (t.label.length > 128) throw invalidArgument("label", "too_long", "label must be at most 128 characters");
  if (!(ROLES as readonly string[]).includes(t.role)) {
    throw invalidArgument("role", "enum", `role must be one of ${ROLES.join(", ")}`);
  }
  if (t.service !== undefined && t.service !== "" && !SERVICE.test(t.service)) {
    throw invalidArgument("service", "pattern", "service must be letters, digits, _ . - (at most 63)");
  }
  if (t.stores) {
    if (t.stores.length > 100) throw invalidArgument("stores", "too_many", "at most 100 stores");
    t.stores.forEach((s, i) => validateStoreName(s, `stores[${i}]`));
  }
  if (t.prefixes) {
    if (t.prefixes.length > 100) throw invalidArgument("prefixes", "too_many", "at most 100 prefixes");
    t.prefixes.forEach((p, i) => {
      if (p.length > 256) throw invalidArgument(`prefixes[${i}]`, "too_long", "a prefix is at most 256 characters");
    });
  }
  if (t.allowedIps) {
    t.allowedIps.forEach((ip, i) => {
      if (!isIpOrCidr(ip)) throw invalidArgument(`allowed_ips[${i}]`, "pattern", `"${ip.slice(0, 64)}" is not an IP or CIDR`);
    });
  }
  if (t.expiresAt !== undefined && t.expiresAt <= now) {
    throw invalidArgument("expires_at", "in_past", "expires_at must be in the future");
  }
}
