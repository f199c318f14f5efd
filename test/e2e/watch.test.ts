import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { SecretEventType, SecretKind } from "../../gen/latchkey/v1/secret_pb.js";
import { SecretService, type WatchSecretsResponse } from "../../gen/latchkey/v1/secret_service_pb.js";
import { ADMIN_TOKEN, startTestServer, type TestServer } from "../support/server.js";

const auth = { authorization: `Bearer ${ADMIN_TOKEN}` };

/** Reads a watch until `until` says stop or `ms` pass; returns what arrived. */
async function collect(
  stream: AsyncIterable<WatchSecretsResponse>,
  until: (events: WatchSecretsResponse[]) => boolean,
  ms: number,
  ac: AbortController,
): Promise<WatchSecretsResponse[]> {
  const events: WatchSecretsResponse[] = [];
  const timer = setTimeout(() => ac.abort(), ms);
  try {
    for await (const ev of stream) {
      events.push(ev);
      if (until(events)) break;
    }
  } catch (err) {
    if (!(err instanceof ConnectError && err.code === Code.Canceled)) throw err;
  } finally {
    clearTimeout(timer);
    ac.abort();
  }
  return events;
}

describe("WatchSecrets", () => {
  let s: TestServer;
  let client: ReturnType<typeof createClient<typeof SecretService>>;
  before(async () => {
    s = await startTestServer();
    client = createClient(SecretService, createGrpcTransport({ baseUrl: s.url }));
  });
  after(() => s.stop());

  it("reports creation, rotations, updates and deletion, in order, without values", async () => {
    const ac = new AbortController();
    const stream = client.watchSecrets({ namePrefix: "w1/" }, { signal: ac.signal });
    const events: WatchSecretsResponse[] = [];
    const done = (async () => {
      for await (const ev of stream) {
        events.push(ev);
        if (ev.type === SecretEventType.DELETED) break;
      }
    })().catch(() => {});
    while (events.length === 0) await new Promise((r) => setTimeout(r, 10));
    assert.equal(events[0]?.type, SecretEventType.STARTED);
    assert.ok(events[0]?.resumeToken);

    const created = await client.storeSecret(
      { name: "w1/key", kind: SecretKind.AUTOMATIC, rotationInterval: { seconds: 3600n } },
      { headers: auth },
    );
    await client.storeSecret({ name: "other/ignored", value: "x" }, { headers: auth });
    const r2 = await client.rotateSecret({ name: "w1/key" }, { headers: auth });
    await client.updateSecret({ name: "w1/key", description: "now described" }, { headers: auth });
    const r3 = await client.rotateSecret({ name: "w1/key" }, { headers: auth });
    await client.deleteSecret({ name: "w1/key" }, { headers: auth });
    await Promise.race([done, new Promise((r) => setTimeout(r, 5000))]);
    ac.abort();

    const seen = events.slice(1).map((e) => [SecretEventType[e.type], e.name, e.version]);
    assert.deepEqual(seen, [
      ["CREATED", "w1/key", 1],
      ["ROTATED", "w1/key", 2],
      ["UPDATED", "w1/key", 2],
      ["ROTATED", "w1/key", 3],
      ["DELETED", "w1/key", 3],
    ]);
    const text = JSON.stringify(events, (_k, v) => (typeof v === "bigint" ? v.toString() : v));
    for (const value of [created.value, r2.value, r3.value]) assert.equal(text.includes(value), false, "no value in events");
    assert.ok(events[1]?.nextRotationAt, "automatic secrets carry their next rotation");
    assert.equal(events[5]?.nextRotationAt, undefined, "a deleted secret has none");
  });

  it("delivers automatic rotations once each, in order, across a reconnect", async () => {
    await client.storeSecret(
      { name: "w2/fast", kind: SecretKind.AUTOMATIC, rotationInterval: { seconds: 1n }, gracePeriod: { seconds: 0n } },
      { headers: auth },
    );
    const ac1 = new AbortController();
    const firstRun = await collect(
      client.watchSecrets({ namePrefix: "w2/" }, { signal: ac1.signal }),
      (evs) => evs.filter((e) => e.type === SecretEventType.ROTATED).length >= 1,
      5000,
      ac1,
    );
    const rotated1 = firstRun.filter((e) => e.type === SecretEventType.ROTATED);
    assert.equal(rotated1.length, 1);
    const last = firstRun[firstRun.length - 1] as WatchSecretsResponse;
    // Disconnected: rotations go on without us for a while.
    await new Promise((r) => setTimeout(r, 2300));
    const ac2 = new AbortController();
    const secondRun = await collect(
      client.watchSecrets({ namePrefix: "w2/", resumeToken: last.resumeToken }, { signal: ac2.signal }),
      (evs) => evs.filter((e) => e.type === SecretEventType.ROTATED).length >= 3,
      6000,
      ac2,
    );
    assert.equal(secondRun[0]?.type, SecretEventType.STARTED);
    const versions = [...rotated1, ...secondRun.filter((e) => e.type === SecretEventType.ROTATED)].map((e) => e.version);
    assert.ok(versions.length >= 4, `rotations seen: ${versions.join(",")}`);
    for (let i = 1; i < versions.length; i++) {
      assert.equal(versions[i], (versions[i - 1] as number) + 1, `consecutive, no repeats: ${versions.join(",")}`);
    }
    assert.equal(secondRun.some((e) => e.type === SecretEventType.RESET), false);
    await client.deleteSecret({ name: "w2/fast" }, { headers: auth });
  });

  it("starts with RESET for a resume token it cannot honour", async () => {
    const ac = new AbortController();
    const events = await collect(client.watchSecrets({ resumeToken: "999999999999" }, { signal: ac.signal }), (e) => e.length >= 2, 3000, ac);
    assert.deepEqual(
      events.map((e) => e.type),
      [SecretEventType.STARTED, SecretEventType.RESET],
    );
  });

  it("refuses watchers from IPs outside the allowlist", async () => {
    const guarded = await startTestServer({ LATCHKEY_ALLOWED_IPS: "10.1.1.1" });
    try {
      const c = createClient(SecretService, createGrpcTransport({ baseUrl: guarded.url }));
      await assert.rejects(
        (async () => {
          for await (const _ of c.watchSecrets({})) break;
        })(),
        (err: unknown) => err instanceof ConnectError && err.code === Code.PermissionDenied,
      );
    } finally {
      await guarded.stop();
    }
  });

  it("streams to an independent grpc-js client", async () => {
    const def = protoLoader.loadSync("latchkey/v1/secret_service.proto", {
      includeDirs: ["proto"],
      longs: String,
      enums: String,
      defaults: true,
    });
    const pkg = grpc.loadPackageDefinition(def) as unknown as {
      latchkey: { v1: { SecretService: new (addr: string, creds: grpc.ChannelCredentials) => grpc.Client } };
    };
    const peer = new pkg.latchkey.v1.SecretService(s.url.replace("http://", ""), grpc.credentials.createInsecure());
    const call = (peer as unknown as { watchSecrets(req: object): grpc.ClientReadableStream<{ type: string; name: string }> }).watchSecrets({
      namePrefix: "w3/",
    });
    const got: { type: string; name: string }[] = [];
    const ended = new Promise<void>((resolve) => {
      call.on("data", (ev) => {
        got.push(ev);
        if (ev.type === "SECRET_EVENT_TYPE_STARTED") {
          void client.storeSecret({ name: "w3/x", value: "grpc-js-watch" }, { headers: auth });
        }
        if (ev.type === "SECRET_EVENT_TYPE_CREATED") call.cancel();
      });
      call.on("error", () => resolve());
      call.on("end", () => resolve());
    });
    await Promise.race([ended, new Promise((r) => setTimeout(r, 5000))]);
    peer.close();
    assert.deepEqual(
      got.map((e) => e.type),
      ["SECRET_EVENT_TYPE_STARTED", "SECRET_EVENT_TYPE_CREATED"],
    );
    assert.equal(got[1]?.name, "w3/x");
  });

  it("ends open watches with UNAVAILABLE when the server drains", async () => {
    const d = await startTestServer();
    const c = createClient(SecretService, createGrpcTransport({ baseUrl: d.url }));
    const outcome = (async () => {
      try {
        for await (const ev of c.watchSecrets({})) {
          if (ev.type === SecretEventType.STARTED) void d.app.close(3000);
        }
        return "ended";
      } catch (err) {
        return err instanceof ConnectError ? Code[err.code] : String(err);
      }
    })();
    const result = await Promise.race([outcome, new Promise((r) => setTimeout(() => r("timeout"), 5000))]);
    assert.equal(result, "Unavailable");
    await d.stop();
  });
});
