import { createClient, ConnectError } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { SecretService } from "../gen/latchkey/v1/secret_service_pb.js";
import { AuditService } from "../gen/latchkey/v1/audit_service_pb.js";
import { TokenService, Role } from "../gen/latchkey/v1/token_service_pb.js";
import { startTestServer, ADMIN_TOKEN } from "../test/support/server.js";
import { rest } from "../test/support/clients.js";

const s = await startTestServer({ LATCHKEY_AUDIT_STDOUT: "true" });
const t = createConnectTransport({ baseUrl: s.url, httpVersion: "1.1" });
const h = { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } };
const sec = createClient(SecretService, t);
const aud = createClient(AuditService, t);
const tok = createClient(TokenService, t);
await sec.storeSecret({ name: "a", value: "VALUE-123" }, h);
// bad body
console.log((await fetch(s.url + "/v1/secrets", { method: "POST", headers: { authorization: `Bearer ${ADMIN_TOKEN}` }, body: "{bad" })).status);
// watch on missing store
try {
  const ac = new AbortController(); setTimeout(() => ac.abort(), 500);
  for await (const m of sec.watchSecrets({ store: "nope" }, { ...h, signal: ac.signal })) { console.log("msg", m.type); }
} catch (e) { console.log("watch err", ConnectError.from(e).code, ConnectError.from(e).rawMessage); }
try {
  const ac = new AbortController(); setTimeout(() => ac.abort(), 300);
  for await (const m of sec.watchSecrets({ store: "" }, { ...h, signal: ac.signal })) { console.log("msg", m.type); }
} catch (e) { console.log("watch err", ConnectError.from(e).code, ConnectError.from(e).rawMessage); }
const made = await tok.createToken({ label: "x", role: Role.READER }, h);
console.log(made.token?.id, made.secret.slice(0, 8));
await new Promise((r) => setTimeout(r, 200));
const ev = await aud.listAuditEvents({}, h);
for (const e of ev.events) console.log(e.seq, e.op, e.store, e.name, e.version, e.code, e.actorKind, e.tokenId, e.ip, e.requestId);
const r = await rest(s.url, "GET", "/v1/audit?limit=3");
console.log(r.status, r.headers.get("x-next-cursor"), r.body.length);
console.log(s.logs.filter((l) => l.includes('"audit"')).slice(0, 3));
await s.stop();
