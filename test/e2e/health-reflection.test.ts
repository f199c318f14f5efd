import assert from "node:assert/strict";
import { readdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { create, createFileRegistry, type DescMessage, fromBinary, type FileRegistry, toBinary } from "@bufbuild/protobuf";
import { reflect } from "@bufbuild/protobuf/reflect";
import { type FileDescriptorProto, FileDescriptorProtoSchema, FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { createSqliteStorage } from "../../src/storage/sqlite/sqlite-storage.js";
import type { Storage } from "../../src/storage/storage.js";
import { ADMIN_TOKEN, startTestServer, type TestServer, tempDir } from "../support/server.js";

/**
 * The standard gRPC health and reflection services, checked with an independent peer: @grpc/grpc-js with the
 * upstream .proto files of third_party/ loaded at run time (no generated code of ours). Reflection is checked the
 * way generic tools use it: list, fetch descriptors, rebuild a registry, then call the API from those alone.
 */

const THIRD_PARTY = fileURLToPath(new URL("../../third_party", import.meta.url));
const PROTO_DIR = fileURLToPath(new URL("../../proto/latchkey/v1", import.meta.url));
const WAIT_MS = 5_000;
const LOADER = { includeDirs: [THIRD_PARTY], longs: String, enums: String, defaults: true, oneofs: true };

// Loaded packages are untyped by nature.
const healthPkg = grpc.loadPackageDefinition(protoLoader.loadSync("grpc/health/v1/health.proto", LOADER)) as any;
const reflectionV1 = grpc.loadPackageDefinition(protoLoader.loadSync("grpc/reflection/v1/reflection.proto", LOADER)) as any;
const reflectionV1alpha = grpc.loadPackageDefinition(protoLoader.loadSync("grpc/reflection/v1alpha/reflection.proto", LOADER)) as any;
const HealthClient = healthPkg.grpc.health.v1.Health as grpc.ServiceClientConstructor;

/** Every service the .proto files of the API declare: reflection must list them all. */
const LATCHKEY_SERVICES = readdirSync(PROTO_DIR)
  .filter((f) => f.endsWith(".proto"))
  .flatMap((f) => [...readFileSync(join(PROTO_DIR, f), "utf8").matchAll(/^service (\w+)/gm)].map((m) => `latchkey.v1.${m[1]}`))
  .sort();

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** `p`, or a failure after `ms` (the timer is cleared either way, so nothing keeps the file running). */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

async function waitFor(pred: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) assert.fail(`${what}: not within ${ms} ms`);
    await sleep(20);
  }
}

type Msg = Record<string, any>;

/** A unary grpc-js call; resolves with the response or the error (never rejects). */
function unary(client: grpc.Client, method: string, req: Msg, md = new grpc.Metadata()): Promise<{ res?: Msg; err?: grpc.ServiceError }> {
  return new Promise((resolve) => {
    const fn = (client as unknown as Record<string, Function>)[method] as Function;
    fn.call(client, req, md, { deadline: Date.now() + WAIT_MS }, (err: grpc.ServiceError | null, res: Msg) =>
      resolve(err ? { err } : { res }),
    );
  });
}

interface HealthWatch {
  /** Every status received, in order. */
  readonly statuses: string[];
  /** The final status of the call, once it ended. */
  end?: grpc.StatusObject;
  readonly ended: Promise<grpc.StatusObject>;
  cancel(): void;
}

function watchHealth(client: grpc.Client, service: string): HealthWatch {
  const call = (client as any).Watch({ service }) as grpc.ClientReadableStream<Msg>;
  const w: HealthWatch = {
    statuses: [],
    ended: new Promise((resolve) =>
      call.on("status", (s: grpc.StatusObject) => {
        w.end = s;
        resolve(s);
      }),
    ),
    cancel: () => call.cancel(),
  };
  call.on("data", (d: Msg) => w.statuses.push(d.status));
  call.on("error", () => {}); // the status event carries the outcome
  return w;
}

