import { readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";
import { pathToFileURL } from "node:url";

/**
 * Searches files and log text for values that must never be stored or logged in the clear: each marker as it is,
 * in hex (both cases), and in base64 and base64url at each of the three alignments it can have inside a longer
 * encoded string (so a value base64-encoded inside a bigger blob is still found).
 *
 * As a script: node --import tsx test/support/plaintext-scan.ts --markers FILE [--dir DIR]... [--log FILE]...
 *   [--exclude NAME]...   (FILE: one marker a line; exits 1 and lists the hits when there are any)
 */

export interface Marker {
  /** What the marker is, for the report (never the marker itself). */
  readonly label: string;
  readonly bytes: Buffer;
}

export interface Hit {
  readonly where: string;
  readonly label: string;
  readonly form: string;
}

/** A text marker (UTF-8). */
export function textMarker(label: string, value: string): Marker {
  return { label, bytes: Buffer.from(value, "utf8") };
}

/**
 * The needles a marker is searched as. A base64 string of bytes at offset k (mod 3) of a longer buffer shares with
 * base64(marker) nothing at the edges: only the characters that encode marker bytes alone are searched for.
 */
export function markerForms(bytes: Buffer): { form: string; needle: Buffer }[] {
  const forms: { form: string; needle: Buffer }[] = [
    { form: "raw", needle: bytes },
    { form: "hex", needle: Buffer.from(bytes.toString("hex")) },
    { form: "HEX", needle: Buffer.from(bytes.toString("hex").toUpperCase()) },
  ];
  for (let k = 0; k < 3; k++) {
    const padded = Buffer.concat([Buffer.alloc(k), bytes]);
    // Whole 3-byte groups made of marker bytes only: skip the group holding the k filler bytes, stop before a partial one.
    const firstGroup = k === 0 ? 0 : 1;
    const groups = Math.floor(padded.length / 3);
    if (groups - firstGroup < 4) continue; // too short to mean anything at this alignment
    const inner = padded.subarray(firstGroup * 3, groups * 3);
    forms.push({ form: `base64@${k}`, needle: Buffer.from(inner.toString("base64")) });
    forms.push({ form: `base64url@${k}`, needle: Buffer.from(inner.toString("base64url")) });
  }
  // base64 and base64url agree on most strings: search each distinct needle once.
  const seen = new Set<string>();
  return forms.filter((f) => {
    const key = f.needle.toString("latin1");
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

/** Every hit of every marker in the given named buffers. */
export function scanBuffers(haystacks: Iterable<readonly [string, Buffer]>, markers: readonly Marker[]): Hit[] {
  const needles = markers.map((m) => ({ label: m.label, forms: markerForms(m.bytes) }));
  const hits: Hit[] = [];
  for (const [where, data] of haystacks) {
    for (const { label, forms } of needles) {
      for (const { form, needle } of forms) if (data.includes(needle)) hits.push({ where, label, form });
    }
  }
  return hits;
}

/** Every regular file under `dir`, recursively, except those whose base name `exclude` rejects. */
export function filesUnder(dir: string, exclude: (name: string) => boolean = () => false): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...filesUnder(p, exclude));
    else if (entry.isFile() && !exclude(entry.name)) out.push(p);
  }
  return out;
}

export interface ScanTargets {
  /** Directories whose every file is searched (e.g. a data directory: the database, its -wal and -shm). */
  readonly dirs?: readonly string[];
  /** Base names of files to leave out (a key file holds a key, not a value). */
  readonly exclude?: readonly string[];
  /** Captured text by name: stdout, stderr, log files. */
  readonly texts?: Readonly<Record<string, string>>;
}

/** Searches directories and captured text for the markers; returns the hits and how much was searched. */
export function scanPlaintext(targets: ScanTargets, markers: readonly Marker[]): { hits: Hit[]; files: string[]; bytes: number } {
  const excluded = new Set(targets.exclude ?? []);
  const files = (targets.dirs ?? []).flatMap((d) => filesUnder(d, (name) => excluded.has(name)));
  const haystacks: [string, Buffer][] = [
    ...files.map((f): [string, Buffer] => [f, readFileSync(f)]),
    ...Object.entries(targets.texts ?? {}).map(([name, text]): [string, Buffer] => [name, Buffer.from(text, "utf8")]),
  ];
  return {
    hits: scanBuffers(haystacks, markers),
    files,
    bytes: haystacks.reduce((n, [, b]) => n + b.length, 0),
  };
}

function main(argv: string[]): number {
  const many = (flag: string) => argv.flatMap((a, i) => (a === flag && argv[i + 1] !== undefined ? [argv[i + 1] as string] : []));
  const markerFiles = many("--markers");
  if (markerFiles.length === 0) {
    process.stderr.write("usage: plaintext-scan.ts --markers FILE [--dir DIR]... [--log FILE]... [--exclude NAME]...\n");
    return 2;
  }
  const markers = markerFiles
    .flatMap((f) => readFileSync(f, "utf8").split("\n"))
    .filter((l) => l !== "")
    .map((l, i) => textMarker(`marker #${i + 1}`, l));
  const texts: Record<string, string> = {};
  for (const f of many("--log")) texts[f] = readFileSync(f, "utf8");
  const dirs = many("--dir");
  const { hits, files, bytes } = scanPlaintext({ dirs, exclude: many("--exclude"), texts }, markers);
  for (const h of hits) {
    const where = dirs.reduce((w, d) => (w.startsWith(d) ? relative(d, w) : w), h.where);
    process.stdout.write(`${where}: ${h.label} (${h.form})\n`);
  }
  process.stdout.write(`${markers.length} markers, ${files.length + Object.keys(texts).length} files, ${bytes} bytes: ${hits.length} hits\n`);
  return hits.length === 0 ? 0 : 1;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) process.exitCode = main(process.argv.slice(2));
