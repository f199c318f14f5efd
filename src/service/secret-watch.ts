import { invalidArgument } from "../domain/errors.js";
import type { ChangeEvent, Storage } from "../storage/storage.js";

export type SecretEventType = "started" | "created" | "rotated" | "updated" | "deleted" | "restored" | "reset";

/** One event of a watch: what happened to which secret. Never a value. */
export interface SecretEvent {
  readonly type: SecretEventType;
  /** Pass back as `resumeAfter` to continue after this event. */
  readonly resumeToken: string;
  /** Set for created, rotated, updated and deleted. */
  readonly change?: ChangeEvent;
}

export interface WatchInput {
  readonly store: string;
  readonly prefix?: string | undefined;
  readonly resumeAfter?: string | undefined;
}

/** What a change event means to a watcher; undefined for one a watcher does not see (the purge of a deleted secret). */
export function eventType(ev: ChangeEvent): SecretEventType | undefined {
  switch (ev.change) {
    case "created":
      return "created";
    case "rotated":
      return "rotated";
    case "deleted":
      return "deleted";
    case "restored":
      return "restored";
    case "purged":
      // Its soft deletion was reported already.
      return undefined;
    default:
      return "updated";
  }
}

/**
 * Streams the changes to one store's secrets (optionally under a name prefix) from the storage change feed, until
 * `signal` aborts. Starts with a "started" event carrying the position, so a client that reconnects before any
 * event still resumes without a gap.
 */
export async function* watchSecrets(
  storage: Pick<Storage, "changes">,
  input: WatchInput,
  signal: AbortSignal,
): AsyncGenerator<SecretEvent> {
  const prefix = input.prefix ?? "";
  if (prefix.length > 256) throw invalidArgument("name_prefix", "too_long", "name_prefix must be at most 256 characters");
  const resumeAfter = input.resumeAfter || undefined;
  if (resumeAfter !== undefined && resumeAfter.length > 4096) {
    throw invalidArgument("resume_token", "too_long", "resume_token is not one this service issued");
  }
  for await (const item of storage.changes({ resumeAfter, signal })) {
    if (item.op === "start") yield { type: "started", resumeToken: item.token };
    else if (item.op === "reset") yield { type: "reset", resumeToken: item.token ?? "" };
    else if (item.store === input.store && item.name.startsWith(prefix)) {
      const type = eventType(item);
      if (type) yield { type, resumeToken: item.token, change: item };
    }
  }
}
