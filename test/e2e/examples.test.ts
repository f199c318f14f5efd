import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { ADMIN_TOKEN, startTestServer, type TestServer } from "../support/server.js";

/**
 * The client examples (basic.ts, cached-service.ts, batch.ts) run as child processes against a test server: each
 * exits 0, prints what it did, never a value, and deletes what it created.
 */

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const RUN_TIMEOUT_MS = 20_000;

/** What each example must print (in order) when it succeeds. */
const EXPECTED: Record<string, RegExp[]> = {
  "basic.ts": [
    /^stored examples\/basic-\d+\/db-password version 1$/m,
    /^verify: right value true \(version 1\), wrong value false$/m,
    /^listed examples\/basic-\d+\/api-key@1, examples\/basic-\d+\/db-password@1$/m,
    /^updated examples\/basic-\d+\/db-password to version 2$/m,
    /^rotated examples\/basic-\d+\/api-key to version 2; the old value verifies: true$/m,
    /^read examples\/basic-\d+\/db-password: not found, as expected$/m,
    /^basic example done$/m,
  ],
  "cached-service.ts": [
    /^cache ready: watching for changes$/m,
    // The key rotates every second, so on a busy machine the first version read may already be a later one.
    /^using api key version \d+ \(43 characters\)$/m,
    /^rotation seen: version \d+ -> \d+ after \d+ requests$/m,
    /^server reads: \d+, the other \d+ from memory$/m,
    /^deleted examples\/service-\d+\/api-key$/m,
  ],
  "batch.ts": [
    /^upsert examples\/batch-\d+\/db\/password: created, version 1$/m,
    /^upsert examples\/batch-\d+\/db\/password: updated, version 2$/m,
    /^upsert examples\/batch-\d+\/not a valid name: invalid_argument \(pattern\)$/m,
    /^get examples\/batch-\d+\/missing: not_found$/m,
    /^deleted 3 of 3$/m,
    /^batch example done$/m,
  ],
};

/** The protocol each example is run with (both are covered in client.test.ts; here it is about the programs). */
const PROTOCOL_OF: Record<string, string> = { "basic.ts": "grpc", "cached-service.ts": "connect", "batch.ts": "connect" };

/** Values the examples write: none may appear in their output. */
const VALUES = ["s3cr3t", "n3w-s3cr3t", "db.internal"];

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `node --import tsx examples/<file>` with `env` over the parent's (minus Latchkey and node:test settings). */
function runExample(file: string, env: Record<string, string>): Promise<Run> {
  const base: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v !== undefined && !k.startsWith("LATCHKEY_") && !k.startsWith("NODE_TEST")) base[k] = v;
  }
  const child = spawn(process.execPath, ["--import", "tsx", `examples/${file}`], {
    cwd: ROOT,
    env: { ...base, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (c: string) => (stdout += c));
  child.stderr.setEncoding("utf8").on("data", (c: string) => (stderr += c));
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill("SIGKILL"), RUN_TIMEOUT_MS);
    child.once("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe("examples", () => {
  let s: TestServer;
  before(async () => {
    s = await startTestServer();
  });
  after(() => s.stop());

  // Each example runs once, all at the same time (each uses a name prefix of its own), over either protocol.
  it("run to completion", { timeout: RUN_TIMEOUT_MS + 5_000 }, async () => {
    const files = Object.keys(EXPECTED);
    const runs = await Promise.all(
      files.map((f) =>
        runExample(f, {
          LATCHKEY_ADDR: s.url,
          LATCHKEY_TOKEN: ADMIN_TOKEN,
          LATCHKEY_PROTOCOL: PROTOCOL_OF[f] ?? "grpc",
          LATCHKEY_EXAMPLE_DEADLINE_MS: "10000",
        }),
      ),
    );
    files.forEach((file, i) => {
      const run = runs[i] as Run;
      const out = `stdout:\n${run.stdout}\nstderr:\n${run.stderr}`;
      assert.equal(run.code, 0, `${file} exit code (null: killed after ${RUN_TIMEOUT_MS} ms)\n${out}`);
      let rest = run.stdout;
      for (const line of EXPECTED[file] ?? []) {
        const m = line.exec(rest);
        assert.ok(m, `${file}: ${line} (in order)\n${out}`);
        rest = rest.slice(m.index + m[0].length);
      }
      for (const v of VALUES) assert.ok(!run.stdout.includes(v) && !run.stderr.includes(v), `${file} printed a value`);
    });
    for (const p of ["examples/basic-", "examples/service-", "examples/batch-"]) {
      const left = await fetch(`${s.url}/v1/secrets?prefix=${p}`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
      assert.deepEqual(await left.json(), [], `the examples delete what they create (${p})`);
    }
  });

  it("fails with exit code 1 when the server cannot be reached", async () => {
    const run = await runExample("basic.ts", { LATCHKEY_ADDR: "http://127.0.0.1:1", LATCHKEY_TOKEN: ADMIN_TOKEN });
    assert.equal(run.code, 1, run.stderr);
    assert.match(run.stderr, /^basic example failed: \[unavailable\]/m);
  });
});
