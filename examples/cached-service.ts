/**
 * A service that reads its API key through the client's cache and picks up a rotation without restarting.
 *
 *   LATCHKEY_ADDR=http://127.0.0.1:8200 LATCHKEY_TOKEN=$(cat data/admin.token) node --import tsx examples/cached-service.ts
 *
 * It creates an automatic secret that rotates every second, then "handles a request" every 100 ms, each reading
 * the key from the cache. Reads are answered from memory until WatchSecrets reports the rotation; the next read
 * fetches the new value. It exits after the first rotation it sees (0), or after LATCHKEY_EXAMPLE_DEADLINE_MS
 * (default 15000) without one (1). Values are never printed.
 */
import { ConnectError, createLatchkeyClient, SecretKind } from "../src/client/index.js";

const deadlineMs = Number(process.env.LATCHKEY_EXAMPLE_DEADLINE_MS ?? 15_000);
const client = createLatchkeyClient({
  baseUrl: process.env.LATCHKEY_ADDR ?? "http://127.0.0.1:8200",
  token: process.env.LATCHKEY_TOKEN,
  protocol: (["connect", "grpc-web"] as const).find((p) => p === process.env.LATCHKEY_PROTOCOL) ?? "grpc",
});
const prefix = `examples/service-${process.pid}/`;
const name = `${prefix}api-key`;

async function main(): Promise<void> {
  await client.secrets.storeSecret({
    name,
    kind: SecretKind.AUTOMATIC,
    rotationInterval: { seconds: 1n },
    gracePeriod: { seconds: 5n },
  });
  console.log(`created ${name}, rotating every second`);

  // Watch only this service's prefix; the cache stays correct however many secrets the store holds.
  const cache = client.cache({ prefix, onError: (err) => console.error(`watch interrupted: ${ConnectError.from(err).message}`) });
  try {
    await cache.ready;
    console.log("cache ready: watching for changes");
    const started = Date.now();
    let requests = 0;
    let firstVersion: number | undefined;
    for (;;) {
      // One request of the service: it needs the current key, and usually gets it from memory.
      const key = await cache.get(name);
      requests++;
      if (firstVersion === undefined) {
        firstVersion = key.version;
        console.log(`using api key version ${key.version} (${key.value.length} characters)`);
      } else if (key.version !== firstVersion) {
        console.log(`rotation seen: version ${firstVersion} -> ${key.version} after ${requests} requests`);
        console.log(`server reads: ${cache.invalidations + 1}, the other ${requests - cache.invalidations - 1} from memory`);
        return;
      }
      if (Date.now() - started > deadlineMs) throw new Error(`no rotation seen within ${deadlineMs} ms`);
      await new Promise((r) => setTimeout(r, 100));
    }
  } finally {
    // Closing stops the watch; without it the open stream would keep the process alive.
    cache.close();
    await client.secrets.deleteSecret({ name, purge: true });
    console.log(`deleted ${name}`);
  }
}

main().catch((err: unknown) => {
  console.error(`cached-service example failed: ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode = 1;
});
