import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  GetSecretResponseSchema,
  type Secret,
  SecretKind,
  SecretListState,
  SecretSchema,
  type SecretVersion,
  SecretVersionSchema,
  VerifySecretResponseSchema,
  VersionState,
} from "../../client/index.js";
import { type Args, type FlagSpecs, UsageError } from "../args.js";
import { collectPages, type Command, type Context, type Group, readValue, VALUE_FLAGS, VALUE_HELP } from "../context.js";
import { enumLabel, enumValue, messageJson, printJson, printTable, time } from "../output.js";

const STORE: FlagSpecs = { store: { arg: "S", help: 'the store (default: "default")' } };
const IF_REVISION: FlagSpecs = {
  "if-revision": { arg: "N", help: "check-and-set: fail (exit 7) unless the secret's revision is still N" },
};

const store = (a: Args) => a.string("store") ?? "";
const name = (a: Args) => a.positionals[0] as string;
const revision = (a: Args) => BigInt(a.int("if-revision") ?? 0);
const seconds = (n: number | undefined) => (n === undefined ? undefined : { seconds: BigInt(n) });

function secretRow(s: Secret, deleted: boolean): string[] {
  const kind = enumLabel(SecretKind, s.kind);
  const v = String(s.currentVersion);
  return deleted
    ? [s.name, kind, v, time(s.deletedAt), time(s.purgeAt)]
    : [s.name, kind, v, time(s.updatedAt), time(s.nextRotationAt), s.expired ? "yes" : "no"];
}

function versionRow(v: SecretVersion): string[] {
  return [
    String(v.version),
    enumLabel(VersionState, v.state),
    v.current ? "yes" : "no",
    v.valid ? "yes" : "no",
    v.binary ? "binary" : "text",
    time(v.createdAt),
    time(v.validUntil),
  ];
}

/** Prints one secret's metadata (never a value): a line for people, the Secret message with --json. */
function done(ctx: Context, secret: Secret | undefined, line: string, extra: Record<string, unknown> = {}): number {
  if (ctx.json) printJson(ctx.io.stdout, { ...extra, secret: secret ? messageJson(SecretSchema, secret) : null });
  else ctx.io.stdout.write(`${line}\n`);
  return 0;
}

const get: Command = {
  args: ["NAME"],
  summary: "print a secret's value",
  description: `Prints the value and nothing else, so $(latchkey secrets get db/password) works. A text value is printed
with a trailing newline; a binary value is written raw (or base64 with --base64). --json prints the response:
metadata, version and value (binary_value in base64).`,
  flags: {
    ...STORE,
    version: { arg: "N", help: "a specific version (default: the current one)" },
    base64: { help: "print the value base64-encoded" },
  },
  async run(a, ctx) {
    const res = await ctx.client().secrets.getSecret({ name: name(a), store: store(a), version: a.int("version") ?? 0 });
    const out = ctx.io.stdout;
    if (ctx.json) printJson(out, messageJson(GetSecretResponseSchema, res));
    else if (res.version ? res.version.binary : res.binaryValue.length > 0) {
      out.write(a.flag("base64") ? `${Buffer.from(res.binaryValue).toString("base64")}\n` : res.binaryValue);
    } else out.write(a.flag("base64") ? `${Buffer.from(res.value).toString("base64")}\n` : `${res.value}\n`);
    return 0;
  },
};

