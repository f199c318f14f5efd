import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import * as http2 from "node:http2";
import * as https from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { HealthCheckResponse_ServingStatus } from "../../gen/grpc/health/v1/health_pb.js";
import { SecretService } from "../../gen/latchkey/v1/secret_service_pb.js";
import { createLatchkeyClient } from "../../src/client/index.js";
import { ConfigError, loadConfig } from "../../src/config/config.js";
import { createSqliteStorage } from "../../src/storage/sqlite/sqlite-storage.js";
import type { Storage } from "../../src/storage/storage.js";
import { freePort, killAll, runToExit } from "../support/spawn.js";
import { ADMIN_TOKEN, MASTER_KEY, startTestServer, type TestServer } from "../support/server.js";

/**
 * TLS on the one port: HTTP/1.1 and HTTP/2 chosen by ALPN, every protocol over it (REST, Connect, gRPC from
 * connect-node and from grpc-js), plain HTTP refused; with a client CA, mutual TLS: no certificate or one from
 * another CA fails the handshake, one signed by the CA works. Certificates are made for the run with openssl.
 */

const OPENSSL = spawnSync("openssl", ["version"], { encoding: "utf8" });
const HAVE_OPENSSL = OPENSSL.status === 0 && !OPENSSL.error;
const SKIP = HAVE_OPENSSL ? false : "openssl is not installed (or not on PATH): cannot generate the test certificates; TLS tests skipped";

const PROTO_DIR = fileURLToPath(new URL("../../proto", import.meta.url));
const CALL_MS = 5_000;
const NAME = "tls/db/password";
const VALUE = "tls-secret-value-1";

interface Pki {
  readonly dir: string;
  readonly ca: Buffer;
  readonly serverCert: string;
  readonly serverKey: string;
  readonly clientCert: Buffer;
  readonly clientKey: Buffer;
  readonly rogueCert: Buffer;
  readonly rogueKey: Buffer;
  readonly caPath: string;
}

function openssl(dir: string, args: string[]): void {
  execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
}

/** A throwaway CA, a server certificate for 127.0.0.1 and localhost, a client certificate, and a rogue CA's client. */
function makePki(): Pki {
  const dir = mkdtempSync(join(tmpdir(), "latchkey-tls-"));
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  const caExt = ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"];
  openssl(dir, ["req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=Latchkey Test CA", ...caExt]);
  openssl(dir, ["req", "-x509", ...ec, "-keyout", "rogue-ca.key", "-out", "rogue-ca.crt", "-days", "2", "-subj", "/CN=Rogue CA", ...caExt]);
  writeFileSync(join(dir, "server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n");
  writeFileSync(join(dir, "client.ext"), "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n");
  const leaf = (name: string, subject: string, ca: string, ext: string) => {
    openssl(dir, ["req", ...ec, "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", subject]);
    openssl(dir, ["x509", "-req", "-in", `${name}.csr`, "-CA", `${ca}.crt`, "-CAkey", `${ca}.key`, "-CAcreateserial", "-out", `${name}.crt`, "-days", "2", "-extfile", ext]);
  };
  leaf("server", "/CN=latchkey-test-server", "ca", "server.ext");
  leaf("client", "/CN=latchkey-test-client", "ca", "client.ext");
  leaf("rogue", "/CN=latchkey-rogue-client", "rogue-ca", "client.ext");
  const read = (f: string) => readFileSync(join(dir, f));
  return {
    dir,
    ca: read("ca.crt"),
    caPath: join(dir, "ca.crt"),
    serverCert: join(dir, "server.crt"),
    serverKey: join(dir, "server.key"),
    clientCert: read("client.crt"),
    clientKey: read("client.key"),
    rogueCert: read("rogue.crt"),
    rogueKey: read("rogue.key"),
  };
}

interface HttpsReply {
  readonly status: number;
  readonly httpVersion: string;
  readonly body: string;
}

/** One request over HTTPS HTTP/1.1 (no ALPN for h2 offered), on a fresh connection. */
function https1(url: string, path: string, tls: https.RequestOptions, init: { method?: string; body?: string; headers?: Record<string, string> } = {}): Promise<HttpsReply> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      `${url}${path}`,
      { method: init.method ?? "GET", headers: init.headers, agent: false, timeout: CALL_MS, ...tls },
      (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => (body += c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, httpVersion: res.httpVersion, body }));
        res.on("error", reject);
      },
    );
    req.on("timeout", () => req.destroy(new Error("timed out")));
    req.on("error", reject);
    req.end(init.body);
  });
}

