import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable, Writable } from "node:stream";
import { after, before, describe, it } from "node:test";
import Database from "better-sqlite3";
import { run } from "../../src/cli/main.js";
import { ADMIN_TOKEN, MASTER_KEY, startTestServer, tempDir, type TestServer } from "../support/server.js";

interface Result {
  code: number;
  stdout: string;
  stderr: string;
  /** stdout as bytes, for binary values. */
  raw: Buffer;
}

interface CliOptions {
  /** Piped into stdin; without it, stdin is an empty terminal (nothing is read from it implicitly). */
  stdin?: string | Buffer;
  /** Environment overrides for the call (undefined removes a variable). */
  env?: Record<string, string | undefined>;
}

function sink(chunks: Buffer[]): Writable {
  return new Writable({
    write(chunk: Buffer | string, _enc, cb) {
      chunks.push(Buffer.from(chunk));
      cb();
    },
  });
}

const GROUPS: Record<string, string[]> = {
  secrets: ["get", "set", "list", "rotate", "verify", "delete", "undelete", "versions", "copy", "rename", "move"],
  stores: ["list", "get", "create", "delete", "usage"],
  vars: ["list", "get", "set", "delete"],
  tokens: ["list", "create", "revoke"],
  audit: ["list"],
};
const TOP_LEVEL = ["export", "import", "verify-audit"];