const set: Command = {
  args: ["NAME"],
  summary: "create a secret, or give an existing one a new value or settings",
  description: `Creates the secret (StoreSecret) or, if it exists, updates it (UpdateSecret): a new value makes a new version,
and the previous one stays valid for the grace period. With --if-revision, only updates.

${VALUE_HELP}
A usage error (exit 2) when stdin is a terminal and no value was given. With --kind automatic a value is optional:
without one, Latchkey generates it (or, for an existing secret, keeps it).

examples:
  latchkey secrets set db/password --value-file ./password.txt
  printf %s "$PASSWORD" | latchkey secrets set db/password --description "primary db"
  latchkey secrets set svc/api-key --kind automatic --interval 1d --grace 1h`,
  flags: {
    ...STORE,
    ...VALUE_FLAGS,
    description: { arg: "TEXT", help: "a description" },
    kind: { arg: "K", help: "manual (default for new secrets: you supply values) or automatic (generated and rotated)" },
    interval: { arg: "SECS", help: "rotation interval of an automatic secret (seconds, or 90s, 15m, 2h, 1d)" },
    grace: { arg: "SECS", help: "how long a superseded version stays valid for verify" },
    tags: { arg: "a,b", help: "tags (replace the existing ones)" },
    folder: { arg: "PATH", help: "a folder, for grouping" },
    expires: { arg: "TIME", help: "RFC 3339 time after which the secret is not served" },
    ...IF_REVISION,
  },
  async run(a, ctx) {
    const kind = a.has("kind") ? enumValue(SecretKind, a.string("kind") as string, "--kind") : undefined;
    const automatic = kind === SecretKind.AUTOMATIC;
    const value = await readValue(a, ctx.io, { required: !automatic, implicitStdin: !automatic });
    const secrets = ctx.client().secrets;
    const expiresAt = a.has("expires") ? timestampFromDate(a.time("expires") as Date) : undefined;
    const tags = a.list("tags");
    const common = {
      name: name(a),
      store: store(a),
      ...value,
      rotationInterval: seconds(a.seconds("interval")),
      gracePeriod: seconds(a.seconds("grace")),
      expiresAt,
    };
    if (!a.has("if-revision")) {
      try {
        const res = await secrets.storeSecret({
          ...common,
          kind: kind ?? SecretKind.MANUAL,
          description: a.string("description") ?? "",
          folder: a.string("folder") ?? "",
          tags: tags ?? [],
        });
        return done(ctx, res.secret, `created ${res.secret?.name} (version ${res.version?.version})`, { created: true });
      } catch (err) {
        if (!(err instanceof ConnectError && err.code === Code.AlreadyExists)) throw err;
      }
    }
    const res = await secrets.updateSecret({
      ...common,
      kind: kind ?? SecretKind.UNSPECIFIED,
      description: a.string("description"),
      folder: a.string("folder"),
      tags: tags && { values: tags },
      expectedRevision: revision(a),
    });
    return done(ctx, res.secret, `updated ${res.secret?.name} (version ${res.secret?.currentVersion}, revision ${res.secret?.revision})`, {
      created: false,
    });
  },
};

const LIST_STATES: Record<string, SecretListState> = {
  live: SecretListState.UNSPECIFIED,
  active: SecretListState.ACTIVE,
  expired: SecretListState.EXPIRED,
  deleted: SecretListState.DELETED,
};

const list: Command = {
  summary: "list secrets (metadata, never values)",
  flags: {
    ...STORE,
    prefix: { arg: "P", help: "only names starting with P" },
    folder: { arg: "F", help: "only secrets in exactly this folder" },
    tag: { arg: "T", help: "only secrets carrying this tag" },
    state: { arg: "S", help: "live (default), active (not expired), expired, or deleted (restorable)" },
    limit: { arg: "N", help: "at most N secrets (default: all)" },
  },
  async run(a, ctx) {
    const state = LIST_STATES[a.string("state") ?? "live"];
    if (state === undefined) throw new UsageError(`--state must be one of ${Object.keys(LIST_STATES).join(", ")}`);
    const client = ctx.client();
    const secrets = await collectPages(a.int("limit"), async (pageSize, pageToken) => {
      const res = await client.secrets.listSecrets({
        store: store(a),
        namePrefix: a.string("prefix") ?? "",
        folder: a.string("folder") ?? "",
        tag: a.string("tag") ?? "",
        state,
        pageSize,
        pageToken,
      });
      return { items: res.secrets, next: res.nextPageToken };
    });
    if (ctx.json) printJson(ctx.io.stdout, secrets.map((s) => messageJson(SecretSchema, s)));
    else {
      const deleted = state === SecretListState.DELETED;
      const headers = deleted
        ? ["name", "kind", "version", "deleted", "purge at"]
        : ["name", "kind", "version", "updated", "next rotation", "expired"];
      printTable(ctx.io.stdout, headers, secrets.map((s) => secretRow(s, deleted)));
    }
    return 0;
  },
};

const rotate: Command = {
  args: ["NAME"],
  summary: "rotate an automatic secret now",
  description: `Generates a new value now and resets the schedule; the previous version stays valid for the grace period
unless --previous-state says otherwise. The new value is not printed: read it with \`latchkey secrets get\`.
Manual secrets are changed with \`latchkey secrets set\`.`,
  flags: {
    ...STORE,
    "previous-state": { arg: "S", help: "retire the previous version at once: deactivated, suspended, compromised or destroyed" },
    ...IF_REVISION,
  },
  async run(a, ctx) {
    const prev = a.string("previous-state");
    const res = await ctx.client().secrets.rotateSecret({
      name: name(a),
      store: store(a),
      previousState: prev === undefined ? VersionState.UNSPECIFIED : enumValue(VersionState, prev, "--previous-state"),
      expectedRevision: revision(a),
    });
    return done(ctx, res.secret, `rotated ${res.secret?.name} to version ${res.version?.version}`, {
      version: res.version ? messageJson(SecretVersionSchema, res.version) : null,
    });
  },
};

