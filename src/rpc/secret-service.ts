import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { SecretService } from "../../gen/latchkey/v1/secret_service_pb.js";
import { DEFAULT_STORE } from "../domain/secret.js";
import type { OpenedSecret, SecretManager } from "../service/secret-manager.js";
import { watchSecrets } from "../service/secret-watch.js";
import type { Storage } from "../storage/storage.js";
import { fromProtoKind, fromProtoSeconds, toProtoEvent, toProtoSecret, toProtoVersion } from "./convert.js";

export interface SecretServiceDeps {
  readonly manager: SecretManager;
  readonly storage: Pick<Storage, "changes">;
  /** Aborted when the server starts draining: open watches end with UNAVAILABLE so clients reconnect elsewhere. */
  readonly drain: AbortSignal;
}

/** The SecretService handlers: convert the request, call the manager, convert the result. */
export function createSecretServiceImpl({ manager, storage, drain }: SecretServiceDeps): ServiceImpl<typeof SecretService> {
  const ref = (name: string) => ({ store: DEFAULT_STORE, name });
  const opened = (s: OpenedSecret) => ({
    secret: toProtoSecret(s.doc),
    version: toProtoVersion(s.version, s.version.version === s.doc.versions[s.doc.versions.length - 1]?.version),
    value: s.value,
  });

  return {
    async storeSecret(req) {
      return opened(
        await manager.create({
          store: DEFAULT_STORE,
          name: req.name,
          kind: fromProtoKind(req.kind) ?? "manual",
          value: req.value,
          description: req.description,
          rotationIntervalSeconds: fromProtoSeconds(req.rotationInterval, "rotation_interval"),
          gracePeriodSeconds: fromProtoSeconds(req.gracePeriod, "grace_period"),
        }),
      );
    },
    async getSecret(req) {
      return opened(await manager.get(ref(req.name), req.version));
    },
    async listSecrets(req) {
      const page = await manager.list({
        store: DEFAULT_STORE,
        prefix: req.namePrefix,
        pageSize: req.pageSize,
        pageToken: req.pageToken,
      });
      return { secrets: page.docs.map(toProtoSecret), nextPageToken: page.nextPageToken };
    },
    async updateSecret(req) {
      const doc = await manager.update(ref(req.name), {
        value: req.value,
        description: req.description,
        kind: fromProtoKind(req.kind),
        rotationIntervalSeconds: fromProtoSeconds(req.rotationInterval, "rotation_interval"),
        gracePeriodSeconds: fromProtoSeconds(req.gracePeriod, "grace_period"),
      });
      return { secret: toProtoSecret(doc) };
    },
    async deleteSecret(req) {
      await manager.delete(ref(req.name));
      return {};
    },
    async rotateSecret(req) {
      return opened(await manager.rotate(ref(req.name)));
    },
    async verifySecret(req) {
      return manager.verify(ref(req.name), req.value);
    },
    async *watchSecrets(req, ctx) {
      const signal = AbortSignal.any([ctx.signal, drain]);
      const input = { store: DEFAULT_STORE, prefix: req.namePrefix, resumeAfter: req.resumeToken };
      for await (const ev of watchSecrets(storage, input, signal)) yield toProtoEvent(ev);
      if (drain.aborted && !ctx.signal.aborted) {
        throw new ConnectError("server is draining: reconnect with your last resume_token", Code.Unavailable);
      }
    },
  };
}
