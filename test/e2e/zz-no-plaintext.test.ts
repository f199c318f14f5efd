import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { SecretKind } from "../../gen/latchkey/v1/secret_pb.js";
import { SecretService } from "../../gen/latchkey/v1/secret_service_pb.js";
import { connectJson, grpcClients, type GrpcClients, grpcFails, grpcMd, grpcOk, grpc, type JsonReply, rest } from "../support/clients.js";
import { type Marker, markerForms, scanBuffers, scanPlaintext, textMarker } from "../support/plaintext-scan.js";
import { tempDir } from "../support/server.js";
import { freePort, killAll, type Proc, ROOT, spawnLatchkey, waitReady, withDeadline } from "../support/spawn.js";

/**
 * No plaintext anywhere: a workload over every way in (REST, Connect JSON, gRPC with grpc-js, the Connect client,
 * the CLI; single writes, batches, binary values, rotations, versions, copies, moves, deletes, failures that carry a
 * value, token creation and use) against the real process, with debug logging and the audit mirrored to stdout.
 * Every value and token the test sent or got back is a marker; afterwards no file of the data directory (database,
 * -wal, -shm, anything), no export, and no line of stdout or stderr holds any of them, as text, hex or base64.
 *
 * Self-contained: node --test runs files in parallel, so "after the whole suite" is this file's own workload,
 * representative of what the suite stores. Vars are not secret (stored in the clear by design) and are left out.
 */

const STOP_DEADLINE_MS = 10_000;
const CLI_DEADLINE_MS = 20_000;