const verify: Command = {
  args: ["NAME"],
  summary: "check a value against every currently valid version",
  description: `Exit code 0 when the value is valid, 1 when it is not (other codes for errors, e.g. 5 when there is no
such secret). Prints "valid (version N)" or "not valid".

${VALUE_HELP}`,
  flags: { ...STORE, ...VALUE_FLAGS },
  async run(a, ctx) {
    const value = await readValue(a, ctx.io, { required: true, implicitStdin: true });
    const res = await ctx.client().secrets.verifySecret({ name: name(a), store: store(a), ...value });
    if (ctx.json) printJson(ctx.io.stdout, messageJson(VerifySecretResponseSchema, res));
    else ctx.io.stdout.write(res.valid ? `valid (version ${res.version})\n` : "not valid\n");
    return res.valid ? 0 : 1;
  },
};

const del: Command = {
  args: ["NAME"],
  summary: "delete a secret (restorable for the retention window unless --purge)",
  flags: { ...STORE, purge: { help: "delete for good now, every version with it" }, ...IF_REVISION },
  async run(a, ctx) {
    await ctx.client().secrets.deleteSecret({ name: name(a), store: store(a), purge: a.flag("purge"), expectedRevision: revision(a) });
    const line = a.flag("purge") ? `purged ${name(a)}` : `deleted ${name(a)} (restore it with: latchkey secrets undelete ${name(a)})`;
    if (ctx.json) printJson(ctx.io.stdout, { name: name(a), purged: a.flag("purge") });
    else ctx.io.stdout.write(`${line}\n`);
    return 0;
  },
};

const undelete: Command = {
  args: ["NAME"],
  summary: "restore a deleted secret",
  flags: { ...STORE, id: { arg: "ID", help: "which deleted secret of that name (default: the most recently deleted)" } },
  async run(a, ctx) {
    const res = await ctx.client().secrets.undeleteSecret({ name: name(a), store: store(a), id: a.string("id") ?? "" });
    return done(ctx, res.secret, `restored ${res.secret?.name} (version ${res.secret?.currentVersion})`);
  },
};

const versions: Command = {
  args: ["NAME"],
  summary: "list a secret's versions and their states",
  flags: { ...STORE },
  async run(a, ctx) {
    const res = await ctx.client().secrets.listSecretVersions({ name: name(a), store: store(a) });
    if (ctx.json) printJson(ctx.io.stdout, res.versions.map((v) => messageJson(SecretVersionSchema, v)));
    else {
      printTable(
        ctx.io.stdout,
        ["version", "state", "current", "valid", "type", "created", "valid until"],
        res.versions.map(versionRow),
      );
    }
    return 0;
  },
};

const copy: Command = {
  args: ["NAME", "TO_NAME"],
  summary: "copy a secret's current value and metadata (the value never leaves the server)",
  flags: { ...STORE, "to-store": { arg: "S", help: "the store of the copy (default: the same store)" } },
  async run(a, ctx) {
    const to = a.positionals[1] as string;
    const res = await ctx.client().secrets.copySecret({ name: name(a), store: store(a), toName: to, toStore: a.string("to-store") ?? "" });
    return done(ctx, res.secret, `copied ${name(a)} to ${res.secret?.store}/${res.secret?.name}`);
  },
};

const rename: Command = {
  args: ["NAME", "NEW_NAME"],
  summary: "rename a secret in its store, keeping its versions",
  flags: { ...STORE, ...IF_REVISION },
  async run(a, ctx) {
    const res = await ctx.client().secrets.renameSecret({
      name: name(a),
      store: store(a),
      newName: a.positionals[1] as string,
      expectedRevision: revision(a),
    });
    return done(ctx, res.secret, `renamed ${name(a)} to ${res.secret?.name}`);
  },
};

const move: Command = {
  args: ["NAME"],
  summary: "move a secret, with its versions, to another store",
  flags: {
    ...STORE,
    "to-store": { arg: "S", help: "the destination store (required)" },
    "to-name": { arg: "N", help: "a new name (default: the same)" },
    ...IF_REVISION,
  },
  async run(a, ctx) {
    const toStore = a.string("to-store");
    if (!toStore) throw new UsageError("--to-store is required");
    const res = await ctx.client().secrets.moveSecret({
      name: name(a),
      store: store(a),
      toStore,
      toName: a.string("to-name") ?? "",
      expectedRevision: revision(a),
    });
    return done(ctx, res.secret, `moved ${name(a)} to ${res.secret?.store}/${res.secret?.name}`);
  },
};

export const secrets: Group = {
  summary: "read, write, rotate, verify and manage secrets",
  commands: { get, set, list, rotate, verify, delete: del, undelete, versions, copy, rename, move },
};