/** Sends reflection requests on one bidi stream and returns every response (bounded). */
async function reflectionInfo(client: grpc.Client, requests: Msg[]): Promise<Msg[]> {
  const call = (client as any).ServerReflectionInfo() as grpc.ClientDuplexStream<Msg, Msg>;
  const out: Msg[] = [];
  const done = new Promise<void>((resolve, reject) => {
    call.on("data", (d: Msg) => out.push(d));
    call.on("error", reject);
    call.on("end", () => resolve());
  });
  for (const r of requests) call.write(r);
  call.end();
  const timer = setTimeout(() => call.cancel(), WAIT_MS);
  try {
    await done;
  } finally {
    clearTimeout(timer);
  }
  assert.equal(out.length, requests.length, "one response per request");
  return out;
}

function decodeFiles(res: Msg): FileDescriptorProto[] {
  assert.equal(res.messageResponse, "fileDescriptorResponse", `a file descriptor response: ${JSON.stringify(res.errorResponse)}`);
  return (res.fileDescriptorResponse.fileDescriptorProto as Buffer[]).map((b) => fromBinary(FileDescriptorProtoSchema, b));
}

/** Every file comes after all the files it imports, and no file comes twice. */
function assertDependenciesFirst(files: FileDescriptorProto[], what: string): void {
  const seen = new Set<string>();
  for (const f of files) {
    assert.ok(!seen.has(f.name), `${what}: ${f.name} sent once`);
    for (const dep of f.dependency) assert.ok(seen.has(dep), `${what}: ${dep} comes before ${f.name} (order: ${files.map((x) => x.name).join(", ")})`);
    seen.add(f.name);
  }
}

function registryOf(files: FileDescriptorProto[]): FileRegistry {
  return createFileRegistry(create(FileDescriptorSetSchema, { file: files }));
}

function bearer(token = ADMIN_TOKEN): grpc.Metadata {
  const md = new grpc.Metadata();
  md.set("authorization", `Bearer ${token}`);
  return md;
}

