/**
 * The ceilings Latchkey's transport figures are measured against: servers that do nothing but answer.
 *
 *   node bench/ceilings.mjs bare-h2 PORT   node:http2 h2c: a fixed gRPC-framed reply (with grpc-status 0 in trailers)
 *                                          for application/grpc*, a fixed JSON body for anything else
 *   node bench/ceilings.mjs bare-h1 PORT   node:http: a fixed JSON body
 *   node bench/ceilings.mjs grpc-js PORT   @grpc/grpc-js with one trivial unary handler (no proto parsing)
 *
 * The replies are the size of a GetSecret answer. Plain JavaScript, so nothing but node runs.
 */
import * as http from "node:http";
import * as http2 from "node:http2";

const [mode, portText] = process.argv.slice(2);
const port = Number(portText);
const PROTO_REPLY = Buffer.alloc(132, 7);
const GRPC_FRAME = Buffer.concat([Buffer.from([0, 0, 0, 0, PROTO_REPLY.length]), PROTO_REPLY]);
const JSON_REPLY = Buffer.from(JSON.stringify({ secret: { name: "db/password", padding: "x".repeat(380) }, value: "s3cret" }));

function ready() {
  process.stdout.write(`ready ${port}\n`);
}

if (mode === "bare-h2") {
  const server = http2.createServer();
  server.on("stream", (stream, headers) => {
    stream.on("data", () => {});
    stream.on("end", () => {
      const type = String(headers["content-type"] ?? "");
      if (type.startsWith("application/grpc")) {
        stream.respond({ ":status": 200, "content-type": "application/grpc+proto" }, { waitForTrailers: true });
        stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
        stream.end(GRPC_FRAME);
      } else {
        stream.respond({ ":status": 200, "content-type": "application/json", "content-length": JSON_REPLY.length });
        stream.end(JSON_REPLY);
      }
    });
  });
  server.listen(port, "127.0.0.1", ready);
} else if (mode === "bare-h1") {
  const server = http.createServer((req, res) => {
    req.on("data", () => {});
    req.on("end", () => {
      res.writeHead(200, { "content-type": "application/json", "content-length": JSON_REPLY.length });
      res.end(JSON_REPLY);
    });
  });
  server.keepAliveTimeout = 60_000;
  server.listen(port, "127.0.0.1", ready);
} else if (mode === "grpc-js") {
  const grpc = await import("@grpc/grpc-js");
  const same = (b) => b;
  const server = new grpc.Server();
  server.addService(
    {
      GetSecret: {
        path: "/latchkey.v1.SecretService/GetSecret",
        requestStream: false,
        responseStream: false,
        requestSerialize: same,
        requestDeserialize: same,
        responseSerialize: same,
        responseDeserialize: same,
      },
    },
    { GetSecret: (_call, callback) => callback(null, PROTO_REPLY) },
  );
  server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (err) => {
    if (err) throw err;
    ready();
  });
} else {
  console.error(`unknown ceiling ${mode}`);
  process.exit(2);
}
