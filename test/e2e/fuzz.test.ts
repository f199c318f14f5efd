import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import {
  type DescField,
  type DescMessage,
  type DescMethod,
  type DescService,
  fromBinary,
  fromJsonString,
  ScalarType,
  toBinary,
} from "@bufbuild/protobuf";
import * as fc from "fast-check";
import { AuditService } from "../../gen/latchkey/v1/audit_service_pb.js";
import { SecretService } from "../../gen/latchkey/v1/secret_service_pb.js";
import { StoreService } from "../../gen/latchkey/v1/store_service_pb.js";
import { TokenService } from "../../gen/latchkey/v1/token_service_pb.js";
import { VarService } from "../../gen/latchkey/v1/var_service_pb.js";
import { REST_POLICY, RPC_POLICY } from "../../src/auth/policy.js";
import { ROLES } from "../../src/domain/principal.js";
import { validateName, VERSION_STATES } from "../../src/domain/secret.js";
import { validateStoreName } from "../../src/domain/store.js";
import {
  createH1Client,
  grpcFrame,
  grpcMessageOf,
  grpcStatusOf,
  H2Client,
  type RawReply,
  type RawRequest,
} from "../support/raw-http.js";
import { ADMIN_TOKEN, startTestServer, type TestServer } from "../support/server.js";

/**
 * Property-based fuzzing of every way in: every REST route, every unary Connect JSON procedure of the five Latchkey
 * services, and raw gRPC frames, with and without the admin token. The bodies are hostile (malformed JSON, wrong
 * types, unknown fields, deep nesting, unicode edge cases, oversized names and values, sizes just over the limits,
 * broken envelopes), and every property checks the same invariants:
 *
 * - the answer is a 4xx (REST, Connect) or a gRPC status other than INTERNAL and UNKNOWN (INTERNAL only for a set
 *   compressed flag, as the gRPC spec asks), never a 5xx, and it comes within REQUEST_TIMEOUT_MS;
 * - the process keeps serving (a health check after each property);
 * - the store is unchanged: a fixture is written first, and everything in it (stores, tokens, secrets with their
 *   revisions, versions and values, vars) reads back the same after each property.
 *
 * The generators make every write invalid by construction (a malformed body, or a field that the domain's own
 * validators refuse), so that a write that lands is a bug, not noise. Reads may succeed. A round-trip property
 * writes on purpose, in a store of its own that the snapshot leaves out: a unicode edge value is either refused or
 * read back unchanged.
 *
 * The seed is fixed, so a failure replays; fast-check prints the seed and the counterexample's path. To explore:
 * `LATCHKEY_FUZZ_SEED=$RANDOM LATCHKEY_FUZZ_SCALE=10 node --import tsx --test test/e2e/fuzz.test.ts`.
 */

const SEED = Number(process.env.LATCHKEY_FUZZ_SEED ?? 9_2026);
const SCALE = Number(process.env.LATCHKEY_FUZZ_SCALE ?? 1);
/** An answer slower than this is a hang (the largest bodies, 12 MiB, take about a second on a slow machine). */
const REQUEST_TIMEOUT_MS = 10_000;

function runs(numRuns: number): fc.Parameters<unknown> {
  return { numRuns: Math.max(1, Math.round(numRuns * SCALE)), seed: SEED };
}

/** fc.assert, with the failed assertion's own message in the error (the test reporter shows only the message). */
async function check<T>(property: fc.IAsyncProperty<T>, params: fc.Parameters<T>): Promise<void> {
  try {
    await fc.assert(property, params);
  } catch (err) {
    const cause = (err as Error).cause;
    throw new Error(`${(err as Error).message}\n\nFailure: ${cause instanceof Error ? cause.message : String(cause)}`);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Hostile strings

/** A long string, kept as unit × count so counterexamples stay readable; built when the request is. */
class Rep {
  constructor(
    readonly unit: string,
    readonly count: number,
  ) {}
}
type Str = string | Rep;

/** Materializes Rep anywhere in a JSON-ish value (objects are rebuilt with own keys, "__proto__" included). */
function mat(v: unknown): unknown {
  if (v instanceof Rep) return v.unit.repeat(v.count);
  if (Array.isArray(v)) return v.map(mat);
  if (typeof v === "object" && v !== null) return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, mat(x)]));
  return v;
}
const str = (s: Str): string => mat(s) as string;

/** Unicode and syntax edge cases: controls, NUL, bidi marks, lone surrogates, emoji sequences, path characters. */
const EDGE = [
  "\u0000", "\u0001", "\u001f", "\u007f", "\u0085", "\u00a0", "\u200b", "\u200d", "\u200e", "\u200f", "\u202a",
  "\u202e", "\u2066", "\u2069", "\u2028", "\u2029", "\ufeff", "\ufffd", "\uffff", "\ud800", "\udbff", "\udc00",
  "\udfff", "\ud83d", "🙂", "👩‍👩‍👧‍👦", "🏳️‍🌈", "e\u0301", "\u0301", "İ", "ß", "ǅ", "ﬁ", "Ｓ", "／", "\u2215", "é",
  "\u05d0", "\u0627", "\u{10ffff}", "\u{e0041}", "\u{1d11e}", "%00", "%2F", "..", ".", "/", "//", "\\", '"', "'",
  "<", ">", "&", "{", "}", "$", "*", "?", "#", " ", "\t", "\r\n", "a", "Z", "0", "_", "-", "seeded", "db/password",
];
/** Units for long strings: each is at least one code point, so count ≥ limit + 1 is over any character limit. */
const LONG_UNITS = ["a", "\u0000", "\u202e", "🙂", "é", "e\u0301", "\ufeff", "%", "/a"];

const edgeString = fc.array(fc.constantFrom(...EDGE), { maxLength: 6 }).map((a) => a.join(""));
const longString = (min: number, max: number) =>
  fc.tuple(fc.constantFrom(...LONG_UNITS), fc.integer({ min, max })).map(([u, n]) => new Rep(u, n));
/** Any hostile string: edge cases, random code points and graphemes, and long ones around the limits. */
const hostileStr: fc.Arbitrary<Str> = fc.oneof(
  { arbitrary: edgeString, weight: 5 },
  { arbitrary: fc.string({ unit: "binary", maxLength: 12 }), weight: 2 },
  { arbitrary: fc.string({ unit: "grapheme", maxLength: 8 }), weight: 1 },
  { arbitrary: fc.oneof(longString(250, 300), longString(1020, 1030), longString(10_235, 10_250)), weight: 1 },
);

const fails = (f: () => unknown) => {
  try {
    f();
    return false;
  } catch {
    return true;
  }
};
const isValidName = (s: string) => !fails(() => validateName(s));
const isValidStore = (s: string) => !fails(() => validateStoreName(s));
/** A secret or var name the domain refuses (the domain's own validator is the oracle). */
const badName: fc.Arbitrary<Str> = hostileStr.filter((s) => !isValidName(str(s)));
const badStore: fc.Arbitrary<Str> = fc.oneof(hostileStr, longString(64, 80)).filter((s) => !isValidStore(str(s)));
/** A text value (secret or var) of the right type that is still refused: empty, or over 10,240 characters. */
const badValue: fc.Arbitrary<Str> = fc.oneof(fc.constant(""), longString(10_241, 10_250));
const notIn = (allowed: readonly string[]) => hostileStr.filter((s) => !allowed.includes(str(s)));
/** Strings Date.parse refuses (it accepts "1" or "2027" as years, so the oracle is Date.parse itself). */
const badTime: fc.Arbitrary<Str> = fc
  .oneof(fc.constantFrom("", "tomorrow", "2027-13-45T00:00:00Z", "\u202e2027-01-01", "🙂", "NaN", "9".repeat(30)), hostileStr)
  .filter((s) => Number.isNaN(Date.parse(str(s))));

// ---------------------------------------------------------------------------------------------------------------
// The fixture: what the properties must leave unchanged

const RT_STORE = "fuzzrt";
const SEEDED = {
  default: ["seeded/db/password", "seeded/api-key", "seeded/bin", "seeded/tagged", "seeded/gone"],
  seeded: ["alpha", "beta/gamma"],
};
const SEEDED_VARS = { default: ["seeded/region"], seeded: ["log/level"] };

