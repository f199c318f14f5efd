import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, afterEach, beforeEach, describe, it } from "node:test";
import { type Auditor, auditFor, createAuditor, noteTarget } from "../../src/audit/auditor.js";
import { createAccessControl } from "../../src/auth/access.js";
import type { AuditEvent, AuditRecord } from "../../src/domain/audit.js";
import { LatchkeyError } from "../../src/domain/errors.js";
import { ANONYMOUS, type Principal } from "../../src/domain/principal.js";
import { appendVersion, newSecretDocument, type SecretDocument } from "../../src/domain/secret.js";
import { createLogger, type Logger } from "../../src/log/logger.js";
import { verifyAuditLog } from "../../src/service/audit-verify.js";
import { createSqliteStorage } from "../../src/storage/sqlite/sqlite-storage.js";
import type { Storage } from "../../src/storage/storage.js";

/** The auditor: one entry per call, written with the call's change when it makes one, mirrored as JSON on demand. */

const T0 = Date.UTC(2030, 0, 1);
const ADMIN_TOKEN = "bootstrap-admin-token-do-not-log";
const VALUE = "super-secret-value-never-logged";
const WRITER: Principal = { kind: "token", tokenId: "tok_writer0000000000", role: "writer", service: "billing", stores: null, prefixes: null };

const root = mkdtempSync(join(tmpdir(), "latchkey-auditor-"));
after(() => rmSync(root, { recursive: true, force: true }));

let counter = 0;
let storage: Storage;
let lines: string[];
let logger: Logger;

/** A pino logger writing into `lines`. */
function capturingLogger(): Logger {
  lines = [];
  return createLogger("info", { write: (s: string) => void lines.push(s) });
}

const auditLines = () =>
  lines.map((l) => JSON.parse(l) as { msg: string; audit?: AuditEvent & { seq?: number } }).filter((l) => l.msg === "audit");

function auditor(mirror = false): Auditor {
  return createAuditor({ storage, logger, mirror });
}

/** The code a caller gets for a thrown value, as the transports map it. */
const outcome = (err: unknown) => (err instanceof LatchkeyError ? err.code : "internal");

function doc(name: string): SecretDocument {
  return newSecretDocument({ id: randomUUID(), store: "default", name, kind: "manual", description: "" }, "v1.k.sealed", T0);
}

/** Every entry, oldest first. */
async function entries(a?: Auditor): Promise<AuditRecord[]> {
  await a?.flush();
  return storage.scanAudit("main", 0, 1000);
}

/** An entry without its chain fields and time, for comparison. */
function fields(r: AuditRecord): Omit<AuditEvent, "at"> {
  const { chain: _c, seq: _s, prevHash: _p, hash: _h, at: _a, ...rest } = r;
  return rest;
}

beforeEach(() => {
  storage = createSqliteStorage(join(root, `db-${++counter}`, "latchkey.db"));
  logger = capturingLogger();
});
afterEach(async () => {
  await storage.close();
});

