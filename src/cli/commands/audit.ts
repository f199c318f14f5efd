import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { type AuditEvent, AuditEventSchema } from "../../client/index.js";
import { collectPages, type Command, type Group } from "../context.js";
import { messageJson, printJson, printTable, time } from "../output.js";

const eventRow = (e: AuditEvent) => [
  time(e.at),
  e.tokenId || e.actorKind,
  e.role,
  e.ip,
  e.op,
  e.store,
  e.name,
  e.version ? String(e.version) : "",
  e.code,
  e.requestId,
];

const list: Command = {
  summary: "list audit log entries, newest first (admin)",
  description: `Every call is recorded: who, from where, what, on which secret and version, and the result. Never a value
or a token. To check the log's hash chain, run \`latchkey verify-audit\` with the server's environment.`,
  flags: {
    since: { arg: "TIME", help: "entries at or after TIME: RFC 3339, or a duration ago (15m, 2h, 7d)" },
    until: { arg: "TIME", help: "entries before TIME (same forms)" },
    "token-id": { arg: "ID", help: "only calls made with this token (tok_…)" },
    store: { arg: "S", help: "only calls on this store" },
    name: { arg: "NAME", help: "only calls on this secret or var name" },
    limit: { arg: "N", help: "at most N entries (default 50)" },
  },
  async run(a, ctx) {
    const since = a.time("since", { ago: true });
    const until = a.time("until", { ago: true });
    const client = ctx.client();
    const events = await collectPages(a.int("limit") ?? 50, async (pageSize, pageToken) => {
      const res = await client.audit.listAuditEvents({
        from: since && timestampFromDate(since),
        to: until && timestampFromDate(until),
        tokenId: a.string("token-id") ?? "",
        store: a.string("store") ?? "",
        name: a.string("name") ?? "",
        pageSize,
        pageToken,
      });
      return { items: res.events, next: res.nextPageToken };
    });
    if (ctx.json) printJson(ctx.io.stdout, events.map((e) => messageJson(AuditEventSchema, e)));
    else {
      printTable(
        ctx.io.stdout,
        ["time", "actor", "role", "ip", "op", "store", "name", "version", "code", "request id"],
        events.map(eventRow),
      );
    }
    return 0;
  },
};

export const audit: Group = {
  summary: "read the audit log (admin)",
  commands: { list },
};
