import { createReadStream, createWriteStream } from "node:fs";
import type { Config } from "../../config/config.js";
import type { Logger } from "../../log/logger.js";
import { type Command, EXIT, type Io } from "../context.js";

const SERVER_ENV = `Works on the configured store directly, not through a server: run it with the server's environment
(LATCHKEY_DATA_DIR or MONGODB_URI, and LATCHKEY_MASTER_KEY).`;

/** The server's configuration and a quiet logger; a bad configuration is a usage error. Loaded lazily: the other commands never open storage. */
async function setup(io: Io): Promise<{ config: Config; logger: Logger; app: typeof import("../../app.js") } | number> {
  const { ConfigError, loadConfig } = await import("../../config/config.js");
  const { createLogger } = await import("../../log/logger.js");
  let config: Config;
  try {
    config = loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) {
      io.stderr.write(`latchkey: ${err.message}\n`);
      return EXIT.usage;
    }
    throw err;
  }
  return { config, logger: createLogger("warn", io.stderr as never), app: await import("../../app.js") };
}

const exportCommand: Command = {
  offline: true,
  summary: "write every secret, with its versions still sealed, as JSON Lines",
  description: `${SERVER_ENV} The export holds no plaintext and is useless without the master key.

example (from the embedded store to MongoDB):
  latchkey export --out dump.jsonl
  MONGODB_URI=mongodb://... LATCHKEY_MASTER_KEY=<same key> latchkey import --in dump.jsonl`,
  flags: { out: { arg: "FILE", help: "write to FILE, mode 0600 (default: stdout)" } },
  async run(a, { io }) {
    const s = await setup(io);
    if (typeof s === "number") return s;
    const { exportSecrets } = await import("../../service/transfer.js");
    const storage = await s.app.openStorage(s.config, s.logger);
    try {
      const file = a.string("out");
      const out = file ? createWriteStream(file, { mode: 0o600 }) : io.stdout;
      const masterKey = s.app.resolveMasterKey(s.config, s.logger, false);
      const summary = await exportSecrets(storage, out, masterKey?.id ?? null);
      if (file) await new Promise<void>((resolve, reject) => out.end((err?: Error | null) => (err ? reject(err) : resolve())));
      io.stderr.write(`exported ${summary.secrets} secrets and ${summary.dataKeys} data keys (values still sealed)\n`);
      return EXIT.ok;
    } finally {
      await storage.close();
    }
  },
};

const importCommand: Command = {
  offline: true,
  summary: "read an export into the configured store",
  description: `${SERVER_ENV} Checks that the master key opens every data key before writing anything; secrets already
present with the same id are skipped (so it can be re-run); names held by other secrets are reported as
conflicts (exit 3).`,
  flags: { in: { arg: "FILE", help: "read from FILE (default: stdin)" } },
  async run(a, { io }) {
    const s = await setup(io);
    if (typeof s === "number") return s;
    const { ImportError, importSecrets } = await import("../../service/transfer.js");
    const masterKey = s.app.resolveMasterKey(s.config, s.logger, false);
    if (!masterKey) {
      io.stderr.write("latchkey: import needs the source's master key: set LATCHKEY_MASTER_KEY\n");
      return EXIT.usage;
    }
    const storage = await s.app.openStorage(s.config, s.logger);
    try {
      const file = a.string("in");
      const summary = await importSecrets(storage, file ? createReadStream(file) : io.stdin, masterKey);
      io.stderr.write(`imported ${summary.secrets} secrets and ${summary.dataKeys} data keys; ${summary.skipped} already present\n`);
      if (summary.conflicts.length > 0) {
        io.stderr.write(`${summary.conflicts.length} conflicts (name held by another secret, not imported):\n`);
        for (const c of summary.conflicts) io.stderr.write(`  ${c}\n`);
        return EXIT.conflict;
      }
      return EXIT.ok;
    } catch (err) {
      if (err instanceof ImportError) {
        io.stderr.write(`latchkey: import failed: ${err.message}\n`);
        return EXIT.error;
      }
      throw err;
    } finally {
      await storage.close();
    }
  },
};

const verifyAudit: Command = {
  offline: true,
  summary: "check the audit log's hash chain: exit 0 if intact, 4 at the first broken entry",
  description: `${SERVER_ENV} Reports, per chain, the first entry that was edited, removed or reordered.`,
  flags: {},
  async run(_a, { io }) {
    const s = await setup(io);
    if (typeof s === "number") return s;
    const { verifyAuditLog } = await import("../../service/audit-verify.js");
    const storage = await s.app.openStorage(s.config, s.logger);
    try {
      const result = await verifyAuditLog(storage);
      for (const c of result.chains) {
        io.stdout.write(
          c.ok
            ? `chain ${c.chain}: ${c.checked} entries, intact\n`
            : `chain ${c.chain}: BROKEN at entry ${c.brokenAt}: ${c.reason} (${c.checked} entries before it are intact)\n`,
        );
      }
      if (result.chains.length === 0) io.stdout.write("the audit log is empty\n");
      return result.ok ? EXIT.ok : EXIT.tampered;
    } finally {
      await storage.close();
    }
  },
};

export const transferCommands: Readonly<Record<string, Command>> = {
  export: exportCommand,
  import: importCommand,
  "verify-audit": verifyAudit,
};
