import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Code, type ConnectError } from "@connectrpc/connect";
import { ErrorInfoSchema, RetryInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { type AllClients, auditEntries, auditFor, callOpts, grpcAll, type MadeToken, makeToken } from "../support/access.js";
import { connectDetail, connectJson, type JsonReply, rest, rpcFails } from "../support/clients.js";
import { restFails } from "../support/lifecycle.js";
import { ADMIN_TOKEN, startTestServer, type TestServer } from "../support/server.js";

/**
 * Limits on failed verifications, end to end: with 3 failures per caller and 5 per secret (per minute), a caller
 * that guessed wrong 3 times is refused, even with the right value (RESOURCE_EXHAUSTED / 429, Retry-After,
 * google.rpc.RetryInfo, reason VERIFY_RATE_LIMITED); other callers (another token, another IP behind a trusted
 * proxy) go on until the secret's own limit; correct verifications cost nothing; every attempt is audited.
 */

const PER_CALLER = 3;
const PER_SECRET = 5;
const VALUE = (name: string) => `right-value-for-${name}`;

describe("verify limits", () => {
  let s: TestServer;
  let g: AllClients;

  before(async () => {
    s = await startTestServer({
      LATCHKEY_VERIFY_FAILURES_PER_CALLER: String(PER_CALLER),
      LATCHKEY_VERIFY_FAILURES_PER_SECRET: String(PER_SECRET),
      LATCHKEY_TRUSTED_PROXIES: "127.0.0.1",
      LATCHKEY_ALLOWED_IPS: "127.0.0.0/8,::1,10.0.0.0/8",
    });
    g = grpcAll(s.url);
    for (const name of ["limits/a", "limits/b", "limits/c", "limits/d", "limits/e"]) {
      assert.equal((await rest(s.url, "POST", "/v1/secrets", { name, value: VALUE(name) })).status, 201);
    }
  });
  after(async () => {
    g?.close();
    await s?.stop();
  });

  const verifier = (label: string): Promise<MadeToken> => makeToken(s.url, { label, role: "verifier" });
  const restVerify = (name: string, value: string, token: string | null, ip?: string) =>
    rest(s.url, "POST", `/v1/secrets/${name}/verify`, { value }, token, ip ? { "x-forwarded-for": ip } : {});

  /** A verification that ran: 200 with its verdict. */
  async function verdict(name: string, value: string, token: string | null, ip?: string): Promise<boolean> {
    const reply = await restVerify(name, value, token, ip);
    assert.equal(reply.status, 200, `verify ${name} (${token ? "token" : ip}): ${reply.status} ${JSON.stringify(reply.body)}`);
    return reply.body.valid as boolean;
  }

  /** A refused verification over REST: 429, Retry-After (whole seconds, at most a minute), reason. Returns the delay. */
  function assertLimited(reply: JsonReply, what: string): number {
    restFails(reply, 429, "resource_exhausted", "VERIFY_RATE_LIMITED", what);
    const retryAfter = reply.headers.get("retry-after");
    assert.match(retryAfter ?? "", /^\d+$/, `${what}: Retry-After is whole seconds`);
    const seconds = Number(retryAfter);
    assert.ok(seconds >= 1 && seconds <= 60, `${what}: Retry-After ${seconds}`);
    return seconds;
  }

  /** A refused verification over gRPC: RESOURCE_EXHAUSTED with RetryInfo and ErrorInfo. Returns the delay in seconds. */
  function assertRpcLimited(err: ConnectError, what: string): number {
    assert.equal(err.findDetails(ErrorInfoSchema)[0]?.reason, "VERIFY_RATE_LIMITED", `${what}: reason`);
    const retry = err.findDetails(RetryInfoSchema)[0];
    assert.ok(retry?.retryDelay, `${what}: RetryInfo with a delay`);
    const seconds = Number(retry.retryDelay.seconds) + retry.retryDelay.nanos / 1e9;
    assert.ok(seconds >= 1 && seconds <= 60, `${what}: retry delay ${seconds}`);
    return seconds;
  }

  it("refuses a caller after 3 wrong values, even with the right one, with Retry-After and RetryInfo", async () => {
    const a = await verifier("limits-a");
    // Correct verifications cost nothing.
    for (let i = 0; i < 10; i++) assert.equal(await verdict("limits/a", VALUE("limits/a"), a.secret), true, `correct #${i + 1}`);
    for (let i = 0; i < PER_CALLER; i++) assert.equal(await verdict("limits/a", `wrong-${i}`, a.secret), false, `wrong #${i + 1}`);

    const restDelay = assertLimited(await restVerify("limits/a", VALUE("limits/a"), a.secret), "4th attempt, right value, REST");
    assert.ok(restDelay <= Math.ceil(60 / PER_CALLER), `one failure refills in ${60 / PER_CALLER} s: Retry-After ${restDelay}`);
    const grpcErr = await rpcFails(
      g.secrets.verifySecret({ name: "limits/a", value: VALUE("limits/a") }, callOpts(a.secret)),
      Code.ResourceExhausted,
      "4th attempt, gRPC",
    );
    const grpcDelay = assertRpcLimited(grpcErr, "gRPC");
    assert.ok(Math.abs(grpcDelay - restDelay) <= 1, `RetryInfo ${grpcDelay} s agrees with Retry-After ${restDelay} s`);
    const cj = await connectJson(s.url, "SecretService/VerifySecret", { name: "limits/a", value: VALUE("limits/a") }, a.secret);
    assert.equal(cj.status, 429, JSON.stringify(cj.body));
    assert.equal(cj.body.code, "resource_exhausted");
    assert.ok(connectDetail(cj.body, RetryInfoSchema)?.retryDelay, "Connect JSON error has RetryInfo");
    assert.equal(connectDetail(cj.body, ErrorInfoSchema)?.reason, "VERIFY_RATE_LIMITED");
    // The limit is the caller's: another secret is refused to it too.
    assertLimited(await restVerify("limits/c", VALUE("limits/c"), a.secret), "the limited caller on another secret");
    // Nothing else about the token is limited, and the refusals did not count against the secret.
    const other = await verifier("limits-a2");
    assert.equal(await verdict("limits/a", "wrong-other", other.secret), false);
    assert.equal(await verdict("limits/a", "wrong-other-2", other.secret), false);
    assertLimited(await restVerify("limits/a", VALUE("limits/a"), other.secret), "limits/a has had its 5 failures");
  });

  it("lets another caller verify until the secret's own limit is reached", async () => {
    const b = await verifier("limits-b");
    const c = await verifier("limits-c");
    const d = await verifier("limits-d");
    for (let i = 0; i < PER_CALLER; i++) assert.equal(await verdict("limits/b", `b-wrong-${i}`, b.secret), false);
    assertLimited(await restVerify("limits/b", VALUE("limits/b"), b.secret), "b is limited");

    // c still verifies: right values freely, and wrong ones until the secret has had 5 failures.
    assert.equal(await verdict("limits/b", VALUE("limits/b"), c.secret), true);
    assert.equal((await g.secrets.verifySecret({ name: "limits/b", value: VALUE("limits/b") }, callOpts(c.secret))).valid, true);
    for (let i = 0; i < PER_SECRET - PER_CALLER; i++) assert.equal(await verdict("limits/b", `c-wrong-${i}`, c.secret), false);
    assertLimited(await restVerify("limits/b", VALUE("limits/b"), c.secret), "the secret's limit, for c");
    assertLimited(await restVerify("limits/b", VALUE("limits/b"), d.secret), "the secret's limit, for a fresh token");
    assertLimited(await restVerify("limits/b", VALUE("limits/b"), null, "10.6.6.6"), "the secret's limit, for an anonymous caller");
    assertRpcLimited(
      await rpcFails(g.secrets.verifySecret({ name: "limits/b", value: VALUE("limits/b") }, callOpts(d.secret)), Code.ResourceExhausted),
      "the secret's limit over gRPC",
    );

    // c has one failure left for other secrets; d has all of its own.
    assert.equal(await verdict("limits/c", VALUE("limits/c"), c.secret), true);
    assert.equal(await verdict("limits/c", "c-wrong-last", c.secret), false);
    assertLimited(await restVerify("limits/c", VALUE("limits/c"), c.secret), "c's own limit");
    assert.equal(await verdict("limits/c", VALUE("limits/c"), d.secret), true);
  });

  it("tells callers without a token apart by IP, behind a trusted proxy, on REST and gRPC", async () => {
    for (let i = 0; i < PER_CALLER; i++) assert.equal(await verdict("limits/d", `ip-wrong-${i}`, null, "10.8.0.1"), false);
    assertLimited(await restVerify("limits/d", VALUE("limits/d"), null, "10.8.0.1"), "10.8.0.1 is limited");
    const fromIp = (ip: string) => callOpts(null, { "x-forwarded-for": ip });
    assertRpcLimited(
      await rpcFails(g.secrets.verifySecret({ name: "limits/e", value: VALUE("limits/e") }, fromIp("10.8.0.1")), Code.ResourceExhausted),
      "10.8.0.1 over gRPC, another secret",
    );
    // Another IP goes on.
    assert.equal(await verdict("limits/d", VALUE("limits/d"), null, "10.8.0.2"), true);
    assert.equal((await g.secrets.verifySecret({ name: "limits/d", value: VALUE("limits/d") }, fromIp("10.8.0.2"))).valid, true);
    assert.equal(await verdict("limits/d", "ip2-wrong", null, "10.8.0.2"), false);
    assert.equal((await g.secrets.verifySecret({ name: "limits/d", value: "ip3-wrong" }, fromIp("10.8.0.3"))).valid, false);
    // Five failures on limits/d now: the secret is limited for everyone.
    assertLimited(await restVerify("limits/d", VALUE("limits/d"), null, "10.8.0.4"), "the secret's limit for a fresh IP");
    assertLimited(await restVerify("limits/d", VALUE("limits/d"), ADMIN_TOKEN), "the secret's limit for the admin");
  });

  it("audits every attempt: matches, failures (version 0) and refusals (resource_exhausted)", async () => {
    const t = await verifier("limits-audit");
    const ids: string[] = [];
    const id = (r: JsonReply) => {
      ids.push(r.headers.get("x-request-id") as string);
      return r;
    };
    assert.equal((await id(await restVerify("limits/e", VALUE("limits/e"), t.secret))).body.valid, true);
    for (let i = 0; i < PER_CALLER; i++) assert.equal((await id(await restVerify("limits/e", `audit-wrong-${i}`, t.secret))).body.valid, false);
    assertLimited(await id(await restVerify("limits/e", VALUE("limits/e"), t.secret)), "refused");
    await auditFor(s.url, ids, { token_id: t.id });
    const entries = (await auditEntries(s.url, { token_id: t.id })).reverse();
    assert.deepEqual(
      entries.map((e) => [e.request_id, e.op, e.store, e.name, e.version, e.code]),
      [
        [ids[0], "POST /v1/secrets/{name}/verify", "default", "limits/e", 1, "ok"],
        [ids[1], "POST /v1/secrets/{name}/verify", "default", "limits/e", 0, "ok"],
        [ids[2], "POST /v1/secrets/{name}/verify", "default", "limits/e", 0, "ok"],
        [ids[3], "POST /v1/secrets/{name}/verify", "default", "limits/e", 0, "ok"],
        [ids[4], "POST /v1/secrets/{name}/verify", "default", "limits/e", 0, "resource_exhausted"],
      ],
    );
    assert.ok(entries.every((e) => e.token_id === t.id && e.role === "verifier"));
    // No value in them.
    const text = JSON.stringify(await auditEntries(s.url));
    for (const v of [VALUE("limits/e"), "audit-wrong-0", VALUE("limits/a")]) assert.equal(text.includes(v), false, `audit holds ${v}`);
  });
});
