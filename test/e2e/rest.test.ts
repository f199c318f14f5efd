import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { ADMIN_TOKEN, startTestServer, type TestServer } from "../support/server.js";

/** Every seed-003 REST route and error status, over a real socket. */
describe("REST API (seed 003)", () => {
  let s: TestServer;
  before(async () => {
    s = await startTestServer();
  });
  after(() => s.stop());

  const post = (path: string, body: unknown, token: string | null = ADMIN_TOKEN) =>
    fetch(s.url + path, {
      method: "POST",
      headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
      body: typeof body === "string" ? body : JSON.stringify(body),
    });
  const put = (path: string, body: unknown) =>
    s.admin(path, { method: "PUT", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });

  it("creates a manual secret: 201 with the SecretValue", async () => {
    const res = await post("/v1/secrets", {
      name: "db/password",
      kind: "manual",
      value: "s3cr3t-rest",
      description: "primary db password",
    });
    assert.equal(res.status, 201);
    assert.match(res.headers.get("content-type") ?? "", /application\/json/);
    const body = await res.json();
    assert.equal(body.name, "db/password");
    assert.equal(body.kind, "manual");
    assert.equal(body.version, 1);
    assert.equal(body.value, "s3cr3t-rest");
    assert.match(body.created_at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00$/);
  });

  it("creates an automatic secret with a generated value", async () => {
    const res = await post("/v1/secrets", {
      name: "svc/api-key",
      kind: "automatic",
      rotation_interval_secs: 86400,
      grace_period_secs: 3600,
    });
    assert.equal(res.status, 201);
    const body = await res.json();
    assert.equal(body.kind, "automatic");
    assert.equal(body.version, 1);
    assert.equal(typeof body.value, "string");
    assert.ok(body.value.length >= 32);
  });

  it("rejects a duplicate name with 409", async () => {
    const res = await post("/v1/secrets", { name: "db/password", value: "x" });
    assert.equal(res.status, 409);
    const body = await res.json();
    assert.match(body.error, /already exists/);
    assert.equal(body.code, "already_exists");
    assert.match(body.request_id, /^req_/);
    assert.equal(body.request_id, res.headers.get("x-request-id"));
  });

  it("rejects bad bodies with 400 and a clear error", async () => {
    const cases: [unknown, RegExp][] = [
      ["{not json", /not valid JSON/],
      [[1, 2], /JSON object/],
      [{ kind: "manual", value: "x" }, /name is required/],
      [{ name: "bad name!", value: "x" }, /name must be/],
      [{ name: "a/../b", value: "x" }, /name must be/],
      [{ name: "m1" }, /value is required/],
      [{ name: "m2", value: "" }, /value must not be empty/],
      [{ name: "m3", value: "x".repeat(10_241) }, /at most 10240/],
      [{ name: "m4", value: 42 }, /value must be a string/],
      [{ name: "m5", value: "x", kind: "weird" }, /kind must be/],
      [{ name: "m6", value: "x", rotation_interval_secs: 5 }, /automatic secrets only/],
      [{ name: "a1", kind: "automatic", rotation_interval_secs: 0 }, /rotation_interval/],
      [{ name: "a2", kind: "automatic", grace_period_secs: -1 }, /grace_period/],
      [{ name: "a3", kind: "automatic", rotation_interval_secs: 1.5 }, /whole number/],
      [{ name: "m7", value: "x", colour: "red" }, /unknown field "colour"/],
    ];
    for (const [body, message] of cases) {
      const res = await post("/v1/secrets", body);
      assert.equal(res.status, 400, `status for ${JSON.stringify(body).slice(0, 60)}`);
      const err = await res.json();
      assert.match(err.error, message);
    }
    const list = await (await s.admin("/v1/secrets")).json();
    assert.deepEqual(
      list.map((m: { name: string }) => m.name),
      ["db/password", "svc/api-key"],
      "failed creates changed nothing",
    );
  });

  it("accepts a JSON body sent with curl's default form content type", async () => {
    const res = await fetch(`${s.url}/v1/secrets`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", authorization: `Bearer ${ADMIN_TOKEN}` },
      body: JSON.stringify({ name: "curl/default", value: "v" }),
    });
    assert.equal(res.status, 201);
    assert.equal((await s.admin("/v1/secrets/curl/default", { method: "DELETE" })).status, 204);
  });

  it("reads the current value by a name containing slashes", async () => {
    const res = await fetch(`${s.url}/v1/secrets/db/password`);
    assert.equal(res.status, 200);
    const body = await res.json();
    assert.deepEqual(Object.keys(body).sort(), ["created_at", "kind", "name", "value", "version"]);
    assert.equal(body.value, "s3cr3t-rest");
    const encoded = await (await fetch(`${s.url}/v1/secrets/db%2Fpassword`)).json();
    assert.equal(encoded.value, "s3cr3t-rest");
  });

  it("answers 404 for a missing secret", async () => {
    const res = await fetch(`${s.url}/v1/secrets/nope/nothing`);
    assert.equal(res.status, 404);
    assert.match((await res.json()).error, /not found/);
  });

  it("lists metadata only, never values", async () => {
    const res = await s.admin("/v1/secrets");
    assert.equal(res.status, 200);
    const text = await res.text();
    assert.doesNotMatch(text, /s3cr3t-rest/);
    const list = JSON.parse(text);
    assert.ok(Array.isArray(list));
    const db = list.find((m: { name: string }) => m.name === "db/password");
    assert.equal(db.kind, "manual");
    assert.equal(db.description, "primary db password");
    assert.equal(db.version, 1);
    assert.equal("value" in db, false);
  });

  it("pages the list with limit and cursor", async () => {
    for (const n of ["page/a", "page/b", "page/c"]) assert.equal((await post("/v1/secrets", { name: n, value: "v" })).status, 201);
    const first = await s.admin("/v1/secrets?prefix=page/&limit=2");
    assert.deepEqual((await first.json()).map((m: { name: string }) => m.name), ["page/a", "page/b"]);
    const cursor = first.headers.get("x-next-cursor");
    assert.ok(cursor);
    const second = await s.admin(`/v1/secrets?prefix=page/&limit=2&cursor=${cursor}`);
    assert.deepEqual((await second.json()).map((m: { name: string }) => m.name), ["page/c"]);
    assert.equal(second.headers.get("x-next-cursor"), null);
    assert.equal((await s.admin("/v1/secrets?limit=0")).status, 400);
    assert.equal((await s.admin("/v1/secrets?limit=2&cursor=garbage")).status, 400);
  });

  it("updates metadata and value: a new version, the old one valid for the grace period", async () => {
    const res = await put("/v1/secrets/db/password", {
      value: "n3w-s3cr3t",
      description: "rotated manually",
      grace_period_secs: 3600,
    });
    assert.equal(res.status, 200);
    const meta = await res.json();
    assert.equal(meta.version, 2);
    assert.equal(meta.description, "rotated manually");
    assert.equal(meta.grace_period_secs, 3600);
    assert.equal("value" in meta, false);
    assert.equal((await (await fetch(`${s.url}/v1/secrets/db/password`)).json()).value, "n3w-s3cr3t");
    // A grace period sent with the new value applies to the version it supersedes.
    const old = await (await post("/v1/secrets/db/password/verify", { value: "s3cr3t-rest" }, null)).json();
    assert.deepEqual(old, { valid: true, version: 1 });
    assert.equal((await put("/v1/secrets/db/password", { value: "third" })).status, 200);
    const graced = await (await post("/v1/secrets/db/password/verify", { value: "n3w-s3cr3t" }, null)).json();
    assert.deepEqual(graced, { valid: true, version: 2 });
    const current = await (await post("/v1/secrets/db/password/verify", { value: "third" }, null)).json();
    assert.deepEqual(current, { valid: true, version: 3 });
    const v2 = await (await fetch(`${s.url}/v1/secrets/db/password?version=2`)).json();
    assert.equal(v2.value, "n3w-s3cr3t");
  });

  it("rejects bad updates with 400/404 and changes nothing", async () => {
    assert.equal((await put("/v1/secrets/db/password", { value: "" })).status, 400);
    assert.equal((await put("/v1/secrets/db/password", { grace_period_secs: "soon" })).status, 400);
    assert.equal((await put("/v1/secrets/db/password", { name: "renamed" })).status, 400);
    assert.equal((await put("/v1/secrets/missing", { description: "x" })).status, 404);
    const meta = (await (await s.admin("/v1/secrets?prefix=db/")).json())[0];
    assert.equal(meta.version, 3);
    assert.equal(meta.description, "rotated manually");
  });

  it("rotates an automatic secret: new value, old one still verifies in its grace window", async () => {
    const before = await (await fetch(`${s.url}/v1/secrets/svc/api-key`)).json();
    const res = await post("/v1/secrets/svc/api-key/rotate", undefined);
    assert.equal(res.status, 200);
    const rotated = await res.json();
    assert.equal(rotated.version, 2);
    assert.notEqual(rotated.value, before.value);
    const oldCheck = await (await post("/v1/secrets/svc/api-key/verify", { value: before.value }, null)).json();
    assert.deepEqual(oldCheck, { valid: true, version: 1 });
    const newCheck = await (await post("/v1/secrets/svc/api-key/verify", { value: rotated.value }, null)).json();
    assert.deepEqual(newCheck, { valid: true, version: 2 });
    const wrong = await (await post("/v1/secrets/svc/api-key/verify", { value: "nope" }, null)).json();
    assert.deepEqual(wrong, { valid: false, version: null });
  });

  it("refuses to rotate a manual secret (400) and a missing one (404)", async () => {
    const manual = await post("/v1/secrets/db/password/rotate", {});
    assert.equal(manual.status, 400);
    assert.match((await manual.json()).error, /manual/);
    assert.equal((await post("/v1/secrets/ghost/rotate", {})).status, 404);
  });

  it("verify needs a value and a known secret", async () => {
    assert.equal((await post("/v1/secrets/db/password/verify", {}, null)).status, 400);
    assert.equal((await post("/v1/secrets/ghost/verify", { value: "x" }, null)).status, 404);
  });

  it("requires the bearer token for management: 401 without or with a wrong one", async () => {
    const calls: [string, string, unknown?][] = [
      ["POST", "/v1/secrets", { name: "x", value: "y" }],
      ["GET", "/v1/secrets"],
      ["PUT", "/v1/secrets/db/password", { description: "hacked" }],
      ["DELETE", "/v1/secrets/db/password"],
      ["POST", "/v1/secrets/svc/api-key/rotate", {}],
    ];
    for (const [method, path, body] of calls) {
      for (const auth of [undefined, "Bearer wrong-token-0123456789", "Basic abc", ADMIN_TOKEN]) {
        const res = await fetch(s.url + path, {
          method,
          headers: auth ? { authorization: auth } : {},
          body: body === undefined ? undefined : JSON.stringify(body),
        });
        assert.equal(res.status, 401, `${method} ${path} with ${auth ?? "no header"}`);
        assert.ok((await res.json()).error);
      }
    }
    const meta = (await (await s.admin("/v1/secrets?prefix=db/")).json())[0];
    assert.equal(meta.description, "rotated manually");
  });

  it("answers 404 for unknown routes and 405 for a wrong method", async () => {
    assert.equal((await fetch(`${s.url}/v1/other`)).status, 404);
    const res = await fetch(`${s.url}/v1/secrets/db/password`, { method: "PATCH" });
    assert.equal(res.status, 405);
    assert.match(res.headers.get("allow") ?? "", /GET/);
  });

  it("rejects an oversized body with 413", async () => {
    const res = await post("/v1/secrets", { name: "big", value: "x".repeat(300 * 1024) });
    assert.equal(res.status, 413);
  });

  it("deletes with 204, cascading to every version", async () => {
    const res = await s.admin("/v1/secrets/db/password", { method: "DELETE" });
    assert.equal(res.status, 204);
    assert.equal(await res.text(), "");
    assert.equal((await fetch(`${s.url}/v1/secrets/db/password`)).status, 404);
    assert.equal((await fetch(`${s.url}/v1/secrets/db/password?version=1`)).status, 404);
    assert.equal((await s.admin("/v1/secrets/db/password", { method: "DELETE" })).status, 404);
    // The name is free again.
    assert.equal((await post("/v1/secrets", { name: "db/password", value: "again" })).status, 201);
    assert.equal((await (await fetch(`${s.url}/v1/secrets/db/password`)).json()).version, 1);
  });

  it("serves /healthz and /readyz without credentials", async () => {
    const h = await fetch(`${s.url}/healthz`);
    assert.equal(h.status, 200);
    assert.deepEqual(await h.json(), { status: "ok" });
    const r = await fetch(`${s.url}/readyz`);
    assert.equal(r.status, 200);
    assert.deepEqual(await r.json(), { status: "ready" });
  });

  it("carries a request id on every response and in the log line", async () => {
    const res = await fetch(`${s.url}/v1/secrets/ghost`);
    const id = res.headers.get("x-request-id");
    assert.ok(id);
    await res.text();
    await new Promise((r) => setTimeout(r, 20));
    const line = s.logs.map((l) => JSON.parse(l)).find((l) => l.request_id === id);
    assert.ok(line, "a log line with the request id");
    assert.equal(line.op, "GET /v1/secrets/{name}");
    assert.equal(line.code, "not_found");
    assert.equal(line.status, 404);
    assert.equal(typeof line.duration_ms, "number");
  });
});

