import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { DescMethod, DescService } from "@bufbuild/protobuf";
import { type Client, Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { SecretService } from "../../gen/latchkey/v1/secret_service_pb.js";
import { type Action, can, IP_FENCED_ACTIONS, REST_POLICY, RPC_POLICY } from "../../src/auth/policy.js";
import { ANONYMOUS, type Principal, type Role } from "../../src/domain/principal.js";
import { connectAll, latchkeyServices, makeToken } from "../support/access.js";
import { CALL_TIMEOUT_MS, type JsonReply, rest } from "../support/clients.js";
import { restFails } from "../support/lifecycle.js";
import { ADMIN_TOKEN, startTestServer, type TestServer } from "../support/server.js";

/**
 * The access matrix, end to end: every RPC of every generated latchkey.* service (over Connect JSON on HTTP/1.1)
 * and every REST route of the policy table, called as every kind of caller. What is expected is computed from the
 * policy itself (RPC_POLICY / REST_POLICY and can()), so a new RPC or route is covered without editing this test.
 *
 * Allowed: the call may fail for other reasons (a minimal request, a missing secret, a token's scope), but never
 * with UNAUTHENTICATED (401) nor PERMISSION_DENIED (403) with reason ROLE_NOT_ALLOWED. Denied: UNAUTHENTICATED /
 * 401 without a token, PERMISSION_DENIED / 403 with reason ROLE_NOT_ALLOWED with one.
 */

const STORE = "matrix";
const OTHER_STORE = "elsewhere";
const SECRET = "app/db";
const VALUE = "matrix-value-5d1c";

/** A fresh secret for each RPC and route that names one, in the store it names, so every call finds one. */
let fixtureCount = 0;
async function freshSecret(baseUrl: string, store: string): Promise<string> {
  const name = `app/m${++fixtureCount}`;
  const r = await rest(baseUrl, "POST", store === "default" ? "/v1/secrets" : `/v1/stores/${store}/secrets`, { name, value: `${VALUE}-${fixtureCount}` });
  assert.equal(r.status, 201, `fixture ${store}/${name}: ${JSON.stringify(r.body)}`);
  return name;
}

interface Caller {
  readonly label: string;
  /** Bearer token, or null for none. */
  token: string | null;
  /** What the policy sees (role, service; scopes do not matter to can()). */
  readonly principal: Principal;
}

function tokenPrincipal(role: Role, stores: string[] | null = null, prefixes: string[] | null = null): Principal {
  return { kind: "token", tokenId: "(matrix)", role, service: null, stores, prefixes };
}

/** Callers in the order they call: those that may write last, so what they change does not change what others see. */
const callers: Caller[] = [
  { label: "no token", token: null, principal: ANONYMOUS },
  { label: "verifier", token: "", principal: tokenPrincipal("verifier") },
  { label: "reader", token: "", principal: tokenPrincipal("reader") },
  { label: "writer scoped to another store", token: "", principal: tokenPrincipal("writer", [OTHER_STORE]) },
  { label: "reader scoped to a prefix that does not match", token: "", principal: tokenPrincipal("reader", null, ["nomatch/"]) },
  { label: "writer", token: "", principal: tokenPrincipal("writer") },
  { label: "admin", token: ADMIN_TOKEN, principal: tokenPrincipal("admin") },
];

/**
 * Calls `fn` as every caller, in `callers` order: those that cannot change the fixtures all at once, then the
 * writer, then the admin.
 */
async function asEveryCaller<T>(fn: (caller: Caller) => Promise<T>): Promise<{ caller: Caller; out: T }[]> {
  const mayWrite = (c: Caller) => c.label === "writer" || c.label === "admin";
  const first = await Promise.all(callers.filter((c) => !mayWrite(c)).map(async (caller) => ({ caller, out: await fn(caller) })));
  const rest: { caller: Caller; out: T }[] = [];
  for (const caller of callers.filter(mayWrite)) rest.push({ caller, out: await fn(caller) });
  return [...first, ...rest];
}

/** Whether the policy lets `principal` make a call that needs `action` (undefined: no entry, refused). */
function allowed(action: Action | undefined, principal: Principal): boolean {
  return action !== undefined && (action === "public" || can(principal, action));
}

interface Outcome {
  /** "ok" or the Connect code name. */
  readonly code: string;
  readonly reason: string | undefined;
  readonly message: string;
}

const codeName = (c: Code) => Code[c];

/** A minimal request: `{}` plus the store and the name where the method has such fields. */
function minimalRequest(method: DescMethod, secret: string): Record<string, unknown> {
  const fields = new Set(method.input.fields.map((f) => f.localName));
  const req: Record<string, unknown> = {};
  if (fields.has("store")) {
    req.store = STORE;
    if (fields.has("name")) req.name = secret;
  } else if (fields.has("name")) {
    // Without a store field, the name is a store's (StoreService).
    req.name = STORE;
  }
  return req;
}

async function callRpc(transport: Transport, service: DescService, method: DescMethod, token: string | null, secret: string): Promise<Outcome> {
  const client = createClient(service, transport) as unknown as Record<string, (req: unknown, opts: unknown) => unknown>;
  const call = client[method.localName];
  if (typeof call !== "function") assert.fail(`the client has no method ${method.localName}`);
  // A bounded wait of our own: Connect's timeoutMs leaves its timer running when a stream is abandoned.
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), CALL_TIMEOUT_MS);
  const opts = { headers: token === null ? {} : { authorization: `Bearer ${token}` }, signal: ac.signal };
  try {
    if (method.methodKind === "server_streaming") {
      // The first message (a watch starts with "started") or the error.
      const stream = call.call(client, minimalRequest(method, secret), opts) as AsyncIterable<unknown>;
      for await (const _ of stream) break;
    } else if (method.methodKind === "unary") {
      await call.call(client, minimalRequest(method, secret), opts);
    } else {
      assert.fail(`${method.parent.typeName}.${method.name}: a ${method.methodKind} RPC; teach the matrix to call it`);
    }
    return { code: "ok", reason: undefined, message: "" };
  } catch (err) {
    const ce = ConnectError.from(err);
    return { code: codeName(ce.code), reason: ce.findDetails(ErrorInfoSchema)[0]?.reason, message: ce.rawMessage };
  } finally {
    clearTimeout(timer);
    ac.abort();
  }
}

