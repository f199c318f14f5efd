import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { type App, type AppOverrides, createApp } from "../../src/app.js";
import { loadConfig } from "../../src/config/config.js";
import { createLogger } from "../../src/log/logger.js";

export const ADMIN_TOKEN = "test-admin-token-0123456789";
export const MASTER_KEY = Buffer.alloc(32, 7).toString("base64");

/** A Latchkey started in-process on a free loopback port, with its log lines captured. */
export interface TestServer {
  readonly app: App;
  readonly url: string;
  readonly port: number;
  readonly dataDir: string;
  /** Every log line written so far. */
  readonly logs: string[];
  /** Fetch with the admin token. */
  admin(path: string, init?: RequestInit): Promise<Response>;
  stop(): Promise<void>;
}

export function tempDir(prefix = "latchkey-test-"): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** Starts a server; `env` entries override the test defaults (admin token, master key, temp data dir, port 0). */
export async function startTestServer(
  env: Record<string, string> = {},
  overrides: AppOverrides = {},
  opts: { keepDataDir?: boolean } = {},
): Promise<TestServer> {
  const dataDir = env.LATCHKEY_DATA_DIR ?? tempDir();
  const config = loadConfig({
    LATCHKEY_PORT: "0",
    LATCHKEY_ADMIN_TOKEN: ADMIN_TOKEN,
    LATCHKEY_MASTER_KEY: MASTER_KEY,
    LOG_LEVEL: "debug",
    // `LATCHKEY_UNARY_FAST_PATH=false npm test` runs the suite with every call on connect-node (see .ci/run).
    ...(process.env.LATCHKEY_UNARY_FAST_PATH ? { LATCHKEY_UNARY_FAST_PATH: process.env.LATCHKEY_UNARY_FAST_PATH } : {}),
    ...env,
    LATCHKEY_DATA_DIR: dataDir,
  });
  const logs: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString("utf8").split("\n")) if (line) logs.push(line);
      cb();
    },
  });
  const app = await createApp(config, { logger: createLogger(config.logLevel, sink), ...overrides });
  return {
    app,
    url: app.url,
    port: app.port,
    dataDir,
    logs,
    admin(path, init = {}) {
      const headers = new Headers(init.headers);
      headers.set("authorization", `Bearer ${ADMIN_TOKEN}`);
      return fetch(app.url + path, { ...init, headers });
    },
    async stop() {
      await app.close(2000);
      if (!opts.keepDataDir && env.LATCHKEY_DATA_DIR === undefined) rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
