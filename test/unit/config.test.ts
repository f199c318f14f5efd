import assert from "node:assert/strict";
import { resolve } from "node:path";
import { describe, it } from "node:test";
import { ConfigError, isIpOrCidr, loadConfig } from "../../src/config/config.js";

/** loadConfig: defaults, every rule, and one error listing every problem. */

const KEY = Buffer.alloc(32, 9);
const TOKEN = "admin-token-0123456789";

/** The problems loadConfig reports for `env`; fails the test if it does not throw a ConfigError. */
function problemsOf(env: Record<string, string>): readonly string[] {
  try {
    loadConfig(env);
  } catch (err) {
    assert.ok(err instanceof ConfigError, `a ConfigError, got ${String(err)}`);
    assert.equal(err.name, "ConfigError");
    for (const p of err.problems) assert.ok(err.message.includes(p), "the message carries every problem");
    return err.problems;
  }
  assert.fail(`expected a ConfigError for ${JSON.stringify(env)}`);
}

/** Asserts `env` yields exactly one problem, about `variable`. */
function assertOneProblem(env: Record<string, string>, variable: string): void {
  const problems = problemsOf(env);
  assert.equal(problems.length, 1, `one problem for ${JSON.stringify(env)}: ${problems.join(" | ")}`);
  assert.ok(problems[0]?.startsWith(`${variable}:`), `problem names ${variable}: ${problems[0]}`);
}

