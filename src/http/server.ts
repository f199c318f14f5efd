import * as http from "node:http";
import * as http2 from "node:http2";
import * as net from "node:net";

export type RequestHandler = (
  req: http.IncomingMessage | http2.Http2ServerRequest,
  res: http.ServerResponse | http2.Http2ServerResponse,
) => void;

/** One listening port that speaks HTTP/2 cleartext (prior knowledge, as gRPC uses) and HTTP/1.1. */
export interface DualServer {
  listen(port: number, host: string): Promise<{ port: number; host: string }>;
  /**
   * Stops accepting connections, lets in-flight requests finish (HTTP/2 sessions get GOAWAY, idle HTTP/1.1
   * sockets are closed), and destroys whatever is left after `graceMs`.
   */
  close(graceMs: number): Promise<void>;
  /** Open connections, for tests and drain logs. */
  connections(): number;
}

/** What one connection may take of the server. */
export interface ConnectionLimits {
  /** A connection that sends nothing this long after connecting (or TLS that does not finish its handshake) is dropped. */
  readonly idleTimeoutMs: number;
  /** HTTP/1.1: the request line and headers must arrive within this time (else 408 and the connection is closed). */
  readonly headersTimeoutMs: number;
  /** The whole request, body included, must arrive within this time (HTTP/1.1: 408; HTTP/2: the stream is reset). */
  readonly requestTimeoutMs: number;
  /** HTTP/2: streams one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS); more are refused. */
  readonly maxConcurrentStreams: number;
}

export const DEFAULT_LIMITS: ConnectionLimits = {
  idleTimeoutMs: 10_000,
  headersTimeoutMs: 15_000,
  requestTimeoutMs: 60_000,
  maxConcurrentStreams: 256,
};

/** How long an idle HTTP/1.1 keep-alive connection is kept. */
const KEEP_ALIVE_TIMEOUT_MS = 5_000;

const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

/** The most request header bytes (names and values) taken: Node's HTTP/1.1 limit, applied to HTTP/2 as well. */
export const MAX_HEADER_BYTES = 16 * 1024;

/**
 * What Node's HTTP/2 server does not limit itself (nor its HTTP/1.1 behind TLS here):
 * - Header size: a request whose headers exceed MAX_HEADER_BYTES is refused as HTTP/1.1 refuses it (431), or
 *   with RESOURCE_EXHAUSTED for gRPC, whose clients read the status from the trailers.
 * - Body time: a request whose body does not arrive within `ms` is cut off (the HTTP/2 stream is reset; an
 *   HTTP/1.1 connection is closed), so a client trickling bodies cannot hold streams and their buffers. Requests
 *   that have sent their whole body (a watch, say) are not limited.
 */
function limitRequests(handler: RequestHandler, ms: number, h1 = false): RequestHandler {
  return (req, res) => {
    const h2 = req.httpVersionMajor === 2;
    if (h2) {
      const raw = req.rawHeaders;
      let size = 0;
      for (let i = 0; i < raw.length; i++) size += (raw[i] as string).length;
      if (size > MAX_HEADER_BYTES) {
        refuseHeaders(req, res as http2.Http2ServerResponse);
        return;
      }
    }
    if (h2 || h1) {
      const timer = setTimeout(() => {
        if (req.readableEnded) return;
        if (h2) {
          const stream = (req as http2.Http2ServerRequest).stream;
          if (!stream.destroyed) stream.close(http2.constants.NGHTTP2_CANCEL);
        } else {
          req.socket.destroy();
        }
      }, ms);
      timer.unref();
      const clear = () => clearTimeout(timer);
      req.once("end", clear);
      res.once("close", clear);
    }
    handler(req, res);
  };
}

function refuseHeaders(req: http.IncomingMessage | http2.Http2ServerRequest, res: http2.Http2ServerResponse): void {
  const message = `request headers are larger than ${MAX_HEADER_BYTES} bytes`;
  const type = String(req.headers["content-type"] ?? "");
  if (type.startsWith("application/grpc")) {
    res.writeHead(200, { "content-type": type.startsWith("application/grpc-web") ? type : "application/grpc", "grpc-status": "8", "grpc-message": message });
    res.end();
  } else {
    const body = JSON.stringify({ error: message, code: "resource_exhausted" });
    res.writeHead(431, { "content-type": "application/json", "content-length": String(Buffer.byteLength(body)) });
    res.end(body);
  }
  req.resume();
}

