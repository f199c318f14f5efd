import { createReadStream, createWriteStream } from "node:fs";
import type { Readable, Writable } from "node:stream";
import { openStorage, resolveMasterKey } from "../app.js";
import { ConfigError, loadConfig } from "../config/config.js";
import { createLogger } from "../log/logger.js";
import { exportSecrets, ImportError, importSecrets } from "../service/transfer.js";
import { verifyAuditLog } from "../service/audit-verify.js";

/** Exit codes scripts can rely on. */
export const EXIT = { ok: 0, error: 1, usage: 2, conflict: 3, tampered: 4 } as const;

const USAGE = `usage: latchkey <command> [options]

Commands that work on the configured store directly (run them with the server's environment:
LATCHKEY_DATA_DIR or MONGODB_URI, and LATCHKEY_MASTER_KEY):
  export [--out FILE]   write every secret, with its versions still sealed, as JSON Lines (default: stdout)
  import [--in FILE]    read an export into the configured store (default: stdin); existing ids are skipped,
                        names held by other secrets are reported as conflicts (exit 3)
  verify-audit          check the hash chain of the audit log: exit 0 if intact, 4 at the first entry that was
                        edited, removed or reordered

Moving from the embedded store to MongoDB:
  latchkey export --out dump.jsonl
  MONGODB_URI=mongodb://... LATCHKEY_MASTER_KEY=<same key> latchkey import --in dump.jsonl
`;

export async function run(argv: string[], io = { stdout: process.stdout as Writable, stderr: process.stderr as Writable, stdin: process.stdin as Readable }): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === "--help" || command === "-h" || command === "help") {
    io.stdout.write(USAGE);
    return command === undefined ? EXIT.usage : EXIT.ok;
  }
  const flags = parseFlags(rest);
  if (flags.help) {
    io.stdout.write(USAGE);
    return EXIT.ok;
  }
  let config: ReturnType<typeof loadConfig>;
  try {
    config = loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) {
      io.stderr.write(`latchkey: ${err.message}\n`);
      return EXIT.usage;
    }
    throw err;
  }
  const logger = createLogger("warn", io.stderr as never);

  switch (command) {
    case "export": {
      const storage = await openStorage(config, logger);
      try {
        const out = flags.out ? createWriteStream(flags.out, { mode: 0o600 }) : io.stdout;
        const masterKey = resolveMasterKey(config, logger, false);
        const summary = await exportSecrets(storage, out, masterKey?.id ?? null);
        if (flags.out) await new Promise<void>((resolve, reject) => (out as ReturnType<typeof createWriteStream>).end((err?: Error | null) => (err ? reject(err) : resolve())));
        io.stderr.write(`exported ${summary.secrets} secrets and ${summary.dataKeys} data keys (values still sealed)\n`);
        return EXIT.ok;
      } finally {
        await storage.close();
      }
    }
    case "import": {
      const masterKey = resolveMasterKey(config, logger, false);
      if (!masterKey) {
        io.stderr.write("latchkey: import needs the source's master key: set LATCHKEY_MASTER_KEY\n");
        return EXIT.usage;
      }
      const storage = await openStorage(config, logger);
      try {
        const input = flags.in ? createReadStream(flags.in) : io.stdin;
        const summary = await importSecrets(storage, input, masterKey);
        io.stderr.write(
          `imported ${summary.secrets} secrets and ${summary.dataKeys} data keys; ${summary.skipped} already present\n`,
        );
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
    }
    case "verify-audit": {
      const storage = await openStorage(config, logger);
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
    }
    default:
      io.stderr.write(`latchkey: unknown command "${command}"\n\n${USAGE}`);
      return EXIT.usage;
  }
}

function parseFlags(args: string[]): { out?: string; in?: string; help?: boolean } {
  const flags: { out?: string; in?: string; help?: boolean } = {};
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === "--help" || a === "-h") flags.help = true;
    else if (a === "--out") flags.out = args[++i];
    else if (a === "--in") flags.in = args[++i];
  }
  return flags;
}