/** A REST path with its placeholders filled in. */
function restPath(template: string, secret: string): string {
  return template
    .replaceAll("{store}", STORE)
    .replaceAll("{name}", secret)
    .replaceAll("{id}", "tok_0000000000000000")
    .replaceAll("{version}", "1");
}

describe("the role matrix", () => {
  let s: TestServer;
  let transport: Transport;

  before(async () => {
    s = await startTestServer({
      // Loopback may read, so IP fencing does not interfere; the proxy lets one test call from elsewhere.
      LATCHKEY_ALLOWED_IPS: "127.0.0.0/8,::1",
      LATCHKEY_TRUSTED_PROXIES: "127.0.0.1",
    });
    transport = connectAll(s.url).transport;
    const mk = async (settings: Record<string, unknown>) => (await makeToken(s.url, settings)).secret;
    const byLabel = (label: string) => callers.find((c) => c.label === label) as Caller;
    byLabel("writer").token = await mk({ role: "writer" });
    byLabel("reader").token = await mk({ role: "reader" });
    byLabel("verifier").token = await mk({ role: "verifier" });
    byLabel("writer scoped to another store").token = await mk({ role: "writer", stores: [OTHER_STORE] });
    byLabel("reader scoped to a prefix that does not match").token = await mk({ role: "reader", prefixes: ["nomatch/"] });
    for (const name of [STORE, OTHER_STORE]) assert.equal((await rest(s.url, "POST", "/v1/stores", { name })).status, 201);
    assert.equal((await rest(s.url, "POST", `/v1/stores/${STORE}/secrets`, { name: SECRET, value: VALUE })).status, 201);
  });
  after(async () => {
    await s?.stop();
  });

  it("finds the generated services, and the policy has an entry for every RPC and no other", async () => {
    const services = await latchkeyServices();
    const names = services.map((x) => x.typeName);
    for (const expected of ["latchkey.v1.SecretService", "latchkey.v1.StoreService", "latchkey.v1.VarService", "latchkey.v1.TokenService", "latchkey.v1.AuditService"]) {
      assert.ok(names.includes(expected), `found ${expected} (found ${names.join(", ")})`);
    }
    const procedures = services.flatMap((x) => x.methods.map((m) => `${x.typeName}.${m.name}`));
    assert.deepEqual(procedures.filter((p) => RPC_POLICY[p] === undefined), [], "RPCs without a policy entry");
    const stale = Object.keys(RPC_POLICY).filter((p) => p.startsWith("latchkey.") && !procedures.includes(p));
    assert.deepEqual(stale, [], "policy entries naming no latchkey RPC");
  });

  it("allows and denies every RPC, as every caller, as the policy says", async () => {
    const services = await latchkeyServices();
    const failures: string[] = [];
    let calls = 0;
    let allowedCalls = 0;
    let deniedCalls = 0;
    for (const service of services) {
      for (const method of service.methods) {
        const procedure = `${service.typeName}.${method.name}`;
        const action = RPC_POLICY[procedure];
        const fields = method.input.fields.map((f) => f.localName);
        const secret = fields.includes("store") && fields.includes("name") ? await freshSecret(s.url, STORE) : SECRET;
        for (const { caller, out } of await asEveryCaller((c) => callRpc(transport, service, method, c.token, secret))) {
          calls++;
          const where = `${procedure} as ${caller.label} (${action ?? "no policy"}): got ${out.code}${out.reason ? `/${out.reason}` : ""} ${out.message}`;
          if (allowed(action, caller.principal)) {
            allowedCalls++;
            if (out.code === "Unauthenticated") failures.push(`allowed but ${where}`);
            if (out.code === "PermissionDenied" && out.reason === "ROLE_NOT_ALLOWED") failures.push(`allowed but ${where}`);
          } else {
            deniedCalls++;
            const want = caller.token === null ? "Unauthenticated" : "PermissionDenied";
            if (out.code !== want) failures.push(`denied: expected ${want}, ${where}`);
            else if (want === "PermissionDenied" && out.reason !== "ROLE_NOT_ALLOWED") failures.push(`denied: expected ROLE_NOT_ALLOWED, ${where}`);
          }
        }
      }
    }
    assert.deepEqual(failures, [], `${failures.length} of ${calls} calls broke the policy`);
    assert.equal(calls, services.reduce((n, x) => n + x.methods.length, 0) * callers.length);
    assert.ok(allowedCalls > 50 && deniedCalls > 50, `both sides exercised (allowed ${allowedCalls}, denied ${deniedCalls})`);
  });

  it("allows and denies every REST route, as every caller, as the policy says", async () => {
    const failures: string[] = [];
    let calls = 0;
    const routes = Object.entries(REST_POLICY);
    assert.ok(routes.length >= 40, `REST routes in the policy: ${routes.length}`);
    for (const [operation, action] of routes) {
      const space = operation.indexOf(" ");
      const method = operation.slice(0, space);
      const template = operation.slice(space + 1);
      const secretStore = template.startsWith("/v1/stores/{store}/secrets/{name}") ? STORE : template.startsWith("/v1/secrets/{name}") ? "default" : undefined;
      const path = restPath(template, secretStore === undefined ? SECRET : await freshSecret(s.url, secretStore));
      const body = method === "POST" || method === "PUT" ? {} : undefined;
      for (const { caller, out: reply } of await asEveryCaller((c) => restRaw(s.url, method, path, body, c.token))) {
        calls++;
        const where = `${operation} as ${caller.label} (${action}): got ${reply.status} ${reply.body?.code ?? ""}/${reply.body?.reason ?? ""}`;
        if (allowed(action, caller.principal)) {
          if (reply.status === 401) failures.push(`allowed but ${where}`);
          if (reply.status === 403 && reply.body?.reason === "ROLE_NOT_ALLOWED") failures.push(`allowed but ${where}`);
        } else {
          const want = caller.token === null ? 401 : 403;
          if (reply.status !== want) failures.push(`denied: expected ${want}, ${where}`);
          else if (want === 403 && reply.body?.reason !== "ROLE_NOT_ALLOWED") failures.push(`denied: expected ROLE_NOT_ALLOWED, ${where}`);
          else if (reply.body?.code !== (want === 401 ? "unauthenticated" : "permission_denied")) failures.push(`denied: wrong code, ${where}`);
        }
      }
    }
    assert.deepEqual(failures, [], `${failures.length} of ${calls} calls broke the policy`);
  });

  it("refuses an IP-fenced read from a disallowed IP (403 IP_NOT_ALLOWED), whatever the role", async () => {
    const from = { "x-forwarded-for": "192.0.2.10" };
    const fencedRoutes = Object.entries(REST_POLICY).filter(([, a]) => IP_FENCED_ACTIONS.has(a));
    assert.ok(fencedRoutes.some(([op]) => op === `GET /v1/stores/{store}/secrets/{name}`));
    for (const caller of callers) {
      restFails(
        await rest(s.url, "GET", `/v1/stores/${STORE}/secrets/${SECRET}`, undefined, caller.token, from),
        403,
        "permission_denied",
        "IP_NOT_ALLOWED",
        `GET secret from 192.0.2.10 as ${caller.label}`,
      );
      restFails(
        await rest(s.url, "POST", `/v1/stores/${STORE}/secrets/${SECRET}/verify`, { value: VALUE }, caller.token, from),
        403,
        "permission_denied",
        "IP_NOT_ALLOWED",
        `verify from 192.0.2.10 as ${caller.label}`,
      );
      const rpc = await callRpcWith(transport, caller.token, from);
      assert.equal(rpc.code, "PermissionDenied", `GetSecret from 192.0.2.10 as ${caller.label}: ${rpc.code} ${rpc.message}`);
      assert.equal(rpc.reason, "IP_NOT_ALLOWED", `GetSecret from 192.0.2.10 as ${caller.label}`);
    }
    // The same read from loopback works, and calls that are not reads of values are not fenced.
    const admin = callers.find((c) => c.label === "admin") as Caller;
    assert.equal((await rest(s.url, "GET", `/v1/stores/${STORE}/secrets/${SECRET}`, undefined, admin.token)).status, 200);
    assert.equal((await rest(s.url, "GET", "/v1/stores", undefined, admin.token, from)).status, 200);
  });
});

