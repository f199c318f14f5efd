import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import type { ItemError, ItemResult, SecretUpsert } from "../../gen/latchkey/v1/secret_service_pb.js";
import { SecretListState, SecretService } from "../../gen/latchkey/v1/secret_service_pb.js";
import { invalidArgument } from "../domain/errors.js";
import { DEFAULT_STORE, type VersionState } from "../domain/secret.js";
import type { Latchkey } from "../service/latchkey.js";
import type { BatchItem, BatchResult, OpenedSecret } from "../service/secret-manager.js";
import type { ListState } from "../storage/storage.js";
import {
  fromProtoKind,
  fromProtoSeconds,
  fromProtoState,
  fromProtoTime,
  fromProtoType,
  toProtoEvent,
  toProtoSecret,
  toProtoVersion,
} from "./convert.js";
import { kPrincipal, kRequestInfo } from "./interceptor.js";

export interface SecretServiceDeps {
  readonly latchkey: Latchkey;
  /** Aborted when the server starts draining: open watches end with UNAVAILABLE so clients reconnect elsewhere. */
  readonly drain: AbortSignal;
}

/** The store a request names: empty means the default store. */
export function storeOf(req: { store: string }): string {
  return req.store === "" ? DEFAULT_STORE : req.store;
}

/** A uint64 revision from a request: 0 (unset) means "do not check". */
function revisionOf(r: bigint): number | undefined {
  return r === 0n ? undefined : Number(r);
}

const LIST_STATES: Record<SecretListState, ListState | undefined> = {
  [SecretListState.UNSPECIFIED]: undefined,
  [SecretListState.ACTIVE]: "active",
  [SecretListState.EXPIRED]: "expired",
  [SecretListState.DELETED]: "deleted",
};

function nonActiveState(state: VersionState | undefined): Exclude<VersionState, "active"> | undefined {
  if (state === "active") throw invalidArgument("previous_state", "not_applicable", "the previous version cannot stay current");
  return state;
}

function opened(s: OpenedSecret) {
  return {
    secret: toProtoSecret(s.doc),
    version: toProtoVersion(s.version, s.doc),
    value: s.value,
    binaryValue: s.binaryValue ?? new Uint8Array(),
  };
}

function itemError(e: BatchResult["error"]): ItemError | undefined {
  return e && ({ code: e.code, reason: e.reason, field: e.field ?? "", message: e.message } as ItemError);
}

function itemResult(r: BatchResult): ItemResult {
  return {
    name: r.name,
    ok: r.ok,
    created: r.created ?? false,
    version: r.version ?? 0,
    revision: BigInt(r.revision ?? 0),
    error: itemError(r.error),
  } as ItemResult;
}

function upsertItem(u: SecretUpsert): BatchItem {
  return {
    name: u.name,
    value: u.value,
    binaryValue: u.binaryValue,
    kind: fromProtoKind(u.kind),
    description: u.description,
    type: fromProtoType(u.type),
    folder: u.folder,
    tags: u.tags?.values,
    metadata: u.metadata?.entries,
    expiresAt: fromProtoTime(u.expiresAt),
    rotationIntervalSeconds: fromProtoSeconds(u.rotationInterval, "rotation_interval"),
    gracePeriodSeconds: fromProtoSeconds(u.gracePeriod, "grace_period"),
    expectedRevision: revisionOf(u.expectedRevision),
  };
}

