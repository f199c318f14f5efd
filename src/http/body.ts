import type { IncomingMessage } from "node:http";
import type { Http2ServerRequest } from "node:http2";

/** How reading a request body ended. */
export type BodyResult =
  | { readonly ok: true; readonly body: Buffer }
  /** More than the limit: `size` is the declared length, or what had arrived when the limit was passed. */
  | { readonly ok: false; readonly reason: "too_large"; readonly size: number }
  /** The client went away (or the stream was reset) before the body ended. */
  | { readonly ok: false; readonly reason: "aborted" };

/**
 * Reads a whole request body of at most `limit` bytes and calls `done` once. A larger body is refused as soon as
 * its declared length or its bytes pass the limit, and the rest is read and discarded, so a keep-alive connection
 * stays usable for the client's next request. Callback-based: it runs on every RPC's hot path.
 */
export function readLimitedBody(req: IncomingMessage | Http2ServerRequest, limit: number, done: (r: BodyResult) => void): void {
  if (req.destroyed) return done({ ok: false, reason: "aborted" });
  const declared = Number(req.headers["content-length"] ?? -1);
  if (declared > limit) {
    req.resume();
    return done({ ok: false, reason: "too_large", size: declared });
  }
  const chunks: Buffer[] = [];
  let size = 0;
  let settled = false;
  const settle = (r: BodyResult) => {
    if (settled) return;
    settled = true;
    req.off("data", onData);
    req.off("end", onEnd);
    req.off("error", onAbort);
    req.off("close", onAbort);
    if (!r.ok) req.resume();
    done(r);
  };
  const onData = (chunk: Buffer) => {
    size += chunk.length;
    if (size > limit) settle({ ok: false, reason: "too_large", size });
    else chunks.push(chunk);
  };
  const onEnd = () => settle({ ok: true, body: chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, size) });
  const onAbort = () => settle({ ok: false, reason: "aborted" });
  req.on("data", onData);
  req.once("end", onEnd);
  req.once("error", onAbort);
  req.once("close", onAbort);
}
