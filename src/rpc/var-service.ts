import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { VarService } from "../../gen/latchkey/v1/var_service_pb.js";
import type { Latchkey } from "../service/latchkey.js";
import { toProtoVar } from "./convert.js";
import { kPrincipal } from "./interceptor.js";
import { storeOf } from "./secret-service.js";

/** The VarService handlers. */
export function createVarServiceImpl({ latchkey: lk }: { latchkey: Latchkey }): ServiceImpl<typeof VarService> {
  const who = (ctx: HandlerContext) => ctx.values.get(kPrincipal);
  return {
    async setVars(req, ctx) {
      const records = await lk.setVars(
        who(ctx),
        storeOf(req),
        req.vars.map((v) => ({ name: v.name, value: v.value })),
      );
      return { vars: records.map(toProtoVar) };
    },
    async getVar(req, ctx) {
      return { var: toProtoVar(await lk.getVar(who(ctx), storeOf(req), req.name)) };
    },
    async listVars(req, ctx) {
      const page = await lk.listVars(who(ctx), {
        store: storeOf(req),
        prefix: req.namePrefix,
        pageSize: req.pageSize,
        pageToken: req.pageToken,
      });
      return { vars: page.vars.map(toProtoVar), nextPageToken: page.nextPageToken };
    },
    async deleteVar(req, ctx) {
      await lk.deleteVar(who(ctx), storeOf(req), req.name);
      return {};
    },
  };
}
