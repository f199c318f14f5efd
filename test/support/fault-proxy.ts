import * as net from "node:net";

/**
 * A small TCP proxy in front of a test server that fails requests on purpose, so a client's retries and reconnects
 * meet real network failures rather than mocked ones. It speaks just enough HTTP to tell requests apart on a kept-
 * alive connection: on HTTP/2 each stream a client opens (a HEADERS frame) is a request; on HTTP/1.1 client bytes
 * after the server has answered start the next request (clients wait for a response before sending the next).
 *
 * Each new request takes the next fault of `plan` ("pass" once the plan is used up):
 *   - "refuse": the connection is reset before the request is forwarded; the server never sees it.
 *   - "lose-response": the request reaches the server and is handled there, but the connection is reset as soon
 *     as its response starts, so the client never learns the outcome. This is the case where retrying a call with
 *     side effects would repeat them.
 *   - "pass": forwarded untouched.
 * `block()` cuts every open connection and resets new ones until `unblock()`: a network partition.
 */
export type Fault = "refuse" | "lose-response" | "pass";

export interface FaultProxy {
  readonly url: string;
  readonly port: number;
  /** When each request started (ms since the epoch), in order, whatever its fault. */
  readonly requests: number[];
  /** Connections accepted so far. */
  readonly connections: number;
  /** Faults for the next requests, taken in order; replaces any left over. */
  plan(faults: readonly Fault[]): void;
  block(): void;
  unblock(): void;
  close(): Promise<void>;
}

const H2_PREFACE_LENGTH = 24; // "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
const FRAME_HEADERS = 0x1;

/** Calls `onFrame(type, streamId)` as soon as each HTTP/2 frame header of a byte stream is in; returns a feeder. */
function frameReader(skipPreface: boolean, onFrame: (type: number, streamId: number) => void): (chunk: Buffer) => void {
  let buf = Buffer.alloc(0);
  let skip = skipPreface ? H2_PREFACE_LENGTH : 0; // bytes still to pass over: the preface, then each payload
  return (chunk) => {
    buf = Buffer.concat([buf, chunk]);
    for (;;) {
      if (skip > 0) {
        const n = Math.min(skip, buf.length);
        buf = buf.subarray(n);
        skip -= n;
        if (skip > 0) return;
      }
      if (buf.length < 9) return;
      skip = buf.readUIntBE(0, 3);
      onFrame(buf[3] ?? 0, buf.readUInt32BE(5) & 0x7fffffff);
      buf = buf.subarray(9);
    }
  };
}

export async function startFaultProxy(targetPort: number, host = "127.0.0.1"): Promise<FaultProxy> {
  const queue: Fault[] = [];
  const requests: number[] = [];
  const open = new Set<net.Socket>();
  let blocked = false;
  let connections = 0;
  const nextFault = (): Fault => {
    requests.push(Date.now());
    return queue.shift() ?? "pass";
  };

  const server = net.createServer((client) => {
    connections++;
    open.add(client);
    client.on("close", () => open.delete(client));
    client.on("error", () => {});
    if (blocked) {
      client.resetAndDestroy();
      return;
    }
    const upstream = net.connect(targetPort, host);
    open.add(upstream);
    upstream.on("close", () => {
      open.delete(upstream);
      client.destroy();
    });
    upstream.on("error", () => client.destroy());
    client.on("close", () => upstream.destroy());

    let cut = false;
    const cutNow = () => {
      cut = true;
      client.resetAndDestroy();
      upstream.destroy();
    };
    let h2: boolean | undefined;
    // HTTP/2: streams whose response is to be lost, and the frame readers of both directions.
    const losing = new Set<number>();
    let fromClient: ((chunk: Buffer) => void) | undefined;
    let fromServer: ((chunk: Buffer) => void) | undefined;
    // HTTP/1.1: where the exchange on this connection is, and the fault of the current request.
    let phase: "idle" | "request" | "response" = "idle";
    let current: Fault = "pass";

    client.on("data", (chunk: Buffer) => {
      if (cut) return;
      if (h2 === undefined) {
        h2 = chunk.subarray(0, 3).toString("latin1") === "PRI";
        if (h2) {
          fromClient = frameReader(true, (type, stream) => {
            if (type !== FRAME_HEADERS || stream % 2 !== 1 || cut) return;
            const fault = nextFault();
            if (fault === "refuse") cutNow();
            else if (fault === "lose-response") losing.add(stream);
          });
          fromServer = frameReader(false, (type, stream) => {
            if (type === FRAME_HEADERS && losing.has(stream)) cutNow();
          });
        }
      }
      if (h2) fromClient?.(chunk);
      else if (phase !== "request") {
        phase = "request";
        current = nextFault();
        if (current === "refuse") cutNow();
      }
      if (cut) return;
      if (!upstream.write(chunk)) client.pause();
    });
    upstream.on("drain", () => client.resume());

    upstream.on("data", (chunk: Buffer) => {
      if (cut) return;
      if (h2) fromServer?.(chunk);
      else if (phase === "request") {
        phase = "response";
        if (current === "lose-response") cutNow();
      }
      if (cut) return;
      if (!client.write(chunk)) upstream.pause();
    });
    client.on("drain", () => upstream.resume());
  });

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, host, () => resolve());
  });
  const port = (server.address() as net.AddressInfo).port;
  return {
    url: `http://${host}:${port}`,
    port,
    requests,
    get connections() {
      return connections;
    },
    plan(faults) {
      queue.length = 0;
      queue.push(...faults);
    },
    block() {
      blocked = true;
      for (const s of open) s.destroy();
    },
    unblock() {
      blocked = false;
    },
    async close() {
      for (const s of open) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
