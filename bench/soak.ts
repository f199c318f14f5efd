/**
 * Soak: a mixed load at 80% of measured capacity for 10 minutes, against a real server process on the embedded
 * store; zero errors and flat memory expected.
 *
 * 1. Capacity: the mix (gRPC GetSecret, VerifySecret, UpdateSecret over 4 secrets, ListSecrets) runs unpaced, every
 *    job at once, for a few seconds; each job's rate and the server's CPU use are noted. Several h2load processes
 *    on one core may not saturate the server: capacity is the unpaced rate scaled to a fully used server core.
 * 2. Soak: each job paced by h2load --rps at `load` (0.8) of its share of that capacity, for `minutes`. Every 10 s
 *    the server's RSS, CPU use and its own count of calls that did not end ok are sampled.
 *
 * Usage: npm run bench:soak [-- --minutes 10 --load 0.8]
 */
import { rmSync } from "node:fs";
import { create, toBinary } from "@bufbuild/protobuf";
import {
  GetSecretRequestSchema,
  ListSecretsRequestSchema,
  UpdateSecretRequestSchema,
  VerifySecretRequestSchema,
} from "../gen/latchkey/v1/secret_service_pb.js";
import { tempDir } from "../test/support/server.js";
import { arg, cpuSeconds, type Figure, fmt, grpcFrame, type H2Job, h2load, killChildren, pinSelf, rssKb, startLatchkey, writeResult } from "./support.js";

const MINUTES = Number(arg("minutes", "10"));
const LOAD = Number(arg("load", "0.8"));
const CAPACITY_SECONDS = Number(arg("capacity-seconds", "8"));
const SERVER_CORE = 0;
const LOAD_CORE = 1;
const VALUE = "soak-value-0123456789abcdef";
const UPDATE_SPREAD = 16;
const SAMPLE_MS = 10_000;

const say = (s: string) => console.log(s);

