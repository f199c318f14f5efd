/**
 * Scale curves: how Latchkey behaves as the store grows to 1k, 10k, 100k and 1M secrets.
 *
 * For each size, a store is seeded directly through the storage layer (sealed values, as the service writes them),
 * then a real server process pinned to one core is started on it, with h2load on the other core:
 * - start-up: spawn to /readyz answering 200;
 * - memory: server RSS once ready and after the runs (peak too);
 * - GetSecret over gRPC at 1 and 16 calls in flight, on names spread over the whole store: calls/s, p50, p99;
 * - ListSecrets (100 a page) over gRPC, one call in flight: the first page and a page from the middle of the store
 *   (its cursor is the one the service would have issued there), p50 and p99.
 *
 * Usage: npm run bench:scale [-- --sizes 1000,10000,100000,1000000 --seconds 4]
 */
import { randomUUID } from "node:crypto";
import { rmSync } from "node:fs";
import { join } from "node:path";
import { create, toBinary } from "@bufbuild/protobuf";
import { GetSecretRequestSchema, ListSecretsRequestSchema } from "../gen/latchkey/v1/secret_service_pb.js";
import { createEnvelope, masterKeyFrom } from "../src/crypto/envelope.js";
import { newSecretDocument } from "../src/domain/secret.js";
import { encodeListCursor } from "../src/service/paging.js";
import { createSqliteStorage } from "../src/storage/sqlite/sqlite-storage.js";
import { tempDir } from "../test/support/server.js";
import { arg, type Figure, fmt, grpcFrame, h2load, pinSelf, rssKb, startLatchkey, writeResult } from "./support.js";

const SIZES = arg("sizes", "1000,10000,100000,1000000").split(",").map(Number);
const SECONDS = Number(arg("seconds", "4"));
const MASTER_KEY = Buffer.alloc(32, 9);
const SERVER_CORE = 0;
const LOAD_CORE = 1;
/** Names looked up per size, spread over the store; each h2load connection asks for one. */
const LOOKUPS = 8;

const say = (s: string) => console.log(s);
const nameOf = (i: number) => `scale/s${String(i).padStart(7, "0")}`;

/** Seeds `n` manual secrets; returns the ids of the names asked for. */
async function seed(file: string, n: number, want: Set<number>): Promise<Map<number, string>> {
  const storage = createSqliteStorage(file);
  const envelope = createEnvelope({ masterKey: masterKeyFrom(MASTER_KEY), storage, clock: { now: Date.now } });
  const ids = new Map<number, string>();
  const now = Date.now();
  for (let i = 0; i < n; i += 1000) {
    const batch: Promise<boolean>[] = [];
    for (let j = i; j < Math.min(n, i + 1000); j++) {
      const id = randomUUID();
      if (want.has(j)) ids.set(j, id);
      const sealed = await envelope.seal("default", id, 1, Buffer.from(`scale-value-${j}-${id}`));
      const doc = newSecretDocument({ id, store: "default", name: nameOf(j), kind: "manual", description: "" }, sealed, now);
      batch.push(storage.insertSecret(doc));
    }
    await Promise.all(batch);
  }
  await storage.close();
  return ids;
}