describe("loadConfig", () => {
  it("reads the connection limits, refusing zero timeouts, a headers timeout past the request timeout and bad stream counts", () => {
    assert.deepEqual(loadConfig({}).connectionLimits, { idleTimeoutMs: 10_000, headersTimeoutMs: 15_000, requestTimeoutMs: 60_000, maxConcurrentStreams: 256 });
    const c = loadConfig({ LATCHKEY_IDLE_TIMEOUT_MS: "500", LATCHKEY_HEADERS_TIMEOUT_MS: "900", LATCHKEY_REQUEST_TIMEOUT_MS: "2000", LATCHKEY_MAX_CONCURRENT_STREAMS: "8" });
    assert.deepEqual(c.connectionLimits, { idleTimeoutMs: 500, headersTimeoutMs: 900, requestTimeoutMs: 2000, maxConcurrentStreams: 8 });
    assertOneProblem({ LATCHKEY_IDLE_TIMEOUT_MS: "0" }, "LATCHKEY_IDLE_TIMEOUT_MS");
    assertOneProblem({ LATCHKEY_REQUEST_TIMEOUT_MS: "soon" }, "LATCHKEY_REQUEST_TIMEOUT_MS");
    assertOneProblem({ LATCHKEY_HEADERS_TIMEOUT_MS: "70000" }, "LATCHKEY_HEADERS_TIMEOUT_MS");
    for (const bad of ["0", "65536", "1.5", "many"]) assertOneProblem({ LATCHKEY_MAX_CONCURRENT_STREAMS: bad }, "LATCHKEY_MAX_CONCURRENT_STREAMS");
  });

  it("uses the documented defaults for an empty environment", () => {
    const c = loadConfig({});
    assert.equal(c.host, "127.0.0.1");
    assert.equal(c.port, 8200);
    assert.deepEqual(c.adminTokens, []);
    assert.deepEqual(c.allowedIps, ["127.0.0.0/8", "::1"]);
    assert.deepEqual(c.trustedProxies, []);
    assert.equal(c.dataDir, resolve("./data"));
    assert.equal(c.masterKey, undefined);
    assert.equal(c.logLevel, "info");
    assert.equal(c.maxVersions, 10);
    assert.equal(c.mongodbUri, undefined);
    assert.equal(c.mongodbDb, "latchkey");
  });

  it("treats blank values as unset", () => {
    const c = loadConfig({ LATCHKEY_HOST: "  ", LATCHKEY_PORT: "", LOG_LEVEL: " ", LATCHKEY_MASTER_KEY: "", MONGODB_URI: " " });
    assert.equal(c.host, "127.0.0.1");
    assert.equal(c.port, 8200);
    assert.equal(c.logLevel, "info");
    assert.equal(c.masterKey, undefined);
    assert.equal(c.mongodbUri, undefined);
  });

  it("returns a frozen config", () => {
    const c = loadConfig({ LATCHKEY_ADMIN_TOKEN: TOKEN });
    assert.ok(Object.isFrozen(c));
    assert.ok(Object.isFrozen(c.adminTokens));
    assert.ok(Object.isFrozen(c.allowedIps));
  });

  it("reads every variable when all are valid", () => {
    const c = loadConfig({
      LATCHKEY_HOST: "::",
      LATCHKEY_PORT: "0",
      LATCHKEY_ADMIN_TOKEN: ` ${TOKEN} , second-token-abcdefgh `,
      LATCHKEY_ALLOWED_IPS: "10.0.0.0/8, 192.168.1.7, 2001:db8::/32",
      LATCHKEY_TRUSTED_PROXIES: "127.0.0.1",
      LATCHKEY_DATA_DIR: "/var/lib/latchkey",
      LATCHKEY_MASTER_KEY: KEY.toString("base64"),
      LOG_LEVEL: "DEBUG",
      LATCHKEY_MAX_VERSIONS: "2",
      MONGODB_URI: "mongodb://db:27017/?replicaSet=rs0",
      LATCHKEY_MONGODB_DB: "latchkey_test",
    });
    assert.equal(c.host, "::");
    assert.equal(c.port, 0);
    assert.deepEqual(c.adminTokens, [TOKEN, "second-token-abcdefgh"]);
    assert.deepEqual(c.allowedIps, ["10.0.0.0/8", "192.168.1.7", "2001:db8::/32"]);
    assert.deepEqual(c.trustedProxies, ["127.0.0.1"]);
    assert.equal(c.dataDir, "/var/lib/latchkey");
    assert.ok(c.masterKey?.equals(KEY));
    assert.equal(c.logLevel, "debug");
    assert.equal(c.maxVersions, 2);
    assert.equal(c.mongodbUri, "mongodb://db:27017/?replicaSet=rs0");
    assert.equal(c.mongodbDb, "latchkey_test");
  });

  it("accepts localhost as the host", () => {
    assert.equal(loadConfig({ LATCHKEY_HOST: "localhost" }).host, "localhost");
  });

  it("accepts an empty allowlist as 'nobody may read'", () => {
    assert.deepEqual(loadConfig({ LATCHKEY_ALLOWED_IPS: "" }).allowedIps, []);
  });

  it("reports one problem for each bad variable", () => {
    const cases: [Record<string, string>, string][] = [
      [{ LATCHKEY_HOST: "example.com" }, "LATCHKEY_HOST"],
      [{ LATCHKEY_PORT: "http" }, "LATCHKEY_PORT"],
      [{ LATCHKEY_PORT: "65536" }, "LATCHKEY_PORT"],
      [{ LATCHKEY_PORT: "-1" }, "LATCHKEY_PORT"],
      [{ LATCHKEY_PORT: "80.5" }, "LATCHKEY_PORT"],
      [{ LATCHKEY_ADMIN_TOKEN: "short" }, "LATCHKEY_ADMIN_TOKEN"],
      [{ LATCHKEY_ADMIN_TOKEN: `${TOKEN},tooshort` }, "LATCHKEY_ADMIN_TOKEN"],
      [{ LATCHKEY_ADMIN_TOKEN: "token with spaces 0123456789" }, "LATCHKEY_ADMIN_TOKEN"],
      [{ LATCHKEY_ADMIN_TOKEN: "tökén-0123456789abcdef" }, "LATCHKEY_ADMIN_TOKEN"],
      [{ LATCHKEY_ALLOWED_IPS: "10.0.0.0/33" }, "LATCHKEY_ALLOWED_IPS"],
      [{ LATCHKEY_ALLOWED_IPS: "127.0.0.1,localhost" }, "LATCHKEY_ALLOWED_IPS"],
      [{ LATCHKEY_TRUSTED_PROXIES: "10.0.0.1/x" }, "LATCHKEY_TRUSTED_PROXIES"],
      [{ LATCHKEY_MASTER_KEY: Buffer.alloc(16).toString("base64") }, "LATCHKEY_MASTER_KEY"],
      [{ LATCHKEY_MASTER_KEY: Buffer.alloc(33).toString("base64") }, "LATCHKEY_MASTER_KEY"],
      [{ LATCHKEY_MASTER_KEY: "not base64 at all!" }, "LATCHKEY_MASTER_KEY"],
      [{ LOG_LEVEL: "verbose" }, "LOG_LEVEL"],
      [{ LATCHKEY_MAX_VERSIONS: "1" }, "LATCHKEY_MAX_VERSIONS"],
      [{ LATCHKEY_MAX_VERSIONS: "1001" }, "LATCHKEY_MAX_VERSIONS"],
      [{ LATCHKEY_MAX_VERSIONS: "ten" }, "LATCHKEY_MAX_VERSIONS"],
      [{ LATCHKEY_MONGODB_DB: "bad.name" }, "LATCHKEY_MONGODB_DB"],
    ];
    for (const [env, variable] of cases) assertOneProblem(env, variable);
  });

  it("lists every problem together in one ConfigError", () => {
    const problems = problemsOf({
      LATCHKEY_HOST: "nowhere",
      LATCHKEY_PORT: "99999",
      LATCHKEY_ADMIN_TOKEN: "short",
      LATCHKEY_ALLOWED_IPS: "300.1.1.1",
      LATCHKEY_TRUSTED_PROXIES: "proxy",
      LATCHKEY_MASTER_KEY: "c2hvcnQ=",
      LOG_LEVEL: "loud",
      LATCHKEY_MAX_VERSIONS: "0",
      LATCHKEY_MONGODB_DB: "a/b",
    });
    const variables = problems.map((p) => p.slice(0, p.indexOf(":")));
    assert.deepEqual(variables, [
      "LATCHKEY_HOST",
      "LATCHKEY_PORT",
      "LATCHKEY_ADMIN_TOKEN",
      "LATCHKEY_ALLOWED_IPS",
      "LATCHKEY_TRUSTED_PROXIES",
      "LATCHKEY_MASTER_KEY",
      "LOG_LEVEL",
      "LATCHKEY_MAX_VERSIONS",
      "LATCHKEY_MONGODB_DB",
    ]);
  });

  it("never echoes the master key or an admin token in a problem", () => {
    const badKey = Buffer.alloc(31, 1).toString("base64");
    const problems = problemsOf({ LATCHKEY_MASTER_KEY: badKey, LATCHKEY_ADMIN_TOKEN: "s3cret-short" });
    for (const p of problems) {
      assert.ok(!p.includes(badKey), p);
      assert.ok(!p.includes("s3cret-short"), p);
    }
  });

  describe("master key", () => {
    it("accepts 32 bytes in standard base64, with or without padding, and base64url", () => {
      const key = Buffer.from(Array.from({ length: 32 }, (_, i) => 250 - i));
      const std = key.toString("base64");
      assert.ok(std.includes("+") || std.includes("/"), "the sample exercises the non-alphanumeric alphabet");
      for (const text of [std, std.replace(/=+$/, ""), key.toString("base64url"), `  ${std}\n`]) {
        assert.ok(loadConfig({ LATCHKEY_MASTER_KEY: text }).masterKey?.equals(key), text);
      }
    });

    it("rejects 31 and 33 bytes", () => {
      for (const n of [31, 33]) assertOneProblem({ LATCHKEY_MASTER_KEY: Buffer.alloc(n, 1).toString("base64") }, "LATCHKEY_MASTER_KEY");
    });

    it("rejects a hex key of the right length in characters", () => {
      assertOneProblem({ LATCHKEY_MASTER_KEY: KEY.toString("hex") }, "LATCHKEY_MASTER_KEY");
    });
  });

  describe("admin tokens", () => {
    it("accepts a token of exactly 16 printable characters and rejects 15", () => {
      assert.deepEqual(loadConfig({ LATCHKEY_ADMIN_TOKEN: "a".repeat(16) }).adminTokens, ["a".repeat(16)]);
      assertOneProblem({ LATCHKEY_ADMIN_TOKEN: "a".repeat(15) }, "LATCHKEY_ADMIN_TOKEN");
    });

    it("ignores empty entries in the comma-separated list", () => {
      assert.deepEqual(loadConfig({ LATCHKEY_ADMIN_TOKEN: `,${TOKEN},,` }).adminTokens, [TOKEN]);
    });
  });

  describe("MongoDB", () => {
    it("requires a mongodb:// or mongodb+srv:// URI", () => {
      const env = { LATCHKEY_MASTER_KEY: KEY.toString("base64"), LATCHKEY_ADMIN_TOKEN: TOKEN };
      assertOneProblem({ ...env, MONGODB_URI: "postgres://db" }, "MONGODB_URI");
      assert.equal(loadConfig({ ...env, MONGODB_URI: "mongodb+srv://cluster.example" }).mongodbUri, "mongodb+srv://cluster.example");
    });

    it("requires a master key and an admin token with MONGODB_URI", () => {
      const problems = problemsOf({ MONGODB_URI: "mongodb://db" });
      assert.equal(problems.length, 2);
      assert.ok(problems.some((p) => p.startsWith("LATCHKEY_MASTER_KEY:")));
      assert.ok(problems.some((p) => p.startsWith("LATCHKEY_ADMIN_TOKEN:")));
    });
  });
});

describe("isIpOrCidr", () => {
  it("accepts IPv4 and IPv6 addresses", () => {
    for (const s of ["127.0.0.1", "0.0.0.0", "255.255.255.255", "::1", "::", "2001:db8::1", "::ffff:10.0.0.1"]) {
      assert.equal(isIpOrCidr(s), true, s);
    }
  });

  it("accepts CIDR blocks with a prefix length in range for the family", () => {
    for (const s of ["10.0.0.0/8", "10.0.0.0/0", "10.0.0.0/32", "2001:db8::/32", "::/0", "::1/128"]) {
      assert.equal(isIpOrCidr(s), true, s);
    }
  });

  it("rejects out-of-range prefix lengths", () => {
    for (const s of ["10.0.0.0/33", "2001:db8::/129", "10.0.0.0/1000"]) assert.equal(isIpOrCidr(s), false, s);
  });

  it("rejects malformed entries", () => {
    for (const s of ["", "localhost", "10.0.0", "256.0.0.1", "10.0.0.0/", "10.0.0.0/-1", "10.0.0.0/8/8", "/8", "10.0.0.0/ 8", "10.0.0.0/x"]) {
      assert.equal(isIpOrCidr(s), false, JSON.stringify(s));
    }
  });
});
