import assert from "node:assert/strict";
import * as http2 from "node:http2";
import { after, before, describe, it } from "node:test";
import { create, toBinary } from "@bufbuild/protobuf";
import { GetSecretRequestSchema } from "../../gen/latchkey/v1/secret_service_pb.js";
import { connectJson, rest } from "../support/clients.js";
import { ADMIN_TOKEN, startTestServer, type TestServer } from "../support/server.js";

/**
 * Cheap polling: side-effect-free reads over HTTP GET (Connect GET and REST), with an ETag that changes with every
 * write and a 304 without a body for a caller that already has the current one. Calls with side effects are never
 * served over GET. A 304 is still a read of a secret: logged and audited with its request id.
 */

const SERVICE = "/latchkey.v1.SecretService";
const AUTH = { authorization: `Bearer ${ADMIN_TOKEN}` };
const NAME = "poll/db/password";

/** The query of a Connect GET with a JSON message. */
function connectGetQuery(message: unknown, extra = ""): string {
  return `?encoding=json&message=${encodeURIComponent(JSON.stringify(message))}${extra}`;
}

interface Reply {
  readonly status: number;
  readonly headers: Headers;
  readonly text: string;
}

async function get(url: string, headers: Record<string, string> = {}): Promise<Reply> {
  const res = await fetch(url, { headers, signal: AbortSignal.timeout(5_000) });
  return { status: res.status, headers: res.headers, text: await res.text() };
}

/** A GET over HTTP/2 cleartext (prior knowledge) on an existing session. */
function h2get(session: http2.ClientHttp2Session, path: string, headers: Record<string, string> = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const stream = session.request({ ":method": "GET", ":path": path, ...headers });
    const timer = setTimeout(() => stream.close(http2.constants.NGHTTP2_CANCEL), 5_000);
    let status = 0;
    const out = new Headers();
    let text = "";
    stream.on("response", (h) => {
      status = Number(h[":status"]);
      for (const [k, v] of Object.entries(h)) if (!k.startsWith(":") && v !== undefined) out.set(k, String(v));
    });
    stream.setEncoding("utf8");
    stream.on("data", (c: string) => (text += c));
    stream.on("end", () => {
      clearTimeout(timer);
      resolve({ status, headers: out, text });
    });
    stream.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    stream.end();
  });
}

function assertNotModified(r: Reply, etag: string, what: string): void {
  assert.equal(r.status, 304, `${what}: 304 (body ${r.text.slice(0, 200)})`);
  assert.equal(r.text, "", `${what}: no body`);
  assert.equal(r.headers.get("etag"), etag, `${what}: the ETag is repeated`);
  assert.ok(["0", null].includes(r.headers.get("content-length")), `${what}: no content length but 0`);
  assert.equal(r.headers.get("content-type"), null, `${what}: no content type for no content`);
  assert.ok(r.headers.get("x-request-id"), `${what}: a request id`);
}

