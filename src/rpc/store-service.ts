import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { StoreService } from "../../gen/latchkey/v1/store_service_pb.js";
import type { Latchkey } from "../service/latchkey.js";
import { toProtoQuota, toProtoStore, toProtoUsage } from "./convert.js";
import { kPrincipal } from "./interceptor.js";

/** The StoreService handlers. */
export function createStoreServiceImpl({ latchkey: lk }: { latchkey: Latchkey }): ServiceImpl<typeof StoreService> {
  const who = (ctx: HandlerContext) => ctx.values.get(kPrincipal);
  return {
    async createStore(req, ctx) {
      const rec = await lk.createStore(who(ctx), {
        name: req.name,
        description: req.description,
        managedBy: req.managedBy || undefined,
      });
      return { store: toProtoStore(rec) };
    },
    async getStore(req, ctx) {
      return { store: toProtoStore(await lk.getStore(who(ctx), req.name)) };
    },
    async listStores(req, ctx) {
      const page = await lk.listStores(who(ctx), { pageSize: req.pageSize, pageToken: req.pageToken });
      return { stores: page.stores.map(toProtoStore), nextPageToken: page.nextPageToken };
    },
    async deleteStore(req, ctx) {
      const removed = await lk.deleteStore(who(ctx), req.name, { purge: req.purge });
      return { secretsRemoved: BigInt(removed.secrets), varsRemoved: BigInt(removed.vars) };
    },
    async getUsage(req, ctx) {
      const u = await lk.usage(who(ctx), req.store || undefined);
      return { usage: toProtoUsage(u.usage), limits: toProtoQuota(u.limits) };
    },
  };
}
