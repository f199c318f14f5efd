import { createInterface } from "node:readline";
import type { Readable, Writable } from "node:stream";
import type { MasterKey } from "../crypto/envelope.js";
import { createEnvelope } from "../crypto/envelope.js";
import type { SecretDocument } from "../domain/secret.js";
import type { DataKeyRecord, Storage } from "../storage/storage.js";

/**
 * Moving secrets between backends (embedded SQLite <-> MongoDB) without opening them.
 *
 * An export is JSON Lines: a header, every data key (still wrapped by the master key), then every secret document
 * with its versions (still sealed). Nothing in it is plaintext, and it is useless without the master key. Import
 * checks that the configured master key opens every data key before writing anything, is idempotent (a secret
 * already there with the same id is skipped), and reports name conflicts instead of overwriting.
 */

export const EXPORT_FORMAT = 1;

type ExportLine =
  | { kind: "latchkey-export"; format: number; exported_at: string; master_key_id: string | null }
  | ({ kind: "data_key" } & DataKeyRecord)
  | { kind: "secret"; doc: SecretDocument };

export interface ExportSummary {
  readonly dataKeys: number;
  readonly secrets: number;
}

export async function exportSecrets(storage: Storage, out: Writable, masterKeyId: string | null): Promise<ExportSummary> {
  const write = (line: ExportLine) =>
    new Promise<void>((resolve, reject) => {
      out.write(`${JSON.stringify(line)}\n`, (err) => (err ? reject(err) : resolve()));
    });
  await write({ kind: "latchkey-export", format: EXPORT_FORMAT, exported_at: new Date().toISOString(), master_key_id: masterKeyId });
  const keys = await storage.listAllDataKeys();
  for (const k of keys) await write({ kind: "data_key", ...k });
  let secrets = 0;
  let afterId = "";
  for (;;) {
    const page = await storage.scanSecrets(afterId, 500);
    if (page.length === 0) break;
    for (const doc of page) {
      await write({ kind: "secret", doc });
      secrets++;
    }
    afterId = page[page.length - 1]?.id ?? afterId;
  }
  return { dataKeys: keys.length, secrets };
}

export interface ImportSummary {
  readonly dataKeys: number;
  readonly secrets: number;
  /** Already present with the same id: left as they are. */
  readonly skipped: number;
  /** Another secret holds the name in the target: not imported. */
  readonly conflicts: readonly string[];
}

export class ImportError extends Error {
  override name = "ImportError";
}

export async function importSecrets(storage: Storage, input: Readable, masterKey: MasterKey): Promise<ImportSummary> {
  const keys: DataKeyRecord[] = [];
  let keysWritten = false;
  let header = false;
  let lineNo = 0;
  let dataKeys = 0;
  let secrets = 0;
  let skipped = 0;
  const conflicts: string[] = [];

  /** Every data key must open under the target's master key before anything is written. */
  async function writeKeys(): Promise<void> {
    if (keysWritten) return;
    keysWritten = true;
    const check = createEnvelope({
      masterKey,
      storage: { listDataKeys: async (store) => keys.filter((k) => k.store === store), insertDataKey: async () => false },
      clock: { now: Date.now },
    });
    for (const store of new Set(keys.map((k) => k.store))) await check.check(store);
    for (const k of keys) if (await storage.insertDataKey(k)) dataKeys++;
  }

  for await (const line of createInterface({ input, crlfDelay: Number.POSITIVE_INFINITY })) {
    lineNo++;
    if (line.trim() === "") continue;
    let parsed: ExportLine;
    try {
      parsed = JSON.parse(line) as ExportLine;
    } catch {
      throw new ImportError(`line ${lineNo}: not JSON`);
    }
    if (parsed.kind === "latchkey-export") {
      if (parsed.format !== EXPORT_FORMAT) throw new ImportError(`unsupported export format ${parsed.format}`);
      if (parsed.master_key_id && parsed.master_key_id !== masterKey.id) {
        throw new ImportError(
          `the export was sealed under master key ${parsed.master_key_id}, but the configured master key is ${masterKey.id}: ` +
            "set LATCHKEY_MASTER_KEY to the source's master key",
        );
      }
      header = true;
    } else if (!header) {
      throw new ImportError("not a Latchkey export: the first line must be its header");
    } else if (parsed.kind === "data_key") {
      if (keysWritten) throw new ImportError(`line ${lineNo}: data keys must come before secrets`);
      const { kind: _, ...rec } = parsed;
      keys.push(rec);
    } else if (parsed.kind === "secret") {
      await writeKeys();
      const doc = parsed.doc;
      if (await storage.insertSecret(doc)) {
        secrets++;
      } else if ((await storage.findSecret(doc.store, doc.name))?.id === doc.id) {
        skipped++;
      } else {
        conflicts.push(`${doc.store}/${doc.name}`);
      }
    } else {
      throw new ImportError(`line ${lineNo}: unknown record kind`);
    }
  }
  if (!header) throw new ImportError("empty input: not a Latchkey export");
  await writeKeys();
  return { dataKeys, secrets, skipped, conflicts };
}