async function seedFixture(s: TestServer): Promise<void> {
  const send = async (method: string, path: string, body?: unknown) => {
    const res = await s.admin(path, {
      method,
      headers: { "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    assert.ok(res.ok, `fixture: ${method} ${path}: ${res.status} ${await res.text()}`);
  };
  await send("POST", "/v1/stores", { name: "seeded", description: "fuzz fixture ✓" });
  await send("POST", "/v1/stores", { name: RT_STORE, description: "round trips (not in the snapshot)" });
  await send("POST", "/v1/secrets", { name: "seeded/db/password", value: "pässwörd 🙂 \u202e fixture", description: "db" });
  await send("PUT", "/v1/secrets/seeded/db/password", { value: "second version", grace_period_secs: 3600 });
  await send("POST", "/v1/secrets", { name: "seeded/api-key", kind: "automatic", rotation_interval_secs: 86_400 });
  await send("POST", "/v1/secrets", { name: "seeded/bin", value_base64: Buffer.from([0, 1, 2, 255]).toString("base64") });
  await send("POST", "/v1/secrets", {
    name: "seeded/tagged",
    value: "t",
    folder: "seeded",
    tags: ["ci", "pci"],
    metadata: { owner: "team-a", "k:8s/ns": "prod" },
    expires_at: "2099-01-01T00:00:00Z",
    type: "token",
  });
  await send("PUT", "/v1/secrets/seeded/tagged", { value: "t2" });
  await send("PUT", "/v1/secrets/seeded/tagged/versions/1", { state: "suspended" });
  await send("POST", "/v1/secrets", { name: "seeded/gone", value: "g" });
  await send("DELETE", "/v1/secrets/seeded/gone");
  await send("POST", "/v1/stores/seeded/secrets", { name: "alpha", value: "a" });
  await send("POST", "/v1/stores/seeded/secrets", { name: "beta/gamma", kind: "automatic" });
  await send("PUT", "/v1/stores/default/vars/seeded/region", { value: "eu-west-1" });
  await send("PUT", "/v1/stores/seeded/vars/log/level", { value: "débug" });
  await send("POST", "/v1/tokens", { label: "fixture", role: "reader", stores: ["seeded"] });
}

/** Everything the fixture holds, read through the API: it must not change while the fuzzers run. */
async function snapshot(s: TestServer): Promise<unknown> {
  const get = async (path: string) => {
    const res = await s.admin(path);
    assert.equal(res.status, 200, `snapshot: GET ${path}: ${res.status}`);
    return res.json();
  };
  const stores = ((await get("/v1/stores")) as { name: string }[]).filter((st) => st.name !== RT_STORE);
  const out: Record<string, unknown> = { stores, tokens: await get("/v1/tokens") };
  for (const { name: store } of stores) {
    const base = `/v1/stores/${store}`;
    const live = (await get(`${base}/secrets`)) as { name: string }[];
    const details = [];
    for (const { name } of live) {
      details.push({ value: await get(`${base}/secrets/${name}`), versions: await get(`${base}/secrets/${name}/versions`) });
    }
    out[store] = { live, deleted: await get(`${base}/secrets?state=deleted`), details, vars: await get(`${base}/vars`) };
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Requests

type TokenKind = "admin" | "none" | "garbage" | "bare" | "basic" | "long";
const tokenKind = fc.constantFrom<TokenKind>("admin", "admin", "admin", "none", "garbage", "bare", "basic", "long");
function authHeader(t: TokenKind): Record<string, string> {
  switch (t) {
    case "admin":
      return { authorization: `Bearer ${ADMIN_TOKEN}` };
    case "none":
      return {};
    case "garbage":
      return { authorization: "Bearer lkt_not-a-token-ä" };
    case "bare":
      return { authorization: "Bearer" };
    case "basic":
      return { authorization: "Basic YWRtaW46YWRtaW4=" };
    case "long":
      return { authorization: `Bearer ${"x".repeat(8000)}` };
  }
}

/** Percent-encodes a string's UTF-8 bytes (lone surrogates become U+FFFD, as any client would send them). */
function pct(s: string): string {
  let out = "";
  for (const b of Buffer.from(s, "utf8")) {
    const c = String.fromCharCode(b);
    out += /[A-Za-z0-9_.~-]/.test(c) ? c : `%${b.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}
/** A path segment: a name's segments each encoded (so "/" stays a separator), or raw percent garbage. */
const RAW_SEGMENTS = ["%", "%zz", "%00", "%2e%2e", "%C0%AF", "%ED%A0%80", "%FF", "..", ".", "", "%252F", "a%2Fb"];
const encodeName = (s: string) => s.split("/").map(pct).join("/");

interface Server {
  readonly s: TestServer;
  readonly h1: ReturnType<typeof createH1Client>;
  readonly h2: H2Client;
}

function send(srv: Server, h2: boolean, req: RawRequest): Promise<RawReply> {
  return h2 ? srv.h2.request(req, REQUEST_TIMEOUT_MS) : srv.h1.request(req, REQUEST_TIMEOUT_MS);
}

/** A 4xx, or a batch's 207 in which every item failed (batches report per item; nothing was written). */
function refused(r: RawReply): boolean {
  if (r.status >= 400 && r.status < 500) return true;
  if (r.status !== 207) return false;
  const results = (JSON.parse(r.body.toString("utf8")) as { results?: { ok: boolean }[] }).results;
  return Array.isArray(results) && results.every((x) => x.ok === false);
}

function describeReply(r: RawReply): string {
  const grpc = grpcStatusOf(r);
  return `HTTP ${r.status}${grpc === undefined ? "" : ` grpc-status ${grpc} ${grpcMessageOf(r)}`}${r.rstCode ? ` RST ${r.rstCode}` : ""} ${r.body.subarray(0, 300).toString("utf8")}`;
}

async function assertHealthy(srv: Server, before: unknown): Promise<void> {
  const health = await srv.h1.request({ method: "GET", path: "/healthz" }, REQUEST_TIMEOUT_MS);
  assert.equal(health.status, 200, "the server still answers /healthz");
  const h2health = await srv.h2.request({ method: "GET", path: "/readyz" }, REQUEST_TIMEOUT_MS);
  assert.equal(h2health.status, 200, "the server still answers over HTTP/2");
  assert.deepEqual(await snapshot(srv.s), before, "the fixture is unchanged");
}

// ---------------------------------------------------------------------------------------------------------------
// REST: the route table and what each route's body holds

type FieldKind =
  | "name"
  | "store"
  | "value"
  | "base64"
  | "description"
  | "kind"
  | "type"
  | "folder"
  | "tags"
  | "metadata"
  | "time"
  | "futureTime"
  | "interval"
  | "grace"
  | "revision"
  | "bool"
  | "previousState"
  | "versionState"
  | "id"
  | "label"
  | "role"
  | "service"
  | "stores"
  | "prefixes"
  | "ips"
  | "items"
  | "names"
  | "vars"
  | "varValue";

const SECRET_FIELDS: Record<string, FieldKind> = {
  name: "name",
  kind: "kind",
  value: "value",
  value_base64: "base64",
  description: "description",
  type: "type",
  folder: "folder",
  tags: "tags",
  metadata: "metadata",
  expires_at: "time",
  rotation_interval_secs: "interval",
  grace_period_secs: "grace",
};
const { name: _name, ...SECRET_UPDATE_FIELDS } = SECRET_FIELDS;

/**
 * The body of every REST route (null: none), keyed by operation with the default-store prefix; the
 * `/v1/stores/{store}/secrets` routes share the `/v1/secrets` entries. A test below fails when a route is missing.
 */
const REST_BODIES: Record<string, { fields: Record<string, FieldKind>; optional?: true } | null> = {
  "GET /healthz": null,
  "GET /readyz": null,
  "GET /metrics": null,
  "POST /v1/secrets": { fields: SECRET_FIELDS },
  "GET /v1/secrets": null,
  "POST /v1/secrets:batchSet": { fields: { items: "items", atomic: "bool" } },
  "POST /v1/secrets:batchGet": { fields: { names: "names" } },
  "POST /v1/secrets:batchDelete": { fields: { names: "names", atomic: "bool", purge: "bool" } },
  "GET /v1/secrets/{name}": null,
  "PUT /v1/secrets/{name}": { fields: { ...SECRET_UPDATE_FIELDS, expected_revision: "revision" } },
  "DELETE /v1/secrets/{name}": null,
  "POST /v1/secrets/{name}/rotate": { fields: { previous_state: "previousState", expected_revision: "revision" }, optional: true },
  "POST /v1/secrets/{name}/verify": { fields: { value: "value", value_base64: "base64" }, optional: true },
  "POST /v1/secrets/{name}/undelete": { fields: { id: "id" }, optional: true },
  "POST /v1/secrets/{name}/copy": { fields: { to_store: "store", to_name: "name" }, optional: true },
  "POST /v1/secrets/{name}/rename": { fields: { new_name: "name", expected_revision: "revision" }, optional: true },
  "POST /v1/secrets/{name}/move": { fields: { to_store: "store", to_name: "name", expected_revision: "revision" }, optional: true },
  "GET /v1/secrets/{name}/versions": null,
  "PUT /v1/secrets/{name}/versions/{version}": { fields: { state: "versionState", expected_revision: "revision" } },
  "GET /v1/usage": null,
  "POST /v1/stores": { fields: { name: "store", description: "description", managed_by: "service" } },
  "GET /v1/stores": null,
  "GET /v1/stores/{store}": null,
  "DELETE /v1/stores/{store}": null,
  "GET /v1/stores/{store}/usage": null,
  "GET /v1/stores/{store}/vars": null,
  "POST /v1/stores/{store}/vars": { fields: { vars: "vars" } },
  "GET /v1/stores/{store}/vars/{name}": null,
  "PUT /v1/stores/{store}/vars/{name}": { fields: { value: "varValue" } },
  "DELETE /v1/stores/{store}/vars/{name}": null,
  "POST /v1/tokens": {
    fields: {
      label: "label",
      role: "role",
      service: "service",
      stores: "stores",
      prefixes: "prefixes",
      allowed_ips: "ips",
      expires_at: "futureTime",
    },
  },
  "GET /v1/tokens": null,
  "DELETE /v1/tokens/{id}": null,
  "GET /v1/audit": null,
};

/** Query parameters each route reads (GET lists, DELETE purge); the fuzzer adds unknown ones too. */
const REST_QUERY: Record<string, string[]> = {
  "GET /v1/secrets": ["prefix", "folder", "tag", "state", "limit", "cursor"],
  "GET /v1/secrets/{name}": ["version"],
  "DELETE /v1/secrets/{name}": ["purge"],
  "GET /v1/stores": ["limit", "cursor"],
  "DELETE /v1/stores/{store}": ["purge"],
  "GET /v1/stores/{store}/vars": ["prefix", "limit", "cursor"],
  "GET /v1/tokens": ["limit", "cursor"],
  "GET /v1/audit": ["from", "to", "token_id", "store", "name", "limit", "cursor"],
};

const READ_ACTIONS = new Set(["public", "secrets.read", "secrets.verify", "secrets.list", "vars.read", "stores.read", "audit.read"]);
const normalize = (op: string) => op.replace("/v1/stores/{store}/secrets", "/v1/secrets");

interface RestRoute {
  readonly op: string;
  readonly method: string;
  readonly template: string;
  /** Whether it may change the store (its action is not a read). */
  readonly write: boolean;
  readonly body: { fields: Record<string, FieldKind>; optional?: true } | null;
  readonly maxBody: number;
}

const REST_ROUTES: RestRoute[] = Object.entries(REST_POLICY).map(([op, action]) => {
  const [method, template] = op.split(" ") as [string, string];
  return {
    op,
    method,
    template,
    write: !READ_ACTIONS.has(action),
    body: REST_BODIES[normalize(op)] ?? null,
    // 256 KiB, except batchSet: up to 100 values of up to 64 KiB (base64) need 12 MiB.
    maxBody: template.endsWith(":batchSet") ? 12 * 1024 * 1024 : 256 * 1024,
  };
});
const BODY_ROUTES = REST_ROUTES.filter((r) => r.body !== null);

/** A wrong JSON type for a field (never null: null means "absent" for most fields). */
function wrongType(kind: FieldKind): fc.Arbitrary<unknown> {
  const any = [fc.integer(), fc.boolean(), fc.constant({}), fc.constant([]), fc.constant(["x"]), fc.constant({ a: "b" })];
  switch (kind) {
    case "interval":
    case "grace":
    case "revision":
      return fc.constantFrom<unknown>("1", true, {}, [], [1], 1.5, 1e300, -0.5);
    case "bool":
      return fc.constantFrom<unknown>(0, 1, "true", "false", {}, [], [true]);
    case "tags":
    case "names":
    case "stores":
    case "prefixes":
    case "ips":
      return fc.constantFrom<unknown>("a", 1, true, {}, [1], [["a"]], [{}], [true], ["a", 2]);
    case "metadata":
      return fc.constantFrom<unknown>("a", 1, true, [], ["k"], { k: 1 }, { k: {} }, { k: ["x"] }, { k: true });
    case "items":
      return fc.constantFrom<unknown>("a", 1, true, {}, [1], ["x"], [[]], [{ name: 1, value: "v" }], [{ name: "fz/a", value: 7 }]);
    case "vars":
      return fc.constantFrom<unknown>("a", 1, true, {}, [1], ["x"], [{ name: 1, value: "x" }], [{ name: "fz/a", value: 1 }]);
    default:
      return fc.oneof(...any);
  }
}

/** A value of the right JSON type that the service refuses; undefined where every value of the type is valid. */
function invalidValue(kind: FieldKind): fc.Arbitrary<unknown> | undefined {
  const tag = fc.constantFrom("ci", "pci", "a.b");
  switch (kind) {
    case "name":
      return badName;
    case "store":
      return badStore;
    case "value":
    case "varValue":
      return badValue;
    case "base64":
      return fc.constantFrom<Str>("not base64!", "abc", "====", "", "YQ=\u0000", new Rep("AAAA", 21_846));
    case "description":
      return longString(1025, 1040);
    case "kind":
      return notIn(["manual", "automatic"]);
    case "type":
      return notIn(["secret", "token"]);
    case "folder":
      return badName.filter((s) => str(s) !== "");
    case "tags":
      return fc.oneof(
        fc.array(tag, { minLength: 33, maxLength: 40 }).map((a) => a.map((t, i) => `${t}${i}`)),
        fc.tuple(hostileStr.filter((s) => !/^[A-Za-z0-9_.:=-]{1,64}$/.test(str(s))), fc.array(tag, { maxLength: 2 })).map(([b, ok]) => [...ok, b]),
      );
    case "metadata":
      return fc.oneof(
        fc.integer({ min: 65, max: 70 }).map((n) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${i}`, "v"]))),
        hostileStr.filter((s) => !/^[A-Za-z0-9_.:/-]{1,128}$/.test(str(s))).map((k) => ({ [str(k)]: "v" })),
        longString(1025, 1030).map((v) => ({ k: v })),
      );
    case "time":
      return badTime;
    case "futureTime":
      return fc.oneof(badTime, fc.constantFrom("2000-01-01T00:00:00Z", "1970-01-01T00:00:00Z"));
    case "interval":
      return fc.constantFrom(0, -1, 315_360_001, Number.MAX_SAFE_INTEGER, -Number.MAX_SAFE_INTEGER);
    case "grace":
      return fc.constantFrom(-1, 315_360_001, Number.MAX_SAFE_INTEGER);
    case "previousState":
      return notIn(VERSION_STATES.filter((s) => s !== "active"));
    case "versionState":
      return notIn(VERSION_STATES);
    case "id":
      return hostileStr.filter((s) => str(s) !== "");
    case "label":
      return longString(129, 140);
    case "role":
      return notIn(ROLES);
    case "service":
      return hostileStr.filter((s) => str(s) !== "" && !/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/.test(str(s)));
    case "stores":
      return fc.oneof(
        fc.array(badStore, { minLength: 1, maxLength: 2 }),
        fc.integer({ min: 101, max: 105 }).map((n) => Array.from({ length: n }, (_, i) => `s${i}`)),
      );
    case "prefixes":
      return fc.oneof(
        longString(257, 260).map((p) => [p]),
        fc.integer({ min: 101, max: 105 }).map((n) => Array.from({ length: n }, (_, i) => `p${i}/`)),
      );
    case "ips":
      return fc.constantFrom(["not-an-ip"], ["1.2.3.4/33"], ["::1/129"], ["256.1.1.1"], ["1.2.3"], [""], ["🙂"], ["127.0.0.1", "x"]);
    case "items":
      return fc.oneof(
        fc.array(fc.record({ name: badName, value: fc.constantFrom("v", "🙂") }), { minLength: 1, maxLength: 3 }),
        fc.array(fc.record({ name: fc.constantFrom("fz/ok"), value: badValue }), { minLength: 1, maxLength: 2 }),
        fc.integer({ min: 101, max: 103 }).map((n) => Array.from({ length: n }, (_, i) => ({ name: `fz/batch/${i}`, value: "v" }))),
      );
    case "names":
      return fc.oneof(
        fc.array(badName, { minLength: 1, maxLength: 3 }),
        fc.integer({ min: 101, max: 103 }).map((n) => Array.from({ length: n }, (_, i) => `fz/batch/${i}`)),
      );
    case "vars":
      return fc.oneof(
        fc.array(fc.record({ name: badName, value: fc.constant("v") }), { minLength: 1, maxLength: 3 }),
        fc.array(fc.record({ name: fc.constantFrom("fz/v"), value: badValue }), { minLength: 1, maxLength: 2 }),
        fc.constant([]),
        fc.integer({ min: 1001, max: 1002 }).map((n) => Array.from({ length: n }, (_, i) => ({ name: `fz/v${i}`, value: "v" }))),
      );
    case "revision":
    case "bool":
      return undefined;
  }
}

