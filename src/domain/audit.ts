import { createHash } from "node:crypto";

/**
 * One audited call: who, from where, what, on which secret, and how it ended. Never a value or a token.
 *
 * Entries form a hash chain: each carries the hash of the one before, so editing, removing or reordering any entry
 * breaks every hash after it (`verifyChain`).
 */
export interface AuditEvent {
  /** When the call ended (ms). */
  readonly at: number;
  readonly requestId: string;
  /** "token", "anonymous", or "system" (the scheduler). */
  readonly actorKind: "token" | "anonymous" | "system";
  /** The public id of the token used; "" for none. */
  readonly tokenId: string;
  readonly role: string;
  readonly service: string;
  /** The client IP; "" when unknown. */
  readonly ip: string;
  /** The RPC procedure or REST route. */
  readonly op: string;
  readonly store: string;
  readonly name: string;
  /** The version the call read or made; 0 for none. */
  readonly version: number;
  /** "ok" or the error code the caller got. */
  readonly code: string;
}

/**
 * An audit entry as stored: its chain, its place in it and the hashes linking it. The embedded store keeps one
 * chain; on MongoDB each server process keeps its own (no lock across replicas), named by `chain`.
 */
export interface AuditRecord extends AuditEvent {
  readonly chain: string;
  readonly seq: number;
  readonly prevHash: string;
  readonly hash: string;
}

/** The prevHash of the first entry. */
export const GENESIS_HASH = "0".repeat(64);

const FIELDS: readonly (keyof AuditEvent)[] = [
  "at",
  "requestId",
  "actorKind",
  "tokenId",
  "role",
  "service",
  "ip",
  "op",
  "store",
  "name",
  "version",
  "code",
];

/**
 * The hash of an entry: SHA-256 over the JSON array of the previous hash, its chain, its sequence number and every
 * field in a fixed order (JSON keeps field boundaries unambiguous: no text can move between neighbouring fields).
 */
export function auditHash(prevHash: string, chain: string, seq: number, e: AuditEvent): string {
  const fields = [prevHash, chain, seq, ...FIELDS.map((f) => e[f])];
  return createHash("sha256").update(JSON.stringify(fields)).digest("hex");
}

/** Links an event to `chain` after `prev` (or at its start). */
export function chainRecord(chain: string, prev: { seq: number; hash: string } | undefined, e: AuditEvent): AuditRecord {
  const seq = (prev?.seq ?? 0) + 1;
  const prevHash = prev?.hash ?? GENESIS_HASH;
  return { ...e, chain, seq, prevHash, hash: auditHash(prevHash, chain, seq, e) };
}

export interface ChainCheck {
  readonly ok: boolean;
  readonly checked: number;
  /** The first entry that does not fit, and why. */
  readonly brokenAt?: number;
  readonly reason?: string;
}

/**
 * Walks the records of one chain in sequence order and checks every link. `from` is the last record before them
 * (undefined from the start of the chain). Returns at the first break.
 */
export function verifyChain(records: Iterable<AuditRecord>, from?: { seq: number; hash: string }): ChainCheck & { last?: AuditRecord } {
  let prev = from;
  let checked = 0;
  let last: AuditRecord | undefined;
  for (const r of records) {
    // A chain starts at 1; a check that starts later takes the first record's own link as its anchor.
    const expectedSeq = prev ? prev.seq + 1 : r.seq;
    if (r.seq !== expectedSeq) return { ok: false, checked, brokenAt: r.seq, reason: `entry ${expectedSeq} is missing` };
    const expectedPrev = prev?.hash ?? (r.seq === 1 ? GENESIS_HASH : r.prevHash);
    if (r.prevHash !== expectedPrev) return { ok: false, checked, brokenAt: r.seq, reason: "it does not follow the entry before it" };
    if (auditHash(r.prevHash, r.chain, r.seq, r) !== r.hash) return { ok: false, checked, brokenAt: r.seq, reason: "its contents do not match its hash" };
    prev = r;
    last = r;
    checked++;
  }
  return { ok: true, checked, ...(last ? { last } : {}) };
}
