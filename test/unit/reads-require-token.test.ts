import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { createAccessControl } from "../../src/auth/access.js";
import { loadConfig } from "../../src/config/config.js";
import { LatchkeyError } from "../../src/domain/errors.js";

/** LATCHKEY_READS_REQUIRE_TOKEN: behind a sidecar the IP alone cannot tell callers apart, so reads need a token. */
describe("reads that require a token", () => {
  const ADMIN = "admin-token-0123456789";
  const access = (readsRequireToken: boolean) =>
    createAccessControl({ adminTokens: [ADMIN], allowedIps: ["127.0.0.0/8"], trustedProxies: [], readsRequireToken });

  it("refuses an anonymous read from an allowed IP as unauthenticated", async () => {
    const ac = access(true);
    const anon = await ac.authenticate(undefined);
    for (const action of ["secrets.read", "secrets.verify", "vars.read"] as const) {
      assert.throws(
        () => ac.authorize(action, anon, "127.0.0.1"),
        (err: unknown) => err instanceof LatchkeyError && err.code === "unauthenticated",
        action,
      );
    }
  });

  it("still lets a token read from an allowed IP, and still fences reads by IP", async () => {
    const ac = access(true);
    const admin = await ac.authenticate(`Bearer ${ADMIN}`);
    ac.authorize("secrets.read", admin, "127.0.0.1");
    assert.throws(
      () => ac.authorize("secrets.read", admin, "192.0.2.1"),
      (err: unknown) => err instanceof LatchkeyError && err.code === "permission_denied",
    );
  });

  it("leaves anonymous reads alone when off (the default), and health is public either way", async () => {
    const anon = await access(false).authenticate(undefined);
    access(false).authorize("secrets.read", anon, "127.0.0.1");
    access(true).authorize("public", anon, "127.0.0.1");
    assert.equal(loadConfig({}).readsRequireToken, false);
    assert.equal(loadConfig({ LATCHKEY_READS_REQUIRE_TOKEN: "true" }).readsRequireToken, true);
    assert.throws(() => loadConfig({ LATCHKEY_READS_REQUIRE_TOKEN: "yes" }), /LATCHKEY_READS_REQUIRE_TOKEN/);
  });
});