/** Any value of the field's type: a plausible one (to reach deeper checks) or an invalid one. */
function anyValue(kind: FieldKind): fc.Arbitrary<unknown> {
  const plausible: Record<FieldKind, fc.Arbitrary<unknown>> = {
    name: fc.constantFrom("fz/a", "seeded/db/password", "alpha"),
    store: fc.constantFrom("default", "seeded", "fz-store"),
    value: hostileStr,
    varValue: hostileStr,
    base64: fc.uint8Array({ minLength: 1, maxLength: 16 }).map((b) => Buffer.from(b).toString("base64")),
    description: hostileStr,
    kind: fc.constantFrom("manual", "automatic"),
    type: fc.constantFrom("secret", "token"),
    folder: fc.constantFrom("", "fz"),
    tags: fc.constant(["ci"]),
    metadata: fc.dictionary(fc.constantFrom("k", "owner"), hostileStr, { maxKeys: 2 }),
    time: fc.constantFrom("2099-01-01T00:00:00Z", "+275760-09-13T00:00:00.000Z", "0001-01-01T00:00:00Z"),
    futureTime: fc.constant("2099-01-01T00:00:00Z"),
    interval: fc.constantFrom(1, 3600),
    grace: fc.constantFrom(0, 60),
    revision: fc.nat(10),
    bool: fc.boolean(),
    previousState: fc.constantFrom("deactivated", "compromised"),
    versionState: fc.constantFrom("suspended", "active", "destroyed"),
    id: hostileStr,
    label: hostileStr,
    role: fc.constantFrom("reader", "admin"),
    service: fc.constantFrom("billing"),
    stores: fc.constant(["seeded"]),
    prefixes: fc.array(hostileStr, { maxLength: 2 }),
    ips: fc.constant(["127.0.0.1"]),
    items: fc.constant([{ name: "fz/item", value: "v" }]),
    names: fc.constant(["fz/item", "seeded/db/password"]),
    vars: fc.constant([{ name: "fz/var", value: "v" }]),
  };
  const bad = invalidValue(kind);
  return bad ? fc.oneof(plausible[kind], bad) : plausible[kind];
}

