import type { Writable } from "node:stream";
import { type DescMessage, type MessageShape, toJson } from "@bufbuild/protobuf";
import { type Duration, type Timestamp, timestampDate } from "@bufbuild/protobuf/wkt";
import { UsageError } from "./args.js";

/**
 * A message as protobuf JSON with the proto's snake_case field names (the REST API's spelling), every field
 * present (false, 0, "" included) so scripts need not know the defaults.
 */
export function messageJson<Desc extends DescMessage>(schema: Desc, message: MessageShape<Desc>): unknown {
  return toJson(schema, message, { useProtoFieldName: true, alwaysEmitImplicit: true });
}

export function printJson(out: Writable, value: unknown): void {
  out.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** Control characters would let a stored string rewrite the terminal: show them as "?". */
function clean(cell: string): string {
  return cell.replace(/[\u0000-\u001f\u007f-\u009f]/g, "?");
}

/** An aligned table with an upper-case header row; empty cells show as "-". */
export function printTable(out: Writable, headers: readonly string[], rows: readonly (readonly string[])[]): void {
  const all = [headers.map((h) => h.toUpperCase()), ...rows.map((r) => r.map((c) => (c === "" ? "-" : clean(c))))];
  const widths = headers.map((_, i) => Math.max(...all.map((r) => (r[i] ?? "").length)));
  for (const r of all) {
    out.write(`${r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join("  ")}\n`);
  }
}

/** "key: value" lines, aligned. */
export function printFields(out: Writable, fields: readonly (readonly [string, string])[]): void {
  const width = Math.max(...fields.map(([k]) => k.length)) + 1;
  for (const [k, v] of fields) out.write(`${`${k}:`.padEnd(width)}  ${v === "" ? "-" : clean(v)}\n`);
}

/** RFC 3339 to the second, or "" when unset. */
export function time(ts: Timestamp | undefined): string {
  return ts ? timestampDate(ts).toISOString().replace(/\.\d{3}Z$/, "Z") : "";
}

/** 90 -> "90s", 3600 -> "1h", 5400 -> "90m"; "" when unset. */
export function duration(d: Duration | undefined): string {
  if (!d) return "";
  const s = Number(d.seconds);
  for (const [unit, n] of [["d", 86400], ["h", 3600], ["m", 60]] as const) if (s >= n && s % n === 0) return `${s / n}${unit}`;
  return `${s}s`;
}

/** The lower-case name of a generated enum value ("MANUAL" -> "manual"), "" for UNSPECIFIED. */
export function enumLabel(e: Record<number, string>, value: number): string {
  const name = e[value];
  return name === undefined || name === "UNSPECIFIED" ? "" : name.toLowerCase().replace(/_/g, "-");
}

/** The value of a generated enum named `label` (case-insensitive), excluding UNSPECIFIED. */
export function enumValue<E extends Record<string, string | number>>(e: E, label: string, what: string): E[keyof E] {
  const key = label.toUpperCase().replace(/-/g, "_");
  const v = e[key];
  if (typeof v !== "number" || key === "UNSPECIFIED") {
    const names = Object.keys(e).filter((k) => Number.isNaN(Number(k)) && k !== "UNSPECIFIED").map((k) => k.toLowerCase());
    throw new UsageError(`${what} must be one of ${names.join(", ")}; got "${label}"`);
  }
  return v as E[keyof E];
}