async function main(): Promise<void> {
  pinSelf(LOAD_CORE);
  const lines: string[] = [
    `${SECONDS} s per run after 1 s warm-up; server on core ${SERVER_CORE}, h2load on core ${LOAD_CORE}; values sealed as the service seals them; ListSecrets pages of 100.`,
    "",
    "| secrets | seeded in | start-up to ready | RSS ready / after (peak) | GetSecret gRPC, 1 in flight | GetSecret gRPC, 16 in flight | ListSecrets first page | ListSecrets page at the middle | DB file |",
    "|---|---|---|---|---|---|---|---|---|",
  ];
  for (const n of SIZES) {
    const dataDir = tempDir("latchkey-bench-scale-");
    try {
      const spread = Array.from({ length: LOOKUPS }, (_, k) => Math.floor(((k + 0.5) * n) / LOOKUPS));
      const middle = Math.floor(n / 2);
      const t0 = performance.now();
      const ids = await seed(join(dataDir, "latchkey.db"), n, new Set([...spread, middle]));
      const seeded = (performance.now() - t0) / 1000;
      say(`${n}: seeded in ${seeded.toFixed(1)} s`);

      const server = await startLatchkey({ core: SERVER_CORE, dataDir, masterKey: MASTER_KEY.toString("base64") });
      say(`${n}: ready ${server.readyMs} ms after spawn`);
      const rssReady = rssKb(server.pid).current;
      const work = tempDir("latchkey-bench-scale-bodies-");
      try {
        const body = (file: string, bytes: Uint8Array) => grpcFrame(work, file, bytes);
        const getBodies = spread.map((i, k) => body(`get-${k}`, toBinary(GetSecretRequestSchema, create(GetSecretRequestSchema, { name: nameOf(i) }))));
        const grpc = { "content-type": "application/grpc", te: "trailers", authorization: `Bearer ${server.adminToken}` };
        const getPath = "/latchkey.v1.SecretService/GetSecret";
        const listPath = "/latchkey.v1.SecretService/ListSecrets";
        const opts = { seconds: SECONDS, warmup: 1, core: LOAD_CORE, work };
        const get1 = await h2load(server.url, [{ path: getPath, body: getBodies[0] as string, headers: grpc, streams: 1 }], opts);
        const get16 = await h2load(
          server.url,
          getBodies.map((b) => ({ path: getPath, body: b, headers: grpc, streams: 16 / LOOKUPS })),
          opts,
        );
        const first = body("list-first", toBinary(ListSecretsRequestSchema, create(ListSecretsRequestSchema, { pageSize: 100 })));
        const deepToken = encodeListCursor("next", { name: nameOf(middle), id: ids.get(middle) as string });
        const deep = body("list-deep", toBinary(ListSecretsRequestSchema, create(ListSecretsRequestSchema, { pageSize: 100, pageToken: deepToken })));
        const listFirst = await h2load(server.url, [{ path: listPath, body: first, headers: grpc, streams: 1 }], opts);
        const listDeep = await h2load(server.url, [{ path: listPath, body: deep, headers: grpc, streams: 1 }], opts);
        const errors = await server.errors();
        const rss = rssKb(server.pid);
        const dbMb = server.dbBytes() / 2 ** 20;
        say(
          `${n}: Get m1 ${fmt(get1)}; Get m16 ${fmt(get16)}; List first ${fmt(listFirst)}; List middle ${fmt(listDeep)}; RSS ready ${Math.round(rssReady / 1024)} MB, after ${Math.round(rss.current / 1024)} MB (peak ${Math.round(rss.peak / 1024)} MB); db ${dbMb.toFixed(0)} MB; server errors ${errors}`,
        );
        const cell = (f: Figure) => `${Math.round(f.rps)}/s, ${f.p50Ms.toFixed(2)} / ${f.p99Ms.toFixed(2)} ms${f.errors ? `, ${f.errors} errors` : ""}`;
        lines.push(
          `| ${n.toLocaleString("en-US")} | ${seeded.toFixed(1)} s | ${server.readyMs} ms | ${Math.round(rssReady / 1024)} / ${Math.round(rss.current / 1024)} (${Math.round(rss.peak / 1024)}) MB | ${cell(get1)} | ${cell(get16)} | ${cell(listFirst)} | ${cell(listDeep)} | ${dbMb.toFixed(0)} MB |`,
        );
        if (errors > 0) lines.push(`|  | server counted ${errors} calls that did not end ok |`);
      } finally {
        await server.stop();
        rmSync(work, { recursive: true, force: true });
      }
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  }
  lines.push("", "Cells: calls/s, p50 / p99 latency. RSS in MB, as the kernel reports it (VmRSS, VmHWM).");
  writeResult("scale", {
    title: "Scale: start-up, memory, reads and deep pages from 1k to 1M secrets",
    command: `npm run bench:scale -- ${process.argv.slice(2).join(" ")}`.trim(),
    lines,
    markdown: true,
  });
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
