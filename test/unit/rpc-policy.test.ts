import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { readdirSync } from "node:fs";
import { join, relative } from "node:path";
import { pathToFileURL } from "node:url";
import type { DescMethod, DescService } from "@bufbuild/protobuf";
import { SecretService } from "../../gen/latchkey/v1/secret_service_pb.js";
import { permissionFor, RPC_PERMISSIONS } from "../../src/rpc/policy.js";

/**
 * The RPC permission table against the generated service descriptors: every RPC has an entry, and no more. The
 * generated modules are found by walking gen/, so a service added to proto/ is covered without touching this test.
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

describe("RPC permissions", () => {
  it("finds every generated Latchkey service", () => {
    const names = generatedServices().map((s) => s.typeName).filter((n) => n.startsWith("latchkey."));
    assert.deepEqual(names.sort(), ["latchkey.v1.SecretService", "latchkey.v1.StoreService", "latchkey.v1.VarService"]);
    assert.ok(genFiles(genRoot).map((f) => relative(genRoot, f)).includes(join("latchkey", "v1", "secret_service_pb.ts")));
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

  it("lets reads through by IP: GetSecret, VerifySecret and WatchSecrets", () => {
    for (const name of ["GetSecret", "VerifySecret", "WatchSecrets"]) {
      const method = SecretService.methods.find((m) => m.name === name);
      assert.ok(method, name);
      assert.equal(permissionFor(method), "read", name);
    }
  });

  it("requires a token for every other SecretService RPC", () => {
    const reads = ["GetSecret", "VerifySecret", "WatchSecrets", "BatchGetSecrets"];
    const others = SecretService.methods.filter((m) => !reads.includes(m.name));
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
    for (const m of others) assert.equal(permissionFor(m), "manage", m.name);
  });

  it("makes no RPC public", () => {
    for (const m of allMethods()) assert.notEqual(permissionFor(m), "public", procedure(m));
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
    for (const name of Object.keys(RPC_PERMISSIONS)) assert.match(name, /^latchkey\.v1\.[A-Z]\w*\.[A-Z]\w*$/);
  });
});
