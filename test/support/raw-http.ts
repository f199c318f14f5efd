import * as http from "node:http";
import * as http2 from "node:http2";

/**
 * Raw HTTP/1.1 and HTTP/2 requests for the hostile-input tests (fuzz, limits): any method, path, header and body
 * bytes, no client library in between to fix them up, and a time bound on every answer.
 */

export interface RawRequest {
  readonly method: string;
  /** Sent as given: percent-encode anything a request line may not carry. */
  readonly path: string;
  readonly headers?: Readonly<Record<string, string>>;
  readonly body?: Buffer | string;
}

export interface RawReply {
  /** The HTTP status, or 0 when the stream was reset before any response. */
  readonly status: number;
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
  /** HTTP/2 trailers (gRPC puts its status there); empty for HTTP/1.1. */
  readonly trailers: Readonly<Record<string, string | string[] | undefined>>;
  readonly body: Buffer;
  /** HTTP/2 RST_STREAM code the stream closed with (0: none). */
  readonly rstCode: number;
  readonly ms: number;
}

/** Thrown when no complete answer came within the time bound: the server hangs on this request. */
export class NoAnswerError extends Error {
  override readonly name = "NoAnswerError";
}

/** A keep-alive HTTP/1.1 client for one server, so requests reuse connections as real clients do. */
export function createH1Client(url: string): { request(req: RawRequest, timeoutMs: number): Promise<RawReply>; close(): void } {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
  const { hostname, port } = new URL(url);
  return {
    request(req, timeoutMs) {
      const start = performance.now();
      return new Promise((resolve, reject) => {
        const r = http.request({ host: hostname, port, method: req.method, path: req.path, headers: req.headers, agent });
        const timer = setTimeout(() => {
          r.destroy();
          reject(new NoAnswerError(`no answer within ${timeoutMs} ms: HTTP/1.1 ${req.method} ${req.path.slice(0, 120)}`));
        }, timeoutMs);
        r.on("response", (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () => {
            clearTimeout(timer);
            resolve({
              status: res.statusCode ?? 0,
              headers: res.headers,
              trailers: {},
              body: Buffer.concat(chunks),
              rstCode: 0,
              ms: performance.now() - start,
            });
          });
          res.on("error", (err) => {
            clearTimeout(timer);
            reject(err);
          });
        });
        r.on("error", (err) => {
          clearTimeout(timer);
          reject(err);
        });
        r.end(req.body);
      });
    },
    close: () => agent.destroy(),
  };
}

/**
 * An HTTP/2 (h2c, prior knowledge) client that opens a new session whenever the last one ended, so one hostile
 * request that gets its session refused does not fail every request after it.
 */
export class H2Client {
  private session: http2.ClientHttp2Session | undefined;
  private goaway = false;

  constructor(
    private readonly url: string,
    private readonly options: http2.ClientSessionOptions = {},
  ) {}

  /** The current session, connected and with the server's SETTINGS received. */
  async connect(): Promise<http2.ClientHttp2Session> {
    if (this.session && !this.session.closed && !this.session.destroyed && !this.goaway) return this.session;
    this.session?.destroy();
    const session = http2.connect(this.url, this.options);
    session.on("error", () => {});
    // After GOAWAY the session takes no new streams: the next request opens another.
    session.on("goaway", () => {
      if (this.session === session) this.goaway = true;
    });
    this.session = session;
    this.goaway = false;
    await new Promise<void>((resolve, reject) => {
      session.once("remoteSettings", () => resolve());
      session.once("close", () => reject(new Error("HTTP/2 session closed before the server's SETTINGS")));
    });
    return session;
  }

  async request(req: RawRequest, timeoutMs: number): Promise<RawReply> {
    const session = await this.connect();
    const start = performance.now();
    return new Promise((resolve, reject) => {
      let stream: http2.ClientHttp2Stream;
      try {
        stream = session.request({ ":method": req.method, ":path": req.path, ...req.headers });
      } catch (err) {
        reject(err);
        return;
      }
      let headers: http2.IncomingHttpHeaders = {};
      let trailers: http2.IncomingHttpHeaders = {};
      const chunks: Buffer[] = [];
      const timer = setTimeout(() => {
        stream.close(http2.constants.NGHTTP2_CANCEL);
        reject(new NoAnswerError(`no answer within ${timeoutMs} ms: HTTP/2 ${req.method} ${req.path.slice(0, 120)}`));
      }, timeoutMs);
      stream.on("response", (h) => {
        headers = h;
      });
      stream.on("trailers", (t) => {
        trailers = t;
      });
      stream.on("data", (c: Buffer) => chunks.push(c));
      stream.on("error", () => {});
      stream.on("close", () => {
        clearTimeout(timer);
        // A stream reset before any response may leave the session unusable (a header block refused after HPACK
        // encoded it desynchronizes the tables): the next request opens a new session.
        if (headers[":status"] === undefined && this.session === session) this.goaway = true;
        resolve({
          status: Number(headers[":status"] ?? 0),
          headers,
          trailers,
          body: Buffer.concat(chunks),
          rstCode: stream.rstCode ?? 0,
          ms: performance.now() - start,
        });
      });
      stream.end(req.body);
    });
  }

  close(): void {
    this.session?.close();
    this.session = undefined;
  }
}

/** One gRPC length-prefixed message: flags byte, 4-byte big-endian length (the payload's unless given), payload. */
export function grpcFrame(payload: Uint8Array, flags = 0, declaredLength = payload.length): Buffer {
  const head = Buffer.alloc(5);
  head[0] = flags;
  head.writeUInt32BE(declaredLength >>> 0, 1);
  return Buffer.concat([head, payload]);
}

/** The grpc-status of a reply (trailers, or headers for a trailers-only answer); undefined when there is none. */
export function grpcStatusOf(reply: RawReply): number | undefined {
  const v = reply.trailers["grpc-status"] ?? reply.headers["grpc-status"];
  return v === undefined ? undefined : Number(v);
}

/** The decoded grpc-message of a reply, for failure messages. */
export function grpcMessageOf(reply: RawReply): string {
  const v = reply.trailers["grpc-message"] ?? reply.headers["grpc-message"];
  return typeof v === "string" ? decodeURIComponent(v) : "";
}
