import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { readdirSync } from "node:fs";
import { join, relative } from "node:path";
import { pathToFileURL } from "node:url";
import type { DescMethod, DescService } from "@bufbuild/protobuf";
import { AuditService } from "../../gen/latchkey/v1/audit_service_pb.js";
import { SecretService } from "../../gen/latchkey/v1/secret_service_pb.js";
import { TokenService } from "../../gen/latchkey/v1/token_service_pb.js";
import { can, IP_FENCED_ACTIONS, REST_POLICY, RPC_POLICY } from "../../src/auth/policy.js";
import { ANONYMOUS } from "../../src/domain/principal.js";
import { createLogger } from "../../src/log/logger.js";
import { createRestApi } from "../../src/rest/rest-api.js";
import { permissionFor, RPC_PERMISSIONS } from "../../src/rpc/policy.js";

/**
 * The access policy against what is served: every generated RPC and every REST route has an entry, and no more.
 * The generated modules are found by walking gen/, so a service added to proto/ is covered without touching this
 * test; the REST routes come from the route table itself.
 */

function genFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? genFiles(join(dir, e.name)) : e.name.endsWith("_pb.ts") ? [join(dir, e.name)] : [],
  );
}

const genRoot = join(import.meta.dirname, "..", "..", "gen");
const modules = (await Promise.all(
  genFiles(genRoot).map((f) => import(pathToFileURL(f).href)),
)) as Record<string, unknown>[];

/** Every service described by the generated code, found through the exported descriptors and their files. */
function generatedServices(): DescService[] {
  const services = new Map<string, DescService>();
  for (const mod of modules) {
    for (const value of Object.values(mod)) {
      const desc = value as { kind?: unknown; services?: unknown };
      if (desc.kind === "service") services.set((value as DescService).typeName, value as DescService);
      if (desc.kind === "file") for (const s of (value as { services: DescService[] }).services) services.set(s.typeName, s);
    }
  }
  return [...services.values()];
}

const allMethods = (): DescMethod[] => generatedServices().flatMap((s) => s.methods);
const procedure = (m: DescMethod) => `${m.parent.typeName}.${m.name}`;

const SECRET_READS = ["GetSecret", "VerifySecret", "WatchSecrets", "BatchGetSecrets"];

describe("RPC permissions", () => {
  it("finds every generated Latchkey service", () => {
    const names = generatedServices().map((s) => s.typeName).filter((n) => n.startsWith("latchkey."));
    assert.deepEqual(names.sort(), [
      "latchkey.v1.AuditService",
      "latchkey.v1.SecretService",
      "latchkey.v1.StoreService",
      "latchkey.v1.TokenService",
      "latchkey.v1.VarService",
    ]);
    const files = genFiles(genRoot).map((f) => relative(genRoot, f));
    for (const f of ["secret_service_pb.ts", "token_service_pb.ts", "audit_service_pb.ts"]) {
      assert.ok(files.includes(join("latchkey", "v1", f)), f);
    }
  });

  it("has an entry for every generated RPC", () => {
    const missing = allMethods().filter((m) => permissionFor(m) === undefined).map(procedure);
    assert.deepEqual(missing, [], `RPCs without an entry in RPC_PERMISSIONS: ${missing.join(", ")}`);
  });

  it("has no entry for an RPC that does not exist", () => {
    const known = new Set(allMethods().map(procedure));
    const stale = Object.keys(RPC_PERMISSIONS).filter((name) => !known.has(name));
    assert.deepEqual(stale, [], `entries naming no generated RPC: ${stale.join(", ")}`);
  });

  it("is the policy table of src/auth/policy.ts", () => {
    assert.equal(RPC_PERMISSIONS, RPC_POLICY);
  });

  it("lets value reads through by IP: GetSecret, VerifySecret, WatchSecrets and BatchGetSecrets", () => {
    const expected: Record<string, string> = {
      GetSecret: "secrets.read",
      VerifySecret: "secrets.verify",
      WatchSecrets: "secrets.read",
      BatchGetSecrets: "secrets.read",
    };
    for (const name of SECRET_READS) {
      const method = SecretService.methods.find((m) => m.name === name);
      assert.ok(method, name);
      const action = permissionFor(method);
      assert.equal(action, expected[name], name);
      assert.ok(action && IP_FENCED_ACTIONS.has(action), `${name} is fenced by the client IP`);
      assert.ok(action && can(ANONYMOUS, action), `${name} works without a token from an allowed IP`);
    }
  });

  it("requires a token for every other SecretService RPC: writes need secrets.write, listings secrets.list", () => {
    const others = SecretService.methods.filter((m) => !SECRET_READS.includes(m.name));
    assert.deepEqual(
      others.map((m) => m.name),
      [
        "StoreSecret",
        "ListSecrets",
        "UpdateSecret",
        "DeleteSecret",
        "RotateSecret",
        "ListSecretVersions",
        "SetVersionState",
        "UndeleteSecret",
        "CopySecret",
        "RenameSecret",
        "MoveSecret",
        "BatchUpsertSecrets",
        "BatchDeleteSecrets",
      ],
    );
    const listings = ["ListSecrets", "ListSecretVersions"];
    for (const m of others) {
      const action = permissionFor(m);
      assert.equal(action, listings.includes(m.name) ? "secrets.list" : "secrets.write", m.name);
      assert.ok(action && !can(ANONYMOUS, action), `${m.name} needs a token`);
    }
  });

  it("keeps tokens and the audit log to admins", () => {
    for (const m of TokenService.methods) assert.equal(permissionFor(m), "tokens.manage", m.name);
    for (const m of AuditService.methods) assert.equal(permissionFor(m), "audit.read", m.name);
    assert.deepEqual(
      TokenService.methods.map((m) => m.name),
      ["CreateToken", "ListTokens", "RevokeToken"],
    );
    assert.deepEqual(
      AuditService.methods.map((m) => m.name),
      ["ListAuditEvents"],
    );
  });

  it("makes no Latchkey RPC public: only the standard health and reflection services are", () => {
    const open = allMethods()
      .filter((m) => permissionFor(m) === "public")
      .map(procedure);
    for (const name of open) assert.match(name, /^grpc\.(health\.v1\.Health|reflection\.v1(alpha)?\.ServerReflection)\./, name);
    for (const m of allMethods()) {
      if (m.parent.typeName.startsWith("latchkey.")) assert.notEqual(permissionFor(m), "public", procedure(m));
    }
  });

  it("fails closed for an RPC it does not know", () => {
    const getSecret = SecretService.methods.find((m) => m.name === "GetSecret");
    assert.ok(getSecret);
    const unknown = { ...getSecret, name: "ExportEverything" } as DescMethod;
    assert.equal(permissionFor(unknown), undefined);
    const otherService = { ...getSecret, parent: { ...getSecret.parent, typeName: "evil.v1.SecretService" } } as DescMethod;
    assert.equal(permissionFor(otherService), undefined);
  });

  it("keys the table by full procedure name, not the local name", () => {
    for (const name of Object.keys(RPC_PERMISSIONS)) assert.match(name, /^(latchkey|grpc)(\.[a-z]\w*)*\.v1(alpha)?\.[A-Z]\w*\.[A-Z]\w*$/);
  });
});

