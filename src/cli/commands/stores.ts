import { GetUsageResponseSchema, type Store, StoreSchema } from "../../client/index.js";
import { collectPages, type Command, type Context, type Group } from "../context.js";
import { messageJson, printFields, printJson, printTable, time } from "../output.js";

const storeRow = (s: Store) => [s.name, s.description, s.managedBy, time(s.createdAt), time(s.updatedAt)];

const list: Command = {
  summary: "list the stores you can see",
  flags: { limit: { arg: "N", help: "at most N stores (default: all)" } },
  async run(a, ctx) {
    const client = ctx.client();
    const stores = await collectPages(a.int("limit"), async (pageSize, pageToken) => {
      const res = await client.stores.listStores({ pageSize, pageToken });
      return { items: res.stores, next: res.nextPageToken };
    });
    if (ctx.json) printJson(ctx.io.stdout, stores.map((s) => messageJson(StoreSchema, s)));
    else printTable(ctx.io.stdout, ["name", "description", "managed by", "created", "updated"], stores.map(storeRow));
    return 0;
  },
};

function printStore(ctx: Context, s: Store | undefined): number {
  if (!s) return 0;
  if (ctx.json) printJson(ctx.io.stdout, messageJson(StoreSchema, s));
  else {
    printFields(ctx.io.stdout, [
      ["name", s.name],
      ["description", s.description],
      ["managed by", s.managedBy],
      ["created", time(s.createdAt)],
      ["updated", time(s.updatedAt)],
    ]);
  }
  return 0;
}

const get: Command = {
  args: ["NAME"],
  summary: "show a store",
  flags: {},
  async run(a, ctx) {
    return printStore(ctx, (await ctx.client().stores.getStore({ name: a.positionals[0] })).store);
  },
};

const create: Command = {
  args: ["NAME"],
  summary: "create a store",
  flags: {
    description: { arg: "TEXT", help: "a description" },
    "managed-by": { arg: "SERVICE", help: "admins only: create it on behalf of this service, which then owns it" },
  },
  async run(a, ctx) {
    const res = await ctx.client().stores.createStore({
      name: a.positionals[0],
      description: a.string("description") ?? "",
      managedBy: a.string("managed-by") ?? "",
    });
    return printStore(ctx, res.store);
  },
};

const del: Command = {
  args: ["NAME"],
  summary: "delete an empty store (exit 7 if it is not empty), or with --purge, everything in it",
  flags: {
    purge: { help: "remove its secrets and vars for good and destroy its key: nothing of it can be opened again" },
  },
  async run(a, ctx) {
    const name = a.positionals[0] as string;
    const res = await ctx.client().stores.deleteStore({ name, purge: a.flag("purge") });
    if (ctx.json) printJson(ctx.io.stdout, { name, secrets_removed: Number(res.secretsRemoved), vars_removed: Number(res.varsRemoved) });
    else ctx.io.stdout.write(`deleted store ${name} (${res.secretsRemoved} secrets and ${res.varsRemoved} vars removed)\n`);
    return 0;
  },
};

const usage: Command = {
  args: ["NAME?"],
  summary: "what a store (or, with no name, the whole service) holds, and its limits",
  flags: {},
  async run(a, ctx) {
    const res = await ctx.client().stores.getUsage({ store: a.positionals[0] ?? "" });
    if (ctx.json) {
      printJson(ctx.io.stdout, messageJson(GetUsageResponseSchema, res));
      return 0;
    }
    const u = res.usage;
    const l = res.limits;
    const row = (k: "stores" | "secrets" | "versions" | "vars" | "bytes") => [k, String(u?.[k] ?? 0n), l?.[k] === undefined ? "unlimited" : String(l[k])];
    const rows = (a.positionals[0] ? (["secrets", "versions", "vars", "bytes"] as const) : (["stores", "secrets", "versions", "vars", "bytes"] as const)).map(row);
    printTable(ctx.io.stdout, ["", "used", "limit"], rows);
    return 0;
  },
};

export const stores: Group = {
  summary: "list, show, create and delete stores; usage against quotas",
  commands: { list, get, create, delete: del, usage },
};