/** A body every route refuses, whatever the path names. Printable: long strings stay Rep until sent. */
type BodySpec =
  | { readonly kind: "malformed"; readonly text: string }
  | { readonly kind: "unknown"; readonly object: Record<string, unknown>; readonly key: string }
  | { readonly kind: "wrong-type"; readonly field: string; readonly object: Record<string, unknown> }
  | { readonly kind: "deep"; readonly depth: number; readonly field: string | null; readonly shape: "array" | "object" }
  | { readonly kind: "invalid"; readonly field: string; readonly object: Record<string, unknown> };

/** Whether the server reads this text as something other than a JSON object (whitespace is "no body": excluded). */
function notAnObject(text: string): boolean {
  if (text.trim() === "") return false;
  try {
    const v: unknown = JSON.parse(text);
    return typeof v !== "object" || v === null || Array.isArray(v);
  } catch {
    return true;
  }
}

const MALFORMED = [
  "{", "}", '{"name":', '{"name":"a",}', "{'name':'a'}", "{name:1}", "[", "nul", "NaN", '{"a":1}}', "\ufeff{}",
  '{"a":"\\x"}', '{"a":"\\u12"}', '{"a" 1}', "/* */{}", "{}//", "\u0000", "undefined", '{"name":"a"\u0000}', "1",
  '"str"', "true", "null", "[]", "[{}]", "0x10", '{"a":01}', '{"a":-}', '{"a":1e}', "{}{}", '{"value":"\ud800', "\x1f",
];

const malformedText: fc.Arbitrary<string> = fc
  .oneof(
    fc.constantFrom(...MALFORMED),
    fc.uint8Array({ minLength: 1, maxLength: 64 }).map((b) => Buffer.from(b).toString("latin1")),
    fc.string({ unit: "binary", minLength: 1, maxLength: 40 }),
    fc.tuple(fc.constantFrom('{"name":"fz/a","value":"v"}', '{"items":[{"name":"a","value":"b"}]}', '{"state":"active"}'), fc.nat())
      .map(([t, n]) => t.slice(0, 1 + (n % (t.length - 1)))),
  )
  .filter(notAnObject);

function bodySpec(fields: Record<string, FieldKind>): fc.Arbitrary<BodySpec> {
  const names = Object.keys(fields);
  const others = fc.subarray(names, { maxLength: Math.min(3, names.length) }).chain((keys) =>
    keys.length === 0 ? fc.constant({}) : fc.record(Object.fromEntries(keys.map((k) => [k, anyValue(fields[k] as FieldKind)]))),
  );
  const unknownKey = fc
    .oneof(fc.constantFrom("__proto__", "constructor", "toString", "hasOwnProperty", "", "NAME", "name ", "value\u0000", "🙂", "\u202ename"), edgeString)
    .filter((k) => !names.includes(k));
  const invalidFields = names.filter((k) => invalidValue(fields[k] as FieldKind) !== undefined);
  const specs: fc.Arbitrary<BodySpec>[] = [
    malformedText.map((text) => ({ kind: "malformed", text }) as const),
    fc.tuple(others, unknownKey, hostileStr).map(([o, key, v]) => ({ kind: "unknown", key, object: { ...o, [key]: v } }) as const),
    fc.constantFrom(...names).chain((field) =>
      fc.tuple(others, wrongType(fields[field] as FieldKind)).map(([o, v]) => ({ kind: "wrong-type", field, object: { ...o, [field]: v } }) as const),
    ),
    fc.record({
      kind: fc.constant("deep" as const),
      depth: fc.constantFrom(1_000, 10_000, 100_000),
      field: fc.option(fc.constantFrom(...names, "unknown"), { nil: null }),
      shape: fc.constantFrom("array" as const, "object" as const),
    }),
  ];
  if (invalidFields.length > 0) {
    specs.push(
      fc.constantFrom(...invalidFields).chain((field) =>
        fc
          .tuple(others, invalidValue(fields[field] as FieldKind) as fc.Arbitrary<unknown>)
          .map(([o, v]) => ({ kind: "invalid", field, object: { ...o, [field]: v } }) as const),
      ),
    );
  }
  return fc.oneof(...specs);
}

function deepJson(depth: number, shape: "array" | "object"): string {
  return shape === "array" ? "[".repeat(depth) + "]".repeat(depth) : '{"a":'.repeat(depth) + "1" + "}".repeat(depth);
}