describe("no plaintext in the data directory, the logs or an export", () => {
  const dataDir = tempDir("latchkey-plaintext-");
  const exportDir = tempDir("latchkey-plaintext-export-");
  const adminToken = `pt-admin-${randomBytes(16).toString("hex")}`;
  const masterKey = randomBytes(32);
  const env = {
    LATCHKEY_DATA_DIR: dataDir,
    LATCHKEY_ADMIN_TOKEN: adminToken,
    LATCHKEY_MASTER_KEY: masterKey.toString("base64"),
    LATCHKEY_AUDIT_STDOUT: "true",
    LATCHKEY_DELETE_RETENTION: "3600",
    LOG_LEVEL: "debug",
  };
  const markers: Marker[] = [textMarker("admin token", adminToken), { label: "master key", bytes: masterKey }];
  /** Name -> the value its current version must read back (text, or base64 for binary values), checked after a restart. */
  const stored = new Map<string, { value?: string; base64?: string }>();
  /** Everything the processes wrote to stdout and stderr, by name. */
  const texts: Record<string, string> = {};
  const procs: Proc[] = [];
  let proc: Proc;
  let url = "";
  let port = 0;
  let g: GrpcClients | undefined;
  let n = 0;
  /** A var's value: vars are stored in the clear by design, so the scan must find this one (it proves the scan sees the data). */
  const control = textMarker("control: a var value, stored in the clear", `ptx-control-${randomBytes(12).toString("hex")}`);

  /** A fresh distinctive text value, remembered as a marker. */
  const text = (label: string): string => {
    const v = `ptx-${label}-${++n}-${randomBytes(12).toString("hex")}`;
    markers.push(textMarker(label, v));
    return v;
  };
  /** Fresh random bytes (a binary value), remembered as a marker. */
  const bytes = (label: string): Buffer => {
    const b = randomBytes(40);
    markers.push({ label, bytes: b });
    return b;
  };
  /** A value the server generated (automatic secrets, rotations, tokens): a marker too. */
  const got = (label: string, v: unknown): string => {
    assert.equal(typeof v, "string", `${label}: a string came back`);
    assert.ok((v as string).length >= 16, `${label}: long enough to search for`);
    markers.push(textMarker(label, v as string));
    return v as string;
  };
  const ok = (r: JsonReply, status: number, what: string) => {
    assert.equal(r.status, status, `${what}: ${JSON.stringify(r.body)}`);
    return r.body;
  };
  const api = (method: string, path: string, body?: unknown, token: string | null = adminToken, headers: Record<string, string> = {}) =>
    rest(url, method, path, body, token, headers);
  const connect = (procedure: string, body: unknown, token: string | null = adminToken) => connectJson(url, procedure, body, token);

  async function start(): Promise<void> {
    port = await freePort();
    url = `http://127.0.0.1:${port}`;
    proc = spawnLatchkey({ ...env, LATCHKEY_PORT: String(port) });
    procs.push(proc);
    await waitReady(proc, url);
  }

  async function stop(): Promise<void> {
    proc.child.kill("SIGTERM");
    const { code } = await withDeadline(proc.exited, STOP_DEADLINE_MS, "exit after SIGTERM");
    assert.equal(code, 0, `clean exit; stderr: ${proc.stderr}`);
  }

  /** The CLI as a real process (`node --import tsx src/cli/bin.ts`), with stdin; its output joins the scanned text. */
  function cli(name: string, args: string[], stdin: string | undefined, extraEnv: Record<string, string>): Promise<number | null> {
    return withDeadline(
      new Promise<number | null>((resolve, reject) => {
        const child = spawn(process.execPath, ["--import", "tsx", "src/cli/bin.ts", ...args], {
          cwd: ROOT,
          env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "", ...extraEnv },
          stdio: ["pipe", "pipe", "pipe"],
        });
        let out = "";
        let err = "";
        child.stdout.setEncoding("utf8").on("data", (c: string) => (out += c));
        child.stderr.setEncoding("utf8").on("data", (c: string) => (err += c));
        child.on("error", reject);
        child.on("close", (code) => {
          texts[`cli ${name} stdout`] = out;
          texts[`cli ${name} stderr`] = err;
          resolve(code);
        });
        child.stdin.end(stdin);
      }),
      CLI_DEADLINE_MS,
      `latchkey ${args.join(" ")}`,
    );
  }

  before(async () => {
    await start();
    g = grpcClients(port);
  });

  after(async () => {
    g?.close();
    await killAll();
    rmSync(dataDir, { recursive: true, force: true });
    rmSync(exportDir, { recursive: true, force: true });
  });

  it("the scanner finds a marker as text, hex and base64 at every alignment, and nothing that is not there", () => {
    const m = textMarker("probe", `ptx-probe-${randomBytes(12).toString("hex")}`);
    const forms = markerForms(m.bytes);
    assert.deepEqual(
      forms.map((f) => f.form),
      ["raw", "hex", "HEX", "base64@0", "base64url@0", "base64@1", "base64url@1", "base64@2", "base64url@2"].filter((f) =>
        forms.some((x) => x.form === f),
      ),
    );
    for (let k = 0; k < 3; k++) {
      const blob = Buffer.concat([randomBytes(k + 5), m.bytes, randomBytes(7)]);
      for (const [form, data] of [
        ["raw", blob],
        ["hex", Buffer.from(blob.toString("hex"))],
        ["base64", Buffer.from(`{"x":"${blob.toString("base64")}"}`)],
        ["base64url", Buffer.from(blob.toString("base64url"))],
      ] as const) {
        assert.ok(scanBuffers([[form, data]], [m]).length > 0, `found as ${form} at offset ${k + 5}`);
      }
    }
    assert.deepEqual(scanBuffers([["noise", randomBytes(1 << 16)]], [m]), []);
  });

  it("stores, updates, rotates and batches values over REST", async () => {
    const a1 = text("rest create");
    ok(await api("POST", "/v1/secrets", { name: "pt/rest/a", value: a1, description: "db", tags: ["pt"] }), 201, "create");
    const a2 = text("rest update");
    ok(await api("PUT", "/v1/secrets/pt/rest/a", { value: a2, grace_period_secs: 3600 }), 200, "update");
    stored.set("pt/rest/a", { value: a2 });
    // Refused writes carry values too: a stale If-Match, a taken name, a bad name, an unknown field.
    ok(await api("PUT", "/v1/secrets/pt/rest/a", { value: text("rest stale") }, adminToken, { "if-match": '"1"' }), 409, "stale write");
    ok(await api("POST", "/v1/secrets", { name: "pt/rest/a", value: text("rest taken") }), 409, "taken name");
    ok(await api("POST", "/v1/secrets", { name: "pt/bad name!", value: text("rest bad name") }), 400, "bad name");
    ok(await api("PUT", "/v1/secrets/pt/rest/a", { value: text("rest unknown field"), colour: "red" }), 400, "unknown field");

    const bin = bytes("rest binary");
    ok(await api("POST", "/v1/secrets", { name: "pt/rest/bin", value_base64: bin.toString("base64") }), 201, "binary create");
    stored.set("pt/rest/bin", { base64: bin.toString("base64") });

    const auto = ok(await api("POST", "/v1/secrets", { name: "pt/rest/auto", kind: "automatic", rotation_interval_secs: 86400 }), 201, "automatic");
    got("generated value", auto.value);
    got("rotated value", ok(await api("POST", "/v1/secrets/pt/rest/auto/rotate"), 200, "rotate").value);
    const last = got("rotated value, previous compromised", ok(await api("POST", "/v1/secrets/pt/rest/auto/rotate", { previous_state: "compromised" }), 200, "rotate").value);
    stored.set("pt/rest/auto", { value: last });

    const items = ["b1", "b2", "b3"].map((x) => ({ name: `pt/rest/batch/${x}`, value: text(`rest batch ${x}`) }));
    ok(await api("POST", "/v1/secrets:batchSet", { items }), 200, "atomic batch");
    for (const i of items) stored.set(i.name, { value: i.value });
    const b1 = text("rest batch update");
    const partial = await api("POST", "/v1/secrets:batchSet", {
      atomic: false,
      items: [
        { name: "pt/rest/batch/b1", value: b1 },
        { name: "pt/rest/batch/bad name!", value: text("rest batch bad item") },
      ],
    });
    ok(partial, 207, "non-atomic batch with a bad item");
    stored.set("pt/rest/batch/b1", { value: b1 });
    ok(await api("POST", "/v1/secrets:batchGet", { names: items.map((i) => i.name) }, null), 200, "batch get");

    assert.deepEqual(ok(await api("POST", "/v1/secrets/pt/rest/a/verify", { value: a2 }, null), 200, "verify"), { valid: true, version: 2 });
    assert.equal(ok(await api("POST", "/v1/secrets/pt/rest/a/verify", { value: text("rest wrong guess") }, null), 200, "verify").valid, false);
    assert.equal(ok(await api("GET", "/v1/secrets/pt/rest/a?version=1", undefined, null), 200, "read v1").value, a1);
  });

  it("copies, renames, moves, retires versions and deletes over REST", async () => {
    ok(await api("POST", "/v1/stores", { name: "pt-store" }), 201, "store");
    const c = text("rest to copy");
    ok(await api("POST", "/v1/secrets", { name: "pt/rest/c", value: c }), 201, "create");
    ok(await api("POST", "/v1/secrets/pt/rest/c/copy", { to_store: "pt-store", to_name: "pt/copied" }), 201, "copy");
    ok(await api("POST", "/v1/secrets/pt/rest/c/rename", { new_name: "pt/rest/renamed" }), 200, "rename");
    ok(await api("POST", "/v1/secrets/pt/rest/renamed/move", { to_store: "pt-store" }), 200, "move");
    stored.set("pt-store:pt/copied", { value: c });
    stored.set("pt-store:pt/rest/renamed", { value: c });

    const v = text("rest versioned");
    ok(await api("POST", "/v1/secrets", { name: "pt/rest/v", value: text("rest to destroy") }), 201, "create");
    ok(await api("PUT", "/v1/secrets/pt/rest/v", { value: v }), 200, "update");
    ok(await api("PUT", "/v1/secrets/pt/rest/v/versions/1", { state: "destroyed" }), 200, "destroy v1");
    stored.set("pt/rest/v", { value: v });

    const d = text("rest deleted");
    ok(await api("POST", "/v1/secrets", { name: "pt/rest/d", value: d }), 201, "create");
    assert.equal((await api("DELETE", "/v1/secrets/pt/rest/d")).status, 204);
    ok(await api("POST", "/v1/secrets/pt/rest/d/undelete"), 200, "undelete");
    stored.set("pt/rest/d", { value: d });
    ok(await api("POST", "/v1/secrets", { name: "pt/rest/purged", value: text("rest purged") }), 201, "create");
    assert.equal((await api("DELETE", "/v1/secrets/pt/rest/purged?purge=true")).status, 204);
  });

  it("stores, updates, rotates and batches values over Connect JSON", async () => {
    const s1 = text("connect store");
    ok(await connect("SecretService/StoreSecret", { name: "pt/connect/a", value: s1 }), 200, "StoreSecret");
    const s2 = text("connect update");
    ok(await connect("SecretService/UpdateSecret", { name: "pt/connect/a", value: s2 }), 200, "UpdateSecret");
    stored.set("pt/connect/a", { value: s2 });
    const bin = bytes("connect binary");
    ok(await connect("SecretService/StoreSecret", { name: "pt/connect/bin", binaryValue: bin.toString("base64") }), 200, "binary");
    stored.set("pt/connect/bin", { base64: bin.toString("base64") });
    const auto = ok(await connect("SecretService/StoreSecret", { name: "pt/connect/auto", kind: "SECRET_KIND_AUTOMATIC" }), 200, "automatic");
    got("connect generated", auto.value);
    stored.set("pt/connect/auto", { value: got("connect rotated", ok(await connect("SecretService/RotateSecret", { name: "pt/connect/auto" }), 200, "rotate").value) });
    const items = ["x", "y"].map((x) => ({ name: `pt/connect/batch/${x}`, value: text(`connect batch ${x}`) }));
    ok(await connect("SecretService/BatchUpsertSecrets", { items }), 200, "BatchUpsertSecrets");
    for (const i of items) stored.set(i.name, { value: i.value });
    assert.equal(ok(await connect("SecretService/VerifySecret", { name: "pt/connect/a", value: s2 }, null), 200, "verify").valid, true);
    ok(await connect("SecretService/VerifySecret", { name: "pt/connect/a", value: text("connect wrong guess") }, null), 200, "verify");
    assert.equal(ok(await connect("SecretService/GetSecret", { name: "pt/connect/a", version: 1 }, null), 200, "get v1").value, s1);
    assert.notEqual((await connect("SecretService/StoreSecret", { name: "pt/connect/a", value: text("connect taken") })).status, 200);
    assert.notEqual((await connect("SecretService/StoreSecret", { name: "bad name!", value: text("connect bad name") })).status, 200);
  });

  it("stores values over gRPC: grpc-js with raw bytes, and the Connect client", async () => {
    const c = g as GrpcClients;
    const md = () => grpcMd(adminToken);
    const raw = bytes("grpc binary");
    await grpcOk(c.secrets, "StoreSecret", { name: "pt/grpc/bin", binaryValue: raw }, md());
    stored.set("pt/grpc/bin", { base64: raw.toString("base64") });
    await grpcOk(c.secrets, "StoreSecret", { name: "pt/grpc/a", value: text("grpc store") }, md());
    const u = text("grpc update");
    await grpcOk(c.secrets, "UpdateSecret", { name: "pt/grpc/a", value: u }, md());
    stored.set("pt/grpc/a", { value: u });
    const items = [{ name: "pt/grpc/batch/x", value: text("grpc batch") }];
    await grpcOk(c.secrets, "BatchUpsertSecrets", { items }, md());
    stored.set("pt/grpc/batch/x", { value: items[0]?.value as string });
    const read = await grpcOk(c.secrets, "GetSecret", { name: "pt/grpc/bin" }, grpcMd(null));
    assert.deepEqual(Buffer.from(read.binaryValue), raw);
    await grpcFails(c.secrets, "StoreSecret", { name: "bad name!", value: text("grpc bad name") }, grpc.status.INVALID_ARGUMENT, md());
    await grpcFails(c.secrets, "StoreSecret", { name: "pt/grpc/a", binaryValue: bytes("grpc taken") }, grpc.status.ALREADY_EXISTS, md());

    const client = createClient(SecretService, createConnectTransport({ baseUrl: url, httpVersion: "1.1", useBinaryFormat: true }));
    const headers = { authorization: `Bearer ${adminToken}` };
    const v = text("connect client binary proto");
    await client.storeSecret({ name: "pt/rpc/a", value: v }, { headers, timeoutMs: 5_000 });
    stored.set("pt/rpc/a", { value: v });
    const rotated = await client.storeSecret({ name: "pt/rpc/auto", kind: SecretKind.AUTOMATIC }, { headers, timeoutMs: 5_000 });
    got("connect client generated", rotated.value);
    stored.set("pt/rpc/auto", { value: rotated.value });
  });

  it("creates, uses and revokes tokens (REST and Connect), and refuses unknown ones", async () => {
    const made = ok(await api("POST", "/v1/tokens", { label: "pt reader", role: "reader" }), 201, "REST token");
    const t1 = got("REST token", made.secret);
    ok(await api("GET", "/v1/secrets/pt/rest/a", undefined, t1), 200, "read with the token");
    ok(await api("POST", "/v1/secrets", { name: "pt/denied", value: text("denied write") }, t1), 403, "reader cannot write");
    const viaConnect = ok(await connect("TokenService/CreateToken", { label: "pt writer", role: "ROLE_WRITER" }), 200, "Connect token");
    const t2 = got("Connect token", viaConnect.secret);
    const w = text("written with a made token");
    ok(await connect("SecretService/StoreSecret", { name: "pt/by-token", value: w }, t2), 200, "write with the token");
    stored.set("pt/by-token", { value: w });
    ok(await api("DELETE", `/v1/tokens/${viaConnect.token.id}`), 200, "revoke");
    ok(await api("GET", "/v1/secrets", undefined, t2), 401, "revoked token");
    const bogus = `lkt_${randomBytes(24).toString("hex")}`;
    markers.push(textMarker("unknown token", bogus));
    ok(await api("GET", "/v1/secrets", undefined, bogus), 401, "unknown token");
  });

  it("refuses malformed bodies that carry a value (bad JSON, bad base64, too long, wrong type) without logging it", async () => {
    const raw = async (path: string, body: string) => {
      const res = await fetch(url + path, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${adminToken}` },
        body,
        signal: AbortSignal.timeout(5_000),
      });
      await res.arrayBuffer();
      return res.status;
    };
    assert.equal(await raw("/v1/secrets", `{"name":"pt/m","value":"${text("rest truncated json")}"`), 400);
    assert.equal(await raw("/v1/secrets", `{"name":"pt/m","value":"${text("rest bad json")}" x}`), 400);
    assert.equal(await raw("/v1/secrets", `{"name":"pt/m","value_base64":"${text("rest bad base64")}!"}`), 400);
    assert.equal(await raw("/v1/secrets", JSON.stringify({ name: "pt/m", value: text("rest too long").repeat(400) })), 400);
    assert.equal(await raw("/v1/secrets", JSON.stringify({ name: "pt/m", value: [text("rest wrong type")] })), 400);
    assert.equal(await raw("/v1/secrets/pt/rest/a/verify", `{"value":"${text("rest verify bad json")}" x}`), 400);
    const rpc = "/latchkey.v1.SecretService";
    assert.equal(await raw(`${rpc}/StoreSecret`, `{"name":"pt/m","value":"${text("connect bad json")}" x}`), 400);
    assert.equal(await raw(`${rpc}/StoreSecret`, `{"name":"pt/m","binaryValue":"${text("connect bad base64")}!"}`), 400);
    assert.equal(await raw(`${rpc}/StoreSecret`, `{"name":"pt/m","value":"${text("connect unknown field")}","colour":1}`), 400);
    assert.equal(await raw(`${rpc}/UpdateSecret`, `{"name":"pt/connect/a","value":"${text("connect bad kind")}","kind":"SOMETIMES"}`), 400);
  });

  it("stores a value piped to the CLI", async () => {
    const v = text("cli stdin");
    const code = await cli("set", ["secrets", "set", "pt/cli"], `${v}\n`, { LATCHKEY_ADDR: url, LATCHKEY_TOKEN: adminToken });
    assert.equal(code, 0, texts["cli set stderr"]);
    stored.set("pt/cli", { value: v });
  });

  it("keeps no marker in the data directory while running (database, WAL, shm); finds the control var there", async () => {
    ok(await api("PUT", "/v1/stores/default/vars/pt/control", { value: control.bytes.toString("utf8") }), 200, "set the control var");
    const { hits, files } = scanPlaintext({ dirs: [dataDir] }, markers);
    assert.ok(files.some((f) => f.endsWith("latchkey.db-wal")), `the WAL is there to search: ${files.join(", ")}`);
    assert.deepEqual(hits, []);
    assert.ok(scanPlaintext({ dirs: [dataDir] }, [control]).hits.length > 0, "the control var's value is found in the data directory");
  });

  it("serves every stored value after a restart (so the markers were really stored), then stops", async () => {
    await stop();
    texts["server stdout (first run)"] = proc.stdout;
    texts["server stderr (first run)"] = proc.stderr;
    await start();
    for (const [key, want] of stored) {
      const [store, name] = key.includes(":") ? (key.split(":") as [string, string]) : ["default", key];
      const path = store === "default" ? `/v1/secrets/${name}` : `/v1/stores/${store}/secrets/${name}`;
      const body = ok(await api("GET", path, undefined, null), 200, `read ${key}`);
      if (want.value !== undefined) assert.equal(body.value, want.value, key);
      else assert.equal(body.value_base64, want.base64, key);
    }
    await stop();
    texts["server stdout (restart)"] = proc.stdout;
    texts["server stderr (restart)"] = proc.stderr;
    assert.ok(texts["server stdout (first run)"]?.includes('"msg":"audit"'), "the audit was mirrored to stdout");
    assert.ok(texts["server stdout (first run)"]?.includes('"level":"debug"'), "debug lines were logged");
  });

  it("writes an export (values still sealed)", async () => {
    mkdirSync(exportDir, { recursive: true });
    const code = await cli("export", ["export", "--out", join(exportDir, "dump.jsonl")], undefined, {
      LATCHKEY_DATA_DIR: dataDir,
      LATCHKEY_MASTER_KEY: masterKey.toString("base64"),
      LATCHKEY_ADMIN_TOKEN: adminToken,
    });
    assert.equal(code, 0, texts["cli export stderr"]);
    assert.ok(readFileSync(join(exportDir, "dump.jsonl"), "utf8").includes("pt/rest/a"), "the export lists the secrets");
  });

  it("leaves no value, token or key in any file of the data directory, the export, stdout or stderr", () => {
    assert.ok(markers.length > 50, `${markers.length} markers`);
    const { hits, files, bytes: searched } = scanPlaintext({ dirs: [dataDir, exportDir], exclude: ["master.key", "admin.token"], texts }, markers);
    assert.ok(files.some((f) => f.endsWith("latchkey.db")));
    assert.ok(searched > 100_000, `${searched} bytes searched`);
    assert.deepEqual(hits, []);
    assert.ok(
      scanPlaintext({ dirs: [dataDir] }, [control]).hits.some((h) => h.where.endsWith("latchkey.db")),
      "the control var's value is found in the database file",
    );
  });
});