describe("grpc.health.v1 with grpc-js", () => {
  let s: TestServer;
  let health: grpc.Client;
  let storeDown = false;
  const storeDir = tempDir();

  before(async () => {
    const real = createSqliteStorage(join(storeDir, "latchkey.db"));
    const flaky: Storage = {
      ...real,
      async ping() {
        if (storeDown) throw new Error("connection lost");
        return real.ping();
      },
    };
    // Reads need a token here, so a health check answered without one shows health is public on its own.
    s = await startTestServer({ LATCHKEY_READS_REQUIRE_TOKEN: "true" }, { storage: flaky });
    health = new HealthClient(`127.0.0.1:${s.port}`, grpc.credentials.createInsecure());
  });
  after(async () => {
    health?.close();
    await s?.stop();
    rmSync(storeDir, { recursive: true, force: true });
  });

  it("Check: SERVING for the server as a whole and for every latchkey service, with no token", async () => {
    assert.ok(LATCHKEY_SERVICES.length >= 5, `services found in proto/: ${LATCHKEY_SERVICES.join(", ")}`);
    for (const service of ["", ...LATCHKEY_SERVICES]) {
      const { res, err } = await unary(health, "Check", { service });
      assert.equal(err, undefined, `Check("${service}"): ${err?.details}`);
      assert.equal(res?.status, "SERVING", `Check("${service}")`);
    }
    // The same token-less caller is refused a read: health is public because it is health, not because reads are.
    const secrets = new (grpc.loadPackageDefinition(
      protoLoader.loadSync("latchkey/v1/secret_service.proto", { ...LOADER, includeDirs: [join(PROTO_DIR, "../..")] }),
    ) as any).latchkey.v1.SecretService(`127.0.0.1:${s.port}`, grpc.credentials.createInsecure()) as grpc.Client;
    try {
      const { err } = await unary(secrets, "GetSecret", { name: "health/anything" });
      assert.equal(err?.code, grpc.status.UNAUTHENTICATED, `GetSecret without a token: ${err?.details}`);
    } finally {
      secrets.close();
    }
  });

  it("Check: NOT_FOUND for a service the server does not have", async () => {
    for (const service of ["latchkey.v1.NoSuchService", "grpc.health.v1.Nope", "SecretService"]) {
      const { err } = await unary(health, "Check", { service });
      assert.equal(err?.code, grpc.status.NOT_FOUND, `Check("${service}")`);
    }
  });

  it("List: every known service, SERVING", async () => {
    const { res, err } = await unary(health, "List", {});
    assert.equal(err, undefined, err?.details);
    const statuses = res?.statuses as Record<string, { status: string }>;
    assert.deepEqual(Object.keys(statuses).sort(), ["", ...LATCHKEY_SERVICES].sort());
    for (const [name, st] of Object.entries(statuses)) assert.equal(st.status, "SERVING", name);
  });

  it("Check and Watch follow the store: NOT_SERVING while it does not answer, SERVING again after", async () => {
    const whole = watchHealth(health, "");
    const one = watchHealth(health, "latchkey.v1.SecretService");
    const unknown = watchHealth(health, "latchkey.v1.NoSuchService");
    try {
      await waitFor(() => whole.statuses.length >= 1 && one.statuses.length >= 1, WAIT_MS, "first watch status");
      assert.deepEqual(whole.statuses, ["SERVING"]);
      assert.deepEqual(one.statuses, ["SERVING"]);
      await waitFor(() => unknown.statuses.length >= 1, WAIT_MS, "unknown service status");
      assert.deepEqual(unknown.statuses, ["SERVICE_UNKNOWN"], "Watch of an unknown service reports SERVICE_UNKNOWN and stays open");
      assert.equal(unknown.end, undefined);

      storeDown = true;
      assert.equal((await unary(health, "Check", { service: "" })).res?.status, "NOT_SERVING", "Check while the store is down");
      assert.equal((await fetch(`${s.url}/readyz`)).status, 503, "/readyz agrees");
      await waitFor(() => whole.statuses.length >= 2 && one.statuses.length >= 2, WAIT_MS, "NOT_SERVING on the watch");
      assert.deepEqual(whole.statuses, ["SERVING", "NOT_SERVING"]);
      assert.deepEqual(one.statuses, ["SERVING", "NOT_SERVING"]);

      storeDown = false;
      assert.equal((await unary(health, "Check", { service: "" })).res?.status, "SERVING", "Check once the store is back");
      await waitFor(() => whole.statuses.length >= 3 && one.statuses.length >= 3, WAIT_MS, "SERVING again on the watch");
      assert.deepEqual(whole.statuses, ["SERVING", "NOT_SERVING", "SERVING"]);
      assert.deepEqual(one.statuses, ["SERVING", "NOT_SERVING", "SERVING"]);
      assert.equal(whole.end, undefined, "the watch is still open");
      assert.deepEqual(unknown.statuses, ["SERVICE_UNKNOWN"], "nothing new for the unknown service");
    } finally {
      storeDown = false;
      whole.cancel();
      one.cancel();
      unknown.cancel();
    }
    const ended = await within(whole.ended, WAIT_MS, "end of a cancelled watch");
    assert.equal(ended.code, grpc.status.CANCELLED, "a watch the client cancels ends as cancelled");
  });
});

