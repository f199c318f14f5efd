import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type AccessOptions, createAccessControl, normalizeIp } from "../../src/auth/access.js";
import type { Action } from "../../src/auth/policy.js";
import { type ErrorCode, LatchkeyError } from "../../src/domain/errors.js";
import { ANONYMOUS } from "../../src/domain/principal.js";

/** Who may call what: the client IP behind proxies, the read allowlist and the admin bearer tokens. */

const TOKEN_A = "admin-token-aaaaaaaaaaaa";
const TOKEN_B = "admin-token-bbbbbbbbbbbb";

function access(over: Partial<AccessOptions> = {}) {
  return createAccessControl({ adminTokens: [TOKEN_A], allowedIps: ["127.0.0.0/8", "::1"], trustedProxies: [], ...over });
}

type Access = ReturnType<typeof access>;

/** A whole access decision, as the transports make it: authenticate the header, then authorize the action. */
async function check(ac: Access, action: Action, caller: { authorization?: string; ip?: string } = {}): Promise<void> {
  ac.authorize(action, await ac.authenticate(caller.authorization), caller.ip);
}

function isRefusal(err: unknown, code: ErrorCode, message?: RegExp, reason?: string): true {
  assert.ok(err instanceof LatchkeyError, `a LatchkeyError, got ${String(err)}`);
  assert.equal(err.code, code, err.message);
  if (message) assert.match(err.message, message);
  if (reason !== undefined) assert.equal(err.reason, reason);
  return true;
}

async function assertRefused(p: Promise<unknown>, code: ErrorCode, message?: RegExp, reason?: string): Promise<void> {
  await assert.rejects(p, (err: unknown) => isRefusal(err, code, message, reason));
}

describe("normalizeIp", () => {
  it("strips the IPv4-mapped IPv6 prefix and leaves other addresses alone", () => {
    assert.equal(normalizeIp("::ffff:10.1.2.3"), "10.1.2.3");
    assert.equal(normalizeIp("10.1.2.3"), "10.1.2.3");
    assert.equal(normalizeIp("::1"), "::1");
    assert.equal(normalizeIp("::ffff:abcd"), "::ffff:abcd", "not followed by an IPv4 address");
    assert.equal(normalizeIp("2001:db8::1"), "2001:db8::1");
  });
});

describe("clientIp", () => {
  const proxied = access({ trustedProxies: ["10.0.0.1", "10.1.0.0/16"] });

  it("is undefined when the peer is unknown", () => {
    assert.equal(access().clientIp(undefined, "203.0.113.9"), undefined);
  });

  it("is the TCP peer, normalised from an IPv4-mapped address", () => {
    assert.equal(access().clientIp("::ffff:192.0.2.5", undefined), "192.0.2.5");
    assert.equal(access().clientIp("2001:db8::5", undefined), "2001:db8::5");
  });

  it("ignores X-Forwarded-For from a peer that is not a trusted proxy", () => {
    assert.equal(access().clientIp("192.0.2.5", "127.0.0.1"), "192.0.2.5");
    assert.equal(proxied.clientIp("10.0.0.2", "127.0.0.1"), "10.0.0.2");
  });

  it("uses the forwarded client when the peer is a trusted proxy", () => {
    assert.equal(proxied.clientIp("10.0.0.1", "203.0.113.9"), "203.0.113.9");
    assert.equal(proxied.clientIp("::ffff:10.0.0.1", "::ffff:203.0.113.9"), "203.0.113.9", "both normalised");
  });

  it("uses the peer when a trusted proxy sends an empty X-Forwarded-For", () => {
    assert.equal(proxied.clientIp("10.0.0.1", ""), "10.0.0.1");
  });

  it("takes the hop nearest the proxy, not a client-supplied one further left", () => {
    assert.equal(proxied.clientIp("10.0.0.1", "127.0.0.1, 203.0.113.9"), "203.0.113.9");
  });

  it("walks from the right past every trusted hop", () => {
    assert.equal(proxied.clientIp("10.0.0.1", "198.51.100.1, 203.0.113.9, 10.1.2.3, 10.1.9.9"), "203.0.113.9");
  });

  it("takes the leftmost hop when every hop is a trusted proxy", () => {
    assert.equal(proxied.clientIp("10.0.0.1", "10.1.0.5,10.1.0.6"), "10.1.0.5");
  });

  it("trims spaces around hops", () => {
    assert.equal(proxied.clientIp("10.0.0.1", "  203.0.113.9  ,10.1.0.1 "), "203.0.113.9");
  });

  it("gives up (undefined) on a malformed hop reached while walking", () => {
    assert.equal(proxied.clientIp("10.0.0.1", "not-an-ip"), undefined);
    assert.equal(proxied.clientIp("10.0.0.1", "203.0.113.9, 10.1.0.1, garbage"), undefined);
    assert.equal(proxied.clientIp("10.0.0.1", "203.0.113.9,,10.1.0.1"), undefined, "an empty hop");
    assert.equal(proxied.clientIp("10.0.0.1", "203.0.113.9:443"), undefined, "a port is not an IP");
  });

  it("does not look at hops left of the client", () => {
    assert.equal(proxied.clientIp("10.0.0.1", "garbage, 203.0.113.9"), "203.0.113.9");
  });

  it("understands IPv6 proxies and clients", () => {
    const v6 = access({ trustedProxies: ["fd00::/8"] });
    assert.equal(v6.clientIp("fd00::1", "2001:db8::7, fd12::3"), "2001:db8::7");
  });
});