describe("auditor.run", () => {
  it("records one entry per call: who, from where, what, on which secret, and how it ended", async () => {
    const a = auditor();
    const before = Date.now();
    const result = await a.run(
      { requestId: "req-1", principal: WRITER, ip: "10.0.0.7", op: "latchkey.v1.SecretService/GetSecret" },
      async () => {
        noteTarget({ store: "payments" });
        noteTarget({ name: "db/password" });
        noteTarget({ version: 3 });
        return "result";
      },
      outcome,
    );
    assert.equal(result, "result");
    const [e, ...rest] = await entries(a);
    assert.deepEqual(rest, []);
    assert.ok(e);
    assert.deepEqual(fields(e), {
      requestId: "req-1",
      actorKind: "token",
      tokenId: "tok_writer0000000000",
      role: "writer",
      service: "billing",
      ip: "10.0.0.7",
      op: "latchkey.v1.SecretService/GetSecret",
      store: "payments",
      name: "db/password",
      version: 3,
      code: "ok",
    });
    assert.ok(e.at >= before && e.at <= Date.now(), "timed when the call ended");
  });

  it("records anonymous callers and unknown IPs as empty fields, and untouched targets as empty", async () => {
    const a = auditor();
    await a.run({ requestId: "req-2", principal: ANONYMOUS, ip: undefined, op: "GET /v1/stores" }, async () => undefined, outcome);
    const [e] = await entries(a);
    assert.ok(e);
    assert.deepEqual(fields(e), {
      requestId: "req-2",
      actorKind: "anonymous",
      tokenId: "",
      role: "",
      service: "",
      ip: "",
      op: "GET /v1/stores",
      store: "",
      name: "",
      version: 0,
      code: "ok",
    });
  });

  it("records a failed call with the code the outcome function gives, and rethrows its error", async () => {
    const a = auditor();
    const denied = new LatchkeyError("permission_denied", "no", { reason: "ROLE_NOT_ALLOWED" });
    const seen: unknown[] = [];
    await assert.rejects(
      a.run(
        { requestId: "req-3", principal: WRITER, ip: "10.0.0.7", op: "DELETE /v1/tokens/{id}" },
        async () => {
          noteTarget({ name: "tok_victim" });
          throw denied;
        },
        (err) => {
          seen.push(err);
          return outcome(err);
        },
      ),
      (err: unknown) => err === denied,
    );
    await assert.rejects(
      a.run({ requestId: "req-4", principal: WRITER, ip: "10.0.0.7", op: "x" }, async () => Promise.reject(new Error("boom")), outcome),
      /boom/,
    );
    assert.deepEqual(seen, [denied]);
    assert.deepEqual(
      (await entries(a)).map((e) => [e.requestId, e.name, e.code]),
      [
        ["req-3", "tok_victim", "permission_denied"],
        ["req-4", "", "internal"],
      ],
    );
  });

  it("keeps concurrent calls apart", async () => {
    const a = auditor();
    const call = (i: number) =>
      a.run(
        { requestId: `req-${i}`, principal: WRITER, ip: `10.0.0.${i}`, op: "op" },
        async () => {
          await new Promise((r) => setTimeout(r, (5 - i) * 2));
          noteTarget({ store: `store-${i}`, name: `name-${i}`, version: i });
        },
        outcome,
      );
    await Promise.all([1, 2, 3, 4].map(call));
    const byRequest = new Map((await entries(a)).map((e) => [e.requestId, e]));
    assert.equal(byRequest.size, 4);
    for (const i of [1, 2, 3, 4]) {
      const e = byRequest.get(`req-${i}`);
      assert.deepEqual([e?.ip, e?.store, e?.name, e?.version], [`10.0.0.${i}`, `store-${i}`, `name-${i}`, i]);
    }
    assert.equal((await verifyAuditLog(storage)).ok, true);
  });

  it("records a write that carries the call's entry once, written with the change", async () => {
    const a = auditor();
    const d = doc("db/password");
    await a.run(
      { requestId: "req-5", principal: WRITER, ip: "10.0.0.7", op: "latchkey.v1.SecretService/StoreSecret" },
      async () => {
        assert.equal(await storage.insertSecret(d, auditFor({ store: d.store, name: d.name, version: 1 })), true);
        // The entry is in the log as soon as the write is, before the call has ended.
        assert.equal((await entries()).length, 1);
      },
      outcome,
    );
    const all = await entries(a);
    assert.equal(all.length, 1, "not appended again when the call ends");
    assert.deepEqual(
      [all[0]?.requestId, all[0]?.store, all[0]?.name, all[0]?.version, all[0]?.code],
      ["req-5", "default", "db/password", 1, "ok"],
    );
  });

  it("records a call whose write did not happen when the call ends, with its error", async () => {
    const a = auditor();
    const d = doc("db/password");
    assert.equal(await storage.insertSecret(d), true);
    const stale = appendVersion(d, "v1.k.two", T0 + 1, 10);
    await storage.replaceSecret(stale, d.revision);
    await assert.rejects(
      a.run(
        { requestId: "req-6", principal: WRITER, ip: "10.0.0.7", op: "UpdateSecret" },
        async () => {
          const lost = appendVersion(d, "v1.k.three", T0 + 2, 10);
          if (!(await storage.replaceSecret(lost, d.revision, auditFor({ store: "default", name: d.name, version: 2 })))) {
            throw new LatchkeyError("aborted", "changed meanwhile");
          }
        },
        outcome,
      ),
      /changed meanwhile/,
    );
    const all = await entries(a);
    assert.deepEqual(
      all.map((e) => [e.requestId, e.name, e.version, e.code]),
      [["req-6", "db/password", 2, "aborted"]],
    );
  });

  it("auditFor and noteTarget do nothing outside an audited call", async () => {
    assert.equal(auditFor({ store: "x" }), undefined);
    noteTarget({ store: "x" });
    assert.equal(await storage.insertSecret(doc("a"), auditFor()), true);
    assert.deepEqual(await entries(), []);
  });
});

