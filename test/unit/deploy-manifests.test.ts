import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join, posix } from "node:path";
import { describe, it } from "node:test";
import { parseAllDocuments } from "yaml";
import { REST_POLICY } from "../../src/auth/policy.js";
import { ConfigError, loadConfig } from "../../src/config/config.js";

/**
 * The deployment artefacts: Dockerfile, .dockerignore and the Kubernetes manifests in deploy/kubernetes.
 *
 * STRUCTURE ONLY. No image is built and nothing is applied to a cluster here: this environment has no container
 * engine and no Kubernetes API server, so these tests cannot show that the image builds or that the pods start.
 * They parse the files and check that they agree with each other and with the code: labels and selectors, the
 * port, the probe paths, that every environment variable set is one Latchkey reads (names taken from
 * src/config/config.ts) and that the Deployment's settings pass loadConfig, the drain timings, the security
 * settings, and that the Dockerfile is multi-stage, runs as a non-root user with production dependencies only
 * and starts the file `npm run build` produces.
 */

const ROOT = join(import.meta.dirname, "..", "..");
const K8S = join(ROOT, "deploy", "kubernetes");

// ---- Kubernetes documents -------------------------------------------------------------------------------------

interface Meta {
  name: string;
  namespace?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: Meta;
}
interface Selector {
  matchLabels?: Record<string, string>;
}
interface Probe {
  httpGet?: { path: string; port: number | string; scheme?: string };
  grpc?: { port: number };
  tcpSocket?: { port: number | string };
  periodSeconds?: number;
  failureThreshold?: number;
}
interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: { secretKeyRef?: { name: string; key: string; optional?: boolean } };
}
interface Container {
  name: string;
  image: string;
  ports?: { name?: string; containerPort: number; protocol?: string }[];
  env?: EnvVar[];
  startupProbe?: Probe;
  readinessProbe?: Probe;
  livenessProbe?: Probe;
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
  securityContext?: {
    runAsNonRoot?: boolean;
    runAsUser?: number;
    allowPrivilegeEscalation?: boolean;
    readOnlyRootFilesystem?: boolean;
    capabilities?: { drop?: string[]; add?: string[] };
  };
  volumeMounts?: { name: string; mountPath: string }[];
}
interface AffinityTerm {
  weight?: number;
  podAffinityTerm?: { topologyKey: string; labelSelector: Selector };
}
interface Deployment extends K8sObject {
  spec: {
    replicas: number;
    selector: Selector;
    strategy?: { rollingUpdate?: { maxUnavailable?: number | string } };
    template: {
      metadata: Meta;
      spec: {
        serviceAccountName?: string;
        enableServiceLinks?: boolean;
        terminationGracePeriodSeconds?: number;
        securityContext?: { runAsNonRoot?: boolean; runAsUser?: number; seccompProfile?: { type: string } };
        affinity?: { podAntiAffinity?: { preferredDuringSchedulingIgnoredDuringExecution?: AffinityTerm[] } };
        containers: Container[];
        volumes?: { name: string; emptyDir?: object }[];
      };
    };
  };
}
interface Service extends K8sObject {
  spec: {
    type?: string;
    selector: Record<string, string>;
    ports: { name?: string; port: number; targetPort?: number | string; protocol?: string; appProtocol?: string }[];
  };
}
interface Pdb extends K8sObject {
  spec: { minAvailable?: number | string; maxUnavailable?: number | string; selector: Selector };
}
interface NetworkPolicy extends K8sObject {
  spec: { podSelector: Selector; ingress?: { ports?: { port: number | string }[] }[] };
}
interface Secret extends K8sObject {
  stringData?: Record<string, string>;
  data?: Record<string, string>;
}
interface Kustomization {
  apiVersion: string;
  kind: string;
  namespace?: string;
  resources: string[];
  images?: { name: string; newName?: string; newTag?: string }[];
}

