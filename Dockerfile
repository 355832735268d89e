# syntax=docker/dockerfile:1
#
# iap container image (SPEC §10): multi-stage, non-root, no compilers in the final image.
#
#   docker build -t iap:dev .
#   docker run --rm -p 8443:8443 -p 9090:9090 -v "$PWD/iap.yaml:/etc/iap/iap.yaml:ro" iap:dev
#
# Both stages must use the same base image: the virtual environment copied from the
# builder links to the interpreter at /usr/local/bin/python3.11 and its console scripts
# start with `#!/opt/iap/bin/python`. Pin the base by digest in release builds, e.g.
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim@sha256:<digest> .
ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------
# builder: build iap's wheel and install it with its dependencies into /opt/iap.
# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
COPY requirements/build.lock requirements/runtime.lock requirements/runtime.cdx.json ./requirements/
COPY pyproject.toml README.md ./
COPY iap/ ./iap/

# Nothing is resolved here: every package comes from a lock file, pinned and hashed
# (--require-hashes), as a binary wheel (--only-binary), so nothing is compiled either.
# The build backend goes into a throwaway venv (/opt/build); /opt/iap gets the runtime
# lock, then iap's own wheel with --no-deps, and no pip at all. Two builds of one commit
# therefore install the same package set, the one requirements/runtime.cdx.json lists.
RUN python -m venv /opt/build \
 && /opt/build/bin/pip install --require-hashes --no-deps --only-binary=:all: \
        -r requirements/build.lock \
 && /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && python -m venv --without-pip /opt/iap \
 && /opt/build/bin/pip --python /opt/iap/bin/python install --require-hashes --no-deps \
        --only-binary=:all: -r requirements/runtime.lock \
 && /opt/build/bin/pip --python /opt/iap/bin/python install --no-deps /wheels/iap-*.whl \
 && cp requirements/runtime.cdx.json /opt/iap/sbom.cdx.json \
 && /opt/iap/bin/iap --version

# ---------------------------------------------------------------------------------------
# runtime: the interpreter from the base image and the virtual environment, nothing else.
# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="iap" \
      org.opencontainers.image.description="Identity-aware proxy for the edge of a Kubernetes + Istio service mesh" \
      org.opencontainers.image.licenses="Apache-2.0"

# The root filesystem is read-only in Kubernetes: never try to write bytecode
# (pip compiled it at install time), never buffer the audit log on stdout.
# PROMETHEUS_MULTIPROC_DIR is deliberately not set: `iap run --workers N` creates its
# own directory under /tmp (an emptyDir in deploy/k8s) when it needs one.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/iap/bin:$PATH

RUN groupadd --system --gid 10001 iap \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin iap

COPY --from=builder /opt/iap /opt/iap

WORKDIR /tmp
USER 10001

# 8443: public listener (listen.address); 9090: admin listener (admin.address:
# /healthz, /readyz, /metrics); never publish 9090 outside the cluster.
EXPOSE 8443 9090

ENTRYPOINT ["iap"]
CMD ["run", "-c", "/etc/iap/iap.yaml"]