function bodyText(spec: BodySpec): string {
  switch (spec.kind) {
    case "malformed":
      return spec.text;
    case "deep": {
      const deep = deepJson(spec.depth, spec.shape);
      return spec.field === null ? deep : `{${JSON.stringify(spec.field)}:${deep}}`;
    }
    default:
      return JSON.stringify(mat(spec.object));
  }
}

/** Path parameters: existing names (only with a refused body), fresh ones, or hostile ones. */
interface PathParams {
  readonly store: Str;
  readonly name: Str;
  readonly version: string;
  readonly id: Str;
  /** Raw percent garbage put in place of one parameter, or not. */
  readonly raw: string | null;
}
const SEEDED_NAMES = [...SEEDED.default, ...SEEDED.seeded, ...SEEDED_VARS.default, ...SEEDED_VARS.seeded];
const freshName = fc.stringMatching(/^fz\/[a-z0-9]{1,8}(\/[a-z0-9._-]{1,8})?$/);
const freshStore = fc.stringMatching(/^fz-[a-z0-9]{1,8}$/);

function pathParams(existing: boolean): fc.Arbitrary<PathParams> {
  const name: fc.Arbitrary<Str> = existing
    ? fc.oneof({ arbitrary: fc.constantFrom(...SEEDED_NAMES), weight: 3 }, freshName, badName)
    : fc.oneof(freshName, badName);
  const store: fc.Arbitrary<Str> = existing
    ? fc.oneof({ arbitrary: fc.constantFrom("default", "seeded"), weight: 3 }, freshStore, badStore)
    : fc.oneof(freshStore, badStore);
  return fc.record({
    store,
    name,
    version: fc.constantFrom("1", "2", "3", "9999999999"),
    id: fc.oneof(fc.stringMatching(/^tok_[0-9a-f]{1,12}$/), hostileStr.filter((s) => str(s) !== "")),
    raw: fc.option(fc.constantFrom(...RAW_SEGMENTS), { nil: null, freq: 4 }),
  });
}

function fillPath(template: string, p: PathParams): string {
  let rawUsed = false;
  return template.replace(/\{(store|name|version|id)\}/g, (_m, key: string) => {
    if (p.raw !== null && !rawUsed) {
      rawUsed = true;
      return p.raw;
    }
    if (key === "store") return pct(str(p.store));
    if (key === "name") return encodeName(str(p.name));
    if (key === "version") return p.version;
    return pct(str(p.id));
  });
}

const contentType = fc.constantFrom(
  "application/json",
  "application/json; charset=utf-8",
  "text/plain",
  "application/x-www-form-urlencoded",
  "multipart/form-data; boundary=x",
  "application/json; charset=utf-16",
  "",
);

// ---------------------------------------------------------------------------------------------------------------
// Connect and gRPC: the procedures, from the service descriptors

const SERVICES: DescService[] = [SecretService, StoreService, VarService, TokenService, AuditService];
const UNARY: DescMethod[] = SERVICES.flatMap((s) => s.methods.filter((m) => m.methodKind === "unary"));
const fullName = (m: DescMethod) => `${m.parent.typeName}.${m.name}`;
const isWriteRpc = (m: DescMethod) => !READ_ACTIONS.has(RPC_POLICY[fullName(m)] ?? "");

/**
 * How each procedure that may change the store is made harmless: the field (JSON name) set to values the domain
 * refuses. A decoded message counts as harmless when `harmless` says so; gRPC payloads of random bytes that decode
 * into something else are discarded, never sent.
 */
interface Guard {
  readonly field: string;
  readonly arb: fc.Arbitrary<unknown>;
  readonly harmless: (m: Record<string, unknown>) => boolean;
  /** Whether the call must then be refused (4xx); reads and ListTokens may succeed. */
  readonly refused: boolean;
}
const nameGuard = (field = "name"): Guard => ({
  field,
  arb: badName,
  harmless: (m) => !isValidName(m[field] as string),
  refused: true,
});
const storeGuard: Guard = { field: "name", arb: badStore, harmless: (m) => !isValidStore(m.name as string), refused: true };
const listGuard = (field: string, key: string | null, refuse: (x: unknown) => boolean, arb: fc.Arbitrary<unknown>): Guard => ({
  field,
  arb,
  harmless: (m) => (m[field] as unknown[]).every((x) => refuse(key === null ? x : (x as Record<string, unknown>)[key])),
  refused: false,
});
const GUARDS: Record<string, Guard | "none"> = {
  "latchkey.v1.SecretService.StoreSecret": nameGuard(),
  "latchkey.v1.SecretService.UpdateSecret": nameGuard(),
  "latchkey.v1.SecretService.DeleteSecret": nameGuard(),
  "latchkey.v1.SecretService.RotateSecret": nameGuard(),
  "latchkey.v1.SecretService.SetVersionState": nameGuard(),
  "latchkey.v1.SecretService.UndeleteSecret": nameGuard(),
  "latchkey.v1.SecretService.CopySecret": nameGuard(),
  "latchkey.v1.SecretService.RenameSecret": nameGuard(),
  "latchkey.v1.SecretService.MoveSecret": nameGuard(),
  "latchkey.v1.SecretService.BatchUpsertSecrets": listGuard(
    "items",
    "name",
    (n) => !isValidName(n as string),
    fc.array(fc.record({ name: badName.map(str), value: hostileStr.map(str) }), { maxLength: 3 }),
  ),
  "latchkey.v1.SecretService.BatchDeleteSecrets": listGuard("names", null, (n) => !isValidName(n as string), fc.array(badName.map(str), { maxLength: 3 })),
  "latchkey.v1.StoreService.CreateStore": storeGuard,
  "latchkey.v1.StoreService.DeleteStore": storeGuard,
  "latchkey.v1.VarService.SetVars": listGuard(
    "vars",
    "name",
    (n) => !isValidName(n as string),
    fc.array(fc.record({ name: badName.map(str), value: hostileStr.map(str) }), { maxLength: 3 }),
  ),
  "latchkey.v1.VarService.DeleteVar": nameGuard(),
  "latchkey.v1.TokenService.CreateToken": {
    field: "role",
    arb: fc.constantFrom("ROLE_UNSPECIFIED", 0, 99),
    harmless: (m) => m.role === 0 || !Object.values(ROLE_NUMBERS).includes(m.role as number),
    refused: true,
  },
  // Token ids are random: a generated one never names the fixture's token.
  "latchkey.v1.TokenService.RevokeToken": { field: "id", arb: hostileStr.map(str), harmless: () => true, refused: true },
  "latchkey.v1.TokenService.ListTokens": "none",
};
const ROLE_NUMBERS: Record<string, number> = Object.fromEntries(
  (TokenService.methods.find((m) => m.name === "CreateToken")?.input.fields.find((f) => f.name === "role")?.enum?.values ?? [])
    .filter((v) => v.number !== 0)
    .map((v) => [v.name, v.number]),
);

/** Whether a decoded request is one the server may answer without changing the fixture. */
function harmless(method: DescMethod, message: Record<string, unknown>): boolean {
  if (!isWriteRpc(method)) return true;
  const g = GUARDS[fullName(method)];
  return g === "none" || (g !== undefined && g.harmless(message));
}

