import { create } from "@bufbuild/protobuf";
import { type Duration, DurationSchema, type Timestamp, timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import {
  SecretEventType,
  type Secret,
  SecretKind,
  SecretSchema,
  SecretType,
  type SecretVersion,
  SecretVersionSchema,
  VersionState,
} from "../../gen/latchkey/v1/secret_pb.js";
import { type WatchSecretsResponse, WatchSecretsResponseSchema } from "../../gen/latchkey/v1/secret_service_pb.js";
import {
  type Quota,
  QuotaSchema,
  type Store,
  StoreSchema,
  type Usage,
  UsageSchema,
  type Var,
  VarSchema,
} from "../../gen/latchkey/v1/store_pb.js";
import type { StoreRecord } from "../domain/store.js";
import type { Limits, Usage as DomainUsage } from "../domain/usage.js";
import type { VarRecord } from "../domain/vars.js";
import type { SecretEvent } from "../service/secret-watch.js";
import { invalidArgument } from "../domain/errors.js";
import {
  currentVersion,
  isExpired,
  type SecretDocument,
  type SecretKind as DomainKind,
  type SecretType as DomainType,
  validVersions,
  type VersionRecord,
  type VersionState as DomainState,
} from "../domain/secret.js";

/** Conversions between the domain model and the generated messages; the only place both meet. */

export function toProtoSecret(doc: SecretDocument, now = Date.now()): Secret {
  const current = currentVersion(doc);
  return create(SecretSchema, {
    id: doc.id,
    store: doc.store,
    name: doc.name,
    kind: doc.kind === "automatic" ? SecretKind.AUTOMATIC : SecretKind.MANUAL,
    type: doc.type === "token" ? SecretType.TOKEN : SecretType.SECRET,
    description: doc.description,
    folder: doc.folder,
    tags: [...doc.tags],
    metadata: { ...doc.metadata },
    currentVersion: current?.version ?? 0,
    rotationInterval: doc.rotation ? seconds(doc.rotation.intervalSeconds) : undefined,
    gracePeriod: seconds(doc.gracePeriodSeconds),
    nextRotationAt: doc.rotation && !doc.deletion ? timestampFromMs(doc.rotation.nextRotationAt) : undefined,
    lastRotatedAt: current ? timestampFromMs(current.createdAt) : undefined,
    expiresAt: doc.expiresAt === null ? undefined : timestampFromMs(doc.expiresAt),
    expired: isExpired(doc, now),
    deletedAt: doc.deletion ? timestampFromMs(doc.deletion.deletedAt) : undefined,
    purgeAt: doc.deletion ? timestampFromMs(doc.deletion.purgeAt) : undefined,
    binary: current?.binary ?? false,
    createdAt: timestampFromMs(doc.createdAt),
    updatedAt: timestampFromMs(doc.updatedAt),
    revision: BigInt(doc.revision),
  });
}

const STATES: Record<DomainState, VersionState> = {
  active: VersionState.ACTIVE,
  deactivated: VersionState.DEACTIVATED,
  suspended: VersionState.SUSPENDED,
  compromised: VersionState.COMPROMISED,
  destroyed: VersionState.DESTROYED,
};

/** A version's metadata; `doc` tells whether it is current and valid now. */
export function toProtoVersion(v: VersionRecord, doc: SecretDocument, now = Date.now()): SecretVersion {
  return create(SecretVersionSchema, {
    version: v.version,
    createdAt: timestampFromMs(v.createdAt),
    validUntil: v.validUntil === null ? undefined : timestampFromMs(v.validUntil),
    current: currentVersion(doc) === v,
    state: STATES[v.state],
    binary: v.binary,
    valid: validVersions(doc, now).includes(v),
  });
}

export function fromProtoState(state: VersionState, field = "state"): DomainState | undefined {
  if (state === VersionState.UNSPECIFIED) return undefined;
  const found = (Object.entries(STATES) as [DomainState, VersionState][]).find(([, v]) => v === state);
  if (!found) throw invalidArgument(field, "enum", `${field} is not a version state`);
  return found[0];
}

export function fromProtoType(type: SecretType): DomainType | undefined {
  if (type === SecretType.UNSPECIFIED) return undefined;
  if (type === SecretType.TOKEN) return "token";
  if (type === SecretType.SECRET) return "secret";
  throw invalidArgument("type", "enum", "type must be SECRET_TYPE_SECRET or SECRET_TYPE_TOKEN");
}

export function fromProtoTime(t: Timestamp | undefined): number | undefined {
  return t === undefined ? undefined : timestampMs(t);
}

function seconds(n: number): Duration {
  return create(DurationSchema, { seconds: BigInt(n) });
}

/** Whole seconds of a Duration field, or undefined when unset. Rejects fractions and negatives. */
export function fromProtoSeconds(d: Duration | undefined, field: string): number | undefined {
  if (d === undefined) return undefined;
  if (d.nanos !== 0 || d.seconds < 0n) {
    throw invalidArgument(field, "whole_seconds", `${field} must be a whole, non-negative number of seconds`);
  }
  return Number(d.seconds);
}

export function fromProtoKind(kind: SecretKind, field = "kind"): DomainKind | undefined {
  switch (kind) {
    case SecretKind.UNSPECIFIED:
      return undefined;
    case SecretKind.MANUAL:
      return "manual";
    case SecretKind.AUTOMATIC:
      return "automatic";
    default:
      throw invalidArgument(field, "enum", `${field} must be SECRET_KIND_MANUAL or SECRET_KIND_AUTOMATIC`);
  }
}

const EVENT_TYPES = {
  started: SecretEventType.STARTED,
  created: SecretEventType.CREATED,
  rotated: SecretEventType.ROTATED,
  updated: SecretEventType.UPDATED,
  deleted: SecretEventType.DELETED,
  restored: SecretEventType.RESTORED,
  reset: SecretEventType.RESET,
} as const;

export function toProtoEvent(ev: SecretEvent): WatchSecretsResponse {
  const c = ev.change;
  return create(WatchSecretsResponseSchema, {
    type: EVENT_TYPES[ev.type],
    resumeToken: ev.resumeToken,
    ...(c && {
      id: c.id,
      store: c.store,
      name: c.name,
      version: c.version,
      revision: BigInt(c.revision),
      at: timestampFromMs(c.at),
      nextRotationAt: c.nextRotationAt === null ? undefined : timestampFromMs(c.nextRotationAt),
    }),
  });
}

export function toProtoStore(s: StoreRecord): Store {
  return create(StoreSchema, {
    name: s.name,
    description: s.description,
    managedBy: s.managedBy ?? "",
    createdAt: timestampFromMs(s.createdAt),
    updatedAt: timestampFromMs(s.updatedAt),
  });
}

export function toProtoUsage(u: DomainUsage): Usage {
  return create(UsageSchema, {
    stores: BigInt(u.stores),
    secrets: BigInt(u.secrets),
    versions: BigInt(u.versions),
    vars: BigInt(u.vars),
    bytes: BigInt(u.bytes),
  });
}

export function toProtoQuota(l: Limits): Quota {
  const big = (n: number | undefined) => (n === undefined ? undefined : BigInt(n));
  return create(QuotaSchema, {
    stores: big(l.stores),
    secrets: big(l.secrets),
    versions: big(l.versions),
    vars: big(l.vars),
    bytes: big(l.bytes),
  });
}

export function toProtoVar(v: VarRecord): Var {
  return create(VarSchema, {
    store: v.store,
    name: v.name,
    value: v.value,
    createdAt: timestampFromMs(v.createdAt),
    updatedAt: timestampFromMs(v.updatedAt),
  });
}