export function createDualServer(handler: RequestHandler, limits: ConnectionLimits = DEFAULT_LIMITS): DualServer {
  const h1 = http.createServer(
    {
      requestTimeout: limits.requestTimeoutMs,
      headersTimeout: limits.headersTimeoutMs,
      keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS,
      // How often the timeouts above are checked (Node's default, 30 s, would let a slow client stay 30 s longer).
      connectionsCheckingInterval: Math.min(1_000, limits.headersTimeoutMs),
    },
    handler,
  );
  const h2 = http2.createServer(
    { maxSessionMemory: 32, settings: { maxConcurrentStreams: limits.maxConcurrentStreams } },
    limitRequests(handler, limits.requestTimeoutMs),
  );
  const sockets = new Set<net.Socket>();
  /** Sockets whose protocol is not known yet: nothing is in flight on them, so closing destroys them. */
  const sniffing = new Set<net.Socket>();
  const sessions = new Set<http2.ServerHttp2Session>();
  let closing = false;

  h2.on("session", (s) => {
    sessions.add(s);
    s.once("close", () => sessions.delete(s));
  });
  h2.on("sessionError", () => {});

  const tcp = net.createServer((socket) => {
    if (closing) {
      socket.destroy();
      return;
    }
    sockets.add(socket);
    sniffing.add(socket);
    socket.once("close", () => {
      sockets.delete(socket);
      sniffing.delete(socket);
    });
    socket.on("error", () => socket.destroy());
    socket.setNoDelay(true);
    let buf: Buffer = Buffer.alloc(0);
    socket.setTimeout(limits.idleTimeoutMs, () => socket.destroy());
    const onData = (chunk: Buffer) => {
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
      const n = Math.min(buf.length, PREFACE.length);
      const isH2 = buf.subarray(0, n).equals(PREFACE.subarray(0, n));
      if (isH2 && buf.length < PREFACE.length) return; // "P" could start "POST" or "PRI": wait for more
      socket.off("data", onData);
      sniffing.delete(socket);
      socket.setTimeout(0);
      socket.pause();
      socket.unshift(buf);
      if (isH2) {
        // Do not resume: the Http2Session reads the buffered preface itself (nodejs/node#35475).
        h2.emit("connection", socket);
      } else {
        h1.emit("connection", socket);
        socket.resume();
      }
    };
    socket.on("data", onData);
  });

  return {
    async listen(port, host) {
      const bound = await listenOn(tcp, port, host);
      // The HTTP/1.1 server never listens itself; this starts its connection tracking, which enforces
      // headersTimeout/requestTimeout and lets closeIdleConnections() find idle keep-alive sockets.
      h1.emit("listening");
      return bound;
    },
    async close(graceMs) {
      closing = true;
      const closed = new Promise<void>((resolve) => tcp.close(() => resolve()));
      for (const s of sniffing) s.destroy();
      for (const s of sessions) s.close();
      h1.closeIdleConnections();
      const idle = setInterval(() => h1.closeIdleConnections(), 100);
      const force = setTimeout(() => {
        for (const s of sessions) s.destroy();
        for (const s of sockets) s.destroy();
      }, graceMs);
      try {
        await closed;
      } finally {
        clearInterval(idle);
        clearTimeout(force);
      }
    },
    connections() {
      return sockets.size;
    },
  };
}

/** Listens on `port` and `host`; resolves with the address bound, rejects if listening fails. */
function listenOn(server: net.Server, port: number, host: string): Promise<{ port: number; host: string }> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      const addr = server.address() as net.AddressInfo;
      resolve({ port: addr.port, host: addr.address });
    });
  });
}

/** Certificate and key (PEM) for TLS; a client CA turns on mutual TLS. */
export interface TlsOptions {
  readonly cert: Buffer;
  readonly key: Buffer;
  /** When set, clients must present a certificate signed by this CA. */
  readonly clientCa?: Buffer | undefined;
}

/**
 * The same one port over TLS: HTTP/2 and HTTP/1.1 are chosen by ALPN, so no sniffing is needed. With a client CA,
 * a connection without a valid client certificate is refused during the handshake (mutual TLS).
 */
export function createTlsServer(handler: RequestHandler, tls: TlsOptions, limits: ConnectionLimits = DEFAULT_LIMITS): DualServer {
  /** HTTP/1.1 connections (ALPN chose http/1.1) and how many requests each has in flight. */
  const h1Busy = new Map<net.Socket, number>();
  let closing = false;
  const endIfIdle = (socket: net.Socket) => {
    if (closing && h1Busy.get(socket) === 0) socket.end();
  };
  const limited = limitRequests(handler, limits.requestTimeoutMs, true);
  const server = http2.createSecureServer(
    {
      cert: tls.cert,
      key: tls.key,
      allowHTTP1: true,
      maxSessionMemory: 32,
      handshakeTimeout: limits.idleTimeoutMs,
      settings: { maxConcurrentStreams: limits.maxConcurrentStreams },
      ...(tls.clientCa ? { ca: tls.clientCa, requestCert: true, rejectUnauthorized: true } : {}),
    },
    (req, res) => {
      const socket = req.httpVersionMajor === 1 ? (req.socket as net.Socket) : undefined;
      if (socket && h1Busy.has(socket)) {
        h1Busy.set(socket, (h1Busy.get(socket) ?? 0) + 1);
        if (closing) res.setHeader("connection", "close");
        res.once("close", () => {
          if (!h1Busy.has(socket)) return;
          h1Busy.set(socket, (h1Busy.get(socket) ?? 1) - 1);
          endIfIdle(socket);
        });
      }
      limited(req, res);
    },
  );
  const sockets = new Set<net.Socket>();
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("secureConnection", (socket: net.Socket & { alpnProtocol?: string | false }) => {
    sockets.add(socket);
    if (socket.alpnProtocol !== "h2") h1Busy.set(socket, 0);
    socket.once("close", () => {
      sockets.delete(socket);
      h1Busy.delete(socket);
    });
  });
  server.on("session", (s) => {
    sessions.add(s);
    s.once("close", () => sessions.delete(s));
  });
  server.on("sessionError", () => {});
  server.on("tlsClientError", () => {});

  return {
    listen(port, host) {
      return listenOn(server, port, host);
    },
    async close(graceMs) {
      closing = true;
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      // HTTP/2 sessions get GOAWAY and finish their streams; HTTP/1.1 connections end once their request is done
      // (idle ones now); whatever is left when the grace period is over is destroyed.
      for (const s of sessions) s.close();
      for (const socket of h1Busy.keys()) endIfIdle(socket);
      const force = setTimeout(() => {
        for (const s of sessions) s.destroy();
        for (const s of sockets) s.destroy();
      }, graceMs);
      try {
        await closed;
      } finally {
        clearTimeout(force);
      }
    },
    connections() {
      return sockets.size;
    },
  };
}