describe("grpc.health.v1 during a drain", () => {
  // Watches re-check readiness every second: the delay leaves room for one check, with slack for a loaded machine.
  const DELAY_MS = 2_000;
  let s: TestServer;
  let health: grpc.Client;
  before(async () => {
    s = await startTestServer({ LATCHKEY_DRAIN_DELAY_MS: String(DELAY_MS) });
    health = new HealthClient(`127.0.0.1:${s.port}`, grpc.credentials.createInsecure());
  });
  after(async () => {
    health?.close();
    await s?.stop();
  });

  it("Check says NOT_SERVING and watches report NOT_SERVING during the delay, then end with UNAVAILABLE", async () => {
    const w = watchHealth(health, "");
    const svc = watchHealth(health, "latchkey.v1.VarService");
    try {
      await waitFor(() => w.statuses.length >= 1 && svc.statuses.length >= 1, WAIT_MS, "first watch status");
      assert.deepEqual(w.statuses, ["SERVING"]);
      const t0 = performance.now();
      const closing = s.app.close(2_000);

      // The delay is there so that load balancers see "not serving" while the server still answers.
      assert.equal((await unary(health, "Check", { service: "" })).res?.status, "NOT_SERVING", "Check during the delay");
      assert.equal((await unary(health, "Check", { service: "latchkey.v1.SecretService" })).res?.status, "NOT_SERVING");
      await waitFor(() => w.statuses.length >= 2 && svc.statuses.length >= 2, DELAY_MS + 1_000, "NOT_SERVING on the watches");
      const notServingAt = performance.now() - t0;
      assert.ok(notServingAt < DELAY_MS, `NOT_SERVING reached the watches ${Math.round(notServingAt)} ms into a ${DELAY_MS} ms delay`);
      assert.equal(w.end, undefined, "the watch is still open during the delay");

      const [end, endSvc] = await within(Promise.all([w.ended, svc.ended]), WAIT_MS, "the watches ending during the drain");
      for (const [what, watch, st] of [
        ["whole server", w, end],
        ["VarService", svc, endSvc],
      ] as const) {
        assert.deepEqual(watch.statuses, ["SERVING", "NOT_SERVING"], `${what}: NOT_SERVING before the end, once`);
        assert.equal(st.code, grpc.status.UNAVAILABLE, `${what}: ended with ${grpc.status[st.code]} (${st.details})`);
        assert.match(st.details, /shutting down/, `${what}: the server said why, not a dropped connection`);
      }
      await within(closing, WAIT_MS, "close");
    } finally {
      w.cancel();
      svc.cancel();
    }
  });
});

