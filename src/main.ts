import { createApp } from "./app.js";
import { ConfigError, loadConfig } from "./config/config.js";

/** `npm start`: read the environment, start the service, drain on SIGTERM/SIGINT (a second signal exits at once). */
async function main(): Promise<void> {
  let config: ReturnType<typeof loadConfig>;
  try {
    config = loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`latchkey: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  const started = performance.now();
  const app = await createApp(config).catch((err: unknown) => {
    process.stderr.write(`latchkey: cannot start: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
  app.logger.info(
    { url: app.url, store: app.storage.backend, data_dir: config.dataDir, startup_ms: Math.round(performance.now() - started) },
    `latchkey listening on ${app.url}`,
  );

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) {
      app.logger.warn({ signal }, "second signal: exiting now");
      process.exit(1);
    }
    stopping = true;
    app.logger.info({ signal }, "draining");
    app.close().then(
      () => {
        app.logger.info("stopped");
        process.exit(0);
      },
      (err: unknown) => {
        app.logger.error({ err }, "error while stopping");
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
}

void main();
