# syntax=docker/dockerfile:1
# One image, two entrypoints: `relay` (the WebSocket relay, the default) and
# `gamecluster-operator` (the kopf operator, which deploys relay pods with this
# same image). Stage 1 builds the TypeScript client's browser bundle (the demo page at /
# serves it), stage 2 every wheel; stage 3 holds only Python and the venv.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG NODE_IMAGE=node:20.20.2-bookworm-slim

# The bundle from clients/js's sources and lock file, not the committed copy in
# service/relay/static (a test keeps that copy equal to a fresh build for `make run`).
FROM ${NODE_IMAGE} AS js
WORKDIR /js
COPY clients/js/package.json clients/js/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY clients/js ./
RUN npm run build

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# README.m[d]: the distribution's long description when the file exists; the
# glob keeps the build working in a tree that has none yet.
COPY pyproject.toml README.m[d] ./
COPY service ./service
COPY --from=js /js/dist/browser/gamecluster-client.js ./service/relay/static/gamecluster-client.js
COPY operator ./operator
# The Python client is its own distribution; the relay CLI (publish, tail, check)
# depends on it, so its wheel is built from here next to ours.
COPY clients/python ./clients/python
# The relay's compiled core (core/, Rust) as a wheel built beforehand on the host with
# `make core-wheel` (core/dist): this stage has no Rust toolchain. dis[t]: without that
# wheel the image still builds, and its relay runs the pure-Python path (RELAY_CORE=auto;
# its start-up log and relay_core_info say which). The pin below is the core's own
# version, raised whenever its classes change: a wheel left from an older core/ fails here
# (no matching distribution) instead of starting relays that fall back to Python.
COPY core/pyproject.toml core/dis[t] ./core/
# Every wheel (ours, the client's and the pinned dependencies) is built here, so the
# runtime stage installs offline from /wheels and needs no compiler.
# `[operator]`: the operator's extra (kopf, kubernetes), so both entrypoints work.
RUN pip wheel --no-cache-dir --wheel-dir /wheels ./clients/python ".[operator]" \
 && python -m venv --without-pip /opt/venv \
 && pip --python /opt/venv/bin/python install --no-cache-dir --no-index \
        --find-links /wheels "gamecluster[operator]==0.1.0" \
 && if [ -n "$(find ./core -name 'gamecluster_core-*.whl')" ]; then \
      pip --python /opt/venv/bin/python install --no-cache-dir --no-index \
          --find-links ./core "gamecluster-core==0.3.1"; \
    else \
      echo "WARNING: no core/dist/gamecluster_core-*.whl (run 'make core-wheel' first):" \
           "this image has no compiled core; its relay runs the pure-Python path" >&2; \
    fi

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="gamecluster" \
      org.opencontainers.image.description="GameCluster WebSocket relay and its Kubernetes operator" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A fixed numeric UID/GID so Kubernetes can check runAsNonRoot without a name lookup.
RUN groupadd --system --gid 10001 gamecluster \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin gamecluster
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
EXPOSE 8080
# No ENTRYPOINT: `relay serve` by default; the operator's pods run
# `gamecluster-operator` by setting the container command.
CMD ["relay", "serve"]