describe("authorize", () => {
  describe("public", () => {
    it("lets anyone through", async () => {
      await check(access(), "public");
      await check(access({ adminTokens: [], allowedIps: [] }), "public", { ip: "203.0.113.9" });
      access({ adminTokens: [], allowedIps: [] }).authorize("public", ANONYMOUS, undefined);
    });
  });

  describe("reads (IP-fenced)", () => {
    const ac = access({ allowedIps: ["127.0.0.1", "10.9.8.0/24", "2001:db8::/32", "::1"] });

    it("allows an IP in the allowlist, as an address or in a CIDR block", async () => {
      for (const ip of ["127.0.0.1", "10.9.8.0", "10.9.8.7", "10.9.8.255", "2001:db8::1", "2001:db8:ffff::9", "::1"]) {
        await check(ac, "secrets.read", { ip });
      }
    });

    it("refuses an IP outside the allowlist with permission_denied IP_NOT_ALLOWED", async () => {
      for (const ip of ["127.0.0.2", "10.9.9.1", "10.9.7.255", "2001:db9::1", "::2", "192.0.2.1"]) {
        await assertRefused(check(ac, "secrets.read", { ip }), "permission_denied", /not allowed/, "IP_NOT_ALLOWED");
      }
    });

    it("fences every value read: secrets.read, secrets.verify and vars.read", async () => {
      for (const action of ["secrets.read", "secrets.verify", "vars.read"] as const) {
        await check(ac, action, { ip: "127.0.0.1" });
        await assertRefused(check(ac, action, { ip: "192.0.2.1" }), "permission_denied", /not allowed/, "IP_NOT_ALLOWED");
      }
    });

    it("refuses an unknown IP with permission_denied", async () => {
      await assertRefused(check(ac, "secrets.read"), "permission_denied", /unknown/);
    });

    it("refuses something that is not an IP", async () => {
      await assertRefused(check(ac, "secrets.read", { ip: "localhost" }), "permission_denied");
    });

    it("is not granted by an admin token", async () => {
      await assertRefused(
        check(ac, "secrets.read", { ip: "192.0.2.1", authorization: `Bearer ${TOKEN_A}` }),
        "permission_denied",
        undefined,
        "IP_NOT_ALLOWED",
      );
    });

    it("refuses every IP with an empty allowlist", async () => {
      await assertRefused(check(access({ allowedIps: [] }), "secrets.read", { ip: "127.0.0.1" }), "permission_denied");
    });
  });

  describe("admin", () => {
    const ac = access({ adminTokens: [TOKEN_A, TOKEN_B] });
    const admin = (authorization: string | undefined) => check(ac, "tokens.manage", { authorization, ip: "127.0.0.1" });

    it("accepts each configured token", async () => {
      await admin(`Bearer ${TOKEN_A}`);
      await admin(`Bearer ${TOKEN_B}`);
    });

    it("accepts the scheme in any case and surrounding blanks after it", async () => {
      await admin(`bearer ${TOKEN_A}`);
      await admin(`BEARER ${TOKEN_A}`);
      await admin(`Bearer \t ${TOKEN_A} `);
    });

    it("refuses a missing or empty header as unauthenticated", async () => {
      await assertRefused(admin(undefined), "unauthenticated", /missing bearer token/);
      await assertRefused(admin(""), "unauthenticated", /missing bearer token/);
    });

    it("refuses a wrong token as unauthenticated", async () => {
      for (const h of ["Bearer wrong-token-0123456789", `Bearer ${TOKEN_A}x`, `Bearer ${TOKEN_A.slice(0, -1)}`]) {
        await assertRefused(admin(h), "unauthenticated", /invalid bearer token/);
      }
    });

    it("refuses other schemes and malformed headers", async () => {
      const basic = `Basic ${Buffer.from(`admin:${TOKEN_A}`).toString("base64")}`;
      for (const h of [basic, `Basic ${TOKEN_A}`, TOKEN_A, `Bearer`, `Bearer `, `Bearer${TOKEN_A}`, `Bearer ${TOKEN_A} extra`]) {
        await assertRefused(admin(h), "unauthenticated");
      }
    });

    it("never echoes the presented token", async () => {
      await assert.rejects(admin("Bearer leaked-token-value-123456"), (err: unknown) => err instanceof Error && !err.message.includes("leaked-token"));
    });

    it("is not granted by an allowed IP", async () => {
      await assertRefused(check(ac, "tokens.manage", { ip: "127.0.0.1" }), "unauthenticated");
    });

    it("refuses every token when none is configured", async () => {
      await assertRefused(check(access({ adminTokens: [] }), "tokens.manage", { authorization: `Bearer ${TOKEN_A}` }), "unauthenticated");
    });
  });
});
