import { invalidArgument, LatchkeyError } from "./errors.js";

/**
 * The domain model of a secret and the pure rules over it.
 *
 * A secret is one versioned document. Every transition is a pure function `(doc, input, now) -> doc'` that bumps
 * `revision`; storage writes the result only if the stored revision is still the one the transition started from.
 * Times are milliseconds since the epoch; durations are whole seconds.
 */

export type SecretKind = "manual" | "automatic";
/** What a secret is for; informational (000's secret or token). */
export type SecretType = "secret" | "token";

/**
 * The state of a version.
 * - active: usable; the newest active version is the current one, older active ones are valid until their grace
 *   window ends;
 * - deactivated: retired; never valid for VerifySecret, still readable by explicit version;
 * - suspended: disabled for now (can be made active again); not served;
 * - compromised: known to be leaked; never served or valid again (can only be destroyed);
 * - destroyed: its ciphertext is gone for good.
 */
export type VersionState = "active" | "deactivated" | "suspended" | "compromised" | "destroyed";
export const VERSION_STATES: readonly VersionState[] = ["active", "deactivated", "suspended", "compromised", "destroyed"];

/** Which state changes are allowed, from each state. */
const TRANSITIONS: Record<VersionState, readonly VersionState[]> = {
  active: ["deactivated", "suspended", "compromised", "destroyed"],
  deactivated: ["active", "suspended", "compromised", "destroyed"],
  suspended: ["active", "deactivated", "compromised", "destroyed"],
  compromised: ["destroyed"],
  destroyed: [],
};

/** What the last write to a document did (reported by the change feed). */
export type ChangeKind = "created" | "updated" | "rotated" | "state_changed" | "deleted" | "restored" | "renamed" | "moved";

/** One version of a secret. `sealed` is the ciphertext envelope; the plaintext never enters a document. */
export interface VersionRecord {
  readonly version: number;
  readonly createdAt: number;
  /** Null while the version is current; set when superseded (superseded time + grace period). */
  readonly validUntil: number | null;
  /** The ciphertext envelope; empty once destroyed. */
  readonly sealed: string;
  readonly state: VersionState;
  /** The value is bytes rather than text. */
  readonly binary: boolean;
}

export interface RotationSchedule {
  readonly intervalSeconds: number;
  readonly nextRotationAt: number;
}

/** A soft deletion: the secret is kept, invisible, until `purgeAt`, and can be restored until then. */
export interface Deletion {
  readonly deletedAt: number;
  readonly purgeAt: number;
}

/** The stored document of one secret: identity, metadata and its bounded list of versions (newest last). */
export interface SecretDocument {
  readonly id: string;
  readonly store: string;
  readonly name: string;
  readonly kind: SecretKind;
  readonly type: SecretType;
  readonly description: string;
  /** A folder path ("" for none), for grouping and filtering. */
  readonly folder: string;
  readonly tags: readonly string[];
  readonly metadata: Readonly<Record<string, string>>;
  /** After this time the secret is not served. Null: never expires. */
  readonly expiresAt: number | null;
  readonly gracePeriodSeconds: number;
  /** Set for automatic secrets only. */
  readonly rotation: RotationSchedule | null;
  readonly versions: readonly VersionRecord[];
  /** Set while soft-deleted. */
  readonly deletion: Deletion | null;
  readonly lastChange: ChangeKind;
  readonly createdAt: number;
  readonly updatedAt: number;
  /** Incremented by every write; the compare-and-set key. */
  readonly revision: number;
}

export const DEFAULT_STORE = "default";
export const LIMITS = Object.freeze({
  nameMax: 256,
  valueMax: 10_240,
  binaryValueMax: 65_536,
  descriptionMax: 1024,
  intervalMinSeconds: 1,
  /** Ten years. */
  durationMaxSeconds: 315_360_000,
  tagsMax: 32,
  tagMax: 64,
  metadataMax: 64,
  metadataKeyMax: 128,
  metadataValueMax: 1024,
});
export const DEFAULTS = Object.freeze({
  rotationIntervalSeconds: 86_400,
  automaticGraceSeconds: 3_600,
  manualGraceSeconds: 0,
});

const NAME_PATTERN = /^[A-Za-z0-9_.-]+(?:\/[A-Za-z0-9_.-]+)*$/;
const TAG_PATTERN = /^[A-Za-z0-9_.:=-]+$/;
const METADATA_KEY_PATTERN = /^[A-Za-z0-9_.:/-]+$/;

