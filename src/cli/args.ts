/** A tiny argument parser: `--name value`, `--name=value`, boolean `--name`, `-h`, and `--` to end the flags. */

/** A bad invocation: the CLI prints the message and a pointer to --help, and exits 2. */
export class UsageError extends Error {
  override readonly name = "UsageError";
}

export interface FlagSpec {
  /** A flag that takes a value, and the name of that value in the help ("N", "FILE"); omitted for booleans. */
  readonly arg?: string;
  readonly help: string;
}

export type FlagSpecs = Readonly<Record<string, FlagSpec>>;

/** The parsed arguments of one command. */
export class Args {
  constructor(
    readonly positionals: readonly string[],
    private readonly values: ReadonlyMap<string, string | true>,
  ) {}

  has(name: string): boolean {
    return this.values.has(name);
  }

  flag(name: string): boolean {
    return this.values.get(name) === true;
  }

  string(name: string): string | undefined {
    const v = this.values.get(name);
    return typeof v === "string" ? v : undefined;
  }

  /** A non-negative integer flag. */
  int(name: string): number | undefined {
    const v = this.string(name);
    if (v === undefined) return undefined;
    if (!/^\d+$/.test(v) || !Number.isSafeInteger(Number(v))) throw new UsageError(`--${name} must be a non-negative integer, got "${v}"`);
    return Number(v);
  }

  /** A comma-separated list flag (empty items dropped). */
  list(name: string): string[] | undefined {
    const v = this.string(name);
    return v === undefined ? undefined : v.split(",").map((s) => s.trim()).filter(Boolean);
  }

  /** A duration flag in seconds: `90`, `90s`, `15m`, `2h` or `7d`. */
  seconds(name: string): number | undefined {
    const v = this.string(name);
    if (v === undefined) return undefined;
    const secs = parseDuration(v);
    if (secs === undefined) throw new UsageError(`--${name} must be seconds or a duration like 90s, 15m, 2h, 7d; got "${v}"`);
    return secs;
  }

  /** A time flag: RFC 3339, or with `ago`, also a duration meaning that long ago (`15m`, `2h`, `7d`). */
  time(name: string, opts: { ago?: boolean; now?: number } = {}): Date | undefined {
    const v = this.string(name);
    if (v === undefined) return undefined;
    const ago = opts.ago && /^\d+[smhd]$/.test(v) ? parseDuration(v) : undefined;
    if (ago !== undefined) return new Date((opts.now ?? Date.now()) - ago * 1000);
    const d = new Date(v);
    if (!/^\d{4}-\d\d-\d\dT\d\d:\d\d/.test(v) || Number.isNaN(d.getTime())) {
      const also = opts.ago ? " or a duration ago (15m, 2h, 7d)" : "";
      throw new UsageError(`--${name} must be an RFC 3339 time (2026-01-31T12:00:00Z)${also}; got "${v}"`);
    }
    return d;
  }
}

const UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400 };

export function parseDuration(v: string): number | undefined {
  const m = /^(\d+)([smhd]?)$/.exec(v);
  if (!m) return undefined;
  const n = Number(m[1]) * (UNITS[m[2] || "s"] ?? 1);
  return Number.isSafeInteger(n) ? n : undefined;
}

/**
 * Parses `argv` against the flags a command accepts. `positionals` names the positional arguments, a trailing
 * "?" marking optional ones ("NAME", "STORE?"). Unknown flags, missing values and wrong counts are UsageErrors.
 */
export function parseArgs(argv: readonly string[], specs: FlagSpecs, positionals: readonly string[] = []): Args {
  const values = new Map<string, string | true>();
  const rest: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === "--") {
      rest.push(...argv.slice(i + 1));
      break;
    }
    if (a === "-h") {
      values.set("help", true);
      continue;
    }
    if (!a.startsWith("--") || a === "-") {
      // Never echo the whole argument: it might be a value typed in the wrong place.
      if (a.startsWith("-") && a !== "-") throw new UsageError(`unknown option -${a[1]}`);
      rest.push(a);
      continue;
    }
    const eq = a.indexOf("=");
    const name = a.slice(2, eq === -1 ? undefined : eq);
    const spec = specs[name];
    if (!spec) throw new UsageError(`unknown option --${name}`);
    if (spec.arg === undefined) {
      if (eq !== -1) throw new UsageError(`--${name} takes no value`);
      values.set(name, true);
    } else if (eq !== -1) {
      values.set(name, a.slice(eq + 1));
    } else {
      const v = argv[++i];
      if (v === undefined) throw new UsageError(`--${name} needs a value (${spec.arg})`);
      values.set(name, v);
    }
  }
  const required = positionals.filter((p) => !p.endsWith("?")).length;
  if (rest.length < required) {
    throw new UsageError(`missing ${positionals.slice(rest.length, required).join(" ")}`);
  }
  if (rest.length > positionals.length) {
    throw new UsageError(`too many arguments (expected ${positionals.map((p) => p.replace(/\?$/, "")).join(" ") || "none"})`);
  }
  return new Args(rest, values);
}
