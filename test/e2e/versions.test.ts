import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Code } from "@connectrpc/connect";
import { SecretKind, VersionState } from "../../gen/latchkey/v1/secret_pb.js";
import {
  connectJson,
  grpc,
  grpcClients,
  type GrpcClients,
  grpcFails,
  grpcOk,
  opts,
  rest,
  restViolations,
  rpcClients,
  type RpcClients,
  rpcFails,
  violationsOf,
} from "../support/clients.js";
import { assertNoValue, assertReason, connectFails, grpcReason, restFails, tsMs } from "../support/lifecycle.js";
import { startTestServer, type TestServer } from "../support/server.js";

/**
 * Version states end to end, over gRPC (a Connect client on h2c, and the independent grpc-js client), Connect JSON
 * as curl sends it, and REST: rotation with and without previous_state, SetVersionState transitions (and refused
 * ones), destruction, "current = newest active version", what VerifySecret accepts, and ListSecretVersions.
 */
describe("secret versions", () => {
  let s: TestServer;
  let rpc: RpcClients;
  let g: GrpcClients;

  before(async () => {
    s = await startTestServer();
    rpc = rpcClients(s.url);
    g = grpcClients(s.port);
  });
  after(async () => {
    rpc?.close();
    g?.close();
    await s?.stop();
  });

  const cj = (procedure: string, body: unknown) => connectJson(s.url, `SecretService/${procedure}`, body);
  const r = (method: string, path: string, body?: unknown, headers: Record<string, string> = {}) =>
    rest(s.url, method, path, body, undefined, headers);

  /** A manual secret with the given values as versions 1..n (grace in seconds). */
  async function manual(name: string, values: string[], graceSeconds = 3600): Promise<void> {
    const [first, ...more] = values;
    await rpc.secrets.storeSecret({ name, value: first, gracePeriod: { seconds: BigInt(graceSeconds) } }, opts());
    for (const v of more) await rpc.secrets.updateSecret({ name, value: v }, opts());
  }

  /** An automatic secret (version 1); returns its generated value. */
  async function automatic(name: string, graceSeconds = 3600): Promise<string> {
    const res = await rpc.secrets.storeSecret(
      { name, kind: SecretKind.AUTOMATIC, gracePeriod: { seconds: BigInt(graceSeconds) } },
      opts(),
    );
    return res.value;
  }

  async function versions(name: string) {
    return (await rpc.secrets.listSecretVersions({ name }, opts())).versions;
  }

  async function verify(name: string, value: string) {
    return rpc.secrets.verifySecret({ name, value }, opts());
  }

  describe("rotation", () => {
    it("by default keeps the previous version valid through the grace period (gRPC)", async () => {
      const v1 = await automatic("rot/default", 3600);
      const before = Date.now();
      const rotated = await rpc.secrets.rotateSecret({ name: "rot/default" }, opts());
      assert.equal(rotated.version?.version, 2);
      assert.equal(rotated.version?.current, true);
      assert.equal(rotated.version?.state, VersionState.ACTIVE);
      assert.equal(rotated.secret?.currentVersion, 2);
      assert.notEqual(rotated.value, v1);

      const vs = await versions("rot/default");
      assert.deepEqual(
        vs.map((v) => [v.version, VersionState[v.state], v.current, v.valid]),
        [
          [1, "ACTIVE", false, true],
          [2, "ACTIVE", true, true],
        ],
      );
      const until = tsMs(vs[0]?.validUntil) ?? 0;
      assert.ok(until >= before + 3_599_000 && until <= Date.now() + 3_601_000, `v1 valid_until about an hour away (${until - before} ms)`);
      assert.equal(vs[1]?.validUntil, undefined, "the current version has no valid_until");

      const vr1 = await verify("rot/default", v1);
      assert.deepEqual([vr1.valid, vr1.version], [true, 1]);
      const vr2 = await verify("rot/default", rotated.value);
      assert.deepEqual([vr2.valid, vr2.version], [true, 2]);
      const got = await rpc.secrets.getSecret({ name: "rot/default" }, opts());
      assert.deepEqual([got.value, got.version?.version], [rotated.value, 2]);
      // The previous version is still readable by number.
      assert.equal((await rpc.secrets.getSecret({ name: "rot/default", version: 1 }, opts())).value, v1);
    });

    it("by default keeps the previous version valid, over REST and Connect JSON too", async () => {
      const v1 = await automatic("rot/default-wire", 3600);
      const viaRest = await r("POST", "/v1/secrets/rot/default-wire/rotate");
      assert.equal(viaRest.status, 200, JSON.stringify(viaRest.body));
      assert.equal(viaRest.body.version, 2);
      assert.deepEqual((await r("POST", "/v1/secrets/rot/default-wire/verify", { value: v1 })).body, { valid: true, version: 1 });
      const restVersions = await r("GET", "/v1/secrets/rot/default-wire/versions");
      assert.deepEqual(
        restVersions.body.versions.map((v: any) => [v.version, v.state, v.current, v.valid, v.valid_until !== null]),
        [
          [1, "active", false, true, true],
          [2, "active", true, true, false],
        ],
      );

      const viaJson = await cj("RotateSecret", { name: "rot/default-wire" });
      assert.equal(viaJson.status, 200, JSON.stringify(viaJson.body));
      assert.equal(viaJson.body.version.version, 3);
      assert.equal(typeof viaJson.body.value, "string");
      const vr = await cj("VerifySecret", { name: "rot/default-wire", value: viaRest.body.value });
      assert.deepEqual([vr.body.valid, vr.body.version], [true, 2], "v2, just superseded, is inside its grace period");
      const jsonVersions = await cj("ListSecretVersions", { name: "rot/default-wire" });
      assert.deepEqual(
        jsonVersions.body.versions.map((v: any) => [v.version, v.state, v.valid ?? false, typeof v.validUntil]),
        [
          [1, "VERSION_STATE_ACTIVE", true, "string"],
          [2, "VERSION_STATE_ACTIVE", true, "string"],
          [3, "VERSION_STATE_ACTIVE", true, "undefined"],
        ],
      );
    });

    it("gives the superseded current version a full grace period, even one that was current before", async () => {
      // v1 is superseded by v2 (grace 1 s), becomes current again when v2 is suspended, and stays current past its
      // first window; a rotation now supersedes it again, so it must stay valid for the grace period from now.
      const v1 = await automatic("rot/again", 1);
      await rpc.secrets.rotateSecret({ name: "rot/again" }, opts());
      await rpc.secrets.setVersionState({ name: "rot/again", version: 2, state: VersionState.SUSPENDED }, opts());
      assert.equal((await rpc.secrets.getSecret({ name: "rot/again" }, opts())).version?.version, 1, "v1 is current again");
      await new Promise((res) => setTimeout(res, 1100));
      assert.equal((await verify("rot/again", v1)).valid, true, "the current version is valid whatever its old window");

      const before = Date.now();
      await rpc.secrets.rotateSecret({ name: "rot/again" }, opts());
      const vs = await versions("rot/again");
      assert.deepEqual(
        vs.map((v) => [v.version, VersionState[v.state], v.current]),
        [
          [1, "ACTIVE", false],
          [2, "SUSPENDED", false],
          [3, "ACTIVE", true],
        ],
      );
      assert.ok((tsMs(vs[0]?.validUntil) ?? 0) >= before + 1000 - 5, "valid_until is a grace period after this rotation");
      assert.equal((await verify("rot/again", v1)).valid, true, "just superseded: inside its grace period");
    });

    it("with a zero grace period leaves the previous version invalid at once", async () => {
      const v1 = await automatic("rot/no-grace", 0);
      const rotated = await rpc.secrets.rotateSecret({ name: "rot/no-grace" }, opts());
      const vs = await versions("rot/no-grace");
      assert.equal(vs[0]?.state, VersionState.ACTIVE);
      assert.equal(vs[0]?.valid, false, "superseded with no grace: not valid");
      assert.equal((await verify("rot/no-grace", v1)).valid, false);
      assert.equal((await verify("rot/no-grace", rotated.value)).valid, true);
    });

    it("previous_state deactivated (gRPC): retired at once, readable by number, never valid", async () => {
      const v1 = await automatic("rot/deactivated");
      const rotated = await rpc.secrets.rotateSecret({ name: "rot/deactivated", previousState: VersionState.DEACTIVATED }, opts());
      assert.equal(rotated.version?.version, 2);
      const vs = await versions("rot/deactivated");
      assert.equal(vs[0]?.state, VersionState.DEACTIVATED);
      assert.equal(vs[0]?.valid, false);
      assert.equal(vs[0]?.current, false);
      const vr = await verify("rot/deactivated", v1);
      assert.deepEqual([vr.valid, vr.version], [false, 0]);
      const old = await rpc.secrets.getSecret({ name: "rot/deactivated", version: 1 }, opts());
      assert.equal(old.value, v1, "a deactivated version is still readable by number");
      assert.equal(old.version?.state, VersionState.DEACTIVATED);
      assert.equal((await rpc.secrets.getSecret({ name: "rot/deactivated" }, opts())).value, rotated.value);
    });

    it("previous_state suspended (Connect JSON): not served, not valid", async () => {
      const v1 = await automatic("rot/suspended");
      const rotated = await cj("RotateSecret", { name: "rot/suspended", previousState: "VERSION_STATE_SUSPENDED" });
      assert.equal(rotated.status, 200, JSON.stringify(rotated.body));
      assert.equal(rotated.body.version.version, 2);
      assert.equal(rotated.body.version.state, "VERSION_STATE_ACTIVE");
      assert.equal(typeof rotated.body.secret.revision, "string", "uint64 revision is a JSON string");

      const listed = await cj("ListSecretVersions", { name: "rot/suspended" });
      assert.equal(listed.status, 200);
      assert.deepEqual(
        listed.body.versions.map((v: any) => [v.version, v.state, v.current ?? false, v.valid ?? false]),
        [
          [1, "VERSION_STATE_SUSPENDED", false, false],
          [2, "VERSION_STATE_ACTIVE", true, true],
        ],
      );
      connectFails(await cj("GetSecret", { name: "rot/suspended", version: 1 }), 400, "failed_precondition", "VERSION_SUSPENDED", "get v1");
      const vr = await cj("VerifySecret", { name: "rot/suspended", value: v1 });
      assert.equal(vr.status, 200);
      assert.equal(vr.body.valid ?? false, false);
    });

    it("previous_state compromised (REST): never served or valid again", async () => {
      const v1 = await automatic("rot/compromised");
      const rotated = await r("POST", "/v1/secrets/rot/compromised/rotate", { previous_state: "compromised" });
      assert.equal(rotated.status, 200, JSON.stringify(rotated.body));
      assert.equal(rotated.body.version, 2);
      assert.notEqual(rotated.body.value, v1);
      assert.equal(rotated.headers.get("etag"), '"2"');

      const listed = await r("GET", "/v1/secrets/rot/compromised/versions");
      assert.equal(listed.status, 200);
      assert.deepEqual(
        listed.body.versions.map((v: any) => [v.version, v.state, v.current, v.valid]),
        [
          [1, "compromised", false, false],
          [2, "active", true, true],
        ],
      );
      restFails(await r("GET", "/v1/secrets/rot/compromised?version=1"), 400, "failed_precondition", "VERSION_COMPROMISED", "get v1");
      const vr = await r("POST", "/v1/secrets/rot/compromised/verify", { value: v1 });
      assert.equal(vr.status, 200);
      assert.deepEqual(vr.body, { valid: false, version: null });
      const cur = await r("GET", "/v1/secrets/rot/compromised");
      assert.equal(cur.body.value, rotated.body.value);
    });

    it("previous_state destroyed (grpc-js): the value is gone for good", async () => {
      const v1 = await automatic("rot/destroyed");
      const rotated = await grpcOk(g.secrets, "RotateSecret", { name: "rot/destroyed", previousState: "VERSION_STATE_DESTROYED" });
      assert.equal(rotated.version.version, 2);
      assert.equal(rotated.version.state, "VERSION_STATE_ACTIVE");
      const listed = await grpcOk(g.secrets, "ListSecretVersions", { name: "rot/destroyed" });
      assert.deepEqual(
        listed.versions.map((v: any) => [v.version, v.state]),
        [
          [1, "VERSION_STATE_DESTROYED"],
          [2, "VERSION_STATE_ACTIVE"],
        ],
      );
      const refused = await grpcFails(g.secrets, "GetSecret", { name: "rot/destroyed", version: 1 }, grpc.status.FAILED_PRECONDITION);
      assert.equal(grpcReason(refused.trailers), "VERSION_DESTROYED");
      assert.equal((await grpcOk(g.secrets, "VerifySecret", { name: "rot/destroyed", value: v1 })).valid, false);
      const stored = await s.app.storage.findSecret("default", "rot/destroyed");
      assert.equal(stored?.versions[0]?.sealed, "", "the ciphertext of a destroyed version is removed");
    });

    it("refuses previous_state active, and rotating a manual secret", async () => {
      await automatic("rot/refused");
      const rv = restFails(await r("POST", "/v1/secrets/rot/refused/rotate", { previous_state: "active" }), 400, "invalid_argument");
      assert.deepEqual(restViolations(rv), [["previous_state", "enum"]]);
      const ce = await rpcFails(
        rpc.secrets.rotateSecret({ name: "rot/refused", previousState: VersionState.ACTIVE }, opts()),
        Code.InvalidArgument,
        "rpc previous_state active",
      );
      assert.equal(violationsOf(ce)[0]?.[0], "previous_state");
      connectFails(await cj("RotateSecret", { name: "rot/refused", previousState: "VERSION_STATE_BOGUS" }), 400, "invalid_argument");
      assert.equal((await versions("rot/refused")).length, 1, "nothing rotated");

      await manual("rot/manual", ["manual-value-1"]);
      const m = await rpcFails(rpc.secrets.rotateSecret({ name: "rot/manual" }, opts()), Code.FailedPrecondition, "rotate manual");
      assertReason(m, "MANUAL_SECRET");
    });
  });

  describe("SetVersionState", () => {
    it("gRPC: deactivate, reactivate (grace window not restarted), suspend, compromise, destroy", async () => {
      await manual("st/grpc", ["st-grpc-1", "st-grpc-2", "st-grpc-3"]);
      const before = await versions("st/grpc");
      const v1Until = tsMs(before[0]?.validUntil);
      assert.ok(v1Until !== undefined);

      const deact = await rpc.secrets.setVersionState({ name: "st/grpc", version: 1, state: VersionState.DEACTIVATED }, opts());
      assert.equal(deact.version?.version, 1);
      assert.equal(deact.version?.state, VersionState.DEACTIVATED);
      assert.equal(deact.version?.valid, false);
      assert.equal((await verify("st/grpc", "st-grpc-1")).valid, false);

      const react = await rpc.secrets.setVersionState({ name: "st/grpc", version: 1, state: VersionState.ACTIVE }, opts());
      assert.equal(react.version?.state, VersionState.ACTIVE);
      assert.equal(react.version?.valid, true, "back inside its grace window");
      assert.equal(tsMs(react.version?.validUntil), v1Until, "the grace window does not restart");
      assert.ok(react.secret && react.secret.revision > (deact.secret?.revision ?? 0n), "revision bumped");
      assert.equal((await verify("st/grpc", "st-grpc-1")).version, 1);

      for (const state of [VersionState.SUSPENDED, VersionState.ACTIVE, VersionState.COMPROMISED, VersionState.DESTROYED]) {
        const res = await rpc.secrets.setVersionState({ name: "st/grpc", version: 2, state }, opts());
        assert.equal(res.version?.state, state, `v2 -> ${VersionState[state]}`);
      }
      const vs = await versions("st/grpc");
      assert.deepEqual(
        vs.map((v) => VersionState[v.state]),
        ["ACTIVE", "DESTROYED", "ACTIVE"],
      );
    });

    it("refuses compromised -> active (and any change of a destroyed version), changing nothing", async () => {
      await manual("st/refused", ["st-ref-1", "st-ref-2"]);
      await rpc.secrets.setVersionState({ name: "st/refused", version: 1, state: VersionState.COMPROMISED }, opts());
      const revBefore = (await rpc.secrets.listSecretVersions({ name: "st/refused" }, opts())).secret?.revision;

      for (const state of [VersionState.ACTIVE, VersionState.DEACTIVATED, VersionState.SUSPENDED]) {
        const ce = await rpcFails(
          rpc.secrets.setVersionState({ name: "st/refused", version: 1, state }, opts()),
          Code.FailedPrecondition,
          `compromised -> ${VersionState[state]}`,
        );
        assertReason(ce, "INVALID_STATE_TRANSITION");
      }
      const json = await cj("SetVersionState", { name: "st/refused", version: 1, state: "VERSION_STATE_ACTIVE" });
      connectFails(json, 400, "failed_precondition", "INVALID_STATE_TRANSITION", "Connect JSON compromised -> active");
      const viaRest = await r("PUT", "/v1/secrets/st/refused/versions/1", { state: "active" });
      restFails(viaRest, [400, 409], "failed_precondition", "INVALID_STATE_TRANSITION", "REST compromised -> active");
      const gf = await grpcFails(g.secrets, "SetVersionState", { name: "st/refused", version: 1, state: "VERSION_STATE_ACTIVE" }, grpc.status.FAILED_PRECONDITION);
      assert.equal(grpcReason(gf.trailers), "INVALID_STATE_TRANSITION");

      const after = await rpc.secrets.listSecretVersions({ name: "st/refused" }, opts());
      assert.equal(after.secret?.revision, revBefore, "refused transitions change nothing");
      assert.equal(after.versions[0]?.state, VersionState.COMPROMISED);

      // A compromised version can still be destroyed; a destroyed one cannot change at all.
      await rpc.secrets.setVersionState({ name: "st/refused", version: 1, state: VersionState.DESTROYED }, opts());
      for (const state of [VersionState.ACTIVE, VersionState.COMPROMISED, VersionState.SUSPENDED, VersionState.DEACTIVATED]) {
        const ce = await rpcFails(
          rpc.secrets.setVersionState({ name: "st/refused", version: 1, state }, opts()),
          Code.FailedPrecondition,
          `destroyed -> ${VersionState[state]}`,
        );
        assertReason(ce, "INVALID_STATE_TRANSITION");
      }
    });

    it("REST: PUT /versions/{n} {state}, ETag, and errors for a bad state or a missing version", async () => {
      await manual("st/rest", ["st-rest-1", "st-rest-2"]);
      const suspended = await r("PUT", "/v1/secrets/st/rest/versions/1", { state: "suspended" });
      assert.equal(suspended.status, 200, JSON.stringify(suspended.body));
      assert.equal(suspended.body.version, 1);
      assert.equal(suspended.body.state, "suspended");
      assert.equal(suspended.body.valid, false);
      assert.equal(suspended.body.current, false);
      assert.equal("value" in suspended.body, false);
      const listed = await r("GET", "/v1/secrets/st/rest/versions");
      assert.equal(suspended.headers.get("etag"), `"${listed.body.revision}"`, "ETag is the new revision");

      const active = await r("PUT", "/v1/secrets/st/rest/versions/1", { state: "active" });
      assert.equal(active.status, 200);
      assert.equal(active.body.state, "active");

      const bad = restFails(await r("PUT", "/v1/secrets/st/rest/versions/1", { state: "retired" }), 400, "invalid_argument");
      assert.deepEqual(restViolations(bad), [["state", "enum"]]);
      restFails(await r("PUT", "/v1/secrets/st/rest/versions/9", { state: "suspended" }), 404, "not_found", "VERSION_NOT_FOUND");
      restFails(await r("PUT", "/v1/secrets/st/nope/versions/1", { state: "suspended" }), 404, "not_found", "SECRET_NOT_FOUND");
    });

    it("Connect JSON and grpc-js: enum names on the wire; unspecified state refused", async () => {
      await manual("st/wire", ["st-wire-1", "st-wire-2"]);
      const res = await cj("SetVersionState", { name: "st/wire", version: 1, state: "VERSION_STATE_DEACTIVATED" });
      assert.equal(res.status, 200, JSON.stringify(res.body));
      assert.equal(res.body.version.state, "VERSION_STATE_DEACTIVATED");
      assert.equal(res.body.version.version, 1);
      assert.match(res.body.secret.revision, /^\d+$/);

      const viaGrpcJs = await grpcOk(g.secrets, "SetVersionState", { name: "st/wire", version: 1, state: "VERSION_STATE_SUSPENDED" });
      assert.equal(viaGrpcJs.version.state, "VERSION_STATE_SUSPENDED");
      assert.equal(typeof viaGrpcJs.secret.revision, "string");

      const unspecified = await grpcFails(g.secrets, "SetVersionState", { name: "st/wire", version: 1 }, grpc.status.INVALID_ARGUMENT);
      assert.ok(unspecified.err.details.includes("state"));
      connectFails(await cj("SetVersionState", { name: "st/wire", version: 7, state: "VERSION_STATE_ACTIVE" }), 404, "not_found", "VERSION_NOT_FOUND");
    });
  });

  describe("destroyed versions", () => {
    it("are never served again over any protocol, and their ciphertext is gone", async () => {
      await manual("ds/secret", ["destroy-me-value", "keep-me-value"]);
      const res = await r("PUT", "/v1/secrets/ds/secret/versions/1", { state: "destroyed" });
      assert.equal(res.status, 200);
      assert.equal(res.body.state, "destroyed");
      assertNoValue(res.body, ["destroy-me-value", "keep-me-value"]);

      restFails(await r("GET", "/v1/secrets/ds/secret?version=1"), [400, 410], "failed_precondition", "VERSION_DESTROYED", "REST get v1");
      assertReason(
        await rpcFails(rpc.secrets.getSecret({ name: "ds/secret", version: 1 }, opts()), Code.FailedPrecondition, "rpc get v1"),
        "VERSION_DESTROYED",
      );
      connectFails(await cj("GetSecret", { name: "ds/secret", version: 1 }), 400, "failed_precondition", "VERSION_DESTROYED");
      const gf = await grpcFails(g.secrets, "GetSecret", { name: "ds/secret", version: 1 }, grpc.status.FAILED_PRECONDITION);
      assert.equal(grpcReason(gf.trailers), "VERSION_DESTROYED");
      const batch = await rpc.secrets.batchGetSecrets({ names: ["ds/secret"] }, opts());
      assert.equal(batch.results[0]?.value, "keep-me-value", "the current version is unaffected");

      const stored = await s.app.storage.findSecret("default", "ds/secret");
      assert.equal(stored?.versions[0]?.state, "destroyed");
      assert.equal(stored?.versions[0]?.sealed, "");
      assert.equal((await verify("ds/secret", "destroy-me-value")).valid, false);

      // Destroying the current version too leaves nothing to serve.
      await rpc.secrets.setVersionState({ name: "ds/secret", version: 2, state: VersionState.DESTROYED }, opts());
      assertReason(
        await rpcFails(rpc.secrets.getSecret({ name: "ds/secret" }, opts()), Code.FailedPrecondition, "get current"),
        "NO_ACTIVE_VERSION",
      );
      restFails(await r("GET", "/v1/secrets/ds/secret?version=2"), [400, 410], "failed_precondition", "VERSION_DESTROYED");
      // A new value makes a new current version; the destroyed ones stay destroyed.
      await rpc.secrets.updateSecret({ name: "ds/secret", value: "after-destroy" }, opts());
      const now = await rpc.secrets.getSecret({ name: "ds/secret" }, opts());
      assert.deepEqual([now.value, now.version?.version], ["after-destroy", 3]);
      assert.deepEqual(
        (await versions("ds/secret")).map((v) => VersionState[v.state]),
        ["DESTROYED", "DESTROYED", "ACTIVE"],
      );
    });
  });

  describe("the current version", () => {
    it("is the newest ACTIVE one: suspending the newest serves the previous active one, over every protocol", async () => {
      await manual("cur/secret", ["cur-one", "cur-two", "cur-three"]);
      await rpc.secrets.setVersionState({ name: "cur/secret", version: 3, state: VersionState.SUSPENDED }, opts());

      const viaRpc = await rpc.secrets.getSecret({ name: "cur/secret" }, opts());
      assert.deepEqual([viaRpc.value, viaRpc.version?.version, viaRpc.secret?.currentVersion], ["cur-two", 2, 2]);
      assert.equal(viaRpc.version?.current, true);
      const viaRest = await r("GET", "/v1/secrets/cur/secret");
      assert.deepEqual([viaRest.body.value, viaRest.body.version], ["cur-two", 2]);
      const viaJson = await cj("GetSecret", { name: "cur/secret" });
      assert.deepEqual([viaJson.body.value, viaJson.body.version.version, viaJson.body.secret.currentVersion], ["cur-two", 2, 2]);
      const viaGrpcJs = await grpcOk(g.secrets, "GetSecret", { name: "cur/secret" });
      assert.deepEqual([viaGrpcJs.value, viaGrpcJs.version.version], ["cur-two", 2]);
      const meta = await r("GET", "/v1/secrets?prefix=cur/");
      assert.equal(meta.body[0].version, 2, "listed current version");

      const vs = await versions("cur/secret");
      assert.deepEqual(
        vs.map((v) => [v.version, v.current]),
        [
          [1, false],
          [2, true],
          [3, false],
        ],
      );
      // The suspended newest version is not valid; the served one is; the older one is within its grace.
      assert.equal((await verify("cur/secret", "cur-three")).valid, false);
      assert.equal((await verify("cur/secret", "cur-two")).version, 2);
      assert.equal((await verify("cur/secret", "cur-one")).version, 1);

      await rpc.secrets.setVersionState({ name: "cur/secret", version: 2, state: VersionState.SUSPENDED }, opts());
      assert.equal((await rpc.secrets.getSecret({ name: "cur/secret" }, opts())).value, "cur-one");
    });

    it("with every version suspended: FAILED_PRECONDITION NO_ACTIVE_VERSION; reactivating serves again", async () => {
      await manual("cur/none", ["none-one", "none-two"]);
      await rpc.secrets.setVersionState({ name: "cur/none", version: 2, state: VersionState.SUSPENDED }, opts());
      await rpc.secrets.setVersionState({ name: "cur/none", version: 1, state: VersionState.SUSPENDED }, opts());

      assertReason(await rpcFails(rpc.secrets.getSecret({ name: "cur/none" }, opts()), Code.FailedPrecondition, "rpc"), "NO_ACTIVE_VERSION");
      restFails(await r("GET", "/v1/secrets/cur/none"), [400, 409], "failed_precondition", "NO_ACTIVE_VERSION", "REST");
      connectFails(await cj("GetSecret", { name: "cur/none" }), 400, "failed_precondition", "NO_ACTIVE_VERSION", "Connect JSON");
      const gf = await grpcFails(g.secrets, "GetSecret", { name: "cur/none" }, grpc.status.FAILED_PRECONDITION);
      assert.equal(grpcReason(gf.trailers), "NO_ACTIVE_VERSION");
      assert.equal((await verify("cur/none", "none-one")).valid, false);
      assert.equal((await verify("cur/none", "none-two")).valid, false);

      const listed = await rpc.secrets.listSecretVersions({ name: "cur/none" }, opts());
      assert.equal(listed.secret?.currentVersion, 0);
      assert.ok(listed.versions.every((v) => !v.current && !v.valid));

      await rpc.secrets.setVersionState({ name: "cur/none", version: 2, state: VersionState.ACTIVE }, opts());
      const back = await rpc.secrets.getSecret({ name: "cur/none" }, opts());
      assert.deepEqual([back.value, back.version?.version], ["none-two", 2]);
    });
  });

  describe("VerifySecret", () => {
    it("accepts the current version and active versions inside their grace window only", async () => {
      await manual("vf/grace", ["vf-g-1", "vf-g-2", "vf-g-3"], 3600);
      await manual("vf/nograce", ["vf-n-1", "vf-n-2"], 0);
      assert.equal((await verify("vf/grace", "vf-g-1")).version, 1);
      assert.equal((await verify("vf/grace", "vf-g-2")).version, 2);
      assert.equal((await verify("vf/grace", "vf-g-3")).version, 3);
      assert.equal((await verify("vf/grace", "not-a-version")).valid, false);
      assert.equal((await verify("vf/nograce", "vf-n-1")).valid, false, "superseded, no grace");
      assert.equal((await verify("vf/nograce", "vf-n-2")).version, 2);

      // Inside its grace window, but deactivated / suspended / compromised: not valid.
      for (const [state, name] of [
        [VersionState.DEACTIVATED, "deactivated"],
        [VersionState.SUSPENDED, "suspended"],
        [VersionState.COMPROMISED, "compromised"],
      ] as const) {
        await rpc.secrets.setVersionState({ name: "vf/grace", version: 1, state }, opts());
        assert.equal((await verify("vf/grace", "vf-g-1")).valid, false, `${name} in grace: not valid`);
        if (state !== VersionState.COMPROMISED) {
          await rpc.secrets.setVersionState({ name: "vf/grace", version: 1, state: VersionState.ACTIVE }, opts());
          assert.equal((await verify("vf/grace", "vf-g-1")).valid, true, `reactivated after ${name}: valid again`);
        }
      }
      // Over REST and Connect JSON too.
      const viaRest = await r("POST", "/v1/secrets/vf/grace/verify", { value: "vf-g-2" });
      assert.deepEqual(viaRest.body, { valid: true, version: 2 });
      const viaJson = await cj("VerifySecret", { name: "vf/nograce", value: "vf-n-1" });
      assert.equal(viaJson.body.valid ?? false, false);
      const viaGrpcJs = await grpcOk(g.secrets, "VerifySecret", { name: "vf/nograce", value: "vf-n-2" });
      assert.deepEqual([viaGrpcJs.valid, viaGrpcJs.version], [true, 2]);
    });

    it("does not accept a version reactivated after it was superseded, once its grace window is over", async () => {
      // Grace 0: v2 is suspended while current, then superseded by v3; reactivating it must not make it valid
      // forever (it is neither current nor inside a grace window).
      await manual("vf/revived", ["rv-1", "rv-2"], 0);
      await rpc.secrets.setVersionState({ name: "vf/revived", version: 2, state: VersionState.SUSPENDED }, opts());
      await rpc.secrets.updateSecret({ name: "vf/revived", value: "rv-3" }, opts());
      await rpc.secrets.setVersionState({ name: "vf/revived", version: 2, state: VersionState.ACTIVE }, opts());
      assert.equal((await rpc.secrets.getSecret({ name: "vf/revived" }, opts())).value, "rv-3", "v3 is current");
      const vs = await versions("vf/revived");
      assert.deepEqual(
        vs.map((v) => [v.version, v.current]),
        [
          [1, false],
          [2, false],
          [3, true],
        ],
      );
      assert.equal((await verify("vf/revived", "rv-2")).valid, false, "superseded v2 (grace 0) must not verify");
      assert.equal(vs[1]?.valid, false, "ListSecretVersions must not call superseded v2 valid");
    });

    it("does not accept a version retired by a rotation (previous_state) and reactivated, once superseded", async () => {
      await automatic("vf/revived-auto", 0);
      const first = (await rpc.secrets.getSecret({ name: "vf/revived-auto" }, opts())).value;
      await rpc.secrets.rotateSecret({ name: "vf/revived-auto", previousState: VersionState.DEACTIVATED }, opts());
      await rpc.secrets.setVersionState({ name: "vf/revived-auto", version: 1, state: VersionState.ACTIVE }, opts());
      assert.equal((await verify("vf/revived-auto", first)).valid, false, "reactivated, superseded v1 (grace 0) must not verify");
    });
  });

  describe("ListSecretVersions", () => {
    it("returns every version's metadata (state, current, valid, valid_until) and never a value, over every protocol", async () => {
      const values = ["lv-value-one", "lv-value-two", "lv-value-three"];
      await manual("lv/secret", values, 600);
      await rpc.secrets.setVersionState({ name: "lv/secret", version: 1, state: VersionState.DEACTIVATED }, opts());

      const viaRpc = await rpc.secrets.listSecretVersions({ name: "lv/secret" }, opts());
      assert.equal(viaRpc.secret?.name, "lv/secret");
      assert.equal(viaRpc.secret?.currentVersion, 3);
      assert.deepEqual(
        viaRpc.versions.map((v) => [v.version, VersionState[v.state], v.current, v.valid, v.validUntil !== undefined, v.binary]),
        [
          [1, "DEACTIVATED", false, false, true, false],
          [2, "ACTIVE", false, true, true, false],
          [3, "ACTIVE", true, true, false, false],
        ],
      );
      assert.ok(viaRpc.versions.every((v) => v.createdAt !== undefined));
      assertNoValue(viaRpc, values, "rpc");

      const viaRest = await r("GET", "/v1/secrets/lv/secret/versions");
      assert.equal(viaRest.status, 200);
      assert.equal(viaRest.headers.get("etag"), `"${viaRest.body.revision}"`);
      assert.equal(String(viaRest.body.revision), String(viaRpc.secret?.revision));
      assert.deepEqual(
        viaRest.body.versions.map((v: any) => [v.version, v.state, v.current, v.valid, v.valid_until !== null]),
        [
          [1, "deactivated", false, false, true],
          [2, "active", false, true, true],
          [3, "active", true, true, false],
        ],
      );
      for (const v of viaRest.body.versions) {
        assert.deepEqual(Object.keys(v).sort(), ["binary", "created_at", "current", "state", "valid", "valid_until", "version"]);
        if (v.valid_until !== null) assert.match(v.valid_until, /\+00:00$/);
      }
      assertNoValue(viaRest.body, values, "REST");

      const viaJson = await cj("ListSecretVersions", { name: "lv/secret" });
      assert.equal(viaJson.status, 200);
      assert.deepEqual(
        viaJson.body.versions.map((v: any) => [v.version, v.state, v.current ?? false, v.valid ?? false]),
        [
          [1, "VERSION_STATE_DEACTIVATED", false, false],
          [2, "VERSION_STATE_ACTIVE", false, true],
          [3, "VERSION_STATE_ACTIVE", true, true],
        ],
      );
      assert.match(viaJson.body.versions[1].validUntil, /Z$/);
      assertNoValue(viaJson.body, values, "Connect JSON");

      const viaGrpcJs = await grpcOk(g.secrets, "ListSecretVersions", { name: "lv/secret" });
      assert.deepEqual(
        viaGrpcJs.versions.map((v: any) => [v.version, v.state, v.current, v.valid]),
        [
          [1, "VERSION_STATE_DEACTIVATED", false, false],
          [2, "VERSION_STATE_ACTIVE", false, true],
          [3, "VERSION_STATE_ACTIVE", true, true],
        ],
      );
      assertNoValue(viaGrpcJs, values, "grpc-js");

      restFails(await r("GET", "/v1/secrets/lv/missing/versions"), 404, "not_found", "SECRET_NOT_FOUND");
      assertReason(
        await rpcFails(rpc.secrets.listSecretVersions({ name: "lv/missing" }, opts()), Code.NotFound, "missing"),
        "SECRET_NOT_FOUND",
      );
    });
  });
});