describe("REST reads and the IP allowlist", () => {
  let s: TestServer;
  before(async () => {
    s = await startTestServer({ LATCHKEY_ALLOWED_IPS: "10.9.8.0/24", LATCHKEY_TRUSTED_PROXIES: "127.0.0.1" });
    await s.admin("/v1/secrets", { method: "POST", body: JSON.stringify({ name: "ip/guarded", value: "v4lue" }) });
  });
  after(() => s.stop());

  it("refuses reads from an IP outside the allowlist with 403", async () => {
    const get = await fetch(`${s.url}/v1/secrets/ip/guarded`);
    assert.equal(get.status, 403);
    assert.match((await get.json()).error, /not allowed/);
    const verify = await fetch(`${s.url}/v1/secrets/ip/guarded/verify`, { method: "POST", body: '{"value":"v4lue"}' });
    assert.equal(verify.status, 403);
  });

  it("believes X-Forwarded-For only from a trusted proxy", async () => {
    const res = await fetch(`${s.url}/v1/secrets/ip/guarded`, { headers: { "x-forwarded-for": "10.9.8.7" } });
    assert.equal(res.status, 200);
    assert.equal((await res.json()).value, "v4lue");
    const spoofed = await fetch(`${s.url}/v1/secrets/ip/guarded`, { headers: { "x-forwarded-for": "10.9.8.7, 192.0.2.1" } });
    assert.equal(spoofed.status, 403, "the hop nearest the proxy is the client");
    const garbage = await fetch(`${s.url}/v1/secrets/ip/guarded`, { headers: { "x-forwarded-for": "not-an-ip" } });
    assert.equal(garbage.status, 403);
  });

  it("does not need the admin token for reads, and the token does not bypass the allowlist", async () => {
    const res = await s.admin("/v1/secrets/ip/guarded");
    assert.equal(res.status, 403);
  });
});