/** Every YAML document of a file, as plain objects; a syntax error fails the test. */
function documents(file: string): unknown[] {
  const docs = parseAllDocuments(readFileSync(file, "utf8"));
  const parsed: unknown[] = [];
  for (const d of docs) {
    assert.deepEqual(d.errors, [], `${file}: YAML errors`);
    const value: unknown = d.toJS();
    if (value !== null && value !== undefined) parsed.push(value);
  }
  return parsed;
}

const kustomization = documents(join(K8S, "kustomization.yaml"))[0] as Kustomization;
const manifestFiles = readdirSync(K8S).filter((f) => /\.ya?ml$/.test(f) && f !== "kustomization.yaml");
const resources: K8sObject[] = kustomization.resources.flatMap((f) => documents(join(K8S, f)) as K8sObject[]);

function only<T extends K8sObject>(kind: string): T {
  const found = resources.filter((r) => r.kind === kind);
  assert.equal(found.length, 1, `exactly one ${kind} in the kustomization's resources`);
  return found[0] as T;
}

const deployment = only<Deployment>("Deployment");
const service = only<Service>("Service");
const pdb = only<Pdb>("PodDisruptionBudget");
const netpol = only<NetworkPolicy>("NetworkPolicy");
const secret = documents(join(K8S, "secret.example.yaml"))[0] as Secret;
const pod = deployment.spec.template.spec;
const container = pod.containers.find((c) => c.name === "latchkey") as Container;
const env = new Map((container?.env ?? []).map((e) => [e.name, e]));

/** A probe's or Service's port: a number, or the name of one of the container's ports. */
function portNumber(port: number | string | undefined): number | undefined {
  if (typeof port === "number") return port;
  return container.ports?.find((p) => p.name === port)?.containerPort;
}

/** Whether every label of `selector` is on `labels` (and it selects something). */
function selects(selector: Record<string, string> | undefined, labels: Record<string, string> | undefined): boolean {
  const entries = Object.entries(selector ?? {});
  return entries.length > 0 && entries.every(([k, v]) => labels?.[k] === v);
}

/** Bytes of a Kubernetes memory quantity (Ki, Mi, Gi, or plain bytes). */
function bytes(q: string): number {
  const m = /^(\d+)(Ki|Mi|Gi)?$/.exec(q);
  assert.ok(m, `memory quantity ${q}`);
  const unit = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30 }[m[2] as "Ki" | "Mi" | "Gi"] ?? 1;
  return Number(m[1]) * unit;
}

/** Every variable name loadConfig reads or mentions: the LATCHKEY_*, MONGODB_URI and LOG_LEVEL names in its body. */
function latchkeyVariables(): Set<string> {
  const source = readFileSync(join(ROOT, "src", "config", "config.ts"), "utf8");
  const start = source.indexOf("export function loadConfig(");
  assert.ok(start >= 0, "loadConfig is in src/config/config.ts");
  const end = source.indexOf("\n}\n", start);
  const body = source.slice(start, end);
  return new Set(body.match(/\b(?:LATCHKEY_[A-Z0-9_]*[A-Z0-9]|MONGODB_URI|LOG_LEVEL)\b/g) ?? []);
}

/** Values that pass loadConfig, standing in for the Secret's (which are never in the repository). */
const FAKE_SECRETS: Record<string, string> = {
  MONGODB_URI: "mongodb://mongo-0.mongo:27017,mongo-1.mongo:27017/?replicaSet=rs0",
  LATCHKEY_MASTER_KEY: Buffer.alloc(32, 7).toString("base64"),
  LATCHKEY_ADMIN_TOKEN: "test-admin-token-0123456789",
};

/** The environment the container gets: the image's ENV, then the Deployment's literal values and the secrets. */
function containerEnv(secrets: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = { ...dockerfileEnv() };
  for (const e of container.env ?? []) {
    if (e.value !== undefined) out[e.name] = e.value;
    else if (e.valueFrom?.secretKeyRef && secrets[e.name] !== undefined) out[e.name] = secrets[e.name] as string;
  }
  return out;
}