const WKT: Record<string, fc.Arbitrary<unknown>> = {
  "google.protobuf.Duration": fc.constantFrom("1s", "0s", "-1s", "315576000000s", "3.5s", "86400s", "0.000000001s"),
  "google.protobuf.Timestamp": fc.constantFrom("2099-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "1970-01-01T00:00:00Z"),
};

function scalarArb(t: ScalarType): fc.Arbitrary<unknown> {
  switch (t) {
    case ScalarType.STRING:
      return hostileStr;
    case ScalarType.BYTES:
      return fc.uint8Array({ maxLength: 24 }).map((b) => Buffer.from(b).toString("base64"));
    case ScalarType.BOOL:
      return fc.boolean();
    case ScalarType.INT64:
    case ScalarType.UINT64:
    case ScalarType.SINT64:
    case ScalarType.FIXED64:
    case ScalarType.SFIXED64:
      return fc.constantFrom<unknown>(0, 1, "7", "18446744073709551615", "9223372036854775807");
    default:
      return fc.constantFrom<unknown>(0, 1, 2, 100, 1000, 4_294_967_295, 2_147_483_647);
  }
}

function messageArb(desc: DescMessage, depth: number): fc.Arbitrary<Record<string, unknown>> {
  const fields = desc.fields;
  if (fields.length === 0 || depth > 2) return fc.constant({});
  return fc.subarray(fields as DescField[], { maxLength: Math.min(5, fields.length) }).chain((chosen) =>
    chosen.length === 0
      ? fc.constant({})
      : fc.record(
          Object.fromEntries(
            chosen.map((f) => [f.jsonName, fieldArb(f, depth)]),
          ) as Record<string, fc.Arbitrary<unknown>>,
        ),
  );
}

function singularArb(f: DescField, depth: number): fc.Arbitrary<unknown> {
  if (f.enum) return fc.constantFrom<unknown>(...f.enum.values.map((v) => v.name), ...f.enum.values.map((v) => v.number));
  if (f.message) return WKT[f.message.typeName] ?? messageArb(f.message, depth + 1);
  return scalarArb((f as { scalar: ScalarType }).scalar);
}

function fieldArb(f: DescField, depth: number): fc.Arbitrary<unknown> {
  if (f.fieldKind === "list") return fc.array(singularArb(f, depth), { maxLength: 3 });
  if (f.fieldKind === "map") return fc.dictionary(fc.oneof(hostileStr.map(str), fc.constantFrom("k", "env")), singularArb(f, depth), { maxKeys: 3 });
  return singularArb(f, depth);
}

/** A JSON value the protobuf JSON reader refuses for this field (checked against it: see decodes()). */
function wrongJson(f: DescField): fc.Arbitrary<unknown> {
  if (f.fieldKind === "list") return fc.constantFrom<unknown>(1, true, "x", {}, [{ a: [] }], [[1]]);
  if (f.fieldKind === "map") return fc.constantFrom<unknown>(1, true, "x", [1], { k: [] }, { k: {} });
  if (f.message && !WKT[f.message.typeName]) return fc.constantFrom<unknown>(1, true, "x", [1], []);
  if (f.message) return fc.constantFrom<unknown>(1, true, "x", [1], {}, "1 s", "2027-13-01T00:00:00Z");
  if (f.enum) return fc.constantFrom<unknown>(true, {}, [], 1.5, "NOT_A_VALUE", "");
  switch ((f as { scalar: ScalarType }).scalar) {
    case ScalarType.STRING:
      return fc.constantFrom<unknown>(1, true, {}, [], ["x"]);
    case ScalarType.BOOL:
      return fc.constantFrom<unknown>(1, 0, "yes", {}, [], "TRUE");
    case ScalarType.BYTES:
      return fc.constantFrom<unknown>(1, true, {}, [], "%%%");
    default:
      return fc.constantFrom<unknown>(true, {}, [], 1.5, "x", "1e400", -1.5, "9999999999999999999999");
  }
}

const JSON_READ = { ignoreUnknownFields: false };
function decodes(method: DescMethod, text: string): Record<string, unknown> | undefined {
  try {
    return fromJsonString(method.input, text, JSON_READ) as unknown as Record<string, unknown>;
  } catch {
    return undefined;
  }
}

type ConnectBody =
  | { readonly kind: "malformed"; readonly text: string }
  | { readonly kind: "unknown" | "wrong-type" | "hostile"; readonly object: Record<string, unknown> }
  | { readonly kind: "deep"; readonly depth: number; readonly field: string | null; readonly shape: "array" | "object" };

function connectText(b: ConnectBody): string {
  if (b.kind === "malformed") return b.text;
  if (b.kind === "deep") {
    const deep = deepJson(b.depth, b.shape);
    return b.field === null ? deep : `{${JSON.stringify(b.field)}:${deep}}`;
  }
  return JSON.stringify(mat(b.object));
}

/** A message for `method` with hostile strings; for procedures that write, the guard field is always refused. */
function hostileMessage(method: DescMethod): fc.Arbitrary<Record<string, unknown>> {
  const g = GUARDS[fullName(method)];
  const base = messageArb(method.input, 0);
  if (!isWriteRpc(method) || g === "none" || g === undefined) return base;
  return fc.tuple(base, g.arb).map(([m, v]) => ({ ...m, [g.field]: v }));
}

function invalidConnectBody(method: DescMethod): fc.Arbitrary<ConnectBody> {
  const fields = method.input.fields as DescField[];
  const names = fields.flatMap((f) => [f.jsonName, f.name]);
  const specs: fc.Arbitrary<ConnectBody>[] = [
    malformedText.map((text) => ({ kind: "malformed", text }) as const),
    fc
      .tuple(hostileMessage(method), fc.oneof(fc.constantFrom("__proto__", "constructor", "NAME", "@type", "🙂", ""), edgeString), hostileStr)
      .filter(([, k]) => !names.includes(k))
      .map(([m, k, v]) => ({ kind: "unknown", object: { ...m, [k]: v } }) as const),
    fc.record({
      kind: fc.constant("deep" as const),
      depth: fc.constantFrom(1_000, 10_000, 100_000),
      field: fc.option(fc.constantFrom(...names, "unknown"), { nil: null }),
      shape: fc.constantFrom("array" as const, "object" as const),
    }),
  ];
  if (fields.length > 0) {
    specs.push(
      fc
        .constantFrom(...fields)
        .chain((f) =>
          fc.tuple(hostileMessage(method), wrongJson(f), fc.boolean()).map(([m, v, proto]) => ({
            kind: "wrong-type" as const,
            object: { ...m, [proto ? f.name : f.jsonName]: v },
          })),
        ),
    );
  }
  return fc.oneof(...specs);
}

const CONNECT_TYPES = ["application/json", "application/json; charset=utf-8"];

interface ConnectErrorBody {
  code?: string;
  message?: string;
}
function connectCode(r: RawReply): string | undefined {
  try {
    return (JSON.parse(r.body.toString("utf8")) as ConnectErrorBody).code;
  } catch {
    return undefined;
  }
}

/** gRPC bodies: whole random bytes, or envelopes with broken lengths, flags, counts and truncation. */
type PayloadSpec = { readonly kind: "random"; readonly bytes: Uint8Array } | { readonly kind: "message"; readonly json: Record<string, unknown> };
interface FrameSpec {
  readonly flags: number;
  readonly lengthDelta: number;
  readonly payload: PayloadSpec;
}
type GrpcBody =
  | { readonly kind: "random"; readonly bytes: Uint8Array }
  | { readonly kind: "empty" }
  | { readonly kind: "frames"; readonly frames: readonly FrameSpec[]; readonly truncateTo: number | null };

function payloadBytes(method: DescMethod, p: PayloadSpec): Uint8Array {
  if (p.kind === "random") return p.bytes;
  const m = decodes(method, JSON.stringify(mat(p.json)));
  return m === undefined ? new Uint8Array([0xff, 0xff, 0xff]) : toBinary(method.input, m as never);
}

function grpcBody(method: DescMethod, b: GrpcBody): Buffer {
  if (b.kind === "empty") return Buffer.alloc(0);
  if (b.kind === "random") return Buffer.from(b.bytes);
  const whole = Buffer.concat(
    b.frames.map((f) => {
      const payload = payloadBytes(method, f.payload);
      const declared = f.lengthDelta === Number.MAX_SAFE_INTEGER ? 0xffffffff : Math.max(0, payload.length + f.lengthDelta);
      return grpcFrame(payload, f.flags, declared);
    }),
  );
  return b.truncateTo === null ? whole : whole.subarray(0, b.truncateTo % (whole.length + 1));
}

/** Every complete envelope's payload, as the server could read them. */
function envelopes(body: Buffer): { flags: number; payload: Buffer }[] {
  const out = [];
  let o = 0;
  while (o + 5 <= body.length) {
    const len = body.readUInt32BE(o + 1);
    if (o + 5 + len > body.length) break;
    out.push({ flags: body[o] as number, payload: body.subarray(o + 5, o + 5 + len) });
    o += 5 + len;
  }
  return out;
}
/** Whether the server can have seen a compressed flag in some envelope header (then INTERNAL is the spec's code). */
function compressedFlagSeen(body: Buffer): boolean {
  let o = 0;
  while (o + 5 <= body.length) {
    if (((body[o] as number) & 1) === 1) return true;
    o += 5 + body.readUInt32BE(o + 1);
  }
  return false;
}
function grpcBodyHarmless(method: DescMethod, body: Buffer): boolean {
  return envelopes(body).every(({ payload }) => {
    try {
      return harmless(method, fromBinary(method.input, payload) as unknown as Record<string, unknown>);
    } catch {
      return true;
    }
  });
}

function grpcBodyArb(method: DescMethod): fc.Arbitrary<GrpcBody> {
  const payload: fc.Arbitrary<PayloadSpec> = fc.oneof(
    fc.uint8Array({ maxLength: 40 }).map((bytes) => ({ kind: "random", bytes }) as const),
    hostileMessage(method).map((json) => ({ kind: "message", json }) as const),
  );
  const frame: fc.Arbitrary<FrameSpec> = fc.record({
    flags: fc.oneof({ arbitrary: fc.constant(0), weight: 4 }, fc.constantFrom(1, 2, 0x80, 0x81, 0xff)),
    lengthDelta: fc.oneof(
      { arbitrary: fc.constant(0), weight: 4 },
      fc.constantFrom(-1, 1, -1000, 1000, 8 * 1024 * 1024, Number.MAX_SAFE_INTEGER),
    ),
    payload,
  });
  return fc.oneof(
    fc.uint8Array({ maxLength: 64 }).map((bytes) => ({ kind: "random", bytes }) as const),
    fc.constant({ kind: "empty" } as const),
    fc.record({
      kind: fc.constant("frames" as const),
      frames: fc.array(frame, { minLength: 1, maxLength: 3 }),
      truncateTo: fc.option(fc.nat(), { nil: null, freq: 3 }),
    }),
  );
}

const GRPC_STATUS_NAMES = ["OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"];

// ---------------------------------------------------------------------------------------------------------------

describe("fuzz: the tables cover every route and procedure", () => {
  it("has a body description for every REST route", () => {
    const missing = Object.keys(REST_POLICY).filter((op) => !(normalize(op) in REST_BODIES));
    assert.deepEqual(missing, [], "REST routes the fuzzer does not know (add them to REST_BODIES)");
  });

  it("has a guard for every procedure that may write", () => {
    assert.ok(UNARY.length >= 25, `${UNARY.length} unary procedures`);
    const unguarded = UNARY.filter((m) => isWriteRpc(m) && GUARDS[fullName(m)] === undefined).map(fullName);
    assert.deepEqual(unguarded, [], "procedures that write without a guard (add them to GUARDS)");
  });
});

for (const fastPath of [true, false]) {
  describe(`fuzz (unary fast path ${fastPath ? "on" : "off"})`, () => {
    let srv: Server;
    let fixture: unknown;
    let rtCounter = 0;

    before(async () => {
      const s = await startTestServer({ LATCHKEY_UNARY_FAST_PATH: String(fastPath), LOG_LEVEL: "warn" });
      // The server, not the client, decides what header block is too large.
      srv = { s, h1: createH1Client(s.url), h2: new H2Client(s.url, { maxSendHeaderBlockLength: 4 << 20, maxSessionMemory: 64 }) };
      await seedFixture(s);
      fixture = await snapshot(s);
    });
    after(async () => {
      srv.h1.close();
      srv.h2.close();
      await srv.s.stop();
    });

    /**
     * The 5xx-free, hang-free answer every request must get; returns it for more checks. Over HTTP/2 a header
     * block over 64 KiB may be refused instead (stream reset or GOAWAY): HTTP/1.1 caps headers at 16 KiB (431).
     */
    async function answer(h2: boolean, req: RawRequest, what: string): Promise<RawReply> {
      const reply = await send(srv, h2, req);
      const headerBytes = req.path.length + Object.entries(req.headers ?? {}).reduce((n, [k, v]) => n + k.length + v.length, 0);
      if (h2 && reply.status === 0 && headerBytes > 64 * 1024) return reply;
      assert.ok(reply.status > 0, `${what}: no HTTP response (${describeReply(reply)})`);
      assert.ok(reply.status < 500, `${what}: ${describeReply(reply)}`);
      return reply;
    }

    if (fastPath) {
      it("REST: refuses hostile bodies on every route that reads one, with a 4xx", async () => {
        const arb = fc.constantFrom(...BODY_ROUTES).chain((route) =>
          fc.record({
            route: fc.constant(route),
            body: bodySpec((route.body as { fields: Record<string, FieldKind> }).fields),
            params: pathParams(true),
            token: tokenKind,
            type: contentType,
            h2: fc.boolean(),
          }),
        );
        await check(
          fc.asyncProperty(arb, async ({ route, body, params, token, type, h2 }) => {
            const path = fillPath(route.template, params);
            const text = bodyText(body);
            const what = `${route.op} as ${path.slice(0, 100)} with a ${body.kind} body`;
            const reply = await answer(h2, { method: route.method, path, headers: { ...authHeader(token), "content-type": type }, body: text }, what);
            const mustRefuse = body.kind !== "invalid" || route.write;
            if (mustRefuse) assert.ok(refused(reply), `${what}: must be refused, got ${describeReply(reply)}`);
          }),
          runs(400),
        );
        await assertHealthy(srv, fixture);
      });

      it("REST: answers hostile paths, queries, methods and headers on every route without a 5xx", async () => {
        const METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];
        const arb = fc.constantFrom(...REST_ROUTES).chain((route) =>
          fc
            .record({
              route: fc.constant(route),
              method: fc.oneof({ arbitrary: fc.constant(route.method), weight: 3 }, fc.constantFrom(...METHODS)),
              tail: fc.option(fc.oneof(fc.constantFrom("/", "//", "/x", "/..", "/%2e%2e/%2e%2e", "/rotate", "/versions/0", "/versions/01"), hostileStr.map((s) => `/${pct(str(s))}`)), {
                nil: null,
                freq: 3,
              }),
              query: fc.array(
                fc.tuple(fc.oneof(fc.constantFrom(...(REST_QUERY[normalize(route.op)] ?? ["x"])), edgeString), fc.oneof(hostileStr, fc.constantFrom(...RAW_SEGMENTS))),
                { maxLength: 4 },
              ),
              headers: fc.dictionary(
                fc.constantFrom("content-type", "if-match", "if-none-match", "x-request-id", "x-forwarded-for", "accept", "connect-protocol-version", "content-encoding"),
                fc.oneof(
                  fc.string({ unit: fc.constantFrom(..." !\"#$%&'()*+,-./09:;<=>?@AZ[\\]^_`az{|}~\t\u00a0\u00e9\u00ff".split("")), maxLength: 40 }),
                  fc.constantFrom('"1"', 'W/"2"', "*", "gzip", "req_" + "a".repeat(200)),
                ),
                { maxKeys: 3 },
              ),
              token: tokenKind,
              h2: fc.boolean(),
            })
            .chain((r) =>
              fc.record({
                r: fc.constant(r),
                // A request that deletes may only name things that do not exist; every other write is refused by its body.
                params: pathParams(r.method !== "DELETE"),
                body: ["GET", "HEAD", "DELETE", "OPTIONS"].includes(r.method) ? fc.constant(null) : malformedText,
              }),
            ),
        );
        await check(
          fc.asyncProperty(arb, async ({ r, params, body }) => {
            const q = r.query.map(([k, v]) => `${pct(k)}=${typeof v === "string" && RAW_SEGMENTS.includes(v) ? v : pct(str(v))}`).join("&");
            const path = fillPath(r.route.template, params) + (r.tail ?? "") + (q ? `?${q}` : "");
            const headers: Record<string, string> = { ...authHeader(r.token), ...r.headers };
            await answer(r.h2, { method: r.method, path, headers, ...(body === null ? {} : { body }) }, `${r.method} ${path.slice(0, 160)}`);
          }),
          runs(300),
        );
        await assertHealthy(srv, fixture);
      });

      it("REST: refuses bodies just over the limit with 413, and keeps the connection usable", async () => {
        const arb = fc.record({ route: fc.constantFrom(...BODY_ROUTES), over: fc.integer({ min: 1, max: 64 }), h2: fc.boolean() });
        await check(
          fc.asyncProperty(arb, async ({ route, over, h2 }) => {
            const size = route.maxBody + over;
            const head = '{"name":"fz/huge","value":"';
            const body = Buffer.alloc(size, "x");
            body.write(head, 0);
            body.write('"}', size - 2);
            const path = fillPath(route.template, { store: "seeded", name: "seeded/db/password", version: "1", id: "tok_x", raw: null });
            const what = `${route.op} with ${size} bytes`;
            const reply = await answer(h2, { method: route.method, path, headers: authHeader("admin"), body }, what);
            assert.equal(reply.status, 413, `${what}: ${describeReply(reply)}`);
            assert.equal(JSON.parse(reply.body.toString()).code, "resource_exhausted");
            const next = await answer(h2, { method: "GET", path: "/healthz" }, `${what}, then /healthz`);
            assert.equal(next.status, 200);
          }),
          runs(6),
        );
        await assertHealthy(srv, fixture);
      });

      it("REST: stores a unicode edge value exactly as given, or refuses it", async () => {
        const arb = fc.record({
          target: fc.constantFrom("secret", "var"),
          value: fc.oneof(hostileStr, fc.string({ unit: "binary", minLength: 1, maxLength: 64 })),
          h2: fc.boolean(),
        });
        await check(
          fc.asyncProperty(arb, async ({ target, value, h2 }) => {
            const v = str(value);
            const name = `rt/${++rtCounter}`;
            const base = `/v1/stores/${RT_STORE}`;
            const headers = { ...authHeader("admin"), "content-type": "application/json" };
            const write =
              target === "secret"
                ? { method: "POST", path: `${base}/secrets`, headers, body: JSON.stringify({ name, value: v }) }
                : { method: "PUT", path: `${base}/vars/${name}`, headers, body: JSON.stringify({ value: v }) };
            const what = `${target} ${name} = ${JSON.stringify(v.slice(0, 40))} (${v.length} UTF-16 units)`;
            const put = await answer(h2, write, what);
            if (put.status >= 400) return;
            const got = await answer(h2, { method: "GET", path: `${base}/${target}s/${name}` }, `${what}, read back`);
            assert.equal(got.status, 200, `${what}, read back: ${describeReply(got)}`);
            assert.equal(JSON.parse(got.body.toString("utf8")).value, v, `${what}: accepted, so it must read back unchanged`);
            if (target === "secret") {
              const verify = await answer(h2, { method: "POST", path: `${base}/secrets/${name}/verify`, headers, body: JSON.stringify({ value: v }) }, `${what}, verify`);
              assert.equal(JSON.parse(verify.body.toString("utf8")).valid, true, `${what}: verifies`);
            }
          }),
          runs(80),
        );
        await assertHealthy(srv, fixture);
      });
    }

    it("Connect JSON: refuses malformed, mistyped, unknown and deeply nested messages with invalid_argument", async () => {
      const arb = fc.constantFrom(...UNARY).chain((method) =>
        fc.record({
          method: fc.constant(method),
          body: invalidConnectBody(method),
          token: tokenKind,
          type: fc.constantFrom(...CONNECT_TYPES),
          version: fc.boolean(),
          h2: fc.boolean(),
        }),
      );
      await check(
        fc.asyncProperty(arb, async ({ method, body, token, type, version, h2 }) => {
          const text = connectText(body);
          // The generators aim at invalid JSON; the reader the server uses is the judge of what they hit.
          fc.pre(decodes(method, text) === undefined);
          const path = `/${method.parent.typeName}/${method.name}`;
          const what = `${path} with a ${body.kind} body`;
          const headers = { ...authHeader(token), "content-type": type, ...(version ? { "connect-protocol-version": "1" } : {}) };
          const reply = await answer(h2, { method: "POST", path, headers, body: text }, what);
          assert.equal(reply.status, 400, `${what}: ${describeReply(reply)}`);
          assert.equal(connectCode(reply), "invalid_argument", `${what}: ${describeReply(reply)}`);
        }),
        runs(300),
      );
      await assertHealthy(srv, fixture);
    });

    it("Connect JSON: answers hostile messages to every procedure without a 5xx, refusing every write", async () => {
      const arb = fc.constantFrom(...UNARY).chain((method) =>
        fc.record({ method: fc.constant(method), message: hostileMessage(method), token: tokenKind, h2: fc.boolean() }),
      );
      await check(
        fc.asyncProperty(arb, async ({ method, message, token, h2 }) => {
          const text = JSON.stringify(mat(message));
          const decoded = decodes(method, text);
          assert.ok(decoded === undefined || harmless(method, decoded), "the generator keeps writes harmless");
          const path = `/${method.parent.typeName}/${method.name}`;
          const what = `${path} ${text.slice(0, 200)}`;
          const reply = await answer(h2, { method: "POST", path, headers: { ...authHeader(token), "content-type": "application/json" }, body: text }, what);
          const g = GUARDS[fullName(method)];
          const mustRefuse = decoded === undefined || (isWriteRpc(method) && g !== "none" && g?.refused === true);
          if (mustRefuse) assert.ok(refused(reply), `${what}: must be refused, got ${describeReply(reply)}`);
          if (decoded === undefined) assert.equal(connectCode(reply), "invalid_argument", `${what}: ${describeReply(reply)}`);
        }),
        runs(250),
      );
      await assertHealthy(srv, fixture);
    });

    it("Connect JSON: refuses a message just over readMaxBytes with resource_exhausted", async () => {
      const arb = fc.record({ method: fc.constantFrom(...UNARY), over: fc.integer({ min: 1, max: 64 }), h2: fc.boolean() });
      await check(
        fc.asyncProperty(arb, async ({ method, over, h2 }) => {
          const size = 8 * 1024 * 1024 + over;
          const body = Buffer.alloc(size, " ");
          body.write('{"name":"fz/x"}', 0);
          const path = `/${method.parent.typeName}/${method.name}`;
          const reply = await answer(h2, { method: "POST", path, headers: { ...authHeader("admin"), "content-type": "application/json" }, body }, `${path} with ${size} bytes`);
          assert.equal(connectCode(reply), "resource_exhausted", describeReply(reply));
        }),
        runs(3),
      );
      await assertHealthy(srv, fixture);
    });

    it("gRPC: answers broken frames to every unary method with a status, never UNKNOWN or INTERNAL", async () => {
      const arb = fc.constantFrom(...UNARY).chain((method) =>
        fc.record({
          method: fc.constant(method),
          body: grpcBodyArb(method),
          token: tokenKind,
          type: fc.constantFrom("application/grpc", "application/grpc+proto"),
          extra: fc.dictionary(
            fc.constantFrom("grpc-timeout", "grpc-encoding", "grpc-accept-encoding"),
            fc.constantFrom("1S", "100m", "99999999H", "0n", "abc", "-1S", "1", "", "identity", "gzip", "x-unknown"),
            { maxKeys: 2 },
          ),
        }),
      );
      await check(
        fc.asyncProperty(arb, async ({ method, body, token, type, extra }) => {
          const bytes = grpcBody(method, body);
          fc.pre(grpcBodyHarmless(method, bytes));
          const path = `/${method.parent.typeName}/${method.name}`;
          const what = `${path} with ${bytes.length} bytes ${bytes.subarray(0, 24).toString("hex")} and ${JSON.stringify(extra)}`;
          const headers = { ...authHeader(token), "content-type": type, te: "trailers", ...extra };
          const reply = await answer(true, { method: "POST", path, headers, body: bytes }, what);
          const status = grpcStatusOf(reply);
          assert.ok(status !== undefined, `${what}: no grpc-status (${describeReply(reply)})`);
          const allowed = status !== 2 && (status !== 13 || compressedFlagSeen(bytes));
          assert.ok(allowed, `${what}: ${GRPC_STATUS_NAMES[status] ?? status} ${grpcMessageOf(reply)}`);
        }),
        runs(300),
      );
      await assertHealthy(srv, fixture);
    });
  });
}
