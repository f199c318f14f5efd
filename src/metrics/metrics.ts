import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";
import type { Storage } from "../storage/storage.js";

/**
 * Prometheus metrics. Labels are operation names (RPC procedures and REST route templates, from a closed set),
 * result codes and storage method names: never a secret name, a value or a token.
 */
export interface Metrics {
  readonly registry: Registry;
  /** One finished request: its operation (or "other"), its code and how long it took. */
  request(op: string, code: string, seconds: number): void;
  /** One rotation (or purge) by the scheduler, and how late it was. */
  rotation(kind: "rotated" | "purged", lagSeconds: number): void;
  /** How far behind the change feed the scheduler is: now minus the time of the last change it read. */
  feedLag(seconds: number): void;
  /** Wraps a storage so each call's duration is observed, by method. */
  instrument(storage: Storage): Storage;
  /** The text exposition format. */
  render(): Promise<string>;
}

export function createMetrics(opts: { knownOps: ReadonlySet<string> }): Metrics {
  const registry = new Registry();
  // Standard names (process_*, nodejs_*), as dashboards and alerts for Node services expect them.
  collectDefaultMetrics({ register: registry });
  const requests = new Counter({
    name: "latchkey_requests_total",
    help: "Requests handled, by operation and result code.",
    labelNames: ["op", "code"],
    registers: [registry],
  });
  const latency = new Histogram({
    name: "latchkey_request_duration_seconds",
    help: "Request latency, by operation.",
    labelNames: ["op"],
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [registry],
  });
  const rotations = new Counter({
    name: "latchkey_rotations_total",
    help: "Scheduled rotations and purges this instance made.",
    labelNames: ["kind"],
    registers: [registry],
  });
  const rotationLag = new Histogram({
    name: "latchkey_rotation_lag_seconds",
    help: "How long after it was due each scheduled rotation happened.",
    buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    registers: [registry],
  });
  const storeLatency = new Histogram({
    name: "latchkey_store_duration_seconds",
    help: "Latency of storage calls, by method.",
    labelNames: ["method"],
    buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5],
    registers: [registry],
  });
  const feedLagGauge = new Gauge({
    name: "latchkey_change_feed_lag_seconds",
    help: "Time between the last change read from the change feed and when it was read.",
    registers: [registry],
  });

  return {
    registry,
    request(op, code, seconds) {
      const label = opts.knownOps.has(op) ? op : "other";
      requests.inc({ op: label, code });
      latency.observe({ op: label }, seconds);
    },
    rotation(kind, lagSeconds) {
      rotations.inc({ kind });
      if (kind === "rotated") rotationLag.observe(Math.max(0, lagSeconds));
    },
    feedLag(seconds) {
      feedLagGauge.set(Math.max(0, seconds));
    },
    instrument(storage) {
      const timed: Record<string, unknown> = {};
      for (const [key, value] of Object.entries(storage)) {
        if (typeof value !== "function" || key === "changes") {
          timed[key] = value;
          continue;
        }
        const fn = value as (...args: unknown[]) => Promise<unknown>;
        timed[key] = (...args: unknown[]) => {
          const end = storeLatency.startTimer({ method: key });
          const p = fn.apply(storage, args);
          return p.finally(end);
        };
      }
      return timed as unknown as Storage;
    },
    render() {
      return registry.metrics();
    },
  };
}
