import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { createSqliteStorage } from "../../src/storage/sqlite/sqlite-storage.js";
import type { Storage } from "../../src/storage/storage.js";
import { startTestServer, type TestServer, tempDir } from "../support/server.js";

/** /readyz follows the store: a store that stops answering makes the service not ready, and ready again after. */
describe("readiness follows the store", () => {
  let s: TestServer;
  let storeDown = false;
  before(async () => {
    const real = createSqliteStorage(join(tempDir(), "latchkey.db"));
    const flaky: Storage = {
      ...real,
      async ping() {
        if (storeDown) throw new Error("connection lost");
        return real.ping();
      },
    };
    s = await startTestServer({}, { storage: flaky });
  });
  after(() => s.stop());

  it("is ready while the store answers, not ready while it does not, and ready again without a restart", async () => {
    assert.equal((await fetch(`${s.url}/readyz`)).status, 200);
    storeDown = true;
    const down = await fetch(`${s.url}/readyz`);
    assert.equal(down.status, 503);
    assert.deepEqual(await down.json(), { status: "not ready" });
    assert.equal((await fetch(`${s.url}/healthz`)).status, 200, "still alive");
    storeDown = false;
    assert.equal((await fetch(`${s.url}/readyz`)).status, 200);
  });

  it("reports not ready once draining starts", async () => {
    const closing = s.app.close(500);
    const res = await fetch(`${s.url}/readyz`).catch(() => undefined);
    assert.ok(res === undefined || res.status === 503, "refused or not ready");
    await closing;
  });
});