/** Checks a secret name: segments of [A-Za-z0-9_.-] joined by "/", no "." or ".." segment, at most 256 chars. */
export function validateName(name: string, field = "name"): string {
  if (name === "") throw invalidArgument(field, "required", `${field} is required`);
  if (name.length > LIMITS.nameMax) {
    throw invalidArgument(field, "too_long", `${field} must be at most ${LIMITS.nameMax} characters`);
  }
  if (!NAME_PATTERN.test(name) || name.split("/").some((s) => s === "." || s === "..")) {
    throw invalidArgument(
      field,
      "pattern",
      `${field} must be segments of letters, digits, "_", "." or "-" separated by "/"`,
    );
  }
  return name;
}

/** A folder follows the name rules, or is empty (no folder). */
export function validateFolder(folder: string, field = "folder"): string {
  return folder === "" ? folder : validateName(folder, field);
}

/** Checks a text secret value: 1 to 10,240 characters. The message never includes the value. */
export function validateValue(value: string, field = "value"): string {
  if (value === "") throw invalidArgument(field, "required", `${field} must not be empty`);
  if (value.length > LIMITS.valueMax && countCodePoints(value) > LIMITS.valueMax) {
    throw invalidArgument(field, "too_long", `${field} must be at most ${LIMITS.valueMax} characters`);
  }
  return value;
}

/** Checks a binary secret value: 1 to 65,536 bytes. */
export function validateBinaryValue(value: Uint8Array, field = "binary_value"): Uint8Array {
  if (value.length === 0) throw invalidArgument(field, "required", `${field} must not be empty`);
  if (value.length > LIMITS.binaryValueMax) {
    throw invalidArgument(field, "too_long", `${field} must be at most ${LIMITS.binaryValueMax} bytes`);
  }
  return value;
}

export function validateDescription(description: string): string {
  if (description.length > LIMITS.descriptionMax) {
    throw invalidArgument(
      "description",
      "too_long",
      `description must be at most ${LIMITS.descriptionMax} characters`,
    );
  }
  return description;
}

export function validateTags(tags: readonly string[], field = "tags"): string[] {
  if (tags.length > LIMITS.tagsMax) throw invalidArgument(field, "too_many", `at most ${LIMITS.tagsMax} tags`);
  tags.forEach((t, i) => {
    if (t.length === 0 || t.length > LIMITS.tagMax || !TAG_PATTERN.test(t)) {
      throw invalidArgument(
        `${field}[${i}]`,
        "pattern",
        `a tag is 1 to ${LIMITS.tagMax} letters, digits or "_ . : = -"`,
      );
    }
  });
  return [...new Set(tags)].sort();
}