// ---- Dockerfile -----------------------------------------------------------------------------------------------

interface Instruction {
  op: string;
  args: string;
}
interface Stage {
  from: string;
  name: string | undefined;
  instructions: Instruction[];
}

/** The Dockerfile's stages and instructions: comments dropped, continuation lines joined. */
function dockerfileStages(): Stage[] {
  const text = readFileSync(join(ROOT, "Dockerfile"), "utf8");
  const lines = text.split("\n").filter((l) => !/^\s*#/.test(l));
  const joined = lines.join("\n").replace(/\\\n/g, " ");
  const stages: Stage[] = [];
  for (const line of joined.split("\n")) {
    const m = /^\s*([A-Za-z]+)\s+(.*)$/.exec(line);
    if (!m) continue;
    const op = (m[1] as string).toUpperCase();
    const args = (m[2] as string).trim();
    if (op === "FROM") {
      const f = /^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$/i.exec(args);
      assert.ok(f, `FROM ${args}`);
      stages.push({ from: f[1] as string, name: f[2], instructions: [] });
    } else {
      assert.ok(stages.length > 0, `${op} before the first FROM`);
      stages[stages.length - 1]?.instructions.push({ op, args });
    }
  }
  return stages;
}

const stages = dockerfileStages();
const finalStage = stages[stages.length - 1] as Stage;
const finalOps = (op: string) => finalStage.instructions.filter((i) => i.op === op);

/** ENV of the final stage, in either the `K=V K2=V2` or the `K V` form. */
function dockerfileEnv(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const { args } of finalOps("ENV")) {
    if (/^\S+=/.test(args)) {
      for (const m of args.matchAll(/(\S+?)=("[^"]*"|\S*)/g)) out[m[1] as string] = (m[2] as string).replace(/^"|"$/g, "");
    } else {
      const [k, ...v] = args.split(/\s+/);
      out[k as string] = v.join(" ");
    }
  }
  return out;
}

/** The arguments of an exec-form (JSON array) instruction. */
function execForm(args: string): string[] {
  const json = args.slice(args.indexOf("["));
  const parsed: unknown = JSON.parse(json);
  assert.ok(Array.isArray(parsed), `exec form: ${args}`);
  return parsed as string[];
}

/** Sources of the COPY instructions that take files from the build context (not --from another stage). */
function contextCopies(stage: Stage): string[] {
  return stage.instructions
    .filter((i) => i.op === "COPY" && !/--from=/.test(i.args))
    .flatMap((i) => {
      const words = i.args.split(/\s+/).filter((w) => !w.startsWith("--"));
      return words.slice(0, -1).map((w) => w.replace(/^\.\//, "").replace(/\/$/, ""));
    });
}

/** Whether .dockerignore leaves `path` (relative to the context) out of the build context. */
function dockerignored(path: string, patterns: readonly string[]): boolean {
  const toRegex = (p: string) =>
    new RegExp(
      `^${p
        .replace(/^\//, "")
        .replace(/\/$/, "")
        .replace(/[.+^${}()|[\]\\]/g, "\\$&")
        .replace(/\*\*\//g, "\u0000")
        .replace(/\*\*/g, ".*")
        .replace(/\*/g, "[^/]*")
        .replace(/\?/g, "[^/]")
        .replace(/\u0000/g, "(?:.*/)?")}$`,
    );
  const prefixes = path.split("/").map((_, i, parts) => parts.slice(0, i + 1).join("/"));
  let excluded = false;
  for (const raw of patterns) {
    const negated = raw.startsWith("!");
    const re = toRegex(negated ? raw.slice(1) : raw);
    if (prefixes.some((p) => re.test(p))) excluded = !negated;
  }
  return excluded;
}

// ---- the tests ------------------------------------------------------------------------------------------------

describe("deploy/kubernetes: files and kustomization", () => {
  it("is a kustomization listing every manifest but the example Secret, with no namespace baked in", () => {
    assert.equal(kustomization.apiVersion, "kustomize.config.k8s.io/v1beta1");
    assert.equal(kustomization.kind, "Kustomization");
    assert.equal(kustomization.namespace, undefined, "namespace-less: chosen when applying");
    for (const f of kustomization.resources) assert.ok(existsSync(join(K8S, f)), `${f} exists`);
    assert.deepEqual(
      [...kustomization.resources].sort(),
      manifestFiles.filter((f) => f !== "secret.example.yaml").sort(),
      "every manifest is listed",
    );
    assert.ok(!kustomization.resources.includes("secret.example.yaml"), "placeholders are never applied");
  });

  it("has the expected kinds and API versions, none with a namespace", () => {
    const kinds = new Map(resources.map((r) => [r.kind, r.apiVersion]));
    assert.deepEqual(
      Object.fromEntries([...kinds].sort()),
      {
        Deployment: "apps/v1",
        NetworkPolicy: "networking.k8s.io/v1",
        PodDisruptionBudget: "policy/v1",
        Service: "v1",
        ServiceAccount: "v1",
      },
    );
    assert.equal(secret.kind, "Secret");
    assert.equal(secret.apiVersion, "v1");
    for (const r of [...resources, secret]) {
      assert.ok(r.metadata?.name, `${r.kind} has a name`);
      assert.equal(r.metadata.namespace, undefined, `${r.kind} ${r.metadata.name} has no namespace`);
    }
  });

  it("uses the image the kustomization maps, and the Deployment's ServiceAccount", () => {
    const image = kustomization.images?.find((i) => i.name === container.image);
    assert.ok(image, `kustomization images: has an entry for "${container.image}"`);
    assert.ok(image.newTag, "a pinned tag");
    const sa = only<K8sObject & { automountServiceAccountToken?: boolean }>("ServiceAccount");
    assert.equal(pod.serviceAccountName, sa.metadata.name);
    assert.equal(sa.automountServiceAccountToken, false, "Latchkey never calls the Kubernetes API");
  });
});

describe("deploy/kubernetes: Deployment", () => {
  it("runs 3 replicas, and its selector matches the pods, the Service, the PDB and the NetworkPolicy", () => {
    assert.equal(deployment.spec.replicas, 3);
    const podLabels = deployment.spec.template.metadata.labels;
    const selector = deployment.spec.selector.matchLabels;
    assert.ok(selects(selector, podLabels), "Deployment selector matches its pod template");
    assert.ok(selects(service.spec.selector, podLabels), "Service selector matches the pods");
    assert.deepEqual(service.spec.selector, selector, "Service selects exactly the Deployment's pods");
    assert.ok(selects(pdb.spec.selector.matchLabels, podLabels), "PDB selector matches the pods");
    assert.deepEqual(pdb.spec.selector.matchLabels, selector);
    assert.ok(selects(netpol.spec.podSelector.matchLabels, podLabels), "NetworkPolicy applies to the pods");
  });

  it("serves one port, 8200 (Latchkey's default), which the Service, the probes and the scrape annotation use", () => {
    const defaults = loadConfig({});
    assert.equal(container.ports?.length, 1);
    const port = container.ports?.[0];
    assert.equal(port?.containerPort, defaults.port);
    assert.equal(port?.containerPort, 8200);
    assert.equal(Number(env.get("LATCHKEY_PORT")?.value ?? defaults.port), port?.containerPort);
    const svcPort = service.spec.ports[0];
    assert.equal(portNumber(svcPort?.targetPort ?? svcPort?.port), port?.containerPort, "Service targetPort");
    for (const [name, probe] of Object.entries({
      startup: container.startupProbe,
      readiness: container.readinessProbe,
      liveness: container.livenessProbe,
    })) {
      assert.ok(probe?.httpGet, `${name} probe is an HTTP GET`);
      assert.equal(portNumber(probe.httpGet.port), port?.containerPort, `${name} probe port`);
    }
    assert.ok(
      netpol.spec.ingress?.some((rule) => rule.ports?.some((p) => portNumber(p.port) === port?.containerPort)),
      "the NetworkPolicy lets clients reach the port",
    );
  });

  it("probes readiness on /readyz and liveness on /healthz, routes any caller may use", () => {
    assert.equal(container.readinessProbe?.httpGet?.path, "/readyz");
    assert.equal(container.livenessProbe?.httpGet?.path, "/healthz");
    assert.ok(container.startupProbe?.httpGet?.path, "a startup probe, so a slow MongoDB does not kill the pod");
    for (const probe of [container.startupProbe, container.readinessProbe, container.livenessProbe]) {
      const path = probe?.httpGet?.path;
      assert.equal(REST_POLICY[`GET ${path}`], "public", `GET ${path} needs no token (the kubelet has none)`);
    }
  });

  it("sets only variables Latchkey reads, with the secrets from a Secret", () => {
    const known = latchkeyVariables();
    for (const name of ["LATCHKEY_HOST", "LATCHKEY_PORT", "LATCHKEY_DRAIN_DELAY_MS", "MONGODB_URI", "LOG_LEVEL"]) {
      assert.ok(known.has(name), `the parse of config.ts finds ${name}`);
    }
    for (const e of container.env ?? []) assert.ok(known.has(e.name), `${e.name} is a Latchkey variable`);
    assert.equal(new Set(env.keys()).size, container.env?.length, "no variable is set twice");

    const secretKeys = new Set(Object.keys({ ...secret.stringData, ...secret.data }));
    const sensitive = ["MONGODB_URI", "LATCHKEY_MASTER_KEY", "LATCHKEY_ADMIN_TOKEN", "LATCHKEY_SERVICE_TOKENS", "LATCHKEY_PREVIOUS_MASTER_KEYS"];
    for (const name of sensitive) {
      const e = env.get(name);
      if (e === undefined) continue;
      assert.equal(e.value, undefined, `${name} is not written in the manifest`);
      const ref = e.valueFrom?.secretKeyRef;
      assert.ok(ref, `${name} comes from a secretKeyRef`);
      assert.equal(ref.name, secret.metadata.name, `${name} names the Secret of secret.example.yaml`);
      if (!ref.optional) assert.ok(secretKeys.has(ref.key), `secret.example.yaml shows the key ${ref.key}`);
    }
  });

  it("sets what MongoDB mode requires, and the result passes loadConfig", () => {
    for (const name of ["MONGODB_URI", "LATCHKEY_MASTER_KEY", "LATCHKEY_ADMIN_TOKEN"]) {
      assert.ok(env.get(name)?.valueFrom?.secretKeyRef, `${name} is set from the Secret`);
      assert.ok(!env.get(name)?.valueFrom?.secretKeyRef?.optional, `${name} is not optional`);
    }
    const config = loadConfig(containerEnv(FAKE_SECRETS));
    assert.equal(config.host, "0.0.0.0", "listens beyond loopback");
    assert.equal(config.port, 8200);
    assert.ok(config.mongodbUri, "MongoDB is the store");
    assert.ok(!config.allowedIps.includes("127.0.0.0/8"), "loopback, which a sidecar's traffic comes from, is not allowed by default");
  });

  it("cannot start on the example Secret's placeholders", () => {
    const placeholders: Record<string, string> = {};
    for (const e of container.env ?? []) {
      const ref = e.valueFrom?.secretKeyRef;
      const v = ref ? secret.stringData?.[ref.key] : undefined;
      if (v !== undefined) placeholders[e.name] = v;
    }
    assert.throws(
      () => loadConfig(containerEnv(placeholders)),
      (err: unknown) => {
        assert.ok(err instanceof ConfigError);
        for (const name of ["MONGODB_URI", "LATCHKEY_MASTER_KEY", "LATCHKEY_ADMIN_TOKEN"]) {
          assert.ok(err.problems.some((p) => p.startsWith(`${name}:`)), `the placeholder of ${name} is refused`);
        }
        return true;
      },
    );
  });

  it("drains before it stops: the grace period outlasts the drain delay and timeout", () => {
    const config = loadConfig(containerEnv(FAKE_SECRETS));
    assert.ok(config.drainDelayMs > 0, "LATCHKEY_DRAIN_DELAY_MS > 0, so endpoints go before the listener does");
    const grace = pod.terminationGracePeriodSeconds ?? 30;
    assert.ok(
      grace > (config.drainDelayMs + config.drainTimeoutMs) / 1000,
      `terminationGracePeriodSeconds ${grace} > (${config.drainDelayMs} + ${config.drainTimeoutMs}) / 1000`,
    );
    assert.equal(deployment.spec.strategy?.rollingUpdate?.maxUnavailable, 0, "rolling updates keep 3 serving");
  });

  it("turns off service links, which would set LATCHKEY_PORT=tcp://... for the Service named latchkey", () => {
    assert.equal(service.metadata.name, "latchkey");
    assert.equal(pod.enableServiceLinks, false);
    assert.throws(() => loadConfig({ LATCHKEY_PORT: "tcp://10.96.0.10:8200" }), ConfigError, "why it matters");
  });

  it("requests resources and bounds memory", () => {
    const { requests, limits } = container.resources ?? {};
    assert.ok(requests?.cpu, "CPU request");
    assert.ok(requests?.memory, "memory request");
    assert.ok(limits?.memory, "memory limit");
    assert.ok(bytes(limits.memory) >= bytes(requests.memory), "limit >= request");
  });

  it("runs as the image's non-root user, locked down", () => {
    const sc = container.securityContext;
    assert.equal(pod.securityContext?.runAsNonRoot, true);
    assert.equal(pod.securityContext?.seccompProfile?.type, "RuntimeDefault");
    const uid = sc?.runAsUser ?? pod.securityContext?.runAsUser;
    assert.ok(uid !== undefined && uid > 0, "a non-root uid");
    assert.equal(String(uid), finalOps("USER").at(-1)?.args.split(":")[0], "the same uid as the Dockerfile's USER");
    assert.equal(sc?.allowPrivilegeEscalation, false);
    assert.equal(sc?.readOnlyRootFilesystem, true);
    assert.ok(sc?.capabilities?.drop?.includes("ALL"), "drops every capability");
    assert.equal(sc?.capabilities?.add, undefined);
    const volumes = new Set((pod.volumes ?? []).map((v) => v.name));
    for (const m of container.volumeMounts ?? []) assert.ok(volumes.has(m.name), `volume ${m.name} is defined`);
    const dataDir = dockerfileEnv().LATCHKEY_DATA_DIR;
    assert.ok(
      container.volumeMounts?.some((m) => m.mountPath === dataDir),
      `the image's data directory ${dataDir} stays writable under a read-only root`,
    );
  });

  it("spreads the replicas, and is scraped on /metrics", () => {
    const terms = pod.affinity?.podAntiAffinity?.preferredDuringSchedulingIgnoredDuringExecution ?? [];
    const byHost = terms.find((t) => t.podAffinityTerm?.topologyKey === "kubernetes.io/hostname");
    assert.ok(byHost, "anti-affinity across nodes");
    assert.ok(selects(byHost.podAffinityTerm?.labelSelector.matchLabels, deployment.spec.template.metadata.labels));
    const a = deployment.spec.template.metadata.annotations ?? {};
    assert.equal(a["prometheus.io/scrape"], "true");
    assert.equal(a["prometheus.io/path"], "/metrics");
    assert.equal(REST_POLICY["GET /metrics"], "public", "Prometheus has no token");
    assert.equal(Number(a["prometheus.io/port"]), container.ports?.[0]?.containerPort);
  });
});

describe("deploy/kubernetes: Service and PodDisruptionBudget", () => {
  it("is a ClusterIP whose one port says it speaks gRPC over h2c", () => {
    assert.equal(service.spec.type ?? "ClusterIP", "ClusterIP");
    assert.equal(service.spec.ports.length, 1);
    const p = service.spec.ports[0];
    assert.equal(p?.port, 8200);
    assert.equal(p?.name, "grpc");
    assert.equal(p?.protocol ?? "TCP", "TCP");
    assert.equal(p?.appProtocol, "kubernetes.io/h2c", "meshes proxy HTTP/2 cleartext to the pods");
  });

  it("keeps a majority up: minAvailable below the replica count", () => {
    const min = pdb.spec.minAvailable;
    assert.equal(typeof min, "number");
    assert.equal(pdb.spec.maxUnavailable, undefined, "one of minAvailable and maxUnavailable");
    assert.ok((min as number) >= 1 && (min as number) < deployment.spec.replicas, `1 <= ${String(min)} < replicas`);
  });
});

describe("Dockerfile", () => {
  it("is multi-stage on the Node 20 slim image", () => {
    assert.ok(stages.length >= 2, `${stages.length} stages`);
    for (const s of stages) assert.equal(s.from.split("@")[0], "node:20-bookworm-slim");
    const engines = (JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { engines: { node: string } }).engines;
    assert.equal(engines.node, ">=20", "Node 20 satisfies package.json engines");
  });

  it("compiles in a build stage: compilers for better-sqlite3, npm ci, npm run build", () => {
    const build = stages.find((s) => s.instructions.some((i) => i.op === "RUN" && /\bnpm run build\b/.test(i.args)));
    assert.ok(build && build !== finalStage, "a stage other than the final one builds");
    const runs = build.instructions.filter((i) => i.op === "RUN").map((i) => i.args).join("\n");
    for (const tool of ["python3", "make", "g++"]) assert.match(runs, new RegExp(`apt-get install[^\\n]*\\s${tool.replace("+", "\\+")}(\\s|$)`));
    assert.match(runs, /\bnpm ci\b/);
    // Everything tsconfig.build.json compiles is copied in before the build.
    const include = (JSON.parse(readFileSync(join(ROOT, "tsconfig.build.json"), "utf8")) as { include: string[] }).include;
    const copied = contextCopies(build);
    for (const dir of include) assert.ok(copied.includes(dir), `${dir}/ is copied into the build stage`);
    for (const f of ["package.json", "package-lock.json", "tsconfig.json", "tsconfig.build.json"]) assert.ok(copied.includes(f), `${f} is copied`);
  });

  it("ships only production dependencies, and no compilers, in the final stage", () => {
    const copies = finalOps("COPY");
    const nodeModules = copies.find((c) => /\bnode_modules\b/.test(c.args));
    assert.ok(nodeModules, "node_modules is copied into the final stage");
    const from = /--from=(\S+)/.exec(nodeModules.args)?.[1];
    assert.ok(from, "node_modules comes from another stage");
    const source = stages.find((s, i) => s.name === from || String(i) === from);
    assert.ok(source, `stage ${from} exists`);
    const installs = source.instructions.filter((i) => i.op === "RUN").flatMap((i) => i.args.split(/&&|;/).map((c) => c.trim()));
    const last = installs.filter((c) => /\bnpm (ci|install|i|prune)\b/.test(c)).at(-1);
    assert.ok(last && /--omit=dev\b|--production\b/.test(last), `the last npm step of stage ${from} omits dev dependencies: ${last}`);
    for (const r of finalOps("RUN")) {
      assert.doesNotMatch(r.args, /\bnpm (ci|install|i)\b(?![^&;]*--omit=dev)/, "no full install in the final stage");
      assert.doesNotMatch(r.args, /\b(g\+\+|make|python3)\b/, "no compilers in the final stage");
    }
    const sources = copies.map((c) => c.args);
    for (const needed of ["dist", "package.json"]) assert.ok(sources.some((a) => a.includes(needed)), `${needed} is copied`);
    assert.ok(!sources.some((a) => /(^|\s)\S*\bsrc\/?\s/.test(a)), "no TypeScript sources in the final stage");
  });

  it("runs as a non-root user and owns /data, the data directory", () => {
    const user = finalOps("USER").at(-1)?.args;
    assert.ok(user, "a USER in the final stage");
    const uid = user.split(":")[0] as string;
    assert.match(uid, /^\d+$/, "numeric, so runAsNonRoot can be verified");
    assert.notEqual(Number(uid), 0);
    assert.equal(uid, "10001");
    const e = dockerfileEnv();
    assert.equal(e.LATCHKEY_HOST, "0.0.0.0");
    assert.equal(e.LATCHKEY_DATA_DIR, "/data");
    const known = latchkeyVariables();
    for (const name of Object.keys(e)) assert.ok(name === "NODE_ENV" || known.has(name), `ENV ${name} is a variable Latchkey reads`);
    assert.ok(finalOps("VOLUME").some((v) => v.args.includes("/data")), "VOLUME /data");
    assert.ok(finalOps("RUN").some((r) => new RegExp(`chown ${uid}(:\\d+)? /data`).test(r.args)), "/data belongs to the user");
    assert.equal(finalOps("WORKDIR").at(-1)?.args, "/app");
  });

  it("exposes Latchkey's default port", () => {
    assert.deepEqual(finalOps("EXPOSE").map((x) => x.args), [String(loadConfig({}).port)]);
  });

  it("starts dist/src/main.js, which `npm run build` produces from src/main.ts", () => {
    const entry = [...finalOps("ENTRYPOINT"), ...finalOps("CMD")].map((i) => execForm(i.args)).flat();
    assert.deepEqual(entry, ["node", "dist/src/main.js"]);
    const pkg = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { scripts: Record<string, string> };
    assert.equal(pkg.scripts.build, "tsc -p tsconfig.build.json");
    assert.equal(pkg.scripts.start, "node dist/src/main.js", "the same file npm start runs");
    type Tsconfig = { extends?: string; compilerOptions?: { outDir?: string; rootDir?: string; noEmit?: boolean } };
    const build = JSON.parse(readFileSync(join(ROOT, "tsconfig.build.json"), "utf8")) as Tsconfig;
    const base = build.extends ? (JSON.parse(readFileSync(join(ROOT, build.extends), "utf8")) as Tsconfig) : {};
    const options = { ...base.compilerOptions, ...build.compilerOptions };
    assert.equal(options.noEmit, false, "the build emits");
    const emitted = posix.join(options.outDir ?? ".", posix.relative(options.rootDir ?? ".", "src/main.ts")).replace(/\.ts$/, ".js");
    assert.equal(emitted, "dist/src/main.js");
    assert.ok(existsSync(join(ROOT, "src", "main.ts")));
  });

  it("has a HEALTHCHECK that asks /healthz with node (no curl in the slim image)", () => {
    const hc = finalOps("HEALTHCHECK");
    assert.equal(hc.length, 1);
    const args = hc[0]?.args ?? "";
    const cmd = execForm(args.slice(args.indexOf("CMD")));
    assert.equal(cmd[0], "node");
    assert.match(cmd.join(" "), /\/healthz/);
    assert.doesNotMatch(args, /\b(curl|wget)\b/);
  });

  it("has a .dockerignore that keeps out dependencies, build output and local data, but not the build's inputs", () => {
    const patterns = readFileSync(join(ROOT, ".dockerignore"), "utf8")
      .split("\n")
      .map((l) => l.trim())
      .filter((l) => l !== "" && !l.startsWith("#"));
    for (const path of ["node_modules", "dist", "data", "data/master.key", ".git", ".tmp", "bench/results"]) {
      assert.ok(dockerignored(path, patterns), `${path} is left out of the build context`);
    }
    const inputs = stages.flatMap(contextCopies);
    assert.ok(inputs.length > 0);
    for (const path of [...inputs, "src/main.ts", "gen/latchkey/v1/secret_pb.ts"]) {
      assert.ok(!dockerignored(path, patterns), `${path} is in the build context`);
    }
  });
});