/**
 * A RestApi over deps that fail if touched (whatever deps it grows): listing its operations must not need them.
 * Only the logger and the readiness check are real, in case construction keeps references to them.
 */
function restOperations(): string[] {
  type RestDeps = Parameters<typeof createRestApi>[0];
  const untouchable = (what: string): unknown =>
    new Proxy(() => undefined, {
      get(_target, prop) {
        throw new Error(`${what}.${String(prop)} was touched`);
      },
      apply() {
        throw new Error(`${what}() was called`);
      },
    });
  const real: Partial<Record<string, unknown>> = { logger: createLogger("silent"), ready: async () => true };
  const deps = new Proxy({} as RestDeps, {
    get: (_target, prop) => (typeof prop === "string" && prop in real ? real[prop] : untouchable(String(prop))),
  });
  return createRestApi(deps).operations();
}

describe("REST permissions", () => {
  const operations = restOperations();

  it("lists every route once, as METHOD /path", () => {
    assert.ok(operations.length > 40, `${operations.length} routes`);
    assert.equal(new Set(operations).size, operations.length, "no operation is listed twice");
    for (const op of operations) assert.match(op, /^(GET|POST|PUT|DELETE|PATCH) \/\S*$/, op);
    for (const op of ["GET /healthz", "POST /v1/tokens", "GET /v1/audit", "GET /v1/stores/{store}/secrets/{name}"]) {
      assert.ok(operations.includes(op), op);
    }
  });

  it("has an entry for every REST route", () => {
    const missing = operations.filter((op) => REST_POLICY[op] === undefined);
    assert.deepEqual(missing, [], `routes without an entry in REST_POLICY: ${missing.join(", ")}`);
  });

  it("has no entry for a route that does not exist", () => {
    const known = new Set(operations);
    const stale = Object.keys(REST_POLICY).filter((op) => !known.has(op));
    assert.deepEqual(stale, [], `entries naming no route: ${stale.join(", ")}`);
  });

  it("makes only operational probes public, nothing under /v1/", () => {
    const open = operations.filter((op) => REST_POLICY[op] === "public");
    for (const op of ["GET /healthz", "GET /readyz"]) assert.ok(open.includes(op), op);
    for (const op of open) assert.match(op, /^GET \/(?!v1\/)[a-z]+$/, `${op} is public`);
  });

  it("gives a route the action of the RPC it mirrors", () => {
    const pairs: [rest: string, rpc: string][] = [
      ["POST /v1/secrets", "latchkey.v1.SecretService.StoreSecret"],
      ["GET /v1/secrets/{name}", "latchkey.v1.SecretService.GetSecret"],
      ["POST /v1/stores/{store}/secrets/{name}/verify", "latchkey.v1.SecretService.VerifySecret"],
      ["POST /v1/stores/{store}/secrets:batchGet", "latchkey.v1.SecretService.BatchGetSecrets"],
      ["GET /v1/stores/{store}/secrets", "latchkey.v1.SecretService.ListSecrets"],
      ["DELETE /v1/stores/{store}", "latchkey.v1.StoreService.DeleteStore"],
      ["GET /v1/stores/{store}/vars/{name}", "latchkey.v1.VarService.GetVar"],
      ["POST /v1/tokens", "latchkey.v1.TokenService.CreateToken"],
      ["DELETE /v1/tokens/{id}", "latchkey.v1.TokenService.RevokeToken"],
      ["GET /v1/audit", "latchkey.v1.AuditService.ListAuditEvents"],
    ];
    for (const [rest, rpc] of pairs) assert.equal(REST_POLICY[rest], RPC_POLICY[rpc], `${rest} ~ ${rpc}`);
  });
});