export function validateMetadata(metadata: Readonly<Record<string, string>>, field = "metadata"): Record<string, string> {
  const entries = Object.entries(metadata);
  if (entries.length > LIMITS.metadataMax) throw invalidArgument(field, "too_many", `at most ${LIMITS.metadataMax} metadata entries`);
  for (const [k, v] of entries) {
    if (k.length === 0 || k.length > LIMITS.metadataKeyMax || !METADATA_KEY_PATTERN.test(k)) {
      throw invalidArgument(`${field}.${k.slice(0, 64)}`, "pattern", `a metadata key is 1 to ${LIMITS.metadataKeyMax} letters, digits or "_ . : / -"`);
    }
    if (typeof v !== "string" || v.length > LIMITS.metadataValueMax) {
      throw invalidArgument(`${field}.${k}`, "too_long", `a metadata value is a string of at most ${LIMITS.metadataValueMax} characters`);
    }
  }
  return Object.fromEntries(entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

export function validateInterval(seconds: number, field = "rotation_interval"): number {
  if (!Number.isInteger(seconds) || seconds < LIMITS.intervalMinSeconds || seconds > LIMITS.durationMaxSeconds) {
    throw invalidArgument(
      field,
      "out_of_range",
      `${field} must be a whole number of seconds from ${LIMITS.intervalMinSeconds} to ${LIMITS.durationMaxSeconds}`,
    );
  }
  return seconds;
}

export function validateGrace(seconds: number, field = "grace_period"): number {
  if (!Number.isInteger(seconds) || seconds < 0 || seconds > LIMITS.durationMaxSeconds) {
    throw invalidArgument(
      field,
      "out_of_range",
      `${field} must be a whole number of seconds from 0 to ${LIMITS.durationMaxSeconds}`,
    );
  }
  return seconds;
}

function countCodePoints(s: string): number {
  let n = 0;
  for (const _ of s) n++;
  return n;
}

export interface NewSecret {
  readonly id: string;
  readonly store: string;
  readonly name: string;
  readonly kind: SecretKind;
  readonly description: string;
  readonly type?: SecretType | undefined;
  readonly folder?: string | undefined;
  readonly tags?: readonly string[] | undefined;
  readonly metadata?: Readonly<Record<string, string>> | undefined;
  readonly expiresAt?: number | null | undefined;
  readonly rotationIntervalSeconds?: number | undefined;
  readonly gracePeriodSeconds?: number | undefined;
  /** Version 1 holds bytes rather than text. */
  readonly binary?: boolean | undefined;
}

/** The first revision of a secret, holding version 1. Inputs must be validated. */
export function newSecretDocument(input: NewSecret, sealedV1: string, now: number): SecretDocument {
  if (input.kind === "manual" && input.rotationIntervalSeconds !== undefined) {
    throw invalidArgument("rotation_interval", "not_applicable", "rotation_interval applies to automatic secrets only");
  }
  const grace =
    input.gracePeriodSeconds ??
    (input.kind === "automatic" ? DEFAULTS.automaticGraceSeconds : DEFAULTS.manualGraceSeconds);
  const interval = input.rotationIntervalSeconds ?? DEFAULTS.rotationIntervalSeconds;
  return {
    id: input.id,
    store: input.store,
    name: input.name,
    kind: input.kind,
    type: input.type ?? "secret",
    description: input.description,
    folder: input.folder ?? "",
    tags: input.tags ? [...input.tags] : [],
    metadata: { ...(input.metadata ?? {}) },
    expiresAt: input.expiresAt ?? null,
    gracePeriodSeconds: grace,
    rotation: input.kind === "automatic" ? { intervalSeconds: interval, nextRotationAt: now + interval * 1000 } : null,
    versions: [{ version: 1, createdAt: now, validUntil: null, sealed: sealedV1, state: "active", binary: input.binary ?? false }],
    deletion: null,
    lastChange: "created",
    createdAt: now,
    updatedAt: now,
    revision: 1,
  };
}

/**
 * Fills in the fields a document stored by an earlier Latchkey lacks, so every reader sees the current shape.
 * Adapters call it on what they read.
 */
export function upgradeDocument(raw: SecretDocument): SecretDocument {
  const d = raw as Partial<SecretDocument> & SecretDocument;
  if (d.type !== undefined && d.lastChange !== undefined && d.versions.every((v) => v.state !== undefined)) return raw;
  return {
    ...d,
    type: d.type ?? "secret",
    folder: d.folder ?? "",
    tags: d.tags ?? [],
    metadata: d.metadata ?? {},
    expiresAt: d.expiresAt ?? null,
    deletion: d.deletion ?? null,
    lastChange: d.lastChange ?? "updated",
    versions: d.versions.map((v) => ({ ...v, state: v.state ?? "active", binary: v.binary ?? false })),
  };
}

/** The newest version by number, whatever its state: the one the next version number follows. */
export function latestVersion(doc: SecretDocument): VersionRecord {
  const v = doc.versions[doc.versions.length - 1];
  if (v === undefined) throw new LatchkeyError("internal", `secret "${doc.name}" has no versions`);
  return v;
}

/** The version served when no version is asked for: the newest active one; undefined if none is active. */
export function currentVersion(doc: SecretDocument): VersionRecord | undefined {
  for (let i = doc.versions.length - 1; i >= 0; i--) {
    const v = doc.versions[i] as VersionRecord;
    if (v.state === "active") return v;
  }
  return undefined;
}

/** The current version, or failed_precondition when every version is disabled or destroyed. */
export function requireCurrentVersion(doc: SecretDocument): VersionRecord {
  const v = currentVersion(doc);
  if (!v) {
    throw new LatchkeyError("failed_precondition", `secret "${doc.name}" has no active version`, {
      reason: "NO_ACTIVE_VERSION",
    });
  }
  return v;
}

/** The number the next version will get. */
export function nextVersionNumber(doc: SecretDocument): number {
  return latestVersion(doc).version + 1;
}

export function findVersion(doc: SecretDocument, version: number): VersionRecord | undefined {
  return doc.versions.find((v) => v.version === version);
}

/**
 * Whether a superseded version is inside its grace window at `now` (or, with no validUntil, current). Says nothing
 * of its state: see validVersions.
 */
export function isVersionValid(v: VersionRecord, now: number): boolean {
  return v.validUntil === null || v.validUntil > now;
}

/** The versions VerifySecret accepts at `now`: the current one, and active ones still inside their grace window. */
export function validVersions(doc: SecretDocument, now: number): VersionRecord[] {
  const current = currentVersion(doc);
  // A superseded version is valid only inside a real grace window: one that never got an end (it was retired
  // with a state, then made active again) is not.
  return doc.versions.filter((v) => v.state === "active" && (v === current || (v.validUntil !== null && v.validUntil > now)));
}

/** Whether the secret has expired at `now` (expired secrets are not served). */
export function isExpired(doc: SecretDocument, now: number): boolean {
  return doc.expiresAt !== null && doc.expiresAt <= now;
}

/** Whether an automatic, live secret's next rotation is due at `now`. */
export function isRotationDue(doc: SecretDocument, now: number): boolean {
  return doc.deletion === null && doc.rotation !== null && doc.rotation.nextRotationAt <= now;
}

/** Whether a soft-deleted secret is due to be purged at `now`. */
export function isPurgeDue(doc: SecretDocument, now: number): boolean {
  return doc.deletion !== null && doc.deletion.purgeAt <= now;
}

/** When the scheduler must next act on this document (rotate it, or purge it), or null. */
export function dueAt(doc: SecretDocument): number | null {
  if (doc.deletion) return doc.deletion.purgeAt;
  return doc.rotation?.nextRotationAt ?? null;
}

/** The next state of a document after a write by anyone: revision and time bumped, what happened recorded. */
function touched(doc: SecretDocument, now: number, lastChange: ChangeKind): SecretDocument {
  return { ...doc, updatedAt: now, revision: doc.revision + 1, lastChange };
}

export interface AppendOptions {
  /** The state the superseded current version takes; absent: it stays active for the grace period. */
  readonly previousState?: Exclude<VersionState, "active"> | undefined;
  readonly binary?: boolean | undefined;
}

/**
 * Adds a new current version. The previous current version stays valid for the grace period, or takes
 * `previousState` at once; versions beyond `maxVersions` are dropped oldest first, ciphertext included. For
 * automatic secrets the schedule restarts from now.
 */
export function appendVersion(
  doc: SecretDocument,
  sealed: string,
  now: number,
  maxVersions: number,
  opts: AppendOptions = {},
): SecretDocument {
  const next = nextVersionNumber(doc);
  const graceEnd = now + doc.gracePeriodSeconds * 1000;
  const current = currentVersion(doc);
  const versions = doc.versions.map((v) => {
    if (v !== current) return v;
    if (opts.previousState) return withState({ ...v, validUntil: v.validUntil ?? now }, opts.previousState);
    // A full grace window from now, even for a version superseded before (and current again since).
    return { ...v, validUntil: Math.max(v.validUntil ?? graceEnd, graceEnd) };
  });
  versions.push({ version: next, createdAt: now, validUntil: null, sealed, state: "active", binary: opts.binary ?? false });
  const kept = versions.length > maxVersions ? versions.slice(versions.length - maxVersions) : versions;
  const rotation = doc.rotation && {
    intervalSeconds: doc.rotation.intervalSeconds,
    nextRotationAt: now + doc.rotation.intervalSeconds * 1000,
  };
  return { ...touched(doc, now, "rotated"), versions: kept, rotation };
}

function withState(v: VersionRecord, state: VersionState): VersionRecord {
  const validUntil = v.validUntil;
  return state === "destroyed" ? { ...v, state, sealed: "", validUntil } : { ...v, state, validUntil };
}

/**
 * Changes one version's state. Destroying removes its ciphertext for good; a compromised version can only be
 * destroyed; a destroyed one cannot change. Making a version active again restores it as it was (its grace window,
 * if superseded, does not restart).
 */
export function setVersionState(doc: SecretDocument, version: number, state: VersionState, now: number): SecretDocument {
  const v = findVersion(doc, version);
  if (!v) {
    throw new LatchkeyError("not_found", `version ${version} of secret "${doc.name}" not found`, { reason: "VERSION_NOT_FOUND" });
  }
  if (v.state === state) return doc;
  if (!TRANSITIONS[v.state].includes(state)) {
    throw new LatchkeyError("failed_precondition", `version ${version} is ${v.state} and cannot become ${state}`, {
      reason: "INVALID_STATE_TRANSITION",
    });
  }
  return { ...touched(doc, now, "state_changed"), versions: doc.versions.map((x) => (x === v ? withState(x, state) : x)) };
}

/** A soft deletion: invisible and not rotated until purged at `now + retention`, restorable until then. */
export function softDelete(doc: SecretDocument, now: number, retentionSeconds: number): SecretDocument {
  return { ...touched(doc, now, "deleted"), deletion: { deletedAt: now, purgeAt: now + retentionSeconds * 1000 } };
}

/** Undoes a soft deletion. An automatic secret whose rotation fell due meanwhile rotates at once. */
export function restore(doc: SecretDocument, now: number): SecretDocument {
  return { ...touched(doc, now, "restored"), deletion: null };
}

/** The same secret under another name in its store; versions and values unchanged. */
export function rename(doc: SecretDocument, name: string, now: number): SecretDocument {
  return { ...touched(doc, now, "renamed"), name };
}

/** The same secret in another store, with versions re-sealed for it (`resealed`, aligned with doc.versions). */
export function move(doc: SecretDocument, store: string, name: string, resealed: readonly string[], now: number): SecretDocument {
  return {
    ...touched(doc, now, "moved"),
    store,
    name,
    versions: doc.versions.map((v, i) => ({ ...v, sealed: resealed[i] ?? "" })),
  };
}

export interface MetadataPatch {
  readonly description?: string | undefined;
  readonly kind?: SecretKind | undefined;
  readonly type?: SecretType | undefined;
  readonly folder?: string | undefined;
  readonly tags?: readonly string[] | undefined;
  readonly metadata?: Readonly<Record<string, string>> | undefined;
  /** A time, or null to remove the expiration. */
  readonly expiresAt?: number | null | undefined;
  readonly rotationIntervalSeconds?: number | undefined;
  readonly gracePeriodSeconds?: number | undefined;
}

/**
 * Applies a metadata change. A secret turning automatic starts its schedule from its last version; a changed
 * interval reschedules from the last rotation (so a shorter interval can make it due at once); a secret turning
 * manual drops its schedule. A new grace period applies to versions superseded afterwards.
 */
export function applyMetadataPatch(doc: SecretDocument, patch: MetadataPatch, now: number): SecretDocument {
  const kind = patch.kind ?? doc.kind;
  if (kind === "manual" && patch.rotationIntervalSeconds !== undefined) {
    throw invalidArgument("rotation_interval", "not_applicable", "rotation_interval applies to automatic secrets only");
  }
  let rotation: RotationSchedule | null = null;
  if (kind === "automatic") {
    const intervalSeconds =
      patch.rotationIntervalSeconds ?? doc.rotation?.intervalSeconds ?? DEFAULTS.rotationIntervalSeconds;
    const lastRotatedAt = latestVersion(doc).createdAt;
    rotation =
      doc.rotation !== null && intervalSeconds === doc.rotation.intervalSeconds
        ? doc.rotation
        : { intervalSeconds, nextRotationAt: lastRotatedAt + intervalSeconds * 1000 };
  }
  return {
    ...touched(doc, now, "updated"),
    kind,
    type: patch.type ?? doc.type,
    description: patch.description ?? doc.description,
    folder: patch.folder ?? doc.folder,
    tags: patch.tags ? [...patch.tags] : doc.tags,
    metadata: patch.metadata ? { ...patch.metadata } : doc.metadata,
    expiresAt: patch.expiresAt === undefined ? doc.expiresAt : patch.expiresAt,
    gracePeriodSeconds: patch.gracePeriodSeconds ?? doc.gracePeriodSeconds,
    rotation,
  };
}

/** Refuses a write that carries a revision other than the stored one (check-and-set). */
export function checkRevision(doc: SecretDocument, expected: number | undefined): void {
  if (expected !== undefined && expected !== 0 && doc.revision !== expected) {
    throw new LatchkeyError(
      "failed_precondition",
      `secret "${doc.name}" is at revision ${doc.revision}, not ${expected}: re-read it and retry`,
      { reason: "REVISION_MISMATCH", httpStatus: 409 },
    );
  }
}
