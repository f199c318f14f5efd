/**
 * Batches and versions: write and read many secrets in one call, then look at a secret's version history and
 * retire an old version.
 *
 *   node --import tsx examples/batch-and-versions.ts
 *
 * Environment: LATCHKEY_ADDR (default http://127.0.0.1:8200), LATCHKEY_TOKEN (a writer or admin token),
 * LATCHKEY_PROTOCOL (grpc, connect or grpc-web; default grpc).
 *
 * What it does:
 *   1. BatchUpsertSecrets: creates three secrets at once (atomic: all or nothing);
 *   2. BatchGetSecrets: reads them back in one call, plus a missing name (each item succeeds or fails alone);
 *   3. a non-atomic batch with one bad item: the good items are written, the bad one says why it failed;
 *   4. gives one secret new values (UpdateSecret), lists its versions (ListSecretVersions), deactivates the
 *      oldest (SetVersionState) and shows it no longer verifies but can still be read by number;
 *   5. BatchDeleteSecrets: deletes them all for good.
 * Prints names, versions and states, never values. Exits 0 when every check passed.
 */
// In an application: import { ... } from "latchkey/client";
import { createLatchkeyClient, SecretKind, VersionState } from "../src/client/index.js";

const baseUrl = process.env.LATCHKEY_ADDR ?? "http://127.0.0.1:8200";
const token = process.env.LATCHKEY_TOKEN;
const protocol = (process.env.LATCHKEY_PROTOCOL ?? "grpc") as "grpc" | "connect" | "grpc-web";
if (!token) {
  console.error("Set LATCHKEY_TOKEN to an admin or writer token (e.g. export LATCHKEY_TOKEN=$(cat data/admin.token)).");
  process.exit(2);
}

function check(ok: boolean, what: string): void {
  if (!ok) throw new Error(`check failed: ${what}`);
  console.log(`  ok: ${what}`);
}

const client = createLatchkeyClient({ baseUrl, token, protocol });
const call = { timeoutMs: 5_000 };
const prefix = `examples/batch-and-versions/${Date.now().toString(36)}`;
const names = ["db/user", "db/password", "smtp/password"].map((n) => `${prefix}/${n}`);
const [dbUser, dbPassword] = names as [string, string, string];
const extra = `${prefix}/cache/url`;
const values = new Map(names.map((n, i) => [n, `example-value-${i}-${Math.random().toString(36).slice(2)}`]));

try {
  console.log(`Latchkey at ${baseUrl} over ${protocol}`);

  // 1. One call, three secrets; atomic is the default: if any item were rejected, none would be written.
  const upserted = await client.secrets.batchUpsertSecrets(
    { items: names.map((name) => ({ name, kind: SecretKind.MANUAL, value: values.get(name), tags: { values: ["example"] } })) },
    call,
  );
  for (const r of upserted.results) console.log(`upserted ${r.name}: ${r.created ? "created" : "updated"}, version ${r.version}`);
  check(upserted.results.every((r) => r.ok && r.created), "all three created");

  // 2. One call, many reads; a missing name fails on its own without failing the call.
  const got = await client.secrets.batchGetSecrets({ names: [...names, `${prefix}/missing`] }, call);
  for (const r of got.results) {
    console.log(r.error ? `read ${r.name}: ${r.error.code} (${r.error.reason || r.error.message})` : `read ${r.name}: version ${r.version?.version}`);
  }
  check(
    got.results.slice(0, 3).every((r) => !r.error && r.value === values.get(r.name)),
    "the three values read back are the ones written",
  );
  check(got.results[3]?.error?.code === "not_found", "the missing name failed alone with not_found");

  // 3. Not atomic: each item on its own. The second item has an invalid name.
  const mixed = await client.secrets.batchUpsertSecrets(
    {
      atomic: false,
      items: [
        { name: extra, value: "redis://cache.internal:6379" },
        { name: `${prefix}/bad name!`, value: "x" },
      ],
    },
    call,
  );
  for (const r of mixed.results) {
    console.log(r.ok ? `upserted ${r.name}: version ${r.version}` : `rejected ${JSON.stringify(r.name)}: ${r.error?.code} ${r.error?.field} ${r.error?.reason}`);
  }
  check(mixed.results[0]?.ok === true && mixed.results[1]?.ok === false, "the good item was written, the bad one rejected");

  // 4. Versions. Each new value makes a new version; the previous stays valid for the grace period (here 10 min).
  await client.secrets.updateSecret({ name: dbPassword, value: `${values.get(dbPassword)}-2`, gracePeriod: { seconds: 600n } }, call);
  await client.secrets.updateSecret({ name: dbPassword, value: `${values.get(dbPassword)}-3` }, call);
  const listed = await client.secrets.listSecretVersions({ name: dbPassword }, call);
  console.log(`${dbPassword} has ${listed.versions.length} versions:`);
  for (const v of listed.versions) {
    console.log(`  version ${v.version}: ${VersionState[v.state]}${v.current ? ", current" : ""}${v.valid ? ", verifies" : ""}`);
  }
  check(listed.versions.map((v) => v.version).join() === "1,2,3", "versions 1, 2 and 3 are kept");
  const v1 = values.get(dbPassword);
  check((await client.secrets.verifySecret({ name: dbPassword, value: v1 }, call)).valid, "version 1 still verifies (grace period)");

  // Retire version 1 now instead of waiting for its grace period to end.
  await client.secrets.setVersionState({ name: dbPassword, version: 1, state: VersionState.DEACTIVATED }, call);
  console.log(`deactivated ${dbPassword} version 1`);
  check(!(await client.secrets.verifySecret({ name: dbPassword, value: v1 }, call)).valid, "version 1 no longer verifies");
  const old = await client.secrets.getSecret({ name: dbPassword, version: 1 }, call);
  check(old.value === v1, "version 1 can still be read by number");
  const current = await client.secrets.getSecret({ name: dbPassword }, call);
  check(current.version?.version === 3, "reads without a version get version 3");
  const user = await client.secrets.getSecret({ name: dbUser }, call);
  check(user.version?.version === 1, `${dbUser} was not touched`);
  console.log("all checks passed");
} finally {
  // 5. One call deletes them all; purge: for good, not restorable.
  const deleted = await client.secrets.batchDeleteSecrets({ names: [...names, extra], atomic: false, purge: true }, call).catch(() => undefined);
  console.log(`deleted ${deleted?.results.filter((r) => r.ok).length ?? 0} secret(s) under ${prefix}/`);
}
