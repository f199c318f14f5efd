import type { Readable, Writable } from "node:stream";
import { type FlagSpecs, parseArgs, UsageError } from "./args.js";
import { audit } from "./commands/audit.js";
import { secrets } from "./commands/secrets.js";
import { stores } from "./commands/stores.js";
import { tokens } from "./commands/tokens.js";
import { transferCommands } from "./commands/transfer.js";
import { vars } from "./commands/vars.js";
import {
  type Command,
  CONNECTION_FLAGS,
  createContext,
  DEFAULT_ADDR,
  EXIT,
  EXIT_CODES_HELP,
  type Group,
  type Io,
  offlineContext,
  reportError,
} from "./context.js";

export { EXIT } from "./context.js";

const GROUPS: Readonly<Record<string, Group>> = { secrets, stores, vars, tokens, audit };

const HELP_FLAGS: FlagSpecs = { help: { help: "show this help" } };

const USAGE = `usage: latchkey <command> [options]

A command-line client for Latchkey. Every command takes -h / --help.

${Object.entries(GROUPS)
  .map(([name, g]) => `  ${`${name} ${Object.keys(g.commands).join("|")}`}\n      ${g.summary}`)
  .join("\n")}

Working on the configured store directly (with the server's environment):
${Object.entries(transferCommands)
  .map(([name, c]) => `  ${name.padEnd(14)}${c.summary}`)
  .join("\n")}

connection (every command above the last three):
  LATCHKEY_ADDR    server address (default ${DEFAULT_ADDR}); or --addr URL
  LATCHKEY_TOKEN   bearer token; or --token TOKEN. With neither, the token is read from
                   $LATCHKEY_DATA_DIR/admin.token (default ./data/admin.token) when that file exists, as
                   written on a server's first run
  --protocol P     connect (default: Connect JSON over HTTP/1.1, works through proxies), grpc or grpc-web
  --json           machine-readable output instead of tables

${EXIT_CODES_HELP}
examples:
  printf %s "$PASSWORD" | latchkey secrets set db/password
  DB_PASSWORD=$(latchkey secrets get db/password)
  latchkey secrets list --prefix db/ --json
  latchkey secrets verify db/password --value-file presented.txt && echo valid
`;

function groupHelp(name: string, g: Group): string {
  const width = Math.max(...Object.keys(g.commands).map((c) => c.length)) + 2;
  return `usage: latchkey ${name} <command> [options]

${g.summary[0]?.toUpperCase()}${g.summary.slice(1)}.${g.description ? `\n\n${g.description}` : ""}

commands:
${Object.entries(g.commands)
  .map(([c, cmd]) => `  ${c.padEnd(width)}${cmd.summary}`)
  .join("\n")}

Run \`latchkey ${name} <command> --help\` for a command's options; \`latchkey --help\` for the connection settings.

${EXIT_CODES_HELP}`;
}

function flagsOf(cmd: Command): FlagSpecs {
  return { ...cmd.flags, ...(cmd.offline ? {} : CONNECTION_FLAGS), ...HELP_FLAGS };
}

function commandHelp(path: string, cmd: Command): string {
  const args = (cmd.args ?? []).map((a) => (a.endsWith("?") ? `[${a.slice(0, -1)}]` : a)).join(" ");
  const flags = Object.entries(flagsOf(cmd)).map(([name, f]) => [`${name === "help" ? "-h, " : ""}--${name}${f.arg ? ` ${f.arg}` : ""}`, f.help] as const);
  const width = Math.max(...flags.map(([f]) => f.length)) + 2;
  const exits = cmd.offline
    ? ""
    : "\nexit codes: 0 ok, 1 error, 2 usage, 5 not found, 6 unauthenticated or denied, 7 already exists or precondition\nfailed, 8 server unavailable (see latchkey --help)\n";
  return `usage: latchkey ${path}${args ? ` ${args}` : ""} [options]

${cmd.summary[0]?.toUpperCase()}${cmd.summary.slice(1)}.${cmd.description ? `\n\n${cmd.description}` : ""}

options:
${flags.map(([f, h]) => `  ${f.padEnd(width)}${wrap(h, Math.max(40, 110 - width - 2)).join(`\n${" ".repeat(width + 2)}`)}`).join("\n")}
${exits}`;
}

/** Splits text into lines of at most `width` characters, at spaces. */
function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(" ")) {
    if (line && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  return [...lines, line];
}

const isHelp = (a: string | undefined) => a === "--help" || a === "-h" || a === "help";

/** Whether --help or -h comes before any "--". */
function wantsHelp(argv: readonly string[]): boolean {
  const end = argv.indexOf("--");
  return (end === -1 ? argv : argv.slice(0, end)).some((a) => a === "--help" || a === "-h");
}

async function execute(path: string, cmd: Command, argv: readonly string[], io: Io): Promise<number> {
  if (wantsHelp(argv)) {
    io.stdout.write(commandHelp(path, cmd));
    return EXIT.ok;
  }
  try {
    const a = parseArgs(argv, flagsOf(cmd), cmd.args);
    return await cmd.run(a, cmd.offline ? offlineContext(io) : createContext(a, io));
  } catch (err) {
    if (err instanceof UsageError) {
      io.stderr.write(`latchkey ${path}: ${err.message}\nRun 'latchkey ${path} --help' for usage.\n`);
      return EXIT.usage;
    }
    return reportError(err, io);
  }
}

/** Runs one invocation of the CLI and returns its exit code. */
export async function run(
  argv: string[],
  io: Io = { stdout: process.stdout as Writable, stderr: process.stderr as Writable, stdin: process.stdin as Readable },
): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined) {
    io.stderr.write(USAGE);
    return EXIT.usage;
  }
  // `latchkey help secrets set` is `latchkey secrets set --help`.
  if (command === "help" && rest.length > 0) return run([...rest, "--help"], io);
  if (isHelp(command)) {
    io.stdout.write(USAGE);
    return EXIT.ok;
  }
  const group = GROUPS[command];
  if (group) {
    const [sub, ...args] = rest;
    if (sub === undefined || isHelp(sub)) {
      (sub === undefined ? io.stderr : io.stdout).write(groupHelp(command, group));
      return sub === undefined ? EXIT.usage : EXIT.ok;
    }
    const cmd = Object.hasOwn(group.commands, sub) ? group.commands[sub] : undefined;
    if (!cmd) {
      io.stderr.write(`latchkey ${command}: unknown command "${sub}"\n\n${groupHelp(command, group)}`);
      return EXIT.usage;
    }
    return execute(`${command} ${sub}`, cmd, args, io);
  }
  const cmd = Object.hasOwn(transferCommands, command) ? transferCommands[command] : undefined;
  if (cmd) return execute(command, cmd, rest, io);
  io.stderr.write(`latchkey: unknown command "${command}"\n\n${USAGE}`);
  return EXIT.usage;
}
