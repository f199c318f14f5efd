import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { rmSync } from "node:fs";
import * as net from "node:net";
import { join } from "node:path";
import { Writable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import Database from "better-sqlite3";
import { Role } from "../../gen/latchkey/v1/token_service_pb.js";
import { tokenId } from "../../src/auth/access.js";
import { run } from "../../src/cli/main.js";
import {
  type AllClients,
  auditEntries,
  auditFor,
  callOpts,
  grpcAll,
  leaks,
  type MadeToken,
  makeToken,
  type RestAuditEntry,
} from "../support/access.js";
import { connectJson, type JsonReply, requestIdOf, rest, rpcFails } from "../support/clients.js";
import { jsonText, sleep } from "../support/lifecycle.js";
import { ADMIN_TOKEN, MASTER_KEY, startTestServer, type TestServer, tempDir } from "../support/server.js";

/**
 * The audit log end to end: every call leaves one entry (who, from where, what, on which secret, how it ended, under
 * the request id the caller was given), read back with ListAuditEvents and GET /v1/audit, filtered and paged newest
 * first; failures are recorded with their codes; a write's entry is on disk when its response is; no value and no
 * token is ever in the log or its stdout mirror; the scheduler's rotations are the "system" actor's; and
 * `latchkey verify-audit` tells an intact log from an edited one.
 */

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const ADMIN_ID = tokenId("admin", ADMIN_TOKEN);
const BILLING = "billing-service-token-0123456789";
const BILLING_ID = tokenId("service:billing", BILLING);
const V1 = "audit-value-one-4b1d9e";
const V2 = "audit-value-two-82c0fa";

type Expected = Partial<Omit<RestAuditEntry, "chain" | "seq" | "at" | "prev_hash" | "hash">>;

/** Asserts the fields of `expected` on the entry. */
function assertEntry(e: RestAuditEntry, expected: Expected, what: string): void {
  const picked = Object.fromEntries(Object.keys(expected).map((k) => [k, e[k as keyof RestAuditEntry]]));
  assert.deepEqual(picked, expected, `${what}: audit entry ${JSON.stringify(e)}`);
}

/** The x-request-id of a failed call (in its trailers), which its RequestInfo detail quotes too. */
function errorRequestId(err: ConnectError): string {
  const id = requestIdOf(err);
  assert.ok(id, `the error carries a RequestInfo detail (${err.rawMessage})`);
  // The header and the trailer may both carry it (trailers-only responses merge them).
  const parts = (err.metadata.get("x-request-id") ?? "").split(",").map((p) => p.trim());
  assert.deepEqual([...new Set(parts)], [id], "x-request-id is the RequestInfo's");
  return id;
}

/** The JSON log lines that mirror audit entries (LATCHKEY_AUDIT_STDOUT=true). */
function mirrorLines(lines: readonly string[]): Record<string, unknown>[] {
  return lines
    .map((l) => {
      try {
        return JSON.parse(l) as { msg?: string; audit?: Record<string, unknown> };
      } catch {
        return undefined;
      }
    })
    .filter((o): o is { msg: string; audit: Record<string, unknown> } => o?.msg === "audit" && typeof o.audit === "object")
    .map((o) => o.audit);
}

describe("the audit log", () => {
  const dataDir = tempDir("latchkey-audit-");
  let s: TestServer;
  let g: AllClients;
  let offset = 0;
  let reader: MadeToken;
  let writer: MadeToken;
  let verifier: MadeToken;
  let billingReader: MadeToken;
  /** Every value and token used: none may be in the audit log or its mirror. */
  const needles: string[] = [V1, V2, ADMIN_TOKEN, BILLING];

  const r = (method: string, path: string, body?: unknown, token: string | null = ADMIN_TOKEN, headers: Record<string, string> = {}) =>
    rest(s.url, method, path, body, token, headers);
  const idOf = (reply: JsonReply) => reply.headers.get("x-request-id") as string;

  before(async () => {
    s = await startTestServer(
      {
        LATCHKEY_DATA_DIR: dataDir,
        LATCHKEY_AUDIT_STDOUT: "true",
        LATCHKEY_TRUSTED_PROXIES: "127.0.0.1",
        LATCHKEY_ALLOWED_IPS: "127.0.0.0/8,::1,10.0.0.0/8",
        LATCHKEY_SERVICE_TOKENS: `billing=${BILLING}`,
      },
      { clock: { now: () => Date.now() + offset } },
    );
    g = grpcAll(s.url);
    reader = await makeToken(s.url, { label: "audit-reader", role: "reader" });
    writer = await makeToken(s.url, { label: "audit-writer", role: "writer" });
    verifier = await makeToken(s.url, { label: "audit-verifier", role: "verifier" });
    billingReader = await makeToken(s.url, { label: "audit-billing", role: "reader", service: "billing" });
    needles.push(reader.secret, writer.secret, verifier.secret, billingReader.secret);
    assert.equal((await r("POST", "/v1/stores", { name: "team" })).status, 201);
  });
  after(async () => {
    g?.close();
    await s?.stop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it("records every call once: who, from where, what, on which secret, how it ended, under the request id given", async () => {
    const calls: { id: string; expected: Expected; what: string }[] = [];
    const note = (id: string | null | undefined, expected: Expected, what: string) => {
      assert.ok(id, `${what}: the response has an x-request-id`);
      calls.push({ id, expected, what });
    };
    const admin = { actor_kind: "token", token_id: ADMIN_ID, role: "admin", service: "", ip: "127.0.0.1" };
    const asReader = { actor_kind: "token", token_id: reader.id, role: "reader", service: "", ip: "127.0.0.1" };
    const asWriter = { actor_kind: "token", token_id: writer.id, role: "writer", service: "", ip: "127.0.0.1" };
    const anonymous = { actor_kind: "anonymous", token_id: "", role: "", service: "" };

    // A caller's own well-formed request id is kept.
    const mine = `e2e-audit-${randomBytes(6).toString("hex")}`;
    const created = await r("POST", "/v1/stores/team/secrets", { name: "db/password", value: V1 }, ADMIN_TOKEN, { "x-request-id": mine });
    assert.equal(created.status, 201);
    assert.equal(idOf(created), mine);
    note(mine, { ...admin, op: "POST /v1/stores/{store}/secrets", store: "team", name: "db/password", version: 1, code: "ok" }, "REST create");

    const o1 = callOpts(reader.secret);
    assert.equal((await g.secrets.getSecret({ store: "team", name: "db/password" }, o1)).value, V1);
    note(o1.seen.requestId, { ...asReader, op: "latchkey.v1.SecretService/GetSecret", store: "team", name: "db/password", version: 1, code: "ok" }, "gRPC read");

    const updated = await connectJson(s.url, "SecretService/UpdateSecret", { store: "team", name: "db/password", value: V2 }, writer.secret);
    assert.equal(updated.status, 200, JSON.stringify(updated.body));
    note(idOf(updated), { ...asWriter, op: "latchkey.v1.SecretService/UpdateSecret", store: "team", name: "db/password", version: 2, code: "ok" }, "Connect update");

    const anonRead = await r("GET", "/v1/stores/team/secrets/db/password", undefined, null, { "x-forwarded-for": "10.5.5.5" });
    assert.equal(anonRead.status, 200);
    note(idOf(anonRead), { ...anonymous, ip: "10.5.5.5", op: "GET /v1/stores/{store}/secrets/{name}", store: "team", name: "db/password", version: 2, code: "ok" }, "anonymous read via a proxy");

    const storeByService = await r("POST", "/v1/stores", { name: "billing-ledger" }, BILLING);
    assert.equal(storeByService.status, 201);
    note(idOf(storeByService), { actor_kind: "token", token_id: BILLING_ID, role: "writer", service: "billing", ip: "127.0.0.1", op: "POST /v1/stores", store: "billing-ledger", code: "ok" }, "service token");

    const o2 = callOpts(billingReader.secret);
    await g.stores.getStore({ name: "billing-ledger" }, o2);
    note(o2.seen.requestId, { actor_kind: "token", token_id: billingReader.id, role: "reader", service: "billing", op: "latchkey.v1.StoreService/GetStore", store: "billing-ledger", code: "ok" }, "service-bound token");

    const o3 = callOpts(verifier.secret);
    assert.equal((await g.secrets.verifySecret({ store: "team", name: "db/password", value: V2 }, o3)).valid, true);
    note(o3.seen.requestId, { token_id: verifier.id, role: "verifier", op: "latchkey.v1.SecretService/VerifySecret", store: "team", name: "db/password", version: 2, code: "ok" }, "verify (match)");

    const wrong = await r("POST", "/v1/stores/team/secrets/db/password/verify", { value: "not-it" }, verifier.secret);
    assert.equal(wrong.body.valid, false);
    note(idOf(wrong), { token_id: verifier.id, op: "POST /v1/stores/{store}/secrets/{name}/verify", store: "team", name: "db/password", version: 0, code: "ok" }, "verify (no match)");

    // Refused and failed calls, with the code each caller got.
    const denied = await r("GET", "/v1/stores/team/secrets/db/password", undefined, verifier.secret);
    assert.equal(denied.status, 403);
    note(idOf(denied), { token_id: verifier.id, role: "verifier", op: "GET /v1/stores/{store}/secrets/{name}", code: "permission_denied" }, "role denied");
    const noToken = await r("POST", "/v1/stores/team/secrets", { name: "db/anon", value: "x" }, null);
    assert.equal(noToken.status, 401);
    note(idOf(noToken), { ...anonymous, op: "POST /v1/stores/{store}/secrets", code: "unauthenticated" }, "no token");
    const badToken = await r("GET", "/v1/stores/team/secrets/db/password", undefined, "lkt_never-issued-0000000000000000000000000000");
    assert.equal(badToken.status, 401);
    note(idOf(badToken), { ...anonymous, op: "GET /v1/stores/{store}/secrets/{name}", code: "unauthenticated" }, "bad token");
    const missing = await r("GET", "/v1/stores/team/secrets/db/missing", undefined, reader.secret);
    assert.equal(missing.status, 404);
    note(idOf(missing), { ...asReader, store: "team", name: "db/missing", version: 0, code: "not_found" }, "not found");
    const e4 = await rpcFails(g.secrets.storeSecret({ store: "team", name: "db/novalue" }, callOpts(writer.secret)), Code.InvalidArgument);
    note(errorRequestId(e4), { ...asWriter, op: "latchkey.v1.SecretService/StoreSecret", store: "team", name: "db/novalue", code: "invalid_argument" }, "invalid argument");
    const e5 = await rpcFails(g.secrets.storeSecret({ store: "team", name: "db/ro", value: "x" }, callOpts(reader.secret)), Code.PermissionDenied);
    note(errorRequestId(e5), { ...asReader, op: "latchkey.v1.SecretService/StoreSecret", code: "permission_denied" }, "gRPC role denied");

    // Vars, tokens.
    const putVar = await r("PUT", "/v1/stores/team/vars/LOG_LEVEL", { value: "debug" }, writer.secret);
    assert.equal(putVar.status, 200);
    note(idOf(putVar), { ...asWriter, op: "PUT /v1/stores/{store}/vars/{name}", store: "team", name: "LOG_LEVEL", code: "ok" }, "set var");
    const delVar = await r("DELETE", "/v1/stores/team/vars/LOG_LEVEL", undefined, writer.secret);
    assert.equal(delVar.status, 204);
    note(idOf(delVar), { ...asWriter, op: "DELETE /v1/stores/{store}/vars/{name}", store: "team", name: "LOG_LEVEL", code: "ok" }, "delete var");
    const o6 = callOpts(ADMIN_TOKEN);
    const made = await g.tokens.createToken({ label: "audited", role: Role.READER }, o6);
    needles.push(made.secret);
    note(o6.seen.requestId, { ...admin, op: "latchkey.v1.TokenService/CreateToken", name: made.token?.id ?? "?", code: "ok" }, "create token");
    const revoked = await r("DELETE", `/v1/tokens/${made.token?.id}`);
    assert.equal(revoked.status, 200);
    note(idOf(revoked), { ...admin, op: "DELETE /v1/tokens/{id}", name: made.token?.id ?? "?", code: "ok" }, "revoke token");
    const deleted = await r("DELETE", "/v1/stores/team/secrets/db/password", undefined, writer.secret);
    assert.equal(deleted.status, 204);
    note(idOf(deleted), { ...asWriter, op: "DELETE /v1/stores/{store}/secrets/{name}", store: "team", name: "db/password", code: "ok" }, "delete secret");

    const byId = await auditFor(s.url, calls.map((c) => c.id));
    for (const c of calls) {
      const entries = byId.get(c.id) ?? [];
      assert.equal(entries.length, 1, `${c.what}: exactly one entry for ${c.id} (got ${JSON.stringify(entries)})`);
      assertEntry(entries[0] as RestAuditEntry, { request_id: c.id, ...c.expected }, c.what);
    }
    // The same entries over gRPC.
    const viaGrpc = await g.audit.listAuditEvents({ pageSize: 1000 }, callOpts(ADMIN_TOKEN));
    for (const c of calls) {
      const e = viaGrpc.events.filter((x) => x.requestId === c.id);
      assert.equal(e.length, 1, `${c.what}: one entry over gRPC`);
      const restEntry = (byId.get(c.id) ?? [])[0] as RestAuditEntry;
      assert.deepEqual(
        { seq: Number(e[0]?.seq), hash: e[0]?.hash, op: e[0]?.op, code: e[0]?.code, tokenId: e[0]?.tokenId, name: e[0]?.name, version: e[0]?.version },
        { seq: restEntry.seq, hash: restEntry.hash, op: restEntry.op, code: restEntry.code, tokenId: restEntry.token_id, name: restEntry.name, version: restEntry.version },
      );
      assert.equal(Date.parse(restEntry.at), Number(e[0]?.at?.seconds) * 1000 + Math.floor((e[0]?.at?.nanos ?? 0) / 1e6));
    }
  });

  it("audits a failure with the code its caller got, however it failed (request body, stream)", async () => {
    const calls: { id: string; expected: Expected; what: string }[] = [];
    const badJson = await fetch(`${s.url}/v1/stores/team/secrets`, {
      method: "POST",
      headers: { authorization: `Bearer ${writer.secret}`, "content-type": "application/json" },
      body: "{not json",
      signal: AbortSignal.timeout(5_000),
    });
    assert.equal(badJson.status, 400);
    assert.equal(((await badJson.json()) as { code: string }).code, "invalid_argument");
    calls.push({ id: badJson.headers.get("x-request-id") as string, expected: { op: "POST /v1/stores/{store}/secrets", code: "invalid_argument" }, what: "malformed JSON body" });

    const tooBig = await r("POST", "/v1/stores/team/secrets", { name: "db/big", value: "x".repeat(300 * 1024) }, writer.secret);
    assert.equal(tooBig.status, 413);
    assert.equal(tooBig.body.code, "resource_exhausted");
    calls.push({ id: idOf(tooBig), expected: { op: "POST /v1/stores/{store}/secrets", code: "resource_exhausted" }, what: "body too large" });

    // A stream's outcome is known only when it ends: a watch of a store that does not exist fails.
    let watchId: string | null | undefined;
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(), 5_000);
    try {
      for await (const _ of g.secrets.watchSecrets(
        { store: "no-such-store" },
        {
          headers: { authorization: `Bearer ${reader.secret}` },
          signal: ac.signal,
          onHeader: (h) => (watchId ??= h.get("x-request-id")),
          onTrailer: (t) => (watchId ??= t.get("x-request-id")),
        },
      )) {
        assert.fail("the watch of a missing store yields nothing");
      }
      assert.fail("the watch of a missing store fails");
    } catch (err) {
      const ce = ConnectError.from(err);
      assert.equal(ce.code, Code.NotFound);
      watchId ??= errorRequestId(ce);
    } finally {
      clearTimeout(timer);
    }
    assert.ok(watchId, "the watch's response has an x-request-id");
    calls.push({ id: watchId, expected: { op: "latchkey.v1.SecretService/WatchSecrets", store: "no-such-store", code: "not_found" }, what: "watch of a missing store" });

    const byId = await auditFor(s.url, calls.map((c) => c.id));
    const problems: string[] = [];
    for (const c of calls) {
      const entries = byId.get(c.id) ?? [];
      const picked = entries.map((e) => Object.fromEntries(Object.keys(c.expected).map((k) => [k, e[k as keyof RestAuditEntry]])));
      if (entries.length !== 1 || JSON.stringify(picked[0]) !== JSON.stringify(c.expected)) {
        problems.push(`${c.what}: expected ${JSON.stringify(c.expected)}, audited ${JSON.stringify(picked)}`);
      }
    }
    assert.deepEqual(problems, []);
  });

  it("records the secret a refused call named, so filtering by the secret finds the attempt", async () => {
    assert.equal((await r("POST", "/v1/stores/team/secrets", { name: "db/guarded", value: V1 })).status, 201);
    const denied = await r("GET", "/v1/stores/team/secrets/db/guarded", undefined, verifier.secret);
    assert.equal(denied.status, 403);
    const err = await rpcFails(g.secrets.getSecret({ store: "team", name: "db/guarded" }, callOpts(verifier.secret)), Code.PermissionDenied);
    const ids = [idOf(denied), errorRequestId(err)];
    await auditFor(s.url, ids);
    const bySecret = await auditEntries(s.url, { store: "team", name: "db/guarded" });
    for (const id of ids) {
      assert.ok(
        bySecret.some((e) => e.request_id === id && e.code === "permission_denied"),
        `the refused call ${id} is found by store and name (entries: ${JSON.stringify(bySecret.map((e) => [e.op, e.code]))})`,
      );
    }
  });

  it("filters by time, token and secret, newest first, with paging, on gRPC and REST", async () => {
    const t = await makeToken(s.url, { label: "audit-filter", role: "reader" });
    needles.push(t.secret);
    assert.equal((await r("POST", "/v1/stores/team/secrets", { name: "filter/one", value: V1 })).status, 201);
    const ids: string[] = [];
    const t0 = Date.now();
    await sleep(5);
    for (let i = 0; i < 5; i++) ids.push(idOf(await r("GET", "/v1/stores/team/secrets/filter/one", undefined, t.secret)));
    await sleep(5);
    const t1 = Date.now();
    await sleep(5);
    for (let i = 0; i < 3; i++) ids.push(idOf(await r("GET", "/v1/stores/team/secrets/filter/one?version=1", undefined, t.secret)));
    await sleep(5);
    const t2 = Date.now();
    await auditFor(s.url, ids, { token_id: t.id });

    // By token: exactly its calls, newest first.
    const mine = await auditEntries(s.url, { token_id: t.id });
    assert.deepEqual(mine.map((e) => e.request_id), [...ids].reverse());
    assert.ok(mine.every((e) => e.token_id === t.id));
    // By time: [from, to).
    const first = await auditEntries(s.url, { token_id: t.id, from: new Date(t0).toISOString(), to: new Date(t1).toISOString() });
    assert.deepEqual(first.map((e) => e.request_id), ids.slice(0, 5).reverse());
    const second = await auditEntries(s.url, { token_id: t.id, from: new Date(t1).toISOString(), to: new Date(t2).toISOString() });
    assert.deepEqual(second.map((e) => e.request_id), ids.slice(5).reverse());
    // By secret: only that secret's entries, including another caller's.
    const bySecret = await auditEntries(s.url, { store: "team", name: "filter/one" });
    assert.ok(bySecret.every((e) => e.store === "team" && e.name === "filter/one"));
    assert.ok(bySecret.some((e) => e.op === "POST /v1/stores/{store}/secrets" && e.token_id === ADMIN_ID), "the admin's create is there");
    assert.ok(ids.every((id) => bySecret.some((e) => e.request_id === id)));

    // Paging over REST: limit and the x-next-cursor header.
    const pages: string[][] = [];
    let cursor: string | null = null;
    for (let i = 0; i < 10; i++) {
      const q = new URLSearchParams({ token_id: t.id, limit: "3", ...(cursor ? { cursor } : {}) });
      const page = await r("GET", `/v1/audit?${q}`);
      assert.equal(page.status, 200);
      pages.push(page.body.map((e: RestAuditEntry) => e.request_id));
      cursor = page.headers.get("x-next-cursor");
      if (!cursor) break;
    }
    assert.deepEqual(pages.map((p) => p.length), [3, 3, 2]);
    assert.deepEqual(pages.flat(), [...ids].reverse());

    // The same over gRPC.
    const grpcPages: string[] = [];
    let pageToken = "";
    for (let i = 0; i < 10; i++) {
      const page = await g.audit.listAuditEvents({ tokenId: t.id, pageSize: 3, pageToken }, callOpts(ADMIN_TOKEN));
      assert.ok(page.events.length <= 3);
      grpcPages.push(...page.events.map((e) => e.requestId));
      pageToken = page.nextPageToken;
      if (!pageToken) break;
    }
    assert.deepEqual(grpcPages, [...ids].reverse());
    const grpcWindow = await g.audit.listAuditEvents({ tokenId: t.id, from: timestampFromMs(t0), to: timestampFromMs(t1) }, callOpts(ADMIN_TOKEN));
    assert.deepEqual(grpcWindow.events.map((e) => e.requestId), ids.slice(0, 5).reverse());
    const grpcSecret = await g.audit.listAuditEvents({ store: "team", name: "filter/one", pageSize: 1000 }, callOpts(ADMIN_TOKEN));
    assert.deepEqual(grpcSecret.events.map((e) => e.requestId), bySecret.map((e) => e.request_id));

    // The whole log is newest first too.
    const all = await auditEntries(s.url);
    for (let i = 1; i < all.length; i++) {
      const a = all[i - 1] as RestAuditEntry;
      const b = all[i] as RestAuditEntry;
      assert.ok(Date.parse(a.at) > Date.parse(b.at) || (a.at === b.at && a.seq > b.seq), `newest first at ${i}: ${a.at}/${a.seq} then ${b.at}/${b.seq}`);
    }
    // Bad parameters are refused.
    assert.equal((await r("GET", "/v1/audit?from=yesterday")).status, 400);
    assert.equal((await r("GET", "/v1/audit?limit=0")).status, 400);
  });

  it("audits scheduler rotations as the system actor", async () => {
    const made = await r("POST", "/v1/secrets", { name: "auto/key", kind: "automatic", rotation_interval_secs: 3600 });
    assert.equal(made.status, 201);
    needles.push(made.body.value);
    offset += 3_601_000;
    assert.ok((await s.app.scheduler.tick()) >= 0);
    let rotations: RestAuditEntry[] = [];
    const end = Date.now() + 3_000;
    while (rotations.length === 0 && Date.now() < end) {
      rotations = (await auditEntries(s.url, { store: "default", name: "auto/key" })).filter((e) => e.op === "scheduler/rotate");
      if (rotations.length === 0) await sleep(25);
    }
    assert.equal(rotations.length, 1, "one rotation, audited once");
    assertEntry(
      rotations[0] as RestAuditEntry,
      { actor_kind: "system", token_id: "", role: "", service: "", ip: "", request_id: "", store: "default", name: "auto/key", version: 2, code: "ok" },
      "scheduler rotation",
    );
    const rotated = await r("GET", "/v1/secrets/auto/key");
    assert.equal(rotated.body.version, 2);
    needles.push(rotated.body.value);
    const mirrored = mirrorLines(s.logs).filter((a) => a.op === "scheduler/rotate" && a.name === "auto/key");
    assert.equal(mirrored.length, 1, "mirrored to stdout once");
    assert.equal(mirrored[0]?.actorKind, "system");
  });

  it("never holds a value or a token, in the log, in the database or in its stdout mirror", async () => {
    const entries = await auditEntries(s.url);
    assert.ok(entries.length > 30, `entries: ${entries.length}`);
    assert.deepEqual(leaks(JSON.stringify(entries), needles), [], "GET /v1/audit");
    const viaGrpc = await g.audit.listAuditEvents({ pageSize: 1000 }, callOpts(ADMIN_TOKEN));
    assert.deepEqual(leaks(jsonText(viaGrpc), needles), [], "ListAuditEvents");
    const db = new Database(join(dataDir, "latchkey.db"), { readonly: true, fileMustExist: true });
    try {
      const rows = db.prepare("SELECT * FROM audit").all();
      assert.ok(rows.length >= entries.length);
      assert.deepEqual(leaks(JSON.stringify(rows), needles), [], "the audit table");
    } finally {
      db.close();
    }
    // Every audited call is mirrored as a JSON line, and no log line holds a value or a token.
    const mirrored = mirrorLines(s.logs);
    const mirroredIds = new Set(mirrored.map((a) => a.requestId));
    const missing = entries.filter((e) => e.actor_kind !== "system" && !mirroredIds.has(e.request_id));
    // The newest entries may be the audit reads just made, whose mirror lines are written as they end.
    assert.ok(missing.every((e) => e.op === "GET /v1/audit" || e.op === "latchkey.v1.AuditService/ListAuditEvents"), `not mirrored: ${JSON.stringify(missing.slice(0, 3))}`);
    const sample = entries.find((e) => e.op === "POST /v1/stores/{store}/secrets" && e.name === "db/password") as RestAuditEntry;
    const line = mirrored.find((a) => a.requestId === sample.request_id) as Record<string, unknown>;
    assert.deepEqual(
      [line.actorKind, line.tokenId, line.role, line.ip, line.op, line.store, line.name, line.version, line.code, line.at],
      [sample.actor_kind, sample.token_id, sample.role, sample.ip, sample.op, sample.store, sample.name, sample.version, sample.code, Date.parse(sample.at)],
    );
    assert.deepEqual(leaks(s.logs.join("\n"), needles), [], "log lines (the mirror included)");
  });

  it("verify-audit exits 0 on an intact log and 4 once a row is edited or removed", async () => {
    await s.stop();
    const saved = { dir: process.env.LATCHKEY_DATA_DIR, mongo: process.env.MONGODB_URI };
    process.env.LATCHKEY_DATA_DIR = dataDir;
    delete process.env.MONGODB_URI;
    const verify = async () => {
      let out = "";
      let err = "";
      const sink = (f: (s: string) => void) => new Writable({ write: (c: Buffer, _e, cb) => (f(c.toString("utf8")), cb()) });
      const code = await run(["verify-audit"], { stdout: sink((x) => (out += x)), stderr: sink((x) => (err += x)), stdin: process.stdin });
      return { code, out, err };
    };
    try {
      const intact = await verify();
      assert.equal(intact.code, 0, `intact: ${intact.out} ${intact.err}`);
      assert.match(intact.out, /intact/);

      const db = new Database(join(dataDir, "latchkey.db"));
      try {
        const row = db.prepare("SELECT seq, code FROM audit WHERE code = 'permission_denied' ORDER BY seq LIMIT 1").get() as { seq: number; code: string };
        assert.ok(row, "a refused call to hide");
        // Someone hides a refused call.
        db.prepare("UPDATE audit SET code = 'ok' WHERE seq = ?").run(row.seq);
        const edited = await verify();
        assert.equal(edited.code, 4, `edited: ${edited.out}`);
        assert.match(edited.out, new RegExp(`BROKEN at entry ${row.seq}\\b`));
        // Put back, intact again.
        db.prepare("UPDATE audit SET code = ? WHERE seq = ?").run(row.code, row.seq);
        assert.equal((await verify()).code, 0, "restored");
        // A removed entry breaks the chain too.
        db.prepare("DELETE FROM audit WHERE seq = ?").run(row.seq + 1);
        const removed = await verify();
        assert.equal(removed.code, 4, `removed: ${removed.out}`);
      } finally {
        db.close();
      }
    } finally {
      if (saved.dir === undefined) delete process.env.LATCHKEY_DATA_DIR;
      else process.env.LATCHKEY_DATA_DIR = saved.dir;
      if (saved.mongo !== undefined) process.env.MONGODB_URI = saved.mongo;
    }
  });
});

// ---------------------------------------------------------------------------------------------------------------
// The real process, killed right after a write's response.

interface Proc {
  readonly child: ChildProcess;
  stdout: string;
  stderr: string;
  readonly exited: Promise<void>;
}

async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((resolve, reject) => {
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", resolve);
  });
  const { port } = srv.address() as net.AddressInfo;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

describe("audit entries of writes survive a SIGKILL right after the response", () => {
  const dataDir = tempDir("latchkey-audit-kill-");
  const procs: Proc[] = [];

  function spawnLatchkey(port: number): Proc {
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(process.env)) {
      if (v !== undefined && !k.startsWith("LATCHKEY_") && k !== "LOG_LEVEL" && k !== "MONGODB_URI" && !k.startsWith("NODE_TEST")) env[k] = v;
    }
    const child = spawn(process.execPath, ["--import", "tsx", "src/main.ts"], {
      cwd: ROOT,
      env: {
        ...env,
        LATCHKEY_PORT: String(port),
        LATCHKEY_DATA_DIR: dataDir,
        LATCHKEY_ADMIN_TOKEN: ADMIN_TOKEN,
        LATCHKEY_MASTER_KEY: MASTER_KEY,
        LATCHKEY_AUDIT_STDOUT: "true",
        LOG_LEVEL: "info",
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const proc: Proc = { child, stdout: "", stderr: "", exited: new Promise((resolve) => child.once("exit", () => resolve())) };
    child.stdout?.setEncoding("utf8").on("data", (c: string) => (proc.stdout += c));
    child.stderr?.setEncoding("utf8").on("data", (c: string) => (proc.stderr += c));
    procs.push(proc);
    return proc;
  }

  async function start(): Promise<{ proc: Proc; url: string }> {
    const port = await freePort();
    const proc = spawnLatchkey(port);
    const url = `http://127.0.0.1:${port}`;
    const deadline = Date.now() + 12_000;
    let exited = false;
    void proc.exited.then(() => (exited = true));
    while (Date.now() < deadline) {
      if (exited) assert.fail(`latchkey exited before it was ready: ${proc.stderr} ${proc.stdout}`);
      try {
        const res = await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(1_000) });
        await res.arrayBuffer();
        if (res.status === 200) return { proc, url };
      } catch {
        // not listening yet
      }
      await sleep(50);
    }
    assert.fail(`latchkey not ready in time: ${proc.stderr}`);
  }

  async function kill(proc: Proc, signal: NodeJS.Signals): Promise<void> {
    if (proc.child.exitCode !== null || proc.child.signalCode !== null) return;
    proc.child.kill(signal);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([proc.exited, new Promise((r) => (timer = setTimeout(r, 5_000)))]);
    clearTimeout(timer);
  }

  after(async () => {
    for (const p of procs) await kill(p, "SIGKILL");
    rmSync(dataDir, { recursive: true, force: true });
  });

  it("finds each write's entry after a restart", async () => {
    const first = await start();
    const value = `killed-value-${randomBytes(8).toString("hex")}`;
    const ids = {
      create: `e2e-kill-create-${randomBytes(4).toString("hex")}`,
      setVar: `e2e-kill-var-${randomBytes(4).toString("hex")}`,
      update: `e2e-kill-update-${randomBytes(4).toString("hex")}`,
    };
    const created = await rest(first.url, "POST", "/v1/secrets", { name: "survivor", value }, ADMIN_TOKEN, { "x-request-id": ids.create });
    assert.equal(created.status, 201);
    // Two writes at once, then the kill the moment both answered.
    const [setVar, update] = await Promise.all([
      rest(first.url, "PUT", "/v1/stores/default/vars/SURVIVOR", { value: "1" }, ADMIN_TOKEN, { "x-request-id": ids.setVar }),
      rest(first.url, "PUT", "/v1/secrets/survivor", { value: `${value}-2` }, ADMIN_TOKEN, { "x-request-id": ids.update }),
    ]);
    first.proc.child.kill("SIGKILL");
    assert.equal(setVar.status, 200);
    assert.equal(update.status, 200);
    await kill(first.proc, "SIGKILL");
    assert.equal(first.proc.child.signalCode, "SIGKILL");
    // The stdout mirror of the killed process holds no value.
    assert.deepEqual(leaks(first.proc.stdout, [value, `${value}-2`, ADMIN_TOKEN]), [], "stdout of the killed process");

    const second = await start();
    const entries = await auditEntries(second.url);
    const find = (id: string) => entries.filter((e) => e.request_id === id);
    assert.deepEqual(
      find(ids.create).map((e) => [e.op, e.store, e.name, e.version, e.code]),
      [["POST /v1/secrets", "default", "survivor", 1, "ok"]],
    );
    assert.deepEqual(find(ids.update).map((e) => [e.op, e.name, e.version, e.code]), [["PUT /v1/secrets/{name}", "survivor", 2, "ok"]]);
    assert.deepEqual(find(ids.setVar).map((e) => [e.op, e.store, e.name, e.code]), [["PUT /v1/stores/{store}/vars/{name}", "default", "SURVIVOR", "ok"]]);
    assert.equal((await rest(second.url, "GET", "/v1/secrets/survivor")).body.value, `${value}-2`);
    await kill(second.proc, "SIGTERM");
  });
});
