/**
 * Store and read secrets with the typed client.
 *
 *   node --import tsx examples/store-and-read.ts
 *
 * Environment: LATCHKEY_ADDR (default http://127.0.0.1:8200), LATCHKEY_TOKEN (an admin or writer token; needed to
 * create secrets), LATCHKEY_PROTOCOL (grpc, connect or grpc-web; default grpc).
 *
 * What it does:
 *   1. creates a manual secret (we supply the value), reads it back and checks it is what we stored;
 *   2. verifies a presented value against it (right and wrong);
 *   3. creates an automatic secret (Latchkey generates the value), rotates it, and shows that the previous value
 *      stays valid for the grace period while reads return the new one;
 *   4. deletes both for good, so the example can run again.
 * Exits 0 when every check passed. Secret values are never printed in full: this example's point is reading
 * them, so it shows a masked preview.
 */
import { randomBytes } from "node:crypto";
// In an application: import { createLatchkeyClient, SecretKind } from "latchkey/client";
import { createLatchkeyClient, SecretKind } from "../src/client/index.js";

const baseUrl = process.env.LATCHKEY_ADDR ?? "http://127.0.0.1:8200";
const token = process.env.LATCHKEY_TOKEN;
const protocol = (process.env.LATCHKEY_PROTOCOL ?? "grpc") as "grpc" | "connect" | "grpc-web";
if (!token) {
  console.error("Set LATCHKEY_TOKEN to an admin or writer token (e.g. export LATCHKEY_TOKEN=$(cat data/admin.token)).");
  process.exit(2);
}

/** "abc…(32 chars)": enough to see which value it is, not enough to use it. */
const masked = (v: string) => `${v.slice(0, 3)}…(${v.length} chars)`;

function check(ok: boolean, what: string): void {
  if (!ok) throw new Error(`check failed: ${what}`);
  console.log(`  ok: ${what}`);
}

const client = createLatchkeyClient({ baseUrl, token, protocol });
// A fresh name per run; segments of [A-Za-z0-9_.-] separated by "/".
const prefix = `examples/store-and-read/${Date.now().toString(36)}`;
const manualName = `${prefix}/db-password`;
const autoName = `${prefix}/api-key`;
// Every call gets a deadline: an example should never hang.
const call = { timeoutMs: 5_000 };

try {
  console.log(`Latchkey at ${baseUrl} over ${protocol}`);

  // 1. A manual secret: the value is ours.
  const value = randomBytes(18).toString("base64url");
  const stored = await client.secrets.storeSecret({ name: manualName, kind: SecretKind.MANUAL, value, description: "example" }, call);
  console.log(`stored ${manualName} (manual), version ${stored.version?.version}`);
  const read = await client.secrets.getSecret({ name: manualName }, call);
  console.log(`read ${manualName}: version ${read.version?.version}, value ${masked(read.value)}`);
  check(read.value === value, "the value read back is the one stored");

  // 2. Verify a presented value (constant time on the server; the value is compared, never returned).
  const good = await client.secrets.verifySecret({ name: manualName, value }, call);
  check(good.valid && good.version === 1, "the stored value verifies (version 1)");
  const bad = await client.secrets.verifySecret({ name: manualName, value: `${value}-wrong` }, call);
  check(!bad.valid, "a different value does not verify");

  // 3. An automatic secret: Latchkey generates the value and rotates it every rotation interval (an hour here).
  const auto = await client.secrets.storeSecret(
    { name: autoName, kind: SecretKind.AUTOMATIC, rotationInterval: { seconds: 3600n }, gracePeriod: { seconds: 600n } },
    call,
  );
  console.log(`stored ${autoName} (automatic, rotates hourly), version ${auto.version?.version}, value ${masked(auto.value)}`);
  // Rotate now instead of waiting for the schedule.
  const rotated = await client.secrets.rotateSecret({ name: autoName }, call);
  console.log(`rotated ${autoName}: version ${rotated.version?.version}, value ${masked(rotated.value)}`);
  check(rotated.value !== auto.value, "the rotation produced a new value");
  const current = await client.secrets.getSecret({ name: autoName }, call);
  check(current.version?.version === 2 && current.value === rotated.value, "reads now return version 2");
  // The previous value keeps working for the grace period, so clients holding it can catch up.
  const old = await client.secrets.verifySecret({ name: autoName, value: auto.value }, call);
  check(old.valid && old.version === 1, "the previous value still verifies during the grace period");

  console.log("all checks passed");
} finally {
  // 4. Clean up: purge deletes for good instead of keeping the secrets restorable.
  for (const name of [manualName, autoName]) {
    await client.secrets.deleteSecret({ name, purge: true }, call).catch(() => {});
  }
  console.log(`deleted ${prefix}/*`);
}