async function main(): Promise<void> {
  pinSelf(LOAD_CORE);
  const dataDir = tempDir("latchkey-bench-soak-");
  const work = tempDir("latchkey-bench-soak-bodies-");
  const server = await startLatchkey({ core: SERVER_CORE, dataDir, masterKey: Buffer.alloc(32, 11).toString("base64") });
  try {
    const auth = { authorization: `Bearer ${server.adminToken}` };
    const post = async (path: string, body: object) => {
      const r = await fetch(`${server.url}${path}`, { method: "POST", headers: { "content-type": "application/json", ...auth }, body: JSON.stringify(body) });
      if (!r.ok) throw new Error(`seeding ${path}: ${r.status} ${await r.text()}`);
    };
    await post("/v1/secrets", { name: "soak/target", value: VALUE });
    for (let i = 0; i < UPDATE_SPREAD; i++) await post("/v1/secrets", { name: `soak/update-${i}`, value: VALUE });
    for (let i = 0; i < 1000; i += 100) {
      await post("/v1/secrets:batchSet", { items: Array.from({ length: 100 }, (_, j) => ({ name: `soak/filler-${i + j}`, value: `filler-${i + j}` })) });
    }

    const grpc = { "content-type": "application/grpc", te: "trailers", ...auth };
    const rpc = (m: string) => `/latchkey.v1.SecretService/${m}`;
    const jobs: (H2Job & { label: string })[] = [
      {
        label: "GetSecret gRPC",
        path: rpc("GetSecret"),
        body: grpcFrame(work, "get", toBinary(GetSecretRequestSchema, create(GetSecretRequestSchema, { name: "soak/target" }))),
        headers: grpc,
        streams: 4,
      },
      {
        label: "VerifySecret gRPC",
        path: rpc("VerifySecret"),
        body: grpcFrame(work, "verify", toBinary(VerifySecretRequestSchema, create(VerifySecretRequestSchema, { name: "soak/target", value: VALUE }))),
        headers: grpc,
        streams: 2,
      },
      ...Array.from({ length: 4 }, (_, k) => ({
        label: `UpdateSecret gRPC (soak/update-${k})`,
        path: rpc("UpdateSecret"),
        body: grpcFrame(work, `update-${k}`, toBinary(UpdateSecretRequestSchema, create(UpdateSecretRequestSchema, { name: `soak/update-${k}`, value: `${VALUE}-u` }))),
        headers: grpc,
        streams: 1,
      })),
      {
        label: "ListSecrets gRPC",
        path: rpc("ListSecrets"),
        body: grpcFrame(work, "list", toBinary(ListSecretsRequestSchema, create(ListSecretsRequestSchema, { pageSize: 50 }))),
        headers: grpc,
        streams: 1,
      },
    ];

    // 1. Capacity of the mix: the unpaced rate, scaled by how much of its core the server used meanwhile.
    const cpu0 = cpuSeconds(server.pid);
    const t0 = performance.now();
    const capacity = await Promise.all(jobs.map((j) => h2load(server.url, [j], { seconds: CAPACITY_SECONDS, warmup: 1, core: LOAD_CORE, work })));
    const capacityCpu = (cpuSeconds(server.pid) - cpu0) / ((performance.now() - t0) / 1000);
    const unpaced = capacity.reduce((s, f) => s + f.rps, 0);
    const scale = 1 / Math.min(1, Math.max(0.1, capacityCpu));
    const total = unpaced * scale;
    jobs.forEach((j, i) => say(`capacity ${j.label}: ${fmt(capacity[i] as Figure)}`));
    say(
      `unpaced mix: ${Math.round(unpaced)} calls/s with the server at ${(capacityCpu * 100).toFixed(0)}% of a core; capacity ${Math.round(total)} calls/s; soaking at ${LOAD} of it for ${MINUTES} min`,
    );
    const capacityErrors = await server.errors();

    // 2. Soak, sampling memory and errors.
    const samples: { at: number; rssMb: number; errors: number; cpu: number }[] = [];
    const started = Date.now();
    let lastCpu = cpuSeconds(server.pid);
    const soakCpu0 = lastCpu;
    const sampler = setInterval(() => {
      const c = cpuSeconds(server.pid);
      const cpu = (c - lastCpu) / (SAMPLE_MS / 1000);
      lastCpu = c;
      void server.errors().then((errors) => {
        samples.push({ at: (Date.now() - started) / 1000, rssMb: rssKb(server.pid).current / 1024, errors, cpu });
        const s = samples[samples.length - 1];
        if (s) say(`t=${Math.round(s.at)} s RSS ${s.rssMb.toFixed(0)} MB, server CPU ${(s.cpu * 100).toFixed(0)}%, server errors ${s.errors}`);
      });
    }, SAMPLE_MS);
    const seconds = MINUTES * 60;
    const soaked = await Promise.all(
      jobs.map((j, i) => {
        const rps = Math.max(1, Math.round((capacity[i] as Figure).rps * scale * LOAD));
        // Room for latency spikes: a paced job must not be held back by its own concurrency.
        return h2load(server.url, [{ ...j, streams: Math.max(j.streams, 8) }], { seconds, warmup: 0, core: LOAD_CORE, work, rps });
      }),
    );
    clearInterval(sampler);
    const soakCpu = (cpuSeconds(server.pid) - soakCpu0) / ((Date.now() - started) / 1000);
    const finalErrors = await server.errors();
    const rss = rssKb(server.pid);
    const firstMinute = samples.filter((s) => s.at <= 60).map((s) => s.rssMb);
    const lastMinute = samples.filter((s) => s.at > seconds - 60).map((s) => s.rssMb);
    const avg = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
    const serverErrors = samples.reduce((s, x) => s + x.errors, 0) + finalErrors;
    const clientErrors = soaked.reduce((s, f) => s + f.errors, 0);
    const calls = soaked.reduce((s, f) => s + f.requests, 0);
    const achieved = soaked.reduce((s, f) => s + f.rps, 0);

    const cut = soaked.reduce((s, f) => s + (f.cut ?? 0), 0);
    const lines = [
      `Server on core ${SERVER_CORE}, h2load on core ${LOAD_CORE}; 1,017 secrets; each job paced with h2load --rps at ${LOAD} of its share of the capacity.`,
      "",
      `Capacity of the mix: unpaced (${CAPACITY_SECONDS} s, all jobs at once) ${Math.round(unpaced)} calls/s with the server using ${(capacityCpu * 100).toFixed(0)}% of its core, so ${Math.round(total)} calls/s at a full core${capacityErrors ? ` (${capacityErrors} server errors)` : ""}.`,
      "",
      "| job | unpaced | soak: calls/s, p50 / p99 | calls | errors |",
      "|---|---|---|---|---|",
      ...jobs.map((j, i) => {
        const c = capacity[i] as Figure;
        const s = soaked[i] as Figure;
        return `| ${j.label} | ${Math.round(c.rps)}/s | ${Math.round(s.rps)}/s, ${s.p50Ms.toFixed(2)} / ${s.p99Ms.toFixed(2)} ms | ${s.requests} | ${s.errors} |`;
      }),
      "",
      `Soak: ${MINUTES} min, ${calls} calls at ${Math.round(achieved)} calls/s (${(achieved / total).toFixed(2)} of capacity), the server using ${(soakCpu * 100).toFixed(0)}% of its core on average; errors: ${clientErrors} seen by h2load, ${serverErrors} counted by the server.`,
      `Memory: RSS ${avg(firstMinute).toFixed(0)} MB over the first minute, ${avg(lastMinute).toFixed(0)} MB over the last, ${Math.max(...samples.map((s) => s.rssMb)).toFixed(0)} MB at most of ${samples.length} samples (peak VmHWM ${Math.round(rss.peak / 1024)} MB).`,
      "",
      `Server CPU every minute (% of a core): ${samples
        .filter((_, i) => (i + 1) % 6 === 0)
        .map((s) => (s.cpu * 100).toFixed(0))
        .join(", ")}.${cut ? ` h2load had ${cut} calls open when its time was up (not counted as errors).` : ""}`,
      "",
      `RSS every minute (MB): ${samples
        .filter((_, i) => (i + 1) % 6 === 0)
        .map((s) => s.rssMb.toFixed(0))
        .join(", ")}.`,
    ];
    for (const l of lines) if (l) say(l);
    writeResult("soak", {
      title: `Soak: ${MINUTES} minutes at ${LOAD} of capacity`,
      command: `npm run bench:soak -- ${process.argv.slice(2).join(" ")}`.trim(),
      lines,
      markdown: true,
    });
  } finally {
    await server.stop();
    rmSync(dataDir, { recursive: true, force: true });
    rmSync(work, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  killChildren();
  process.exit(1);
});
