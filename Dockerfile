# syntax=docker/dockerfile:1
#
# Latchkey's container image: docker build -t latchkey:0.1.0 .
#
# Two stages: `build` has the compilers (better-sqlite3 is a native addon, built from source when no prebuilt
# binary matches), every dependency and the TypeScript compiler; it compiles src/ and gen/ into dist/ and then
# prunes node_modules to the production dependencies. The final stage gets only dist/, that pruned node_modules
# and package.json, and runs as an unprivileged user (uid 10001).
#
# This image has not been built or run where it was written (no container engine there);
# test/unit/deploy-manifests.test.ts checks the structure of this file only.

FROM node:20-bookworm-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so source changes do not reinstall them.
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY gen ./gen
COPY src ./src
# tsconfig.build.json: rootDir ".", outDir "dist", so src/main.ts becomes dist/src/main.js and gen/ dist/gen/.
# The compiled better-sqlite3 addon stays in node_modules; prune only removes the dev dependencies.
RUN npm run build \
 && npm prune --omit=dev --no-audit --no-fund

FROM node:20-bookworm-slim
ENV NODE_ENV=production \
    LATCHKEY_HOST=0.0.0.0 \
    LATCHKEY_DATA_DIR=/data
RUN groupadd --system --gid 10001 latchkey \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin latchkey \
 && mkdir -p /data \
 && chown 10001:10001 /data \
 && chmod 0700 /data
WORKDIR /app
# Owned by root and read-only to the service: it cannot change its own code.
COPY --from=build /src/package.json ./package.json
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
# Numeric, so Kubernetes can check runAsNonRoot without a runAsUser.
USER 10001:10001
# The embedded store, and the generated master key and admin token when none is given. Unused with MongoDB.
VOLUME ["/data"]
EXPOSE 8200
# No curl in the slim image: node asks /healthz (over https when LATCHKEY_TLS_CERT is set; with mutual TLS, which
# needs a client certificate, run with --no-healthcheck). Kubernetes ignores this and uses the manifests' probes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["node", "-e", "const h=require(process.env.LATCHKEY_TLS_CERT?'https':'http');setTimeout(()=>process.exit(1),4000).unref();h.get({host:'127.0.0.1',port:process.env.LATCHKEY_PORT||8200,path:'/healthz',rejectUnauthorized:false},r=>process.exit(r.statusCode===200?0:1)).on('error',()=>process.exit(1))"]
# Node is PID 1 and handles SIGTERM itself: it reports not ready, waits LATCHKEY_DRAIN_DELAY_MS, then drains.
ENTRYPOINT ["node", "dist/src/main.js"]