/** A REST call whose reply may not be JSON (GET /metrics is text): the body is parsed when it is JSON. */
async function restRaw(baseUrl: string, method: string, path: string, body: unknown, token: string | null): Promise<JsonReply> {
  const res = await fetch(baseUrl + path, {
    method,
    headers: { ...(body === undefined ? {} : { "content-type": "application/json" }), ...(token === null ? {} : { authorization: `Bearer ${token}` }) },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(CALL_TIMEOUT_MS),
  });
  const text = await res.text();
  let parsed: unknown;
  try {
    parsed = text === "" ? undefined : JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  return { status: res.status, headers: res.headers, body: parsed };
}

/** GetSecret of the matrix secret over Connect JSON with extra headers. */
async function callRpcWith(transport: Transport, token: string | null, headers: Record<string, string>): Promise<Outcome> {
  const client: Client<typeof SecretService> = createClient(SecretService, transport);
  try {
    await client.getSecret(
      { store: STORE, name: SECRET },
      { headers: { ...headers, ...(token === null ? {} : { authorization: `Bearer ${token}` }) }, timeoutMs: CALL_TIMEOUT_MS },
    );
    return { code: "ok", reason: undefined, message: "" };
  } catch (err) {
    const ce = ConnectError.from(err);
    return { code: codeName(ce.code), reason: ce.findDetails(ErrorInfoSchema)[0]?.reason, message: ce.rawMessage };
  }
}
