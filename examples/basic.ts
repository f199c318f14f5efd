/**
 * Basic use of the typed client: store, read, verify, list, update, rotate and delete secrets.
 *
 *   LATCHKEY_ADDR=http://127.0.0.1:8200 LATCHKEY_TOKEN=$(cat data/admin.token) node --import tsx examples/basic.ts
 *
 * It works under its own name prefix and deletes what it created, so it can run again. Values are never printed.
 */
import { Code, ConnectError, createLatchkeyClient, SecretKind } from "../src/client/index.js";

const client = createLatchkeyClient({
  baseUrl: process.env.LATCHKEY_ADDR ?? "http://127.0.0.1:8200",
  token: process.env.LATCHKEY_TOKEN,
  protocol: (["connect", "grpc-web"] as const).find((p) => p === process.env.LATCHKEY_PROTOCOL) ?? "grpc",
});
const { secrets } = client;
const prefix = `examples/basic-${process.pid}/`;
const dbPassword = `${prefix}db-password`;
const apiKey = `${prefix}api-key`;

try {
  // A manual secret holds the value you give it.
  const stored = await secrets.storeSecret({ name: dbPassword, value: "s3cr3t", description: "primary db password" });
  console.log(`stored ${dbPassword} version ${stored.version?.version}`);

  // Reads need no token from an allowed address; the token is sent anyway.
  const read = await secrets.getSecret({ name: dbPassword });
  console.log(`read ${dbPassword} version ${read.version?.version} (${read.value.length} characters)`);

  // Verify compares in constant time on the server, against every version still valid.
  const good = await secrets.verifySecret({ name: dbPassword, value: "s3cr3t" });
  const bad = await secrets.verifySecret({ name: dbPassword, value: "guess" });
  console.log(`verify: right value ${good.valid} (version ${good.version}), wrong value ${bad.valid}`);

  // An automatic secret gets a generated value and rotates on its interval (here: an hour).
  const generated = await secrets.storeSecret({
    name: apiKey,
    kind: SecretKind.AUTOMATIC,
    rotationInterval: { seconds: 3600n },
  });
  console.log(`stored ${apiKey} version ${generated.version?.version} (generated, ${generated.value.length} characters)`);

  // Listing returns metadata only, never values.
  const listed = await secrets.listSecrets({ namePrefix: prefix });
  console.log(`listed ${listed.secrets.map((s) => `${s.name}@${s.currentVersion}`).join(", ")}`);

  // A new value makes a new version; the previous one stays valid for the grace period.
  const updated = await secrets.updateSecret({ name: dbPassword, value: "n3w-s3cr3t", description: "rotated by hand" });
  console.log(`updated ${dbPassword} to version ${updated.secret?.currentVersion}`);

  // Rotate an automatic secret now.
  const rotated = await secrets.rotateSecret({ name: apiKey });
  const stillValid = await secrets.verifySecret({ name: apiKey, value: generated.value });
  console.log(`rotated ${apiKey} to version ${rotated.version?.version}; the old value verifies: ${stillValid.valid}`);

  for (const name of [dbPassword, apiKey]) {
    await secrets.deleteSecret({ name, purge: true });
    console.log(`deleted ${name}`);
  }
  try {
    await secrets.getSecret({ name: dbPassword });
  } catch (err) {
    if (!(err instanceof ConnectError && err.code === Code.NotFound)) throw err;
    console.log(`read ${dbPassword}: not found, as expected`);
  }
  console.log("basic example done");
} catch (err) {
  console.error(`basic example failed: ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode = 1;
}
