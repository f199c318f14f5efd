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

const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
/** A connection that has not sent its first bytes within this time is dropped. */
const FIRST_BYTES_TIMEOUT_MS = 10_000;

/**
 * Node's http2 server only offers HTTP/1.1 fallback through TLS ALPN, so cleartext needs a sniffer: a net.Server
 * reads the first bytes of each connection and hands the socket to the HTTP/2 server if they are the HTTP/2
 * connection preface, else to the HTTP/1.1 server.
 */
export function createDualServer(handler: RequestHandler): DualServer {
  const h1 = http.createServer({ requestTimeout: 60_000, headersTimeout: 15_000, keepAliveTimeout: 5_000 }, handler);
  const h2 = http2.createServer({ maxSessionMemory: 32 }, handler);
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
    socket.setTimeout(FIRST_BYTES_TIMEOUT_MS, () => socket.destroy());
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
    listen(port, host) {
      return new Promise((resolve, reject) => {
        tcp.once("error", reject);
        tcp.listen(port, host, () => {
          tcp.off("error", reject);
          // The HTTP/1.1 server never listens itself; this starts its connection tracking, which enforces
          // headersTimeout/requestTimeout and lets closeIdleConnections() find idle keep-alive sockets.
          h1.emit("listening");
          const addr = tcp.address() as net.AddressInfo;
          resolve({ port: addr.port, host: addr.address });
        });
      });
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
export function createTlsServer(handler: RequestHandler, tls: TlsOptions): DualServer {
  /** HTTP/1.1 connections (ALPN chose http/1.1) and how many requests each has in flight. */
  const h1Busy = new Map<net.Socket, number>();
  let closing = false;
  const endIfIdle = (socket: net.Socket) => {
    if (closing && h1Busy.get(socket) === 0) socket.end();
  };
  const server = http2.createSecureServer(
    {
      cert: tls.cert,
      key: tls.key,
      allowHTTP1: true,
      maxSessionMemory: 32,
      handshakeTimeout: FIRST_BYTES_TIMEOUT_MS,
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
      handler(req, res);
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
      return new Promise((resolve, reject) => {
        server.once("error", reject);
        server.listen(port, host, () => {
          server.off("error", reject);
          const addr = server.address() as net.AddressInfo;
          resolve({ port: addr.port, host: addr.address });
        });
      });
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
