/**
 * Batches: write, read and delete many secrets of one store in one call each.
 *
 *   LATCHKEY_ADDR=http://127.0.0.1:8200 LATCHKEY_TOKEN=$(cat data/admin.token) node --import tsx examples/batch.ts
 *
 * Writes are atomic by default (all or nothing); with `atomic: false` each item succeeds or fails on its own. Reads
 * always report per item. Values are never printed.
 */
import { ConnectError, createLatchkeyClient, type ItemResult } from "../src/client/index.js";

const client = createLatchkeyClient({
  baseUrl: process.env.LATCHKEY_ADDR ?? "http://127.0.0.1:8200",
  token: process.env.LATCHKEY_TOKEN,
  protocol: (["connect", "grpc-web"] as const).find((p) => p === process.env.LATCHKEY_PROTOCOL) ?? "grpc",
});
const { secrets } = client;
const prefix = `examples/batch-${process.pid}/`;
const names = ["db/host", "db/user", "db/password"].map((n) => prefix + n);

const describe = (r: ItemResult) =>
  r.ok ? `${r.name}: ${r.created ? "created" : "updated"}, version ${r.version}` : `${r.name}: ${r.error?.code} (${r.error?.reason})`;

try {
  // All or nothing: three secrets appear together.
  const created = await secrets.batchUpsertSecrets({
    items: names.map((name, i) => ({ name, value: ["db.internal", "app", "s3cr3t"][i] })),
  });
  for (const r of created.results) console.log(`upsert ${describe(r)}`);

  // Each item on its own: the valid one is written, the invalid name is reported with a reason.
  const mixed = await secrets.batchUpsertSecrets({
    atomic: false,
    items: [
      { name: `${prefix}db/password`, value: "n3w-s3cr3t" },
      { name: `${prefix}not a valid name`, value: "x" },
    ],
  });
  for (const r of mixed.results) console.log(`upsert ${describe(r)}`);

  // One round trip for many reads; a missing name fails alone.
  const read = await secrets.batchGetSecrets({ names: [...names, `${prefix}missing`] });
  for (const r of read.results) {
    console.log(r.error ? `get ${r.name}: ${r.error.code}` : `get ${r.name}: version ${r.version?.version} (${r.value.length} characters)`);
  }

  const deleted = await secrets.batchDeleteSecrets({ names, purge: true });
  console.log(`deleted ${deleted.results.filter((r) => r.ok).length} of ${names.length}`);
  console.log("batch example done");
} catch (err) {
  console.error(`batch example failed: ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode = 1;
}