/** One GET over HTTPS HTTP/2 (ALPN h2); returns the status, the negotiated protocol and the body. */
function https2(url: string, path: string, tls: http2.SecureClientSessionOptions): Promise<HttpsReply & { alpn: string | undefined }> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(url, tls);
    const timer = setTimeout(() => {
      session.destroy();
      reject(new Error("HTTP/2 request timed out"));
    }, CALL_MS);
    session.on("error", (err) => {
      clearTimeout(timer);
      session.destroy();
      reject(err);
    });
    const stream = session.request({ ":method": "GET", ":path": path });
    let status = 0;
    let body = "";
    stream.on("response", (h) => (status = Number(h[":status"])));
    stream.setEncoding("utf8");
    stream.on("data", (c: string) => (body += c));
    stream.on("error", (err) => {
      clearTimeout(timer);
      session.destroy();
      reject(err);
    });
    stream.on("end", () => {
      clearTimeout(timer);
      const alpn = session.alpnProtocol;
      session.close();
      resolve({ status, httpVersion: "2", body, alpn });
    });
    stream.end();
  });
}

/** Resolves with the error a promise rejects with; fails if it resolves. */
async function rejection(p: Promise<unknown>, what: string): Promise<Error> {
  try {
    await p;
  } catch (err) {
    return err as Error;
  }
  assert.fail(`${what}: expected a failure, but it succeeded`);
}

const grpcPkg = grpc.loadPackageDefinition(
  protoLoader.loadSync("latchkey/v1/secret_service.proto", { includeDirs: [PROTO_DIR], longs: String, enums: String, defaults: true, oneofs: true }),
) as any;

/** GetSecret with grpc-js over the given channel credentials; resolves with the value or the error. */
function grpcGet(port: number, creds: grpc.ChannelCredentials, name = NAME): Promise<{ value?: string; err?: grpc.ServiceError }> {
  // The certificate names localhost too: use it as the TLS server name (an IP address there is deprecated, RFC 6066).
  const client = new grpcPkg.latchkey.v1.SecretService(`127.0.0.1:${port}`, creds, {
    "grpc.ssl_target_name_override": "localhost",
    "grpc.default_authority": "localhost",
  }) as grpc.Client;
  return new Promise<{ value?: string; err?: grpc.ServiceError }>((resolve) => {
    (client as any).GetSecret({ name }, new grpc.Metadata(), { deadline: Date.now() + CALL_MS }, (err: grpc.ServiceError | null, res: { value: string }) =>
      resolve(err ? { err } : { value: res.value }),
    );
  }).finally(() => client.close());
}

