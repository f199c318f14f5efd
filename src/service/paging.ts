import { invalidArgument } from "../domain/errors.js";

/** Keyset paging shared by every list: opaque tokens carrying the last key of the previous page. */

export const PAGE_DEFAULT = 100;
export const PAGE_MAX = 1000;

/** The page size to ask the store for: 0 or absent means the default; clamped to the maximum. */
export function pageLimit(size: number | undefined): number {
  const n = size ?? 0;
  if (!Number.isInteger(n) || n < 0) throw invalidArgument("page_size", "out_of_range", "page_size must not be negative");
  return Math.min(n || PAGE_DEFAULT, PAGE_MAX);
}

export function encodePageToken(lastKey: string): string {
  return Buffer.from(JSON.stringify({ a: lastKey }), "utf8").toString("base64url");
}

export function decodePageToken(token: string | undefined): string {
  if (!token) return "";
  try {
    const parsed = JSON.parse(Buffer.from(token, "base64url").toString("utf8")) as { a?: unknown };
    if (typeof parsed.a === "string") return parsed.a;
  } catch {
    // fall through
  }
  throw invalidArgument("page_token", "malformed", "page_token is not one this service issued");
}

/** Trims a fetched page of limit + 1 rows to limit, with the token for the next page. */
export function page<T>(rows: T[], limit: number, keyOf: (row: T) => string): { items: T[]; nextPageToken: string } {
  const more = rows.length > limit;
  if (more) rows.length = limit;
  const last = rows[rows.length - 1];
  return { items: rows, nextPageToken: more && last !== undefined ? encodePageToken(keyOf(last)) : "" };
}

/** A position in a list of secrets, and which way the page it starts goes. */
export interface ListCursorToken {
  readonly dir: "next" | "prev";
  readonly name: string;
  readonly id: string;
}

export function encodeListCursor(dir: "next" | "prev", at: { name: string; id: string }): string {
  return Buffer.from(JSON.stringify({ d: dir === "next" ? "n" : "p", n: at.name, i: at.id }), "utf8").toString("base64url");
}

export function decodeListCursor(token: string | undefined): ListCursorToken | undefined {
  if (!token) return undefined;
  try {
    const p = JSON.parse(Buffer.from(token, "base64url").toString("utf8")) as { d?: unknown; n?: unknown; i?: unknown };
    if ((p.d === "n" || p.d === "p") && typeof p.n === "string" && typeof p.i === "string") {
      return { dir: p.d === "n" ? "next" : "prev", name: p.n, id: p.i };
    }
  } catch {
    // fall through
  }
  throw invalidArgument("page_token", "malformed", "page_token is not one this service issued");
}