describe("gRPC server reflection with grpc-js", () => {
  let s: TestServer;
  let v1: grpc.Client;
  let v1alpha: grpc.Client;
  const target = () => `127.0.0.1:${s.port}`;

  before(async () => {
    s = await startTestServer();
    v1 = new reflectionV1.grpc.reflection.v1.ServerReflection(target(), grpc.credentials.createInsecure());
    v1alpha = new reflectionV1alpha.grpc.reflection.v1alpha.ServerReflection(target(), grpc.credentials.createInsecure());
    const created = await s.admin("/v1/secrets", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ name: "reflect/db/password", value: "reflected-value-1", description: "for reflection" }),
    });
    assert.equal(created.status, 201);
  });
  after(async () => {
    v1?.close();
    v1alpha?.close();
    await s?.stop();
  });

  for (const [version, client] of [
    ["v1", () => v1],
    ["v1alpha", () => v1alpha],
  ] as const) {
    it(`${version}: list_services lists every latchkey service plus health and reflection, with no token`, async () => {
      const [res] = await reflectionInfo(client(), [{ host: "", listServices: "*" }]);
      assert.equal(res?.messageResponse, "listServicesResponse");
      assert.deepEqual(res?.originalRequest.listServices, "*", "the request is echoed");
      const names = (res?.listServicesResponse.service as { name: string }[]).map((x) => x.name);
      for (const name of [...LATCHKEY_SERVICES, "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"]) {
        assert.ok(names.includes(name), `${name} listed: ${names.join(", ")}`);
      }
      assert.equal(new Set(names).size, names.length, "no service twice");
    });

    it(`${version}: file_containing_symbol for a service, a method and a message: the file with its imports, dependencies first`, async () => {
      const symbols = [
        "latchkey.v1.SecretService",
        "latchkey.v1.SecretService.GetSecret",
        "latchkey.v1.GetSecretRequest",
        "latchkey.v1.Secret",
        "grpc.health.v1.HealthCheckResponse.ServingStatus",
      ];
      const responses = await reflectionInfo(
        client(),
        symbols.map((fileContainingSymbol) => ({ fileContainingSymbol })),
      );
      const expectFile: Record<string, string> = {
        "latchkey.v1.SecretService": "latchkey/v1/secret_service.proto",
        "latchkey.v1.SecretService.GetSecret": "latchkey/v1/secret_service.proto",
        "latchkey.v1.GetSecretRequest": "latchkey/v1/secret_service.proto",
        "latchkey.v1.Secret": "latchkey/v1/secret.proto",
        "grpc.health.v1.HealthCheckResponse.ServingStatus": "grpc/health/v1/health.proto",
      };
      symbols.forEach((symbol, i) => {
        const files = decodeFiles(responses[i] as Msg);
        assertDependenciesFirst(files, symbol);
        const names = files.map((f) => f.name);
        assert.ok(names.includes(expectFile[symbol] as string), `${symbol}: ${expectFile[symbol]} in ${names.join(", ")}`);
        // The closure is complete: a registry can be built from these files alone.
        const registry = registryOf(files);
        const parent = symbol === "latchkey.v1.SecretService.GetSecret" ? "latchkey.v1.SecretService" : symbol;
        assert.ok(registry.get(parent), `${symbol}: found in the registry rebuilt from the response`);
      });
      const serviceFiles = decodeFiles(responses[0] as Msg).map((f) => f.name);
      for (const dep of ["google/protobuf/duration.proto", "google/protobuf/timestamp.proto", "latchkey/v1/secret.proto"]) {
        assert.ok(serviceFiles.includes(dep), `the imports of secret_service.proto are sent: ${dep}`);
      }
    });

    it(`${version}: every listed service can be described`, async () => {
      const [list] = await reflectionInfo(client(), [{ listServices: "" }]);
      const names = (list?.listServicesResponse.service as { name: string }[]).map((x) => x.name);
      const responses = await reflectionInfo(
        client(),
        names.map((fileContainingSymbol) => ({ fileContainingSymbol })),
      );
      names.forEach((name, i) => {
        const files = decodeFiles(responses[i] as Msg);
        assertDependenciesFirst(files, name);
        const service = registryOf(files).getService(name);
        assert.ok(service, `${name} described`);
        assert.ok(service.methods.length > 0, `${name} has methods`);
      });
    });

    it(`${version}: unknown symbols, files and extensions get error_response code 5 on a stream that stays usable`, async () => {
      const responses = await reflectionInfo(client(), [
        { fileContainingSymbol: "latchkey.v1.NoSuchThing" },
        { fileContainingSymbol: "no.such.package.Service.Method" },
        { fileByFilename: "latchkey/v1/nope.proto" },
        { fileContainingExtension: { containingType: "latchkey.v1.Secret", extensionNumber: 1000 } },
        { fileByFilename: "latchkey/v1/secret_service.proto" },
      ]);
      for (const res of responses.slice(0, 4)) {
        assert.equal(res.messageResponse, "errorResponse", JSON.stringify(res.originalRequest));
        assert.equal(res.errorResponse.errorCode, 5, JSON.stringify(res.originalRequest));
        assert.ok(res.errorResponse.errorMessage);
      }
      const files = decodeFiles(responses[4] as Msg);
      assertDependenciesFirst(files, "file_by_filename");
      assert.equal(files[files.length - 1]?.name, "latchkey/v1/secret_service.proto", "the file asked for, after its imports");
    });
  }

  it("the v1alpha reflection service the server also answers is listed and can be described, like every other", async () => {
    // Tools that only speak v1alpha (older grpcurl, Postman) describe the service they talk to.
    const [list, described] = await reflectionInfo(v1, [
      { listServices: "" },
      { fileContainingSymbol: "grpc.reflection.v1alpha.ServerReflection" },
    ]);
    const names = (list?.listServicesResponse.service as { name: string }[]).map((x) => x.name);
    assert.ok(names.includes("grpc.reflection.v1alpha.ServerReflection"), `listed: ${names.join(", ")}`);
    const files = decodeFiles(described as Msg);
    assert.ok(registryOf(files).getService("grpc.reflection.v1alpha.ServerReflection"));
  });

  it("a client rebuilds SecretService from reflection alone and calls GetSecret (proto-loader on the reflected FileDescriptorSet)", async () => {
    const [res] = await reflectionInfo(v1, [{ fileContainingSymbol: "latchkey.v1.SecretService" }]);
    const files = decodeFiles(res as Msg);
    const registry = registryOf(files);
    const service = registry.getService("latchkey.v1.SecretService");
    assert.ok(service);
    const get = service.methods.find((m) => m.name === "GetSecret");
    assert.ok(get, "GetSecret found");
    assert.equal(get.input.typeName, "latchkey.v1.GetSecretRequest");
    assert.equal(get.output.typeName, "latchkey.v1.GetSecretResponse");
    assert.equal(get.methodKind, "unary");
    for (const m of ["StoreSecret", "ListSecrets", "WatchSecrets", "VerifySecret"]) {
      assert.ok(service.methods.some((x) => x.name === m), `${m} found`);
    }

    // grpc-js, with a package definition built only from the reflected descriptors.
    const set = Buffer.from(toBinary(FileDescriptorSetSchema, create(FileDescriptorSetSchema, { file: files })));
    const definition = protoLoader.loadFileDescriptorSetFromBuffer(set, { longs: String, enums: String, defaults: true, oneofs: true });
    const pkg = grpc.loadPackageDefinition(definition) as any;
    const dynamic = new pkg.latchkey.v1.SecretService(target(), grpc.credentials.createInsecure()) as grpc.Client;
    try {
      const ok = await unary(dynamic, "GetSecret", { name: "reflect/db/password" }, bearer());
      assert.equal(ok.err, undefined, ok.err?.details);
      assert.equal(ok.res?.value, "reflected-value-1");
      assert.equal(ok.res?.secret?.name, "reflect/db/password");
      assert.equal(ok.res?.secret?.description, "for reflection");
      const missing = await unary(dynamic, "GetSecret", { name: "reflect/none" }, bearer());
      assert.equal(missing.err?.code, grpc.status.NOT_FOUND);
    } finally {
      dynamic.close();
    }
  });

  it("a client calls GetSecret with messages built and read by protobuf-es from the reflected schemas", async () => {
    const [res] = await reflectionInfo(v1, [{ fileContainingSymbol: "latchkey.v1.SecretService.GetSecret" }]);
    const registry = registryOf(decodeFiles(res as Msg));
    const method = registry.getService("latchkey.v1.SecretService")?.methods.find((m) => m.name === "GetSecret");
    assert.ok(method);
    const input: DescMessage = method.input;
    const output: DescMessage = method.output;
    const path = `/${method.parent.typeName}/${method.name}`;
    const client = new grpc.Client(target(), grpc.credentials.createInsecure());
    try {
      const request = create(input, {});
      const r = reflect(input, request);
      const nameField = input.fields.find((f) => f.name === "name");
      assert.ok(nameField);
      r.set(nameField, "reflect/db/password");
      const reply = await new Promise<{ err?: grpc.ServiceError; res?: Uint8Array }>((resolve) => {
        client.makeUnaryRequest(
          path,
          (m: unknown) => Buffer.from(toBinary(input, m as never)),
          (b: Buffer) => new Uint8Array(b),
          request,
          bearer(),
          { deadline: Date.now() + WAIT_MS },
          (err, out) => resolve(err ? { err } : { res: out as Uint8Array }),
        );
      });
      assert.equal(reply.err, undefined, reply.err?.details);
      const decoded = reflect(output, fromBinary(output, reply.res as Uint8Array));
      const valueField = output.fields.find((f) => f.name === "value");
      assert.ok(valueField);
      assert.equal(decoded.get(valueField), "reflected-value-1");
    } finally {
      client.close();
    }
  });
});
