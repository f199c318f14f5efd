/**
 * The read-through secret cache: read a secret as often as you like, and see the cache pick up its rotations.
 *
 *   node --import tsx examples/cached-reads.ts
 *
 * Environment: LATCHKEY_ADDR (default http://127.0.0.1:8200), LATCHKEY_TOKEN (a writer or admin token: the example
 * creates and rotates its own secret), LATCHKEY_PROTOCOL (grpc, connect or grpc-web; default grpc), and
 *   CACHE_READS         reads per round (default 1000)
 *   CACHE_WAIT_SECONDS  how long to wait for each rotation to be reported (default 10)
 *
 * What it does:
 *   1. creates an automatic secret and a cache of its name prefix; the cache opens a WatchSecrets stream;
 *   2. reads the secret CACHE_READS times: one fetch from the server, every other read from memory;
 *   3. rotates it (RotateSecret): the watch reports the rotation, the cache drops the entry, the next read
 *      fetches the new version;
 *   4. sets a 1 s rotation interval and lets Latchkey's scheduler rotate it: the cache follows that too;
 *   5. deletes the secret.
 * Prints versions, counts and timings, never the values. Exits 0 when every check passed.
 */
// In an application: import { createLatchkeyClient, createSecretCache, SecretKind } from "latchkey/client";
import { createLatchkeyClient, createSecretCache, type SecretCache, SecretKind } from "../src/client/index.js";

const baseUrl = process.env.LATCHKEY_ADDR ?? "http://127.0.0.1:8200";
const token = process.env.LATCHKEY_TOKEN;
const protocol = (process.env.LATCHKEY_PROTOCOL ?? "grpc") as "grpc" | "connect" | "grpc-web";
const reads = Number(process.env.CACHE_READS ?? 1000);
const waitMs = Number(process.env.CACHE_WAIT_SECONDS ?? 10) * 1000;
if (!token) {
  console.error("Set LATCHKEY_TOKEN to an admin or writer token (e.g. export LATCHKEY_TOKEN=$(cat data/admin.token)).");
  process.exit(2);
}

function check(ok: boolean, what: string): void {
  if (!ok) throw new Error(`check failed: ${what}`);
  console.log(`  ok: ${what}`);
}

/** Polls `cond` every 10 ms for at most `ms`; returns how long it took. */
async function waitFor(cond: () => boolean, ms: number, what: string): Promise<number> {
  const start = Date.now();
  while (!cond()) {
    if (Date.now() - start > ms) throw new Error(`gave up after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
  return Date.now() - start;
}

const client = createLatchkeyClient({ baseUrl, token, protocol });
const call = { timeoutMs: 5_000 };
const prefix = `examples/cached-reads/${Date.now().toString(36)}/`;
const name = `${prefix}api-key`;

// client.cache({ prefix }) is all an application needs. Here the cache gets a secrets client that counts its
// GetSecret calls, to show which reads went to the server.
let fetches = 0;
const countingSecrets: typeof client.secrets = {
  ...client.secrets,
  getSecret: (...args: Parameters<typeof client.secrets.getSecret>) => {
    fetches++;
    return client.secrets.getSecret(...args);
  },
};
let cache: SecretCache | undefined;

/** Resolves with `p`, or rejects after `ms` (and leaves no timer behind to keep the process alive). */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
    });
    return await Promise.race([p, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

/** Reads the secret `n` times through the cache; returns the versions seen and the time taken. */
async function readMany(from: SecretCache, n: number): Promise<{ versions: Set<number>; values: Set<string>; ms: number }> {
  const versions = new Set<number>();
  const values = new Set<string>();
  const start = performance.now();
  for (let i = 0; i < n; i++) {
    const s = await from.get(name);
    versions.add(s.version);
    values.add(s.value);
  }
  return { versions, values, ms: performance.now() - start };
}

try {
  console.log(`Latchkey at ${baseUrl} over ${protocol}`);
  await client.secrets.storeSecret({ name, kind: SecretKind.AUTOMATIC, rotationInterval: { seconds: 3600n } }, call);
  console.log(`created ${name} (automatic, rotates hourly)`);
  // The cache opens its watch at once. (Made after the secret, so the creation is not reported as a change.)
  const c = createSecretCache(countingSecrets, {
    prefix,
    onError: (err) => console.log(`  (watch interrupted, reconnecting: ${String(err)})`),
  });
  cache = c;
  // Reads wait for the watch to open anyway; waiting here just makes the timings below about reads alone.
  await within(c.ready, 5_000, "the watch to open");
  console.log(`cache of ${prefix}* is watching`);

  // 2. Many reads, one fetch.
  let round = await readMany(c, reads);
  console.log(`${reads} reads in ${round.ms.toFixed(1)} ms: version ${[...round.versions].join(",")}, ${fetches} fetch(es) from the server`);
  check(fetches === 1 && round.versions.size === 1, "one fetch, every other read from memory");
  const firstValue = [...round.values][0];

  // 3. Rotate: the watch reports it, the cache drops the entry.
  const rotated = await client.secrets.rotateSecret({ name }, call);
  console.log(`rotated ${name} to version ${rotated.version?.version}`);
  const tookMs = await waitFor(() => c.invalidations >= 1, waitMs, "the rotation to reach the cache");
  console.log(`the watch reported it after ${tookMs} ms; the cached entry was dropped`);
  round = await readMany(c, reads);
  console.log(`${reads} reads: version ${[...round.versions].join(",")}, ${fetches} fetch(es) so far`);
  check(fetches === 2 && round.versions.size === 1 && round.versions.has(2), "the next read fetched version 2, then memory again");
  check(!round.values.has(firstValue ?? ""), "the value changed");

  // 4. Let the scheduler rotate it: a 1 s interval. (The update itself is reported too, as UPDATED.)
  await client.secrets.updateSecret({ name, kind: SecretKind.AUTOMATIC, rotationInterval: { seconds: 1n } }, call);
  console.log("set the rotation interval to 1 s; waiting for the scheduler");
  // Reading in a loop is cheap: until the watch reports a change, every read is answered from memory.
  const start = Date.now();
  let version = 2;
  while (version < 3) {
    if (Date.now() - start > waitMs) throw new Error(`no scheduled rotation within ${waitMs} ms`);
    version = (await c.get(name)).version;
    if (version < 3) await new Promise((r) => setTimeout(r, 50));
  }
  console.log(`after ${Date.now() - start} ms the cache serves version ${version} (rotated by the scheduler), ${fetches} fetch(es) in all`);
  check(version >= 3, "the scheduled rotation reached the cache");
  console.log(`${c.invalidations} cached entr${c.invalidations === 1 ? "y was" : "ies were"} dropped because the secret changed`);
  console.log("all checks passed");
} finally {
  cache?.close();
  await client.secrets.deleteSecret({ name, purge: true }, call).catch(() => {});
  console.log(`deleted ${name}`);
}
