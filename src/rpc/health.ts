import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { Health, HealthCheckResponse_ServingStatus as Status } from "../../gen/grpc/health/v1/health_pb.js";

export interface HealthDeps {
  /** Whether the service can serve now (the store answers, and it is not draining). */
  readonly ready: () => Promise<boolean>;
  /** The services reported; "" (the server as a whole) is always known. */
  readonly services: readonly string[];
  /** Aborted when draining: watches report NOT_SERVING, then end with UNAVAILABLE. */
  readonly drain: AbortSignal;
  /** How often a watch re-checks readiness. Default 1000 ms. */
  readonly pollMs?: number;
}

/**
 * The standard gRPC health service (grpc.health.v1), reflecting the store's readiness, so meshes, load balancers
 * and `grpc_health_probe` see the same state as /readyz.
 */
export function createHealthImpl(deps: HealthDeps): ServiceImpl<typeof Health> {
  const known = new Set(["", ...deps.services]);
  const status = async () => ((await deps.ready().catch(() => false)) ? Status.SERVING : Status.NOT_SERVING);
  const pollMs = deps.pollMs ?? 1000;

  return {
    async check(req) {
      if (!known.has(req.service)) throw new ConnectError(`unknown service "${req.service}"`, Code.NotFound);
      return { status: await status() };
    },
    async *watch(req, ctx) {
      let last: Status | undefined;
      const signal = AbortSignal.any([ctx.signal, deps.drain]);
      while (!signal.aborted) {
        const now = known.has(req.service) ? await status() : Status.SERVICE_UNKNOWN;
        if (now !== last) {
          last = now;
          yield { status: now };
        }
        await new Promise<void>((resolve) => {
          const t = setTimeout(done, pollMs);
          function done() {
            clearTimeout(t);
            signal.removeEventListener("abort", done);
            resolve();
          }
          signal.addEventListener("abort", done, { once: true });
        });
      }
      if (deps.drain.aborted && !ctx.signal.aborted) {
        if (last !== Status.NOT_SERVING) yield { status: Status.NOT_SERVING };
        throw new ConnectError("server is shutting down", Code.Unavailable);
      }
    },
    async list() {
      const s = await status();
      return { statuses: Object.fromEntries([...known].map((name) => [name, { status: s }])) };
    },
  };
}
