import { invalidArgument, LatchkeyError } from "./errors.js";

/**
 * The domain model of a secret and the pure rules over it.
 *
 * A secret is one versioned document. Every transition is a pure function `(doc, input, now) -> doc'` that bumps
 * `revision`; storage writes the result only if the stored revision is still the one the transition started from.
 * Times are milliseconds since the epoch; durations are whole seconds.
 */

export type SecretKind = "manual" | "automatic";

/** One version of a secret. `sealed` is the ciphertext envelope; the plaintext never enters a document. */
export interface VersionRecord {
  readonly version: number;
  readonly createdAt: number;
  /** Null while the version is current; set when superseded (superseded time + grace period). */
  readonly validUntil: number | null;
  readonly sealed: string;
}

export interface RotationSchedule {
  readonly intervalSeconds: number;
  readonly nextRotationAt: number;
}

/** The stored document of one secret: identity, metadata and its bounded list of versions (newest last). */
export interface SecretDocument {
  readonly id: string;
  readonly store: string;
  readonly name: string;
  readonly kind: SecretKind;
  readonly description: string;
  readonly gracePeriodSeconds: number;
  /** Set for automatic secrets only. */
  readonly rotation: RotationSchedule | null;
  readonly versions: readonly VersionRecord[];
  readonly createdAt: number;
  readonly updatedAt: number;
  /** Incremented by every write; the compare-and-set key. */
  readonly revision: number;
}

export const DEFAULT_STORE = "default";
export const LIMITS = Object.freeze({
  nameMax: 256,
  valueMax: 10_240,
  descriptionMax: 1024,
  intervalMinSeconds: 1,
  /** Ten years. */
  durationMaxSeconds: 315_360_000,
});
export const DEFAULTS = Object.freeze({
  rotationIntervalSeconds: 86_400,
  automaticGraceSeconds: 3_600,
  manualGraceSeconds: 0,
});

const NAME_PATTERN = /^[A-Za-z0-9_.-]+(?:\/[A-Za-z0-9_.-]+)*$/;

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

/** Checks a secret value: 1 to 10,240 characters. The message never includes the value. */
export function validateValue(value: string, field = "value"): string {
  if (value === "") throw invalidArgument(field, "required", `${field} must not be empty`);
  if (value.length > LIMITS.valueMax && countCodePoints(value) > LIMITS.valueMax) {
    throw invalidArgument(field, "too_long", `${field} must be at most ${LIMITS.valueMax} characters`);
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
  readonly rotationIntervalSeconds?: number | undefined;
  readonly gracePeriodSeconds?: number | undefined;
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
    description: input.description,
    gracePeriodSeconds: grace,
    rotation: input.kind === "automatic" ? { intervalSeconds: interval, nextRotationAt: now + interval * 1000 } : null,
    versions: [{ version: 1, createdAt: now, validUntil: null, sealed: sealedV1 }],
    createdAt: now,
    updatedAt: now,
    revision: 1,
  };
}

/** The version served when no version is asked for: the newest one. */
export function currentVersion(doc: SecretDocument): VersionRecord {
  const v = doc.versions[doc.versions.length - 1];
  if (v === undefined) throw new LatchkeyError("internal", `secret "${doc.name}" has no versions`);
  return v;
}

/** The number the next version will get. */
export function nextVersionNumber(doc: SecretDocument): number {
  return currentVersion(doc).version + 1;
}

export function findVersion(doc: SecretDocument, version: number): VersionRecord | undefined {
  return doc.versions.find((v) => v.version === version);
}

/** Whether VerifySecret accepts `v` at `now`: it is current, or superseded and still inside its grace window. */
export function isVersionValid(v: VersionRecord, now: number): boolean {
  return v.validUntil === null || v.validUntil > now;
}

/** The versions VerifySecret accepts at `now`. */
export function validVersions(doc: SecretDocument, now: number): VersionRecord[] {
  return doc.versions.filter((v) => isVersionValid(v, now));
}

/** Whether an automatic secret's next rotation is due at `now`. */
export function isRotationDue(doc: SecretDocument, now: number): boolean {
  return doc.rotation !== null && doc.rotation.nextRotationAt <= now;
}

/**
 * Adds a new current version. The previous current version stays valid for the grace period; versions beyond
 * `maxVersions` are dropped oldest first, ciphertext included. For automatic secrets the schedule restarts from now.
 */
export function appendVersion(doc: SecretDocument, sealed: string, now: number, maxVersions: number): SecretDocument {
  const next = nextVersionNumber(doc);
  const graceEnd = now + doc.gracePeriodSeconds * 1000;
  const versions = doc.versions.map((v) => (v.validUntil === null ? { ...v, validUntil: graceEnd } : v));
  versions.push({ version: next, createdAt: now, validUntil: null, sealed });
  const kept = versions.length > maxVersions ? versions.slice(versions.length - maxVersions) : versions;
  const rotation = doc.rotation && {
    intervalSeconds: doc.rotation.intervalSeconds,
    nextRotationAt: now + doc.rotation.intervalSeconds * 1000,
  };
  return { ...doc, versions: kept, rotation, updatedAt: now, revision: doc.revision + 1 };
}

export interface MetadataPatch {
  readonly description?: string | undefined;
  readonly kind?: SecretKind | undefined;
  readonly rotationIntervalSeconds?: number | undefined;
  readonly gracePeriodSeconds?: number | undefined;
}

/**
 * Applies a metadata change. A secret turning automatic starts its schedule from its current version; a changed
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
    const lastRotatedAt = currentVersion(doc).createdAt;
    rotation =
      doc.rotation !== null && intervalSeconds === doc.rotation.intervalSeconds
        ? doc.rotation
        : { intervalSeconds, nextRotationAt: lastRotatedAt + intervalSeconds * 1000 };
  }
  return {
    ...doc,
    kind,
    description: patch.description ?? doc.description,
    gracePeriodSeconds: patch.gracePeriodSeconds ?? doc.gracePeriodSeconds,
    rotation,
    updatedAt: now,
    revision: doc.revision + 1,
  };
}