describe("TLS and mutual TLS", { skip: SKIP }, () => {
  let pki: Pki;
  let tlsServer: TestServer;
  let mtlsServer: TestServer;

  before(async () => {
    pki = makePki();
    const env = { LATCHKEY_TLS_CERT: pki.serverCert, LATCHKEY_TLS_KEY: pki.serverKey };
    [tlsServer, mtlsServer] = await Promise.all([
      startTestServer(env),
      startTestServer({ ...env, LATCHKEY_TLS_CLIENT_CA: pki.caPath }),
    ]);
    // The same secret on both, written through the admin API over TLS.
    const clientTls = { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey };
    for (const s of [tlsServer, mtlsServer]) {
      const created = await https1(s.url, "/v1/secrets", clientTls, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${ADMIN_TOKEN}` },
        body: JSON.stringify({ name: NAME, value: VALUE }),
      });
      assert.equal(created.status, 201, created.body);
    }
  });
  after(async () => {
    await Promise.all([tlsServer?.stop(), mtlsServer?.stop()]);
    await killAll();
    if (pki) rmSync(pki.dir, { recursive: true, force: true });
  });

  describe("server TLS", () => {
    it("announces an https URL", () => {
      assert.match(tlsServer.url, /^https:\/\/127\.0\.0\.1:\d+$/);
    });

    it("REST over HTTPS with HTTP/1.1 and with HTTP/2 (ALPN)", async () => {
      const h1 = await https1(tlsServer.url, `/v1/secrets/${NAME}`, { ca: pki.ca });
      assert.equal(h1.status, 200, h1.body);
      assert.equal(h1.httpVersion, "1.1");
      assert.equal(JSON.parse(h1.body).value, VALUE);
      const h2 = await https2(tlsServer.url, `/v1/secrets/${NAME}`, { ca: pki.ca });
      assert.equal(h2.status, 200, h2.body);
      assert.equal(h2.alpn, "h2");
      assert.equal(JSON.parse(h2.body).value, VALUE);
      assert.equal((await https1(tlsServer.url, "/readyz", { ca: pki.ca })).status, 200);
      assert.match((await https1(tlsServer.url, "/metrics", { ca: pki.ca })).body, /latchkey_requests_total/);
    });

    it("Connect (HTTP/1.1 and HTTP/2) and gRPC clients with the CA", async () => {
      for (const [what, transport] of [
        ["Connect HTTP/1.1", createConnectTransport({ baseUrl: tlsServer.url, httpVersion: "1.1", nodeOptions: { ca: pki.ca } })],
        ["Connect HTTP/2", createConnectTransport({ baseUrl: tlsServer.url, httpVersion: "2", nodeOptions: { ca: pki.ca } })],
        ["gRPC", createGrpcTransport({ baseUrl: tlsServer.url, nodeOptions: { ca: pki.ca } })],
      ] as const) {
        const got = await createClient(SecretService, transport).getSecret({ name: NAME }, { timeoutMs: CALL_MS });
        assert.equal(got.value, VALUE, what);
      }
      const sdk = createLatchkeyClient({ baseUrl: tlsServer.url, tls: { ca: pki.ca }, token: ADMIN_TOKEN });
      assert.equal((await sdk.secrets.getSecret({ name: NAME }, { timeoutMs: CALL_MS })).value, VALUE, "createLatchkeyClient");
      assert.equal((await sdk.health.check({}, { timeoutMs: CALL_MS })).status, HealthCheckResponse_ServingStatus.SERVING);
    });

    it("grpc-js with credentials.createSsl(ca)", async () => {
      const ok = await grpcGet(tlsServer.port, grpc.credentials.createSsl(pki.ca));
      assert.equal(ok.err, undefined, ok.err?.details);
      assert.equal(ok.value, VALUE);
    });

    it("a client that does not trust the CA refuses the server", async () => {
      const err = await rejection(https1(tlsServer.url, "/readyz", {}), "HTTPS without the CA");
      assert.match(String((err as NodeJS.ErrnoException).code ?? err.message), /SELF_SIGNED|UNABLE_TO_VERIFY|CERT/);
    });

    it("refuses plain HTTP/1.1, h2c and insecure gRPC on the TLS port", async () => {
      const plainUrl = tlsServer.url.replace("https://", "http://");
      const plain = await fetch(`${plainUrl}/readyz`, { signal: AbortSignal.timeout(CALL_MS) }).then(
        (r) => `answered ${r.status}`,
        () => "refused",
      );
      assert.equal(plain, "refused", "plain HTTP/1.1");
      const h2c = createClient(SecretService, createGrpcTransport({ baseUrl: plainUrl, sessionManager: new Http2SessionManager(plainUrl) }));
      const err = await rejection(h2c.getSecret({ name: NAME }, { timeoutMs: CALL_MS }), "gRPC over h2c");
      assert.ok(err instanceof ConnectError, String(err));
      assert.ok([Code.Unavailable, Code.Internal, Code.Unknown, Code.Canceled].includes(err.code), Code[err.code]);
      const insecure = await grpcGet(tlsServer.port, grpc.credentials.createInsecure());
      assert.equal(insecure.value, undefined, "grpc-js without TLS gets nothing");
      assert.equal(insecure.err?.code, grpc.status.UNAVAILABLE);
    });
  });

  describe("mutual TLS (LATCHKEY_TLS_CLIENT_CA)", () => {
    it("a client without a certificate fails the handshake", async () => {
      const err = await rejection(https1(mtlsServer.url, "/readyz", { ca: pki.ca }), "HTTPS/1.1 without a client certificate");
      assert.doesNotMatch(err.message, /timed out/, "refused, not left hanging");
      await rejection(https2(mtlsServer.url, "/readyz", { ca: pki.ca }), "HTTP/2 without a client certificate");
    });

    it("a client with a certificate from another CA fails the handshake", async () => {
      const err = await rejection(
        https1(mtlsServer.url, "/readyz", { ca: pki.ca, cert: pki.rogueCert, key: pki.rogueKey }),
        "a rogue client certificate",
      );
      assert.doesNotMatch(err.message, /timed out/);
    });

    it("a client with a certificate signed by the CA gets in: REST over HTTP/1.1 and HTTP/2", async () => {
      const tls = { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey };
      const h1 = await https1(mtlsServer.url, `/v1/secrets/${NAME}`, tls);
      assert.equal(h1.status, 200, h1.body);
      assert.equal(JSON.parse(h1.body).value, VALUE);
      const h2 = await https2(mtlsServer.url, `/v1/secrets/${NAME}`, tls);
      assert.equal(h2.status, 200, h2.body);
      assert.equal(JSON.parse(h2.body).value, VALUE);
    });

    it("gRPC with createLatchkeyClient({ tls }): with the client certificate it works, without it it fails", async () => {
      const good = createLatchkeyClient({
        baseUrl: mtlsServer.url,
        tls: { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey },
        retries: 0,
      });
      assert.equal((await good.secrets.getSecret({ name: NAME }, { timeoutMs: CALL_MS })).value, VALUE);
      assert.equal((await good.health.check({}, { timeoutMs: CALL_MS })).status, HealthCheckResponse_ServingStatus.SERVING);
      const connect = createLatchkeyClient({
        baseUrl: mtlsServer.url,
        protocol: "connect",
        tls: { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey },
        retries: 0,
      });
      assert.equal((await connect.secrets.getSecret({ name: NAME }, { timeoutMs: CALL_MS })).value, VALUE, "Connect too");

      const bare = createLatchkeyClient({ baseUrl: mtlsServer.url, tls: { ca: pki.ca }, retries: 0 });
      const err = await rejection(bare.secrets.getSecret({ name: NAME }, { timeoutMs: CALL_MS }), "gRPC without a client certificate");
      assert.ok(err instanceof ConnectError, String(err));
      assert.notEqual(err.code, Code.DeadlineExceeded, "refused, not left hanging");
    });

    it("grpc-js with credentials.createSsl(ca, key, cert) works; without the key pair it is UNAVAILABLE", async () => {
      const ok = await grpcGet(mtlsServer.port, grpc.credentials.createSsl(pki.ca, pki.clientKey, pki.clientCert));
      assert.equal(ok.err, undefined, ok.err?.details);
      assert.equal(ok.value, VALUE);
      const none = await grpcGet(mtlsServer.port, grpc.credentials.createSsl(pki.ca));
      assert.equal(none.err?.code, grpc.status.UNAVAILABLE, `${none.err?.details}`);
      const rogue = await grpcGet(mtlsServer.port, grpc.credentials.createSsl(pki.ca, pki.rogueKey, pki.rogueCert));
      assert.equal(rogue.err?.code, grpc.status.UNAVAILABLE, `${rogue.err?.details}`);
    });
  });

  describe("drain over TLS", () => {
    it("calls in flight on HTTPS/1.1 and HTTP/2 complete; new connections are refused; close resolves", async () => {
      const s = await startTestServer({ LATCHKEY_TLS_CERT: pki.serverCert, LATCHKEY_TLS_KEY: pki.serverKey });
      let stopped = false;
      try {
        const created = await https1(s.url, "/v1/secrets", { ca: pki.ca }, {
          method: "POST",
          headers: { "content-type": "application/json", authorization: `Bearer ${ADMIN_TOKEN}` },
          body: JSON.stringify({ name: NAME, value: VALUE }),
        });
        assert.equal(created.status, 201);
        const body = JSON.stringify({ name: NAME });
        const half = Math.floor(body.length / 2);

        // HTTPS/1.1: headers and half the body sent.
        let h1req!: ReturnType<typeof https.request>;
        const h1reply = new Promise<HttpsReply>((resolve, reject) => {
          h1req = https.request(
            `${s.url}/latchkey.v1.SecretService/GetSecret`,
            { method: "POST", agent: false, ca: pki.ca, headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) } },
            (res) => {
              let text = "";
              res.setEncoding("utf8");
              res.on("data", (c: string) => (text += c));
              res.on("end", () => resolve({ status: res.statusCode ?? 0, httpVersion: res.httpVersion, body: text }));
              res.on("error", reject);
            },
          );
          h1req.on("error", reject);
        });
        h1reply.catch(() => {});
        h1req.write(body.slice(0, half));

        // HTTP/2 over TLS: the same.
        const session = http2.connect(s.url, { ca: pki.ca });
        session.on("error", () => {});
        const stream = session.request({ ":method": "POST", ":path": "/latchkey.v1.SecretService/GetSecret", "content-type": "application/json" });
        const h2reply = new Promise<HttpsReply>((resolve, reject) => {
          let status = 0;
          let text = "";
          stream.on("response", (h) => (status = Number(h[":status"])));
          stream.setEncoding("utf8");
          stream.on("data", (c: string) => (text += c));
          stream.on("end", () => resolve({ status, httpVersion: "2", body: text }));
          stream.on("error", reject);
        });
        h2reply.catch(() => {});
        stream.write(body.slice(0, half));
        await new Promise((r) => setTimeout(r, 150));

        const closing = s.app.close(3_000).then(() => (stopped = true));
        await new Promise((r) => setTimeout(r, 300));
        const stoppedEarly = stopped;
        await rejection(https1(s.url, "/readyz", { ca: pki.ca }), "a new connection while draining");

        h1req.end(body.slice(half));
        stream.end(body.slice(half));
        const [r1, r2] = await Promise.all([
          h1reply.catch((err: Error) => ({ status: 0, httpVersion: "1.1", body: `failed: ${err.message}` })),
          h2reply.catch((err: Error) => ({ status: 0, httpVersion: "2", body: `failed: ${err.message}` })),
        ]);
        session.destroy();
        assert.equal(r2.status, 200, `HTTP/2 call in flight: ${r2.body}`);
        assert.equal(JSON.parse(r2.body).value, VALUE);
        assert.equal(r1.status, 200, `HTTPS/1.1 call in flight: ${r1.body}`);
        assert.equal(JSON.parse(r1.body).value, VALUE);
        assert.equal(stoppedEarly, false, "the drain waited for the two calls in flight");
        const t0 = performance.now();
        await closing;
        assert.ok(performance.now() - t0 < 2_000, "the drain ends once the calls are done, before the grace period");
      } finally {
        if (!stopped) await s.app.close(100).catch(() => undefined);
        rmSync(s.dataDir, { recursive: true, force: true });
      }
    });
  });

  describe("configuration errors", () => {
    const base = { LATCHKEY_ADMIN_TOKEN: ADMIN_TOKEN, LATCHKEY_MASTER_KEY: MASTER_KEY, LATCHKEY_DATA_DIR: join(tmpdir(), "latchkey-tls-never") };
    const problems = (env: Record<string, string>): string[] => {
      try {
        loadConfig({ ...base, ...env });
      } catch (err) {
        assert.ok(err instanceof ConfigError, String(err));
        return [...err.problems];
      }
      assert.fail(`accepted ${JSON.stringify(env)}`);
    };

    it("a certificate without a key, or a key without a certificate", () => {
      assert.ok(problems({ LATCHKEY_TLS_CERT: pki.serverCert }).some((p) => /LATCHKEY_TLS_CERT and LATCHKEY_TLS_KEY/.test(p)));
      assert.ok(problems({ LATCHKEY_TLS_KEY: pki.serverKey }).some((p) => /LATCHKEY_TLS_CERT and LATCHKEY_TLS_KEY/.test(p)));
    });

    it("files that cannot be read are named", () => {
      const missing = join(pki.dir, "no-such.crt");
      const ps = problems({ LATCHKEY_TLS_CERT: missing, LATCHKEY_TLS_KEY: pki.serverKey });
      assert.ok(ps.some((p) => p.startsWith("LATCHKEY_TLS_CERT") && p.includes(missing)), ps.join("; "));
      const dirAsKey = problems({ LATCHKEY_TLS_CERT: pki.serverCert, LATCHKEY_TLS_KEY: pki.dir });
      assert.ok(dirAsKey.some((p) => p.startsWith("LATCHKEY_TLS_KEY") && /cannot read/.test(p)), dirAsKey.join("; "));
      const ca = problems({ LATCHKEY_TLS_CERT: pki.serverCert, LATCHKEY_TLS_KEY: pki.serverKey, LATCHKEY_TLS_CLIENT_CA: missing });
      assert.ok(ca.some((p) => p.startsWith("LATCHKEY_TLS_CLIENT_CA") && /cannot read/.test(p)), ca.join("; "));
    });

    it("a client CA without a server certificate", () => {
      assert.ok(problems({ LATCHKEY_TLS_CLIENT_CA: pki.caPath }).some((p) => p.startsWith("LATCHKEY_TLS_CLIENT_CA")));
    });

    // Both processes run at once (each takes a second or two to load).
    let badKey: Awaited<ReturnType<typeof runToExit>>;
    let badPem: Awaited<ReturnType<typeof runToExit>>;
    before(async () => {
      const garbage = join(pki.dir, "garbage.crt");
      writeFileSync(garbage, `not a certificate ${randomBytes(8).toString("hex")}\n`);
      [badKey, badPem] = await Promise.all([
        runToExit({
          ...base,
          LATCHKEY_PORT: String(await freePort()),
          LATCHKEY_TLS_CERT: pki.serverCert,
          LATCHKEY_TLS_KEY: join(pki.dir, "missing.key"),
        }),
        runToExit({
          ...base,
          LATCHKEY_DATA_DIR: join(pki.dir, "data-bad-pem"),
          LATCHKEY_PORT: String(await freePort()),
          LATCHKEY_TLS_CERT: garbage,
          LATCHKEY_TLS_KEY: pki.serverKey,
        }),
      ]);
    });

    it("the process exits 2 with one line naming the variable; the key's path is named, never its content", () => {
      assert.equal(badKey.code, 2, badKey.stderr);
      const lines = badKey.stderr.split("\n").filter((l) => l.trim() !== "");
      assert.equal(lines.length, 1, badKey.stderr);
      assert.match(lines[0] ?? "", /^latchkey: .*LATCHKEY_TLS_KEY.*missing\.key/);
      assert.ok(!badKey.stderr.includes(readFileSync(pki.serverKey, "utf8").split("\n")[1] as string), "no key material");
    });

    it("a certificate file that is not PEM: a configuration error (exit 2) naming the variables, before anything is opened", () => {
      assert.equal(badPem.code, 2, badPem.stderr);
      assert.equal(badPem.stdout.includes("latchkey listening on"), false, "it never listened");
      const lines = badPem.stderr.split("\n").filter((l) => l.trim() !== "");
      assert.equal(lines.length, 1, `one line on stderr: ${badPem.stderr}`);
      assert.match(lines[0] ?? "", /^latchkey: .*LATCHKEY_TLS_CERT\/LATCHKEY_TLS_KEY: not a usable PEM certificate/);
      assert.equal(existsSync(join(pki.dir, "data-bad-pem", "latchkey.db")), false, "no database was created");
    });

    it("a listen failure over TLS (port taken) closes the store createApp had opened", async () => {
      const taken = await startTestServer();
      const dir = mkdtempSync(join(tmpdir(), "latchkey-tls-leak-"));
      const real = createSqliteStorage(join(dir, "latchkey.db"));
      let closed = false;
      const tracked: Storage = {
        ...real,
        async close() {
          closed = true;
          return real.close();
        },
      };
      try {
        await rejection(
          startTestServer(
            { LATCHKEY_DATA_DIR: dir, LATCHKEY_PORT: String(taken.port), LATCHKEY_TLS_CERT: pki.serverCert, LATCHKEY_TLS_KEY: pki.serverKey },
            { storage: tracked },
          ),
          "start on a port already taken",
        );
        assert.equal(closed, true, "the store was closed when the start failed");
      } finally {
        if (!closed) await real.close();
        await taken.stop();
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });
});
