import { readFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import type { Readable, Writable } from "node:stream";
import { Code, ConnectError } from "@connectrpc/connect";
import { RequestInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { createLatchkeyClient, type LatchkeyClient } from "../client/index.js";
import { type Args, type FlagSpecs, UsageError } from "./args.js";

export interface Io {
  readonly stdout: Writable;
  readonly stderr: Writable;
  readonly stdin: Readable;
}

/** Exit codes scripts can rely on. */
export const EXIT = {
  ok: 0,
  /** Any other error; for `secrets verify`, also "the value is not valid". */
  error: 1,
  usage: 2,
  conflict: 3,
  tampered: 4,
  notFound: 5,
  denied: 6,
  exists: 7,
  unavailable: 8,
} as const;

export const EXIT_CODES_HELP = `exit codes:
  0  ok (secrets verify: the value is valid)
  1  error (secrets verify: the value is not valid)
  2  usage: unknown command or option, missing argument, no value given
  3  conflict: import found names held by other secrets
  4  tampered: verify-audit found a broken audit chain
  5  not found
  6  unauthenticated or permission denied: no token, a bad token, or not allowed
  7  already exists, or a failed precondition (e.g. --if-revision did not match, store not empty)
  8  unavailable: the server could not be reached
`;

export const DEFAULT_ADDR = "http://127.0.0.1:8200";

/** Flags every command that talks to a server accepts. */
export const CONNECTION_FLAGS: FlagSpecs = {
  json: { help: "machine-readable output: the API's messages as protobuf JSON (snake_case field names)" },
  addr: { arg: "URL", help: `server address (default: $LATCHKEY_ADDR, else ${DEFAULT_ADDR})` },
  token: {
    arg: "TOKEN",
    help: "bearer token (default: $LATCHKEY_TOKEN, else the contents of $LATCHKEY_DATA_DIR/admin.token, by default ./data/admin.token, if that file exists). Prefer the variable: a flag lands in shell history",
  },
  protocol: { arg: "P", help: "connect (default: Connect JSON over HTTP/1.1, works through proxies), grpc (HTTP/2) or grpc-web" },
};

export interface Context {
  readonly io: Io;
  /** --json was given. */
  readonly json: boolean;
  /** A client for the server named by --addr / LATCHKEY_ADDR, created on first use. */
  client(): LatchkeyClient;
}

/** One command: `latchkey <group> <name>` or a top-level one such as `latchkey export`. */
export interface Command {
  /** Positional arguments; a trailing "?" marks an optional one. */
  readonly args?: readonly string[];
  readonly summary: string;
  /** Extra help text, printed after the usage line. */
  readonly description?: string;
  readonly flags: FlagSpecs;
  /** Commands that work on the storage directly take no connection flags. */
  readonly offline?: boolean;
  run(a: Args, ctx: Context): Promise<number>;
}

export interface Group {
  readonly summary: string;
  readonly description?: string;
  readonly commands: Readonly<Record<string, Command>>;
}

const PROTOCOLS = ["connect", "grpc", "grpc-web"] as const;

/** Where the token comes from: --token, LATCHKEY_TOKEN, or the first-run admin.token file. */
export function resolveToken(flag: string | undefined, env = process.env): string | undefined {
  if (flag) return flag;
  if (env.LATCHKEY_TOKEN) return env.LATCHKEY_TOKEN;
  try {
    return readFileSync(join(env.LATCHKEY_DATA_DIR || "data", "admin.token"), "utf8").trim() || undefined;
  } catch {
    return undefined;
  }
}

export function createContext(a: Args, io: Io, env = process.env): Context {
  const addr = a.string("addr") || env.LATCHKEY_ADDR || DEFAULT_ADDR;
  if (!/^https?:\/\/[^/]/.test(addr)) throw new UsageError(`the address must be an http:// or https:// URL, got "${addr}"`);
  const protocol = (a.string("protocol") ?? "connect") as (typeof PROTOCOLS)[number];
  if (!PROTOCOLS.includes(protocol)) throw new UsageError(`--protocol must be one of ${PROTOCOLS.join(", ")}`);
  let client: LatchkeyClient | undefined;
  return {
    io,
    json: a.flag("json"),
    client: () =>
      (client ??= createLatchkeyClient({
        baseUrl: addr.replace(/\/+$/, ""),
        token: resolveToken(a.string("token"), env),
        protocol,
        json: true,
      })),
  };
}

/** The context of a command that works on the storage directly: it has no client. */
export function offlineContext(io: Io): Context {
  return {
    io,
    json: false,
    client: () => {
      throw new Error("this command does not talk to a server");
    },
  };
}

/** Maps a failure to its exit code and prints one line for it: the server's message and request id, never a value. */
export function reportError(err: unknown, io: Io): number {
  if (err instanceof ConnectError) {
    const requestId = err.findDetails(RequestInfoSchema)[0]?.requestId || err.metadata.get("x-request-id");
    const code = Code[err.code].replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase();
    io.stderr.write(`latchkey: ${code}: ${err.rawMessage}${requestId ? ` (request id ${requestId})` : ""}\n`);
    return exitCodeOf(err.code);
  }
  io.stderr.write(`latchkey: ${err instanceof Error ? err.message : String(err)}\n`);
  return EXIT.error;
}

export function exitCodeOf(code: Code): number {
  switch (code) {
    case Code.NotFound:
      return EXIT.notFound;
    case Code.Unauthenticated:
    case Code.PermissionDenied:
      return EXIT.denied;
    case Code.AlreadyExists:
    case Code.FailedPrecondition:
      return EXIT.exists;
    case Code.Unavailable:
      return EXIT.unavailable;
    default:
      return EXIT.error;
  }
}

/** Flags of commands that take a secret value. */
export const VALUE_FLAGS: FlagSpecs = {
  "value-file": { arg: "FILE", help: 'read the value from FILE ("-" for stdin)' },
  stdin: { help: "read the value from stdin (the default when stdin is not a terminal)" },
  binary: { help: "send the input bytes as a binary value, exactly as read" },
};

export const VALUE_HELP = `The value is read from --value-file FILE, or from stdin (--stdin, or whenever stdin is not a terminal); it is
never taken as an argument, so it stays out of shell history and process lists. One trailing newline is dropped
from text input (so "echo s3cr3t |" works and get | set round-trips); --binary sends the bytes exactly as read.`;

const MAX_INPUT = 1024 * 1024;

export type SecretValue = { value: string } | { binaryValue: Uint8Array };

/**
 * Reads a secret value from --value-file, --stdin, or (when `implicitStdin`) a stdin that is not a terminal.
 * Returns undefined when none was given and none is required.
 */
export async function readValue(a: Args, io: Io, opts: { required: boolean; implicitStdin: boolean }): Promise<SecretValue | undefined> {
  const file = a.string("value-file");
  if (file !== undefined && a.flag("stdin")) throw new UsageError("give either --value-file or --stdin, not both");
  const isTty = (io.stdin as { isTTY?: boolean }).isTTY === true;
  let bytes: Buffer;
  if (file !== undefined && file !== "-") {
    try {
      bytes = await readFile(file);
    } catch (err) {
      throw new Error(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? "error"}`);
    }
  } else if (file === "-" || a.flag("stdin") || (opts.implicitStdin && !isTty)) {
    bytes = await readAll(io.stdin);
  } else if (opts.required) {
    throw new UsageError(
      "no value given: pipe it in, or use --value-file FILE or --stdin (a value is never taken as an argument, so it stays out of shell history)",
    );
  } else {
    return undefined;
  }
  if (bytes.length > MAX_INPUT) throw new UsageError(`the value is over ${MAX_INPUT} bytes`);
  if (a.flag("binary")) return { binaryValue: new Uint8Array(bytes) };
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new UsageError("the value is not UTF-8 text: pass --binary to send it as bytes");
  }
  return { value: text.replace(/\r?\n$/, "") };
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of stream) {
    const b = typeof chunk === "string" ? Buffer.from(chunk) : Buffer.from(chunk as Uint8Array);
    size += b.length;
    if (size > MAX_INPUT) throw new UsageError(`the value is over ${MAX_INPUT} bytes`);
    chunks.push(b);
  }
  return Buffer.concat(chunks);
}

/** Reads pages until `limit` items (all when undefined) or the last page. */
export async function collectPages<T>(
  limit: number | undefined,
  page: (pageSize: number, pageToken: string) => Promise<{ items: T[]; next: string }>,
): Promise<T[]> {
  const items: T[] = [];
  let token = "";
  for (;;) {
    const want = limit === undefined ? 1000 : Math.min(1000, limit - items.length);
    if (want <= 0) break;
    const res = await page(want, token);
    items.push(...res.items.slice(0, want));
    if (!res.next) break;
    token = res.next;
  }
  return items;
}
