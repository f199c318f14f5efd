import { AsyncLocalStorage } from "node:async_hooks";
import type { AuditEvent, AuditRecord } from "../domain/audit.js";
import type { Principal } from "../domain/principal.js";
import type { Logger } from "../log/logger.js";
import type { PendingAudit, Storage } from "../storage/storage.js";

/** An audit entry being filled in while its call runs. */
type Draft = { -readonly [K in keyof AuditEvent]: AuditEvent[K] };

/** A PendingAudit whose event is still being filled in. */
interface DraftAudit {
  event: Draft;
  written: boolean;
  record?: AuditRecord;
}

interface Scope {
  readonly pending: DraftAudit;
}

const als = new AsyncLocalStorage<Scope>();

/** How long an entry of a call that changed nothing may wait to be appended with others, and how many may wait. */
const FLUSH_DELAY_MS = 50;
const FLUSH_BATCH = 512;

/**
 * The audit entry of the call in progress, with what it touches filled in: pass it to the storage write that
 * makes the call's change, so the entry is appended in the same transaction. Undefined outside an audited call.
 */
export function auditFor(target: { store?: string; name?: string; version?: number } = {}): PendingAudit | undefined {
  const scope = als.getStore();
  if (!scope) return undefined;
  noteTarget(target);
  scope.pending.event.code = "ok";
  scope.pending.event.at = Date.now();
  return scope.pending;
}

/** Records what the call in progress touches (for calls that change nothing, like reads). */
export function noteTarget(target: { store?: string; name?: string; version?: number }): void {
  const e = als.getStore()?.pending.event;
  if (!e) return;
  if (target.store !== undefined) e.store = target.store;
  if (target.name !== undefined) e.name = target.name;
  if (target.version !== undefined) e.version = target.version;
}

export interface CallFacts {
  readonly requestId: string;
  readonly principal: Principal;
  readonly ip: string | undefined;
  readonly op: string;
}

/**
 * Auditor records every call: who (token id, role, service), from where, which operation, on which secret, which
 * version, and how it ended. A call that changes something has its entry appended in the same transaction as the
 * change (see auditFor); other calls' entries are appended when they end. Entries can be mirrored as JSON lines
 * to stdout for a SIEM.
 */
/** One audited call in progress: run its work inside it, and end it with the code the caller got. */
export interface AuditCall {
  /** Runs `work` as part of the call (what it touches and writes is recorded in the call's entry). */
  within<T>(work: () => Promise<T>): Promise<T>;
  /** Wraps a stream so the work it does while being read is part of the call too. */
  bind<T>(messages: AsyncIterable<T>): AsyncIterable<T>;
  /** Ends the call; only the first end counts. */
  end(code: string): void;
}

export interface Auditor {
  /** Runs `work` as an audited call; `outcome` maps its result or error to the code the caller gets. */
  run<T>(facts: CallFacts, work: () => Promise<T>, outcome: (err: unknown) => string): Promise<T>;
  /** Starts an audited call that ends later (a stream ends when its last message is sent). */
  begin(facts: CallFacts): AuditCall;
  /** Runs work of the service itself (the scheduler), audited as the "system" actor. */
  system<T>(op: string, work: () => Promise<T>): Promise<T>;
  /** Appends the entries of calls that ended (what `run` does); exposed for streams that end later. */
  flush(): Promise<void>;
}

export function createAuditor(deps: { storage: Pick<Storage, "appendAudit">; logger: Logger; mirror: boolean }): Auditor {
  const { storage, logger, mirror } = deps;
  let queue: AuditEvent[] = [];
  let flushing: Promise<void> | undefined;

  /** Appends what ended since the last append, in one write. */
  function flush(): Promise<void> {
    clearTimeout(timer);
    timer = undefined;
    if (flushing) return flushing.then(flush);
    if (queue.length === 0) return Promise.resolve();
    const batch = queue;
    queue = [];
    flushing = storage
      .appendAudit(batch)
      .then((records) => {
        if (mirror) for (const r of records) logger.info({ audit: r }, "audit");
      })
      .catch((err: unknown) => logger.error({ err, entries: batch.length }, "could not append to the audit log"))
      .finally(() => {
        flushing = undefined;
      });
    return flushing;
  }

  /**
   * Ends a call: its entry is appended now unless a write already stored it. Mirrored entries are the stored ones,
   * with their chain position and hash, so a copy kept elsewhere can also tell a rewritten end of the chain.
   */
  function end(pending: DraftAudit, code: string): void {
    const e = pending.event;
    if (pending.written) {
      if (mirror && pending.record) logger.info({ audit: pending.record }, "audit");
      return;
    }
    e.code = code;
    e.at = Date.now();
    queue.push({ ...e });
    schedule();
  }

  /**
   * Entries of calls that changed nothing (reads, refusals) are appended a few milliseconds after they end, many
   * per write: one commit (and fsync) per call would cost reads more than the read itself. A query of the log, a
   * shutdown and a full batch flush at once.
   */
  let timer: NodeJS.Timeout | undefined;
  function schedule(): void {
    if (queue.length >= FLUSH_BATCH) {
      clearTimeout(timer);
      timer = undefined;
      void flush();
    } else {
      timer ??= setTimeout(() => {
        timer = undefined;
        void flush();
      }, FLUSH_DELAY_MS);
    }
  }

  function draft(facts: CallFacts): DraftAudit {
    const p = facts.principal;
    return {
      written: false,
      event: {
        at: Date.now(),
        requestId: facts.requestId,
        actorKind: p.kind,
        tokenId: p.kind === "token" ? p.tokenId : "",
        role: p.kind === "token" ? p.role : "",
        service: p.kind === "token" ? (p.service ?? "") : "",
        ip: facts.ip ?? "",
        op: facts.op,
        store: "",
        name: "",
        version: 0,
        code: "pending",
      },
    };
  }

  function begin(facts: CallFacts): AuditCall {
    const scope: Scope = { pending: draft(facts) };
    let ended = false;
    return {
      within: (work) => als.run(scope, work),
      bind(messages) {
        return {
          [Symbol.asyncIterator]() {
            const inner = messages[Symbol.asyncIterator]();
            return {
              next: (...args: [] | [unknown]) => als.run(scope, () => inner.next(...args)),
              return: (value?: unknown) => als.run(scope, () => inner.return?.(value) ?? Promise.resolve({ done: true, value: undefined })),
              throw: (e?: unknown) => als.run(scope, () => inner.throw?.(e) ?? Promise.reject(e)),
            } as AsyncIterator<never>;
          },
        };
      },
      end(code) {
        if (ended) return;
        ended = true;
        end(scope.pending, code);
      },
    };
  }

  return {
    begin,
    async run(facts, work, outcome) {
      const call = begin(facts);
      try {
        const result = await call.within(work);
        call.end("ok");
        return result;
      } catch (err) {
        call.end(outcome(err));
        throw err;
      }
    },
    async system(op, work) {
      const pending = draft({ requestId: "", principal: { kind: "anonymous" }, ip: undefined, op });
      pending.event.actorKind = "system";
      return als.run({ pending }, async () => {
        const result = await work();
        // Only what the service actually did is recorded: a rotation another replica won leaves no entry.
        if (pending.written && mirror && pending.record) logger.info({ audit: pending.record }, "audit");
        return result;
      });
    },
    flush,
  };
}
