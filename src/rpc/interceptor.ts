import { createHash } from "node:crypto";
import { toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createContextKey, type Interceptor } from "@connectrpc/connect";
import { type Auditor, noteTarget } from "../audit/auditor.js";
import type { AccessControl } from "../auth/access.js";
import { LatchkeyError } from "../domain/errors.js";
import { ANONYMOUS, type Principal } from "../domain/principal.js";
import type { RequestInfo } from "../http/request-info.js";
import type { Logger } from "../log/logger.js";
import { codeName, toConnectError } from "./errors.js";
import { permissionFor } from "./policy.js";

/** The RequestInfo of the call, set by the HTTP layer through the adapter's contextValues. */
export const kRequestInfo = createContextKey<RequestInfo | undefined>(undefined, { description: "request info" });

/** Who is calling, set by the interceptor once authorized. Handlers read it with `ctx.values.get(kPrincipal)`. */
export const kPrincipal = createContextKey<Principal>(ANONYMOUS, { description: "principal" });

/** The code name a thrown value becomes for the caller (for the audit log, before it is mapped). */
export function outcomeCode(err: unknown): string {
  if (err instanceof LatchkeyError) return err.code;
  if (err instanceof ConnectError) return codeName(err.code);
  return "internal";
}

/**
 * The one interceptor of every RPC, on every protocol: records the procedure, enforces the access policy, audits
 * the call, and maps every failure to a ConnectError whose message is safe to return, recording the outcome.
 */
export function createRpcInterceptor(deps: { access: AccessControl; auditor: Auditor; logger: Logger }): Interceptor {
  const { access, auditor, logger } = deps;
  return (next) => async (req) => {
    const info = req.contextValues.get(kRequestInfo);
    const requestId = info?.id ?? "unknown";
    const op = `${req.method.parent.typeName}/${req.method.name}`;
    if (info) info.operation = op;
    let principal: Principal = ANONYMOUS;
    let denied: unknown;
    const action = permissionFor(req.method);
    try {
      if (action === undefined) throw new ConnectError(`no access policy for ${req.method.name}`, Code.PermissionDenied);
      principal = await access.authenticate(req.header.get("authorization") ?? undefined);
      access.authorize(action, principal, info?.ip);
    } catch (err) {
      denied = err;
    }
    req.contextValues.set(kPrincipal, principal);
    if (info) info.principal = principal;
    // Health checks and reflection are not audited (probes would drown the log).
    const audit = action === "public" ? undefined : auditor.begin({ requestId, principal, ip: info?.ip, op });
    try {
      const call = async () => {
        if (denied !== undefined) {
          // The entry names what the request names, even for a call refused before it ran.
          const m = (req.stream ? {} : req.message) as { store?: unknown; name?: unknown };
          noteTarget({
            store: typeof m.store === "string" ? m.store || "default" : undefined,
            name: typeof m.name === "string" && m.name !== "" ? m.name : undefined,
          });
          throw denied;
        }
        return next(req);
      };
      let res: Awaited<ReturnType<typeof next>>;
      try {
        res = audit ? await audit.within(call) : await call();
      } catch (err) {
        audit?.end(outcomeCode(err));
        throw err;
      }
      res.trailer.set("x-request-id", requestId);
      // A read served over Connect GET (polling) gets an ETag even where the handler sets none, from the bytes of
      // the answer, so a poller's If-None-Match gets a bodiless 304 while nothing changed.
      if (!res.stream && req.requestMethod === "GET" && !res.header.has("etag")) {
        res.header.set("etag", contentTag(toBinary(res.method.output, res.message)));
      }
      if (!res.stream) {
        audit?.end("ok");
        if (info) info.code = "ok";
        return res;
      }
      // A stream's outcome is known only when it ends: map its errors the same way, and record how it ended. The
      // stream's own work (a watch checking its store) runs inside the audited call.
      const messages = audit ? audit.bind(res.message) : res.message;
      return {
        ...res,
        message: (async function* () {
          try {
            yield* messages;
            // A stream the client cancelled ends quietly here (the handler sees its signal); record it as such.
            const code = req.signal.aborted ? "canceled" : "ok";
            audit?.end(code);
            if (info) info.code = code;
          } catch (err) {
            const ce = toConnectError(err, requestId, logger);
            audit?.end(codeName(ce.code));
            if (info) info.code = codeName(ce.code);
            // The response trailer already carries x-request-id, and the error's metadata is added to it.
            throw ce;
          } finally {
            audit?.end("canceled");
          }
        })(),
      };
    } catch (err) {
      const ce = toConnectError(err, requestId, logger);
      if (info) info.code = codeName(ce.code);
      ce.metadata.set("x-request-id", requestId);
      throw ce;
    }
  };
}

/** A strong ETag naming exactly these bytes. */
export function contentTag(bytes: Uint8Array): string {
  return `"h${createHash("sha256").update(bytes).digest("base64url").slice(0, 27)}"`;
}
