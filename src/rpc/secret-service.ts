import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { SecretService } from "../../gen/latchkey/v1/secret_service_pb.js";
import { DEFAULT_STORE } from "../domain/secret.js";
import type { Latchkey } from "../service/latchkey.js";
import type { OpenedSecret } from "../service/secret-manager.js";
import { fromProtoKind, fromProtoSeconds, toProtoEvent, toProtoSecret, toProtoVersion } from "./convert.js";
import { kPrincipal } from "./interceptor.js";

export interface SecretServiceDeps {
  readonly latchkey: Latchkey;
  /** Aborted when the server starts draining: open watches end with UNAVAILABLE so clients reconnect elsewhere. */
  readonly drain: AbortSignal;
}

/** The store a request names: empty means the default store. */
export function storeOf(req: { store: string }): string {
  return req.store === "" ? DEFAULT_STORE : req.store;
}

/** The SecretService handlers: convert the request, call the service, convert the result. */
export function createSecretServiceImpl({ latchkey: lk, drain }: SecretServiceDeps): ServiceImpl<typeof SecretService> {
  const who = (ctx: HandlerContext) => ctx.values.get(kPrincipal);
  const ref = (req: { store: string; name: string }) => ({ store: storeOf(req), name: req.name });
  const opened = (s: OpenedSecret) => ({
    secret: toProtoSecret(s.doc),
    version: toProtoVersion(s.version, s.version.version === s.doc.versions[s.doc.versions.length - 1]?.version),
    value: s.value,
  });

  return {
    async storeSecret(req, ctx) {
      return opened(
        await lk.createSecret(who(ctx), {
          store: storeOf(req),
          name: req.name,
          kind: fromProtoKind(req.kind) ?? "manual",
          value: req.value,
          description: req.description,
          rotationIntervalSeconds: fromProtoSeconds(req.rotationInterval, "rotation_interval"),
          gracePeriodSeconds: fromProtoSeconds(req.gracePeriod, "grace_period"),
        }),
      );
    },
    async getSecret(req, ctx) {
      return opened(await lk.getSecret(who(ctx), ref(req), req.version));
    },
    async listSecrets(req, ctx) {
      const page = await lk.listSecrets(who(ctx), {
        store: storeOf(req),
        prefix: req.namePrefix,
        pageSize: req.pageSize,
        pageToken: req.pageToken,
      });
      return { secrets: page.docs.map(toProtoSecret), nextPageToken: page.nextPageToken };
    },
    async updateSecret(req, ctx) {
      const doc = await lk.updateSecret(who(ctx), ref(req), {
        value: req.value,
        description: req.description,
        kind: fromProtoKind(req.kind),
        rotationIntervalSeconds: fromProtoSeconds(req.rotationInterval, "rotation_interval"),
        gracePeriodSeconds: fromProtoSeconds(req.gracePeriod, "grace_period"),
      });
      return { secret: toProtoSecret(doc) };
    },
    async deleteSecret(req, ctx) {
      await lk.deleteSecret(who(ctx), ref(req));
      return {};
    },
    async rotateSecret(req, ctx) {
      return opened(await lk.rotateSecret(who(ctx), ref(req)));
    },
    async verifySecret(req, ctx) {
      return lk.verifySecret(who(ctx), ref(req), req.value);
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
