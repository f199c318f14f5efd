/**
 * Watch a name prefix and print what happens to its secrets: creations, rotations, updates, deletions.
 *
 *   node --import tsx examples/watch-rotations.ts
 *
 * Environment: LATCHKEY_ADDR (default http://127.0.0.1:8200), LATCHKEY_TOKEN (reads from an allowed IP work
 * without one), LATCHKEY_PROTOCOL (grpc, connect or grpc-web; default grpc), and
 *   WATCH_PREFIX   the name prefix to watch (default "examples/")
 *   WATCH_STORE    the store (default "default")
 *   WATCH_EVENTS   stop after this many events (default 10)
 *   WATCH_SECONDS  or after this many seconds (default 30)
 *   WATCH_DEMO=1   make some activity to watch: create an automatic secret under the prefix that rotates every
 *                  second, and delete it at the end (needs a writer or admin token)
 *
 * Events carry names, versions and times, never values. If the stream drops (a server restart, a network blip),
 * the watch reconnects with the resume token of the last event it got, so nothing is missed or repeated.
 * Exits 0 after WATCH_EVENTS events or WATCH_SECONDS seconds.
 */
// In an application: import { ... } from "latchkey/client";
import { Code, ConnectError, createLatchkeyClient, SecretEventType, SecretKind } from "../src/client/index.js";

const baseUrl = process.env.LATCHKEY_ADDR ?? "http://127.0.0.1:8200";
const token = process.env.LATCHKEY_TOKEN;
const protocol = (process.env.LATCHKEY_PROTOCOL ?? "grpc") as "grpc" | "connect" | "grpc-web";
const prefix = process.env.WATCH_PREFIX ?? "examples/";
const store = process.env.WATCH_STORE ?? "default";
const maxEvents = Number(process.env.WATCH_EVENTS ?? 10);
const seconds = Number(process.env.WATCH_SECONDS ?? 30);
const demo = process.env.WATCH_DEMO === "1";

const client = createLatchkeyClient({ baseUrl, token, protocol });
// One signal ends everything: the time limit, Ctrl-C, or enough events.
const stop = new AbortController();
const timer = setTimeout(() => stop.abort(), seconds * 1000);
process.once("SIGINT", () => stop.abort());

const demoName = `${prefix}watch-demo-${Date.now().toString(36)}`;
let seen = 0;
let opened = false;
let resumeToken = "";
const time = (ts?: { seconds: bigint; nanos: number }) =>
  ts ? new Date(Number(ts.seconds) * 1000 + Math.floor(ts.nanos / 1e6)).toISOString() : "-";

console.log(`watching ${store}/${prefix}* at ${baseUrl} over ${protocol} (up to ${maxEvents} events or ${seconds} s)`);
try {
  for (let attempt = 0; !stop.signal.aborted; attempt++) {
    try {
      // Resume after the last event seen (empty at first: from now on).
      for await (const ev of client.secrets.watchSecrets({ store, namePrefix: prefix, resumeToken }, { signal: stop.signal })) {
        resumeToken = ev.resumeToken;
        attempt = 0;
        if (ev.type === SecretEventType.STARTED) {
          console.log(opened ? "watch resumed" : "watch open");
          // The watch is open, so nothing the demo does can be missed.
          if (demo && !opened) {
            await client.secrets.storeSecret(
              { name: demoName, kind: SecretKind.AUTOMATIC, rotationInterval: { seconds: 1n }, gracePeriod: { seconds: 0n } },
              { timeoutMs: 5_000 },
            );
          }
          opened = true;
          continue;
        }
        if (ev.type === SecretEventType.RESET) {
          // The server no longer has the history since our token: anything cached must be re-read.
          console.log("RESET: history since the last event is gone; re-read what you cache");
          continue;
        }
        seen++;
        const kind = SecretEventType[ev.type];
        const next = ev.nextRotationAt ? `, next rotation ${time(ev.nextRotationAt)}` : "";
        console.log(`${time(ev.at)} ${kind} ${ev.store}/${ev.name} version ${ev.version}${next}`);
        if (seen >= maxEvents) stop.abort();
      }
    } catch (err) {
      if (stop.signal.aborted) break;
      // Dropped: wait a little (longer each time), then reconnect where we stopped.
      const delay = Math.min(200 * 2 ** attempt, 5_000);
      console.log(`watch dropped (${Code[ConnectError.from(err).code]}); reconnecting in ${delay} ms`);
      await new Promise((r) => setTimeout(r, delay));
    }
  }
} finally {
  clearTimeout(timer);
  if (demo) await client.secrets.deleteSecret({ name: demoName, purge: true }, { timeoutMs: 5_000 }).catch(() => {});
}
console.log(`done: ${seen} event(s)`);