describe("auditor.system", () => {
  it("records the scheduler's work as the system actor, only when it wrote", async () => {
    const a = auditor();
    const d = doc("auto");
    assert.equal(await storage.insertSecret(d), true);
    const rotated = appendVersion(d, "v1.k.two", T0 + 1, 10);

    // Work that changes nothing leaves no entry.
    assert.equal(await a.system("scheduler/rotate", async () => "nothing to do"), "nothing to do");
    // Work another replica won (its write lost) leaves none either.
    await storage.replaceSecret(rotated, d.revision);
    await a.system("scheduler/rotate", async () =>
      storage.replaceSecret(appendVersion(d, "v1.k.lost", T0 + 2, 10), d.revision, auditFor({ store: "default", name: "auto", version: 2 })),
    );
    assert.deepEqual(await entries(a), []);

    // Work that wrote is recorded once, as the system.
    const again = appendVersion(rotated, "v1.k.three", T0 + 3, 10);
    assert.equal(
      await a.system("scheduler/rotate", () => storage.replaceSecret(again, rotated.revision, auditFor({ store: "default", name: "auto", version: 3 }))),
      true,
    );
    const all = await entries(a);
    assert.equal(all.length, 1);
    assert.ok(all[0]);
    assert.deepEqual(fields(all[0]), {
      requestId: "",
      actorKind: "system",
      tokenId: "",
      role: "",
      service: "",
      ip: "",
      op: "scheduler/rotate",
      store: "default",
      name: "auto",
      version: 3,
      code: "ok",
    });
  });
});