/** The `latchkey` command line, run in-process against a server started in-process. */
describe("latchkey CLI", () => {
  let s: TestServer;
  const dirs: string[] = [];
  /** Every value written or read, to prove none reaches stderr, the audit log or the server log. */
  const canaries: string[] = [];
  /** Everything any call wrote to stderr. */
  let allStderr = "";

  const canary = (label: string) => {
    const v = `${label}-canary-${randomBytes(6).toString("hex")}`;
    canaries.push(v);
    return v;
  };

  async function cli(argv: string[], opts: CliOptions = {}): Promise<Result> {
    const saved = { ...process.env };
    const env: Record<string, string | undefined> = { LATCHKEY_ADDR: s.url, LATCHKEY_TOKEN: ADMIN_TOKEN, ...opts.env };
    for (const [k, v] of Object.entries(env)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const stdin =
      opts.stdin === undefined
        ? Object.assign(Readable.from([]), { isTTY: true })
        : Readable.from([Buffer.from(opts.stdin)]);
    try {
      const code = await run(argv, { stdout: sink(out), stderr: sink(err), stdin });
      const stderr = Buffer.concat(err).toString("utf8");
      allStderr += stderr;
      return { code, stdout: Buffer.concat(out).toString("utf8"), stderr, raw: Buffer.concat(out) };
    } finally {
      process.env = saved;
    }
  }

  /** Runs and asserts the exit code, showing stderr when it differs. */
  async function ok(argv: string[], opts: CliOptions = {}, code = 0): Promise<Result> {
    const r = await cli(argv, opts);
    assert.equal(r.code, code, `latchkey ${argv.join(" ")} -> ${r.code}, stderr: ${r.stderr}`);
    return r;
  }

  const json = (r: Result) => JSON.parse(r.stdout);
  const tableNames = (r: Result) => r.stdout.trim().split("\n").slice(1).map((l) => l.split(/\s+/)[0]);

  before(async () => {
    s = await startTestServer();
  });
  after(async () => {
    await s?.stop();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  describe("help", () => {
    it("--help and -h on every group and command print usage on stdout and exit 0, without a server", async () => {
      const env = { LATCHKEY_ADDR: "http://127.0.0.1:1" };
      for (const argv of [["--help"], ["-h"], ["help"]]) {
        const r = await ok(argv, { env });
        assert.match(r.stdout, /^usage: latchkey <command>/);
        assert.match(r.stdout, /exit codes:[\s\S]*8 {2}unavailable/);
        assert.match(r.stdout, /LATCHKEY_ADDR[\s\S]*LATCHKEY_TOKEN[\s\S]*data\/admin\.token/);
      }
      for (const [group, commands] of Object.entries(GROUPS)) {
        for (const flag of ["--help", "-h"]) {
          const r = await ok([group, flag], { env });
          assert.match(r.stdout, new RegExp(`^usage: latchkey ${group} <command>`));
          const listed = r.stdout.split("commands:\n")[1]?.split("\n\n")[0]?.split("\n").map((l) => l.trim().split(/\s+/)[0]);
          assert.deepEqual(listed, commands, `${group} lists exactly its commands`);
        }
        for (const command of commands) {
          for (const argv of [[group, command, "--help"], [group, command, "-h"], ["help", group, command], [group, command, "x", "--bogus", "-h"]]) {
            const r = await ok(argv, { env });
            assert.match(r.stdout, new RegExp(`^usage: latchkey ${group} ${command}`), argv.join(" "));
            assert.match(r.stdout, /-h, --help/);
            assert.match(r.stdout, /--addr URL[\s\S]*--token TOKEN[\s\S]*--protocol P/);
            assert.match(r.stdout, /exit codes: 0 ok/);
            assert.equal(r.stderr, "");
          }
        }
      }
      for (const command of TOP_LEVEL) {
        const r = await ok([command, "--help"], { env });
        assert.match(r.stdout, new RegExp(`^usage: latchkey ${command}`));
      }
      assert.match((await ok(["secrets", "verify", "--help"])).stdout, /Exit code 0 when the value is valid, 1 when it is not/);
      assert.match((await ok(["secrets", "set", "--help"])).stdout, /never taken as an argument/);
      assert.match((await ok(["tokens", "create", "--help"])).stdout, /shown only now/);
    });
  });

  describe("secrets", () => {
    let current = "";

    it("set reads the value from piped stdin, and get prints only the value", async () => {
      const value = canary("stdin");
      const r = await ok(["secrets", "set", "db/password", "--description", "primary db"], { stdin: `${value}\n` });
      assert.equal(r.stdout, "created db/password (version 1)\n");
      const got = await ok(["secrets", "get", "db/password"]);
      assert.equal(got.stdout, `${value}\n`, "the value alone; one trailing newline dropped on input, one added on output");
      assert.equal(got.stderr, "");
      // --stdin says so explicitly
      const again = canary("stdin2");
      assert.equal((await ok(["secrets", "set", "db/other", "--stdin"], { stdin: again })).stdout, "created db/other (version 1)\n");
      assert.equal((await ok(["secrets", "get", "db/other"])).stdout, `${again}\n`);
    });

    it("set reads the value from a file, and updates an existing secret with a new version", async () => {
      const dir = tempDir();
      dirs.push(dir);
      current = canary("file");
      writeFileSync(join(dir, "value.txt"), `${current}\n`);
      const r = await ok(["secrets", "set", "db/password", "--value-file", join(dir, "value.txt"), "--grace", "1h"]);
      assert.match(r.stdout, /^updated db\/password \(version 2, revision \d+\)\n$/);
      assert.equal((await ok(["secrets", "get", "db/password"])).stdout, `${current}\n`);
      const missing = await ok(["secrets", "set", "db/password", "--value-file", join(dir, "nope.txt")], {}, 1);
      assert.match(missing.stderr, /cannot read .*nope\.txt: ENOENT/);
    });

    it("get --json prints the response with metadata, version and value; --version reads an older one", async () => {
      const j = json(await ok(["secrets", "get", "db/password", "--json"]));
      assert.equal(j.value, current);
      assert.equal(j.secret.name, "db/password");
      assert.equal(j.secret.description, "primary db");
      assert.equal(j.version.version, 2);
      assert.equal(j.version.current, true);
      const v1 = await ok(["secrets", "get", "db/password", "--version", "1"]);
      assert.equal(v1.stdout, `${canaries[0]}\n`);
    });

    it("never takes a value as an argument, and refuses a terminal stdin with nothing given (exit 2)", async () => {
      const leaked = canary("argv");
      const extra = await ok(["secrets", "set", "db/password", leaked], {}, 2);
      assert.match(extra.stderr, /too many arguments/);
      assert.equal(extra.stderr.includes(leaked), false, "the stray value is not echoed");
      const flag = await ok(["secrets", "set", "db/password", `--value=${leaked}`], {}, 2);
      assert.match(flag.stderr, /unknown option --value\n/);
      assert.equal(flag.stderr.includes(leaked), false);
      const none = await ok(["secrets", "set", "db/password"], {}, 2);
      assert.match(none.stderr, /no value given.*--value-file FILE or --stdin/);
      assert.match(none.stderr, /Run 'latchkey secrets set --help'/);
      assert.equal((await ok(["secrets", "get", "db/password"])).stdout, `${current}\n`, "nothing changed");
    });

    it("binary values: --binary sends the bytes as read; get writes them raw, or base64 with --base64", async () => {
      const bytes = Buffer.concat([Buffer.from([0, 1, 2, 0xff, 0xfe, 10]), randomBytes(32)]);
      canaries.push(bytes.toString("base64"));
      await ok(["secrets", "set", "bin/blob", "--binary"], { stdin: bytes });
      assert.deepEqual((await ok(["secrets", "get", "bin/blob"])).raw, bytes);
      assert.equal((await ok(["secrets", "get", "bin/blob", "--base64"])).stdout, `${bytes.toString("base64")}\n`);
      assert.equal(json(await ok(["secrets", "get", "bin/blob", "--json"])).binary_value, bytes.toString("base64"));
      const notText = await ok(["secrets", "set", "bin/other"], { stdin: Buffer.from([0xff, 0xfe]) }, 2);
      assert.match(notText.stderr, /not UTF-8 text: pass --binary/);
    });

    it("set creates automatic secrets without a value, with tags and a folder; list shows a table or --json", async () => {
      const r = await ok(["secrets", "set", "svc/api-key", "--kind", "automatic", "--interval", "1d", "--grace", "1h", "--tags", "ci,pci", "--folder", "svc"]);
      assert.equal(r.stdout, "created svc/api-key (version 1)\n");
      canaries.push((await ok(["secrets", "get", "svc/api-key"])).stdout.trim());

      const table = await ok(["secrets", "list"]);
      const [header, ...rows] = table.stdout.trim().split("\n");
      assert.match(header ?? "", /^NAME +KIND +VERSION +UPDATED +NEXT ROTATION +EXPIRED$/);
      assert.deepEqual(tableNames(table), ["bin/blob", "db/other", "db/password", "svc/api-key"]);
      assert.match(rows.find((l) => l.startsWith("svc/api-key")) ?? "", /automatic +1 +\S+Z +\S+Z +no$/);
      assert.match(rows.find((l) => l.startsWith("db/password")) ?? "", /manual +2 +\S+Z +- +no$/);

      const list = json(await ok(["secrets", "list", "--json"]));
      assert.deepEqual(list.map((x: { name: string }) => x.name), ["bin/blob", "db/other", "db/password", "svc/api-key"]);
      const api = list.find((x: { name: string }) => x.name === "svc/api-key");
      assert.deepEqual([api.kind, api.rotation_interval, api.grace_period, api.tags, api.folder], ["SECRET_KIND_AUTOMATIC", "86400s", "3600s", ["ci", "pci"], "svc"]);
      assert.equal(JSON.stringify(list).includes(current), false, "lists never carry values");

      assert.deepEqual(tableNames(await ok(["secrets", "list", "--prefix", "db/"])), ["db/other", "db/password"]);
      assert.deepEqual(tableNames(await ok(["secrets", "list", "--tag", "pci"])), ["svc/api-key"]);
      assert.deepEqual(tableNames(await ok(["secrets", "list", "--folder", "svc"])), ["svc/api-key"]);
      assert.equal(json(await ok(["secrets", "list", "--limit", "2", "--json"])).length, 2);
      assert.match((await ok(["secrets", "list", "--state", "bogus"], {}, 2)).stderr, /--state must be one of live, active, expired, deleted/);
    });

    it("rotate makes a new version without printing it; a manual secret cannot be rotated (exit 7)", async () => {
      const before = (await ok(["secrets", "get", "svc/api-key"])).stdout;
      const r = await ok(["secrets", "rotate", "svc/api-key"]);
      assert.equal(r.stdout, "rotated svc/api-key to version 2\n");
      const after = (await ok(["secrets", "get", "svc/api-key"])).stdout;
      canaries.push(after.trim());
      assert.notEqual(after, before);
      assert.equal(r.stdout.includes(after.trim()), false);
      const j = json(await ok(["secrets", "rotate", "svc/api-key", "--json", "--previous-state", "deactivated"]));
      assert.equal(j.version.version, 3);
      assert.equal(j.value, undefined, "no value in rotate's output");
      canaries.push((await ok(["secrets", "get", "svc/api-key"])).stdout.trim());
      const manual = await ok(["secrets", "rotate", "db/password"], {}, 7);
      assert.match(manual.stderr, /^latchkey: failed_precondition: secret "db\/password" is manual.*\(request id req_[0-9a-f]{32}\)\n$/);
    });

    it("verify exits 0 when the value is valid and 1 when it is not", async () => {
      const valid = await ok(["secrets", "verify", "db/password"], { stdin: `${current}\n` });
      assert.equal(valid.stdout, "valid (version 2)\n");
      const grace = await ok(["secrets", "verify", "db/password"], { stdin: canaries[0] });
      assert.equal(grace.stdout, "valid (version 1)\n", "the previous version is in its grace window");
      const invalid = await ok(["secrets", "verify", "db/password", "--stdin"], { stdin: canary("wrong") }, 1);
      assert.equal(invalid.stdout, "not valid\n");
      assert.equal(invalid.stderr, "");
      assert.deepEqual(json(await ok(["secrets", "verify", "db/password", "--json"], { stdin: current })), { valid: true, version: 2 });
      assert.deepEqual(json(await ok(["secrets", "verify", "db/password", "--json"], { stdin: "nope" }, 1)), { valid: false, version: 0 });
      const dir = tempDir();
      dirs.push(dir);
      writeFileSync(join(dir, "presented"), current);
      await ok(["secrets", "verify", "db/password", "--value-file", join(dir, "presented")]);
      await ok(["secrets", "verify", "no/such"], { stdin: current }, 5);
      await ok(["secrets", "verify", "db/password"], {}, 2);
    });

    it("versions lists every version with its state", async () => {
      const t = await ok(["secrets", "versions", "svc/api-key"]);
      const [header, ...rows] = t.stdout.trim().split("\n");
      assert.match(header ?? "", /^VERSION +STATE +CURRENT +VALID +TYPE +CREATED +VALID UNTIL$/);
      assert.deepEqual(rows.map((l) => l.split(/\s+/).slice(0, 4)), [
        ["1", "active", "no", "yes"],
        ["2", "deactivated", "no", "no"],
        ["3", "active", "yes", "yes"],
      ]);
      const j = json(await ok(["secrets", "versions", "svc/api-key", "--json"]));
      assert.deepEqual(j.map((v: { state: string }) => v.state), ["VERSION_STATE_ACTIVE", "VERSION_STATE_DEACTIVATED", "VERSION_STATE_ACTIVE"]);
    });

    it("delete keeps a secret restorable; undelete brings it back; --purge deletes for good", async () => {
      assert.equal((await ok(["secrets", "delete", "db/other"])).stdout, "deleted db/other (restore it with: latchkey secrets undelete db/other)\n");
      await ok(["secrets", "get", "db/other"], {}, 5);
      const deleted = await ok(["secrets", "list", "--state", "deleted"]);
      assert.match(deleted.stdout, /^NAME +KIND +VERSION +DELETED +PURGE AT\ndb\/other +manual +1 +\S+Z +\S+Z\n$/);
      assert.equal((await ok(["secrets", "undelete", "db/other"])).stdout, "restored db/other (version 1)\n");
      assert.equal((await ok(["secrets", "get", "db/other"])).stdout.trim(), canaries[1]);
      assert.deepEqual(json(await ok(["secrets", "delete", "db/other", "--purge", "--json"])), { name: "db/other", purged: true });
      await ok(["secrets", "undelete", "db/other"], {}, 5);
      await ok(["secrets", "delete", "db/other"], {}, 5);
    });

    it("check-and-set with --if-revision: a stale revision is exit 7 and changes nothing", async () => {
      const rev = Number(json(await ok(["secrets", "get", "db/password", "--json"])).secret.revision);
      await ok(["secrets", "set", "db/password", "--if-revision", String(rev - 1), "--description", "stale"], { stdin: canary("stale") }, 7);
      await ok(["secrets", "delete", "db/password", "--if-revision", String(rev - 1)], {}, 7);
      const r = await ok(["secrets", "set", "db/password", "--if-revision", String(rev), "--description", "fresh", "--json"], { stdin: current });
      assert.equal(json(r).created, false);
      assert.equal(json(r).secret.description, "fresh");
      assert.equal(json(r).secret.current_version, 3);
    });
  });

  describe("stores, copy, rename and move", () => {
    it("create, get, list, usage and delete stores", async () => {
      const created = await ok(["stores", "create", "payments", "--description", "payment service"]);
      assert.match(created.stdout, /^name: +payments\ndescription: +payment service\n/);
      await ok(["stores", "create", "payments"], {}, 7);
      assert.deepEqual(tableNames(await ok(["stores", "list"])), ["default", "payments"]);
      assert.deepEqual(json(await ok(["stores", "list", "--json"])).map((x: { name: string }) => x.name), ["default", "payments"]);
      assert.equal(json(await ok(["stores", "get", "payments", "--json"])).description, "payment service");
      await ok(["stores", "get", "nope"], {}, 5);
      const usage = await ok(["stores", "usage", "default"]);
      assert.match(usage.stdout, /^ +USED +LIMIT\nsecrets +3 +unlimited\n/);
      assert.equal(json(await ok(["stores", "usage", "--json"])).usage.stores, "2");
    });

    it("copy, rename and move secrets between stores", async () => {
      assert.equal((await ok(["secrets", "copy", "db/password", "db/copy", "--to-store", "payments"])).stdout, "copied db/password to payments/db/copy\n");
      assert.equal((await ok(["secrets", "get", "db/copy", "--store", "payments"])).stdout, (await ok(["secrets", "get", "db/password"])).stdout);
      await ok(["secrets", "rename", "db/copy", "db/renamed", "--store", "payments"]);
      await ok(["secrets", "get", "db/copy", "--store", "payments"], {}, 5);
      await ok(["secrets", "move", "db/renamed", "--store", "payments", "--to-store", "default", "--to-name", "db/moved"]);
      assert.deepEqual(tableNames(await ok(["secrets", "list", "--store", "payments"])), []);
      await ok(["secrets", "get", "db/moved"]);
      await ok(["secrets", "move", "db/moved"], {}, 2);
      await ok(["secrets", "copy", "db/password", "db/moved"], {}, 7);
    });

    it("delete refuses a non-empty store (exit 7) unless purged", async () => {
      await ok(["secrets", "set", "stripe/key", "--store", "payments"], { stdin: canary("stripe") });
      const full = await ok(["stores", "delete", "payments"], {}, 7);
      assert.match(full.stderr, /^latchkey: failed_precondition: .*\(request id req_[0-9a-f]{32}\)\n$/);
      assert.equal((await ok(["stores", "delete", "payments", "--purge"])).stdout, "deleted store payments (1 secrets and 0 vars removed)\n");
      await ok(["stores", "get", "payments"], {}, 5);
    });
  });

  describe("vars", () => {
    it("set, get, list and delete vars (values are plain arguments)", async () => {
      assert.equal((await ok(["vars", "set", "log/level", "debug"])).stdout, "set log/level\n");
      await ok(["vars", "set", "region", "eu-west-1"]);
      assert.equal((await ok(["vars", "get", "region"])).stdout, "eu-west-1\n");
      assert.equal(json(await ok(["vars", "get", "region", "--json"])).value, "eu-west-1");
      const table = await ok(["vars", "list"]);
      assert.match(table.stdout, /^NAME +VALUE +UPDATED\nlog\/level +debug +\S+Z\nregion +eu-west-1 +\S+Z\n$/);
      assert.deepEqual(json(await ok(["vars", "list", "--prefix", "log/", "--json"])).map((v: { value: string }) => v.value), ["debug"]);
      await ok(["vars", "delete", "region"]);
      await ok(["vars", "get", "region"], {}, 5);
      await ok(["vars", "set", "empty"], {}, 2);
      assert.match((await ok(["vars", "set", "bad name!", "x"], {}, 1)).stderr, /^latchkey: invalid_argument: /);
    });
  });

  describe("tokens and audit", () => {
    let readerId = "";
    it("create prints the secret once; the token works with --token until revoked", async () => {
      const created = await ok(["tokens", "create", "--role", "reader", "--label", "ci reader", "--prefixes", "db/"]);
      const secret = created.stdout.trim();
      canaries.push(secret);
      assert.match(secret, /^lkt_\S+$/);
      assert.equal(created.stdout, `${secret}\n`, "only the secret on stdout");
      assert.match(created.stderr, /^created token tok_\S+ \(role reader\): its secret is shown only now; store it safely\n$/);
      const id = /(tok_\S+)/.exec(created.stderr)?.[1] as string;
      readerId = id;

      const list = await ok(["tokens", "list"]);
      assert.match(list.stdout, new RegExp(`^${id} +ci reader +reader +- +- +db/ `, "m"));
      assert.equal(list.stdout.includes(secret), false);
      const listed = json(await ok(["tokens", "list", "--json"])).find((t: { id: string }) => t.id === id);
      assert.deepEqual([listed.role, listed.prefixes], ["ROLE_READER", ["db/"]]);

      // The reader can list and read, not write; with --token it overrides LATCHKEY_TOKEN.
      assert.deepEqual(tableNames(await ok(["secrets", "list", "--prefix", "db/", "--token", secret])), ["db/moved", "db/password"]);
      assert.equal((await ok(["secrets", "get", "db/password", "--token", secret])).stdout, (await ok(["secrets", "get", "db/password"])).stdout);
      const denied = await ok(["secrets", "set", "db/x", "--token", secret], { stdin: canary("denied") }, 6);
      assert.match(denied.stderr, /^latchkey: permission_denied: .*\(request id req_[0-9a-f]{32}\)\n$/);
      await ok(["tokens", "list", "--token", secret], {}, 6);

      const revoked = await ok(["tokens", "revoke", id]);
      assert.match(revoked.stdout, new RegExp(`^revoked: +${id}\nat: +\\S+Z\n$`));
      await ok(["secrets", "list", "--token", secret], {}, 6);
      await ok(["tokens", "revoke", "tok_nope"], {}, 5);
      await ok(["tokens", "create", "--role", "king"], {}, 2);
      const j = json(await ok(["tokens", "create", "--role", "verifier", "--json", "--expires", "2099-01-01T00:00:00Z"]));
      canaries.push(j.secret);
      assert.equal(j.token.expires_at, "2099-01-01T00:00:00Z");
    });

    it("audit list shows who did what, filtered by name, token and time", async () => {
      const table = await ok(["audit", "list", "--limit", "5"]);
      assert.match(table.stdout.split("\n")[0] ?? "", /^TIME +ACTOR +ROLE +IP +OP +STORE +NAME +VERSION +CODE +REQUEST ID$/);
      assert.equal(table.stdout.trim().split("\n").length, 6);
      const events = json(await ok(["audit", "list", "--name", "db/password", "--since", "1h", "--limit", "1000", "--json"]));
      assert.ok(events.length > 10);
      assert.ok(events.every((e: { name: string }) => e.name === "db/password"));
      const ops = new Set(events.map((e: { op: string }) => e.op));
      for (const op of ["StoreSecret", "UpdateSecret", "GetSecret", "VerifySecret", "DeleteSecret", "RotateSecret"]) {
        assert.ok(ops.has(`latchkey.v1.SecretService/${op}`), op);
      }
      assert.ok(events.some((e: { code: string }) => e.code === "failed_precondition"));
      const byToken = json(await ok(["audit", "list", "--token-id", readerId, "--json"]));
      assert.ok(byToken.length >= 4, JSON.stringify(byToken.map((e: { op: string }) => e.op)));
      assert.ok(byToken.every((e: { token_id: string; role: string }) => e.token_id === readerId && e.role === "reader"));
      assert.ok(byToken.some((e: { code: string }) => e.code === "permission_denied"));
      assert.deepEqual(json(await ok(["audit", "list", "--since", "2099-01-01T00:00:00Z", "--json"])), []);
      await ok(["audit", "list", "--since", "yesterday"], {}, 2);
    });
  });

  describe("connection and exit codes", () => {
    it("every protocol works: connect (default), grpc and grpc-web", async () => {
      const expected = (await ok(["secrets", "get", "db/password"])).stdout;
      for (const protocol of ["connect", "grpc", "grpc-web"]) {
        assert.equal((await ok(["secrets", "get", "db/password", "--protocol", protocol])).stdout, expected, protocol);
      }
      await ok(["secrets", "get", "db/password", "--protocol", "carrier-pigeon"], {}, 2);
    });

    it("--addr overrides LATCHKEY_ADDR; with no token, ./data/admin.token under LATCHKEY_DATA_DIR is used", async () => {
      await ok(["secrets", "list", "--addr", s.url], { env: { LATCHKEY_ADDR: "http://127.0.0.1:1" } });
      const dir = tempDir();
      dirs.push(dir);
      const none = await ok(["secrets", "list"], { env: { LATCHKEY_TOKEN: undefined, LATCHKEY_DATA_DIR: dir } }, 6);
      assert.match(none.stderr, /^latchkey: unauthenticated: /);
      writeFileSync(join(dir, "admin.token"), `${ADMIN_TOKEN}\n`, { mode: 0o600 });
      await ok(["secrets", "list"], { env: { LATCHKEY_TOKEN: undefined, LATCHKEY_DATA_DIR: dir } });
      await ok(["secrets", "list", "--addr", "ftp://example"], {}, 2);
    });

    it("maps failures to the documented exit codes, one line on stderr with the request id", async () => {
      // 1: any other error (here the server's invalid_argument)
      const invalid = await ok(["secrets", "set", "bad name!"], { stdin: canary("invalid") }, 1);
      assert.match(invalid.stderr, /^latchkey: invalid_argument: .*\(request id req_[0-9a-f]{32}\)\n$/);
      // 2: usage
      for (const argv of [[], ["bogus"], ["secrets"], ["secrets", "bogus"], ["secrets", "get"], ["secrets", "get", "a", "b"], ["secrets", "list", "--bogus"], ["secrets", "get", "a", "--version"], ["secrets", "get", "a", "--version", "x"], ["secrets", "set", "a", "--kind", "sometimes"], ["secrets", "set", "a", "--interval", "soon"]]) {
        const r = await ok(argv, {}, 2);
        assert.ok(r.stderr.length > 0, argv.join(" "));
        assert.equal(r.stdout, "", argv.join(" "));
      }
      // 5: not found
      const missing = await ok(["secrets", "get", "no/such"], {}, 5);
      assert.match(missing.stderr, /^latchkey: not_found: secret "no\/such" not found \(request id req_[0-9a-f]{32}\)\n$/);
      // 6: unauthenticated / permission denied
      const bad = await ok(["secrets", "list", "--token", "not-a-real-token-0123456789"], {}, 6);
      assert.match(bad.stderr, /^latchkey: unauthenticated: .*\(request id req_[0-9a-f]{32}\)\n$/);
      // 7: already exists / failed precondition
      await ok(["stores", "create", "default"], {}, 7);
      // 8: unavailable
      const down = await ok(["secrets", "get", "db/password"], { env: { LATCHKEY_ADDR: "http://127.0.0.1:1" } }, 8);
      assert.match(down.stderr, /^latchkey: unavailable: .*ECONNREFUSED.*\n$/);
    });

    it("exit 3 on import conflicts and 4 on a tampered audit log", async () => {
      const dir = tempDir();
      dirs.push(dir);
      const other = await startTestServer({ LATCHKEY_DATA_DIR: dir });
      const env = { LATCHKEY_ADDR: other.url, LATCHKEY_DATA_DIR: dir, LATCHKEY_MASTER_KEY: MASTER_KEY };
      try {
        await ok(["secrets", "set", "cli/one"], { stdin: canary("one"), env });
        await ok(["secrets", "set", "cli/two"], { stdin: canary("two"), env });
      } finally {
        await other.stop();
      }
      const dump = join(dir, "dump.jsonl");
      await ok(["export", "--out", dump], { env });
      await ok(["import", "--in", dump], { env }, 0); // every id already present: skipped
      const conflictDir = tempDir();
      dirs.push(conflictDir);
      const c = await startTestServer({ LATCHKEY_DATA_DIR: conflictDir });
      try {
        await ok(["secrets", "set", "cli/one"], { stdin: canary("conflict"), env: { LATCHKEY_ADDR: c.url } });
      } finally {
        await c.stop();
      }
      const conflict = await ok(["import", "--in", dump], { env: { ...env, LATCHKEY_DATA_DIR: conflictDir } }, 3);
      assert.match(conflict.stderr, /1 conflicts/);

      assert.match((await ok(["verify-audit"], { env })).stdout, /^chain main: \d+ entries, intact\n$/);
      const db = new Database(join(dir, "latchkey.db"));
      try {
        db.prepare("UPDATE audit SET name = 'innocent' WHERE seq = 2").run();
      } finally {
        db.close();
      }
      const tampered = await ok(["verify-audit"], { env }, 4);
      assert.match(tampered.stdout, /^chain main: BROKEN at entry 2: /);
    });
  });

  describe("the bin", () => {
    it("runs as a real process: node --import tsx src/cli/bin.ts secrets get", async () => {
      const exec = (args: string[]) =>
        new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve, reject) => {
          const child = spawn(process.execPath, ["--import", "tsx", "src/cli/bin.ts", ...args], {
            cwd: join(import.meta.dirname, "../.."),
            env: { ...process.env, LATCHKEY_ADDR: s.url, LATCHKEY_TOKEN: ADMIN_TOKEN },
            stdio: ["pipe", "pipe", "pipe"],
          });
          let stdout = "";
          let stderr = "";
          child.stdout.on("data", (c) => (stdout += c));
          child.stderr.on("data", (c) => (stderr += c));
          child.on("error", reject);
          child.on("close", (code) => resolve({ code, stdout, stderr }));
          child.stdin.end(args[1] === "set" ? canaries[0] : undefined);
        });
      const [got, set, missing] = await Promise.all([
        exec(["secrets", "get", "db/password"]),
        exec(["secrets", "set", "proc/piped"]),
        exec(["secrets", "get", "no/such"]),
      ]);
      assert.equal(got.code, 0, got.stderr);
      assert.equal(got.stdout, (await ok(["secrets", "get", "db/password"])).stdout);
      assert.equal(got.stderr, "");
      assert.equal(set.code, 0, set.stderr);
      assert.equal(set.stdout, "created proc/piped (version 1)\n");
      assert.equal((await ok(["secrets", "get", "proc/piped"])).stdout, `${canaries[0]}\n`);
      assert.equal(missing.code, 5);
      assert.match(missing.stderr, /^latchkey: not_found: /);
      allStderr += missing.stderr + set.stderr;
    });
  });

  describe("values stay out of places they do not belong", () => {
    it("no value appears in stderr, the audit log or the server log", async () => {
      assert.ok(canaries.length > 10);
      const audit = (await ok(["audit", "list", "--limit", "100000", "--json"])).stdout;
      assert.ok(JSON.parse(audit).length > 100);
      const logs = s.logs.join("\n");
      for (const v of canaries) {
        assert.equal(allStderr.includes(v), false, `stderr holds ${v}`);
        assert.equal(audit.includes(v), false, `the audit log holds ${v}`);
        assert.equal(logs.includes(v), false, `the server log holds ${v}`);
      }
    });
  });
});
