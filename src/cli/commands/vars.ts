import { type Var, VarSchema } from "../../client/index.js";
import { collectPages, type Command, type Group } from "../context.js";
import { messageJson, printJson, printTable, time } from "../output.js";
import type { FlagSpecs } from "../args.js";

const STORE: FlagSpecs = { store: { arg: "S", help: 'the store (default: "default")' } };

const list: Command = {
  summary: "list vars with their values",
  flags: {
    ...STORE,
    prefix: { arg: "P", help: "only names starting with P" },
    limit: { arg: "N", help: "at most N vars (default: all)" },
  },
  async run(a, ctx) {
    const client = ctx.client();
    const vars = await collectPages(a.int("limit"), async (pageSize, pageToken) => {
      const res = await client.vars.listVars({ store: a.string("store") ?? "", namePrefix: a.string("prefix") ?? "", pageSize, pageToken });
      return { items: res.vars, next: res.nextPageToken };
    });
    if (ctx.json) printJson(ctx.io.stdout, vars.map((v) => messageJson(VarSchema, v)));
    else printTable(ctx.io.stdout, ["name", "value", "updated"], vars.map((v: Var) => [v.name, v.value, time(v.updatedAt)]));
    return 0;
  },
};

const get: Command = {
  args: ["NAME"],
  summary: "print a var's value (only the value)",
  flags: { ...STORE },
  async run(a, ctx) {
    const res = await ctx.client().vars.getVar({ store: a.string("store") ?? "", name: a.positionals[0] });
    if (ctx.json) printJson(ctx.io.stdout, res.var ? messageJson(VarSchema, res.var) : null);
    else ctx.io.stdout.write(`${res.var?.value ?? ""}\n`);
    return 0;
  },
};

const set: Command = {
  args: ["NAME", "VALUE"],
  summary: "create or replace a var (vars are not secret: the value is an argument)",
  flags: { ...STORE },
  async run(a, ctx) {
    const [name, value] = a.positionals as [string, string];
    const res = await ctx.client().vars.setVars({ store: a.string("store") ?? "", vars: [{ name, value }] });
    const v = res.vars[0];
    if (ctx.json) printJson(ctx.io.stdout, v ? messageJson(VarSchema, v) : null);
    else ctx.io.stdout.write(`set ${name}\n`);
    return 0;
  },
};

const del: Command = {
  args: ["NAME"],
  summary: "delete a var",
  flags: { ...STORE },
  async run(a, ctx) {
    const name = a.positionals[0] as string;
    await ctx.client().vars.deleteVar({ store: a.string("store") ?? "", name });
    if (ctx.json) printJson(ctx.io.stdout, { name, deleted: true });
    else ctx.io.stdout.write(`deleted ${name}\n`);
    return 0;
  },
};

export const vars: Group = {
  summary: "non-secret configuration values (listed in the clear)",
  commands: { list, get, set, delete: del },
};