describe("mirror", () => {
  it("logs every entry as JSON, failed calls and system work included, with the stored fields", async () => {
    const a = auditor(true);
    await a.run({ requestId: "req-7", principal: WRITER, ip: "10.0.0.7", op: "GetSecret" }, async () => noteTarget({ store: "s", name: "n", version: 1 }), outcome);
    await a
      .run({ requestId: "req-8", principal: ANONYMOUS, ip: "10.0.0.8", op: "GetSecret" }, async () => Promise.reject(new LatchkeyError("not_found", "gone")), outcome)
      .catch(() => undefined);
    const d = doc("auto");
    await storage.insertSecret(d);
    await a.system("scheduler/rotate", () => storage.replaceSecret(appendVersion(d, "v1.k.two", T0 + 1, 10), d.revision, auditFor({ store: "default", name: "auto", version: 2 })));
    await a.system("scheduler/rotate", async () => false);

    const stored = await entries(a);
    const logged = auditLines();
    assert.equal(logged.length, 3, "one line per entry; none for system work that wrote nothing");
    // Lines are written once entries are stored (a call's entry may be stored after the next call's write).
    assert.deepEqual(
      logged.map((l) => [l.audit?.requestId, l.audit?.actorKind, l.audit?.code]).sort(),
      [
        ["", "system", "ok"],
        ["req-7", "token", "ok"],
        ["req-8", "anonymous", "not_found"],
      ],
    );
    const bySeq = new Map(stored.map((e) => [e.seq, e]));
    for (const l of logged) {
      const e = bySeq.get(l.audit?.seq as number);
      assert.ok(e, JSON.stringify(l));
      assert.deepEqual(l.audit, e, "the line is the stored entry, with its chain position and hash");
    }
  });

  it("never logs a value or a token", async () => {
    const a = auditor(true);
    const access = createAccessControl({ adminTokens: [ADMIN_TOKEN], allowedIps: ["127.0.0.1"], trustedProxies: [] });
    const principal = await access.authenticate(`Bearer ${ADMIN_TOKEN}`);
    const d = doc("db/password");
    await a.run(
      { requestId: "req-9", principal, ip: "127.0.0.1", op: "StoreSecret" },
      async () => {
        // The call handles a value; the auditor only ever sees what is noted.
        const value = { value: VALUE, token: ADMIN_TOKEN };
        noteTarget({ store: d.store, name: d.name, version: 1 });
        await storage.insertSecret({ ...d, description: `not ${value.value.length}` }, auditFor());
        return value;
      },
      outcome,
    );
    await a.flush();
    assert.equal(auditLines().length, 1);
    const out = lines.join("\n");
    assert.ok(!out.includes(VALUE), "no value");
    assert.ok(!out.includes(ADMIN_TOKEN), "no token");
    assert.ok(!out.includes(ADMIN_TOKEN.slice(0, 12)), "not even part of it");
    assert.match(auditLines()[0]?.audit?.tokenId ?? "", /^admin:[0-9a-f]{12}$/);
    assert.deepEqual(Object.keys(auditLines()[0]?.audit ?? {}).sort(), [
      "actorKind",
      "at",
      "chain",
      "code",
      "hash",
      "ip",
      "name",
      "op",
      "prevHash",
      "requestId",
      "role",
      "seq",
      "service",
      "store",
      "tokenId",
      "version",
    ]);
  });

  it("logs nothing without the option", async () => {
    const a = auditor(false);
    await a.run({ requestId: "req-10", principal: WRITER, ip: "10.0.0.7", op: "GetSecret" }, async () => undefined, outcome);
    await a.flush();
    assert.deepEqual(auditLines(), []);
    assert.equal((await entries()).length, 1, "the entry is still stored");
  });
});

describe("batching entries of calls that change nothing", () => {
  it("appends many reads' entries in one write, soon after they end, without being asked", async () => {
    const batches: number[] = [];
    const writes: Promise<unknown>[] = [];
    const counting = {
      appendAudit: (events: readonly AuditEvent[]) => {
        batches.push(events.length);
        const written = storage.appendAudit(events);
        writes.push(written);
        return written;
      },
    };
    const a = createAuditor({ storage: counting, logger, mirror: false });
    await Promise.all(
      Array.from({ length: 50 }, (_, i) =>
        a.run({ requestId: `req-b${i}`, principal: WRITER, ip: "10.0.0.1", op: "GetSecret" }, async () => noteTarget({ name: `n${i}` }), outcome),
      ),
    );
    assert.deepEqual(batches, [], "nothing appended the moment the calls end");
    const deadline = Date.now() + 5_000;
    while (batches.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    assert.deepEqual(batches, [50], "one write for all of them");
    await Promise.all(writes); // the write was started; read once it is committed
    const names = (await entries()).filter((e) => e.requestId.startsWith("req-b")).map((e) => e.name);
    assert.equal(names.length, 50);
  });

  it("a full batch is appended at once", async () => {
    const batches: number[] = [];
    const counting = { appendAudit: (events: readonly AuditEvent[]) => (batches.push(events.length), storage.appendAudit(events)) };
    const a = createAuditor({ storage: counting, logger, mirror: false });
    for (let i = 0; i < 512; i++) {
      await a.run({ requestId: `req-f${i}`, principal: WRITER, ip: "10.0.0.1", op: "GetSecret" }, async () => undefined, outcome);
    }
    assert.deepEqual(batches, [512]);
    await a.flush();
  });
});