/** The SecretService handlers: convert the request, call the service, convert the result. */
export function createSecretServiceImpl({ latchkey: lk, drain }: SecretServiceDeps): ServiceImpl<typeof SecretService> {
  const who = (ctx: HandlerContext) => ctx.values.get(kPrincipal);
  const ref = (req: { store: string; name: string }) => ({ store: storeOf(req), name: req.name });

  return {
    async storeSecret(req, ctx) {
      return opened(
        await lk.createSecret(who(ctx), {
          store: storeOf(req),
          name: req.name,
          kind: fromProtoKind(req.kind) ?? "manual",
          value: req.value,
          binaryValue: req.binaryValue,
          description: req.description,
          type: fromProtoType(req.type),
          folder: req.folder,
          tags: req.tags,
          metadata: req.metadata,
          expiresAt: fromProtoTime(req.expiresAt),
          rotationIntervalSeconds: fromProtoSeconds(req.rotationInterval, "rotation_interval"),
          gracePeriodSeconds: fromProtoSeconds(req.gracePeriod, "grace_period"),
        }),
      );
    },
    async getSecret(req, ctx) {
      const got = await lk.getSecret(who(ctx), ref(req), req.version);
      // The revision changes with every write: pollers send it back (If-None-Match) and get 304 over Connect GET.
      ctx.responseHeader.set("etag", `"${got.doc.revision}"`);
      return opened(got);
    },
    async listSecrets(req, ctx) {
      const page = await lk.listSecrets(who(ctx), {
        store: storeOf(req),
        prefix: req.namePrefix,
        pageSize: req.pageSize,
        pageToken: req.pageToken,
        folder: req.folder,
        tag: req.tag,
        state: LIST_STATES[req.state],
      });
      return {
        secrets: page.docs.map((d) => toProtoSecret(d)),
        nextPageToken: page.nextPageToken,
        prevPageToken: page.prevPageToken,
      };
    },
    async updateSecret(req, ctx) {
      const doc = await lk.updateSecret(who(ctx), ref(req), {
        value: req.value,
        binaryValue: req.binaryValue,
        description: req.description,
        kind: fromProtoKind(req.kind),
        type: fromProtoType(req.type),
        folder: req.folder,
        tags: req.tags?.values,
        metadata: req.metadata?.entries,
        expiresAt: req.clearExpiresAt ? null : fromProtoTime(req.expiresAt),
        rotationIntervalSeconds: fromProtoSeconds(req.rotationInterval, "rotation_interval"),
        gracePeriodSeconds: fromProtoSeconds(req.gracePeriod, "grace_period"),
        expectedRevision: revisionOf(req.expectedRevision),
      });
      return { secret: toProtoSecret(doc) };
    },
    async deleteSecret(req, ctx) {
      await lk.deleteSecret(who(ctx), ref(req), { purge: req.purge, expectedRevision: revisionOf(req.expectedRevision) });
      return {};
    },
    async rotateSecret(req, ctx) {
      return opened(
        await lk.rotateSecret(who(ctx), ref(req), {
          previousState: nonActiveState(fromProtoState(req.previousState, "previous_state")),
          expectedRevision: revisionOf(req.expectedRevision),
        }),
      );
    },
    async verifySecret(req, ctx) {
      const ip = ctx.values.get(kRequestInfo)?.ip;
      return lk.verifySecret(who(ctx), ref(req), { value: req.value, binaryValue: req.binaryValue }, ip);
    },
    async listSecretVersions(req, ctx) {
      const doc = await lk.listVersions(who(ctx), ref(req));
      return { secret: toProtoSecret(doc), versions: doc.versions.map((v) => toProtoVersion(v, doc)) };
    },
    async setVersionState(req, ctx) {
      const state = fromProtoState(req.state);
      if (!state) throw invalidArgument("state", "required", "state is required");
      const doc = await lk.setVersionState(who(ctx), ref(req), req.version, state, revisionOf(req.expectedRevision));
      const v = doc.versions.find((x) => x.version === req.version);
      return { secret: toProtoSecret(doc), version: v && toProtoVersion(v, doc) };
    },
    async undeleteSecret(req, ctx) {
      return { secret: toProtoSecret(await lk.undeleteSecret(who(ctx), ref(req), { id: req.id || undefined })) };
    },
    async copySecret(req, ctx) {
      const to = { store: req.toStore || storeOf(req), name: req.toName };
      return { secret: toProtoSecret((await lk.copySecret(who(ctx), ref(req), to)).doc) };
    },
    async renameSecret(req, ctx) {
      return { secret: toProtoSecret(await lk.renameSecret(who(ctx), ref(req), req.newName, revisionOf(req.expectedRevision))) };
    },
    async moveSecret(req, ctx) {
      if (!req.toStore) throw invalidArgument("to_store", "required", "to_store is required (use RenameSecret within a store)");
      const to = { store: req.toStore, name: req.toName || req.name };
      return { secret: toProtoSecret(await lk.moveSecret(who(ctx), ref(req), to, revisionOf(req.expectedRevision))) };
    },
    async batchUpsertSecrets(req, ctx) {
      const results = await lk.batchUpsert(who(ctx), storeOf(req), req.items.map(upsertItem), req.atomic ?? true);
      return { results: results.map(itemResult) };
    },
    async batchDeleteSecrets(req, ctx) {
      const results = await lk.batchDelete(who(ctx), storeOf(req), req.names, { atomic: req.atomic ?? true, purge: req.purge });
      return { results: results.map(itemResult) };
    },
    async batchGetSecrets(req, ctx) {
      const results = await lk.batchGet(who(ctx), storeOf(req), req.names);
      return {
        results: results.map((r) =>
          r.secret
            ? { name: r.name, ...opened(r.secret) }
            : { name: r.name, error: itemError(r.error) },
        ),
      };
    },
    async *watchSecrets(req, ctx) {
      const signal = AbortSignal.any([ctx.signal, drain]);
      const input = { store: storeOf(req), prefix: req.namePrefix, resumeAfter: req.resumeToken };
      for await (const ev of lk.watchSecrets(who(ctx), input, signal)) yield toProtoEvent(ev);
      if (drain.aborted && !ctx.signal.aborted) {
        throw new ConnectError("server is draining: reconnect with your last resume_token", Code.Unavailable);
      }
    },
  };
}
