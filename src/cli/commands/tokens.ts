import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Role, type Token, TokenSchema } from "../../client/index.js";
import { collectPages, type Command, type Group } from "../context.js";
import { enumLabel, enumValue, messageJson, printFields, printJson, printTable, time } from "../output.js";

const tokenRow = (t: Token) => [
  t.id,
  t.label,
  enumLabel(Role, t.role),
  t.service,
  t.stores.join(","),
  t.prefixes.join(","),
  time(t.expiresAt),
  time(t.createdAt),
  time(t.revokedAt),
];

const list: Command = {
  summary: "list tokens (settings only; a token's secret is never shown again)",
  flags: { limit: { arg: "N", help: "at most N tokens (default: all)" } },
  async run(a, ctx) {
    const client = ctx.client();
    const tokens = await collectPages(a.int("limit"), async (pageSize, pageToken) => {
      const res = await client.tokens.listTokens({ pageSize, pageToken });
      return { items: res.tokens, next: res.nextPageToken };
    });
    if (ctx.json) printJson(ctx.io.stdout, tokens.map((t) => messageJson(TokenSchema, t)));
    else {
      printTable(
        ctx.io.stdout,
        ["id", "label", "role", "service", "stores", "prefixes", "expires", "created", "revoked"],
        tokens.map(tokenRow),
      );
    }
    return 0;
  },
};

const create: Command = {
  summary: "create a token and print its secret, once",
  description: `Prints the token's secret alone on stdout (so TOKEN=$(latchkey tokens create --role reader) works), and
its id and a reminder on stderr. The secret is shown only now: it cannot be read again, only revoked.`,
  flags: {
    role: { arg: "R", help: "admin, writer, reader or verifier (required)" },
    label: { arg: "TEXT", help: "a label" },
    service: { arg: "SERVICE", help: "the service the token speaks for (it then sees only that service's stores)" },
    stores: { arg: "a,b", help: "the stores it may touch (default: all it can see)" },
    prefixes: { arg: "a/,b/", help: "the secret and var name prefixes it may touch (default: all)" },
    "allowed-ips": { arg: "CIDRS", help: "IPs and CIDRs it may be used from (default: anywhere)" },
    expires: { arg: "TIME", help: "RFC 3339 expiry (default: none)" },
  },
  async run(a, ctx) {
    const role = enumValue(Role, a.string("role") ?? "", "--role");
    const expires = a.time("expires");
    const res = await ctx.client().tokens.createToken({
      role,
      label: a.string("label") ?? "",
      service: a.string("service") ?? "",
      stores: a.list("stores") ?? [],
      prefixes: a.list("prefixes") ?? [],
      allowedIps: a.list("allowed-ips") ?? [],
      expiresAt: expires && timestampFromDate(expires),
    });
    if (ctx.json) printJson(ctx.io.stdout, { token: res.token ? messageJson(TokenSchema, res.token) : null, secret: res.secret });
    else ctx.io.stdout.write(`${res.secret}\n`);
    ctx.io.stderr.write(
      `created token ${res.token?.id} (role ${enumLabel(Role, res.token?.role ?? 0)}): its secret is shown only now; store it safely\n`,
    );
    return 0;
  },
};

const revoke: Command = {
  args: ["ID"],
  summary: "revoke a token: it stops working at once",
  flags: {},
  async run(a, ctx) {
    const res = await ctx.client().tokens.revokeToken({ id: a.positionals[0] });
    const t = res.token;
    if (ctx.json) printJson(ctx.io.stdout, t ? messageJson(TokenSchema, t) : null);
    else printFields(ctx.io.stdout, [["revoked", t?.id ?? ""], ["at", time(t?.revokedAt)]]);
    return 0;
  },
};

export const tokens: Group = {
  summary: "create, list and revoke access tokens (admin)",
  commands: { list, create, revoke },
};