/** Waits for the audit entry of a request (entries of reads are appended just after the call ends). */
async function auditEntry(s: TestServer, requestId: string): Promise<Record<string, unknown>> {
  const deadline = Date.now() + 3_000;
  for (;;) {
    const page = await rest(s.url, "GET", `/v1/audit?name=${encodeURIComponent(NAME)}&limit=1000`);
    assert.equal(page.status, 200);
    const found = (page.body as Record<string, unknown>[]).find((e) => e.request_id === requestId);
    if (found) return found;
    if (Date.now() > deadline) assert.fail(`no audit entry for ${requestId}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function logLine(s: TestServer, requestId: string): Promise<Record<string, unknown>> {
  const deadline = Date.now() + 2_000;
  for (;;) {
    const lines = s.logs.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.request_id === requestId && l.msg === "request");
    if (lines.length > 0) {
      assert.equal(lines.length, 1, `one request line for ${requestId}`);
      return lines[0] as Record<string, unknown>;
    }
    if (Date.now() > deadline) assert.fail(`no request log line for ${requestId}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("cheap polling: GET with ETag and If-None-Match", () => {
  let s: TestServer;
  let h2: http2.ClientHttp2Session;

  before(async () => {
    s = await startTestServer();
    h2 = http2.connect(s.url);
    h2.on("error", () => {});
    assert.equal((await rest(s.url, "POST", "/v1/secrets", { name: NAME, value: "poll-value-1" })).status, 201);
  });
  after(async () => {
    h2?.close();
    await s?.stop();
  });

  it("Connect GET GetSecret: an ETag; If-None-Match with it gets 304 and no body; after an update a new ETag and the new value", async () => {
    const url = `${s.url}${SERVICE}/GetSecret${connectGetQuery({ name: NAME })}`;
    const first = await get(url);
    assert.equal(first.status, 200);
    assert.equal(JSON.parse(first.text).value, "poll-value-1");
    const etag = first.headers.get("etag");
    assert.ok(etag, "an ETag");
    assert.match(etag, /^"[^"]+"$/, "a strong, quoted ETag");

    // Unchanged: the same ETag again, and 304 for a caller that has it.
    assert.equal((await get(url)).headers.get("etag"), etag, "stable while nothing changes");
    assertNotModified(await get(url, { "if-none-match": etag }), etag, "If-None-Match: the ETag");
    assertNotModified(await get(url, { "if-none-match": `"nope", ${etag}` }), etag, "If-None-Match: a list holding it");
    assertNotModified(await get(url, { "if-none-match": `W/${etag}` }), etag, "If-None-Match: its weak form (weak comparison)");
    assertNotModified(await get(url, { "if-none-match": "*" }), etag, "If-None-Match: *");
    const other = await get(url, { "if-none-match": '"some-other-etag"' });
    assert.equal(other.status, 200, "a different ETag gets the full response");
    assert.equal(JSON.parse(other.text).value, "poll-value-1");

    // A new value: a new ETag; the old one no longer matches.
    const updated = await connectJson(s.url, "SecretService/UpdateSecret", { name: NAME, value: "poll-value-2" });
    assert.equal(updated.status, 200);
    const after = await get(url, { "if-none-match": etag });
    assert.equal(after.status, 200, "the old ETag does not match after an update");
    assert.equal(JSON.parse(after.text).value, "poll-value-2");
    const etag2 = after.headers.get("etag");
    assert.ok(etag2 && etag2 !== etag, `a new ETag (${etag} -> ${etag2})`);
    assertNotModified(await get(url, { "if-none-match": etag2 }), etag2, "the new ETag");

    // A change of metadata only changes what GetSecret returns too.
    assert.equal((await connectJson(s.url, "SecretService/UpdateSecret", { name: NAME, description: "described" })).status, 200);
    const described = await get(url, { "if-none-match": etag2 });
    assert.equal(described.status, 200, "metadata changed: not 304");
    assert.equal(JSON.parse(described.text).secret.description, "described");
    assert.notEqual(described.headers.get("etag"), etag2);
  });

  it("Connect GET over HTTP/2, and with the binary encoding, poll the same way", async () => {
    const path = `${SERVICE}/GetSecret${connectGetQuery({ name: NAME }, "&connect=v1")}`;
    const first = await h2get(h2, path);
    assert.equal(first.status, 200);
    const etag = first.headers.get("etag");
    assert.ok(etag);
    assertNotModified(await h2get(h2, path, { "if-none-match": etag }), etag, "HTTP/2");

    const binary = Buffer.from(toBinary(GetSecretRequestSchema, create(GetSecretRequestSchema, { name: NAME }))).toString("base64url");
    const binPath = `${SERVICE}/GetSecret?encoding=proto&base64=1&message=${binary}`;
    const bin = await h2get(h2, binPath);
    assert.equal(bin.status, 200);
    assert.match(bin.headers.get("content-type") ?? "", /^application\/proto/);
    const binEtag = bin.headers.get("etag");
    assert.ok(binEtag);
    assertNotModified(await h2get(h2, binPath, { "if-none-match": binEtag }), binEtag, "binary over HTTP/2");
  });

  it("REST GET /v1/secrets/{name}: an ETag, 304 with no body for a match, a new ETag and value after a write", async () => {
    const url = `${s.url}/v1/secrets/${NAME}`;
    const first = await get(url);
    assert.equal(first.status, 200);
    const etag = first.headers.get("etag");
    assert.ok(etag);
    assert.match(etag, /^"[^"]+"$/);
    const value = JSON.parse(first.text).value as string;
    assertNotModified(await get(url, { "if-none-match": etag }), etag, "REST");
    assertNotModified(await get(url, { "if-none-match": `"x", W/${etag}` }), etag, "REST, weak form in a list");

    const put = await rest(s.url, "PUT", `/v1/secrets/${NAME}`, { value: "poll-value-3" });
    assert.equal(put.status, 200);
    assert.notEqual(put.headers.get("etag"), etag, "the write answers with the new ETag");
    const after = await get(url, { "if-none-match": etag });
    assert.equal(after.status, 200);
    assert.notEqual(JSON.parse(after.text).value, value);
    assert.equal(JSON.parse(after.text).value, "poll-value-3");
    const etag2 = after.headers.get("etag");
    assert.ok(etag2 && etag2 !== etag);
    assert.equal(etag2, put.headers.get("etag"), "the ETag of the write is the one GET gives");
    assertNotModified(await get(url, { "if-none-match": etag2 }), etag2, "REST, the new ETag");

    // HTTP/2 as well.
    assertNotModified(await h2get(h2, `/v1/secrets/${NAME}`, { "if-none-match": etag2 }), etag2, "REST over HTTP/2");
  });

  it("If-None-Match never turns an error into a 304", async () => {
    const missing = await get(`${s.url}${SERVICE}/GetSecret${connectGetQuery({ name: "poll/missing" })}`, { "if-none-match": "*" });
    assert.equal(missing.status, 404);
    assert.equal(JSON.parse(missing.text).code, "not_found");
    const restMissing = await get(`${s.url}/v1/secrets/poll/missing`, { "if-none-match": "*" });
    assert.equal(restMissing.status, 404);
    assert.equal(JSON.parse(restMissing.text).code, "not_found");
    // A caller that may not read gets its refusal, not a 304 that would confirm the ETag.
    const current = (await get(`${s.url}/v1/secrets/${NAME}`)).headers.get("etag") as string;
    const refused = await get(`${s.url}/v1/secrets/${NAME}`, { "if-none-match": current, authorization: "Bearer lk_not_a_real_token_0000" });
    assert.equal(refused.status, 401);
    const refusedRpc = await get(`${s.url}${SERVICE}/GetSecret${connectGetQuery({ name: NAME })}`, {
      "if-none-match": current,
      authorization: "Bearer lk_not_a_real_token_0000",
    });
    assert.equal(refusedRpc.status, 401);
  });

  it("GET is refused (405) for RPCs with side effects, and nothing happens", async () => {
    const before = await rest(s.url, "GET", `/v1/secrets/${NAME}`);
    const calls: [string, unknown][] = [
      ["SecretService/StoreSecret", { name: "poll/by-get", value: "x" }],
      ["SecretService/UpdateSecret", { name: NAME, value: "changed-by-get" }],
      ["SecretService/RotateSecret", { name: NAME }],
      ["SecretService/DeleteSecret", { name: NAME }],
      ["SecretService/VerifySecret", { name: NAME, value: "poll-value-3" }],
      ["SecretService/BatchUpsertSecrets", { items: [{ name: "poll/by-get-2", value: "x" }] }],
      ["VarService/SetVars", { vars: [{ name: "POLL", value: "x" }] }],
      ["TokenService/CreateToken", { label: "by-get", role: "TOKEN_ROLE_READER" }],
    ];
    for (const [procedure, message] of calls) {
      const r = await get(`${s.url}/latchkey.v1.${procedure}${connectGetQuery(message)}`, AUTH);
      assert.equal(r.status, 405, `GET ${procedure}: ${r.status} ${r.text.slice(0, 200)}`);
    }
    const after = await rest(s.url, "GET", `/v1/secrets/${NAME}`);
    assert.equal(after.status, 200, "not deleted");
    assert.deepEqual(
      { value: after.body.value, version: after.body.version, etag: after.headers.get("etag") },
      { value: before.body.value, version: before.body.version, etag: before.headers.get("etag") },
      "not updated or rotated",
    );
    assert.equal((await rest(s.url, "GET", "/v1/secrets/poll/by-get")).status, 404, "not created");
    assert.equal((await rest(s.url, "GET", "/v1/secrets/poll/by-get-2")).status, 404, "not created by a batch");
    assert.equal((await rest(s.url, "GET", "/v1/stores/default/vars/POLL")).status, 404, "no var set");
  });

  it("a 304 is still logged and audited, with the caller's request id", async () => {
    const url = `${s.url}${SERVICE}/GetSecret${connectGetQuery({ name: NAME })}`;
    const etag = (await get(url)).headers.get("etag") as string;
    const rpc304 = await get(url, { "if-none-match": etag, "x-request-id": "poll-304-connect-0001" });
    assertNotModified(rpc304, etag, "Connect GET");
    assert.equal(rpc304.headers.get("x-request-id"), "poll-304-connect-0001");
    const rest304 = await get(`${s.url}/v1/secrets/${NAME}`, { "if-none-match": etag, "x-request-id": "poll-304-rest-0001" });
    assertNotModified(rest304, etag, "REST GET");
    assert.equal(rest304.headers.get("x-request-id"), "poll-304-rest-0001");

    const rpcLine = await logLine(s, "poll-304-connect-0001");
    assert.equal(rpcLine.op, "latchkey.v1.SecretService/GetSecret");
    assert.equal(rpcLine.status, 304);
    assert.equal(typeof rpcLine.duration_ms, "number");
    const restLine = await logLine(s, "poll-304-rest-0001");
    assert.equal(restLine.op, "GET /v1/secrets/{name}");
    assert.equal(restLine.status, 304);

    const rpcAudit = await auditEntry(s, "poll-304-connect-0001");
    assert.equal(rpcAudit.op, "latchkey.v1.SecretService/GetSecret");
    assert.equal(rpcAudit.name, NAME);
    assert.equal(rpcAudit.code, "ok");
    assert.equal(rpcAudit.actor_kind, "anonymous");
    const restAudit = await auditEntry(s, "poll-304-rest-0001");
    assert.equal(restAudit.op, "GET /v1/secrets/{name}");
    assert.equal(restAudit.name, NAME);
    assert.equal(restAudit.code, "ok");
  });

  it("a secret value served over Connect GET is kept out of shared caches, as REST's is (Cache-Control)", async () => {
    const restReply = await get(`${s.url}/v1/secrets/${NAME}`);
    assert.match(restReply.headers.get("cache-control") ?? "", /no-store/, "REST: no-store");
    // GET makes a response cacheable by any proxy on the way; one carrying a secret value must say not to store it.
    const rpcReply = await get(`${s.url}${SERVICE}/GetSecret${connectGetQuery({ name: NAME })}`);
    assert.equal(rpcReply.status, 200);
    assert.match(rpcReply.headers.get("cache-control") ?? "", /no-store|private/, "Connect GET: no-store (or private)");
  });

  it("every other side-effect-free read served over GET carries an ETag and answers a match with 304", async () => {
    assert.equal((await connectJson(s.url, "VarService/SetVars", { vars: [{ name: "POLL_VAR", value: "1" }] })).status, 200);
    const reads: [string, unknown][] = [
      ["VarService/GetVar", { name: "POLL_VAR" }],
      ["VarService/ListVars", {}],
      ["SecretService/ListSecrets", { namePrefix: "poll/" }],
      ["SecretService/ListSecretVersions", { name: NAME }],
      ["SecretService/BatchGetSecrets", { names: [NAME] }],
      ["StoreService/GetStore", { name: "default" }],
    ];
    const missing: string[] = [];
    for (const [procedure, message] of reads) {
      const url = `${s.url}/latchkey.v1.${procedure}${connectGetQuery(message)}`;
      const r = await get(url, AUTH);
      assert.equal(r.status, 200, `GET ${procedure}: ${r.text.slice(0, 200)}`);
      const etag = r.headers.get("etag");
      if (!etag) {
        missing.push(procedure);
        continue;
      }
      assertNotModified(await get(url, { ...AUTH, "if-none-match": etag }), etag, procedure);
    }
    assert.deepEqual(missing, [], "reads served over GET without an ETag (pollers of these cannot get a 304)");
  });
});
