# syntax=docker/dockerfile:1
#
# One image for every Python role of the platform: the KFP pipeline components, the stream
# consumer (`fraud stream consume`), the replay producer (`fraud stream replay`), the topic job
# (`fraud topics create`) and the retraining CronJob. Serving uses the upstream tensorflow/serving
# image instead, so this image carries no model server.
#
#   docker build -t fraud-platform:0.1.0 .
#   docker run --rm fraud-platform:0.1.0 --help
#
# The base is pinned to a full version tag. To pin by digest as well, pass
#   --build-arg PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:<digest>
# with the digest your registry mirror reports (`docker buildx imagetools inspect`).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

# pyfarmhash (pulled in by tensorflow-transform) is published as an sdist only, so the builder
# needs a C/C++ toolchain; none of it reaches the runtime stage. Not version-pinned (DL3008):
# Debian drops superseded versions from its mirrors, so an exact pin breaks the build within weeks.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1 \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1

# uv lives in the builder's own interpreter, not in the venv that ships.
RUN pip install uv==0.13.9 && python -m venv /opt/venv

# The lock alone first: this slow layer is reused until requirements.lock changes.
COPY requirements.lock /tmp/requirements.lock
RUN uv pip sync --python /opt/venv/bin/python /tmp/requirements.lock

# Same install as a developer machine (`uv pip install --no-deps -e .`), at a path that is identical
# in the runtime stage, so the editable finder keeps pointing at /app.
WORKDIR /app
COPY pyproject.toml README.md params.yaml dvc.yaml ./
COPY core ./core
COPY serving ./serving
COPY components ./components
COPY streaming ./streaming
COPY pipelines ./pipelines
COPY monitoring ./monitoring
COPY app ./app
COPY bench ./bench
RUN uv pip install --python /opt/venv/bin/python --no-deps -e . \
    && /opt/venv/bin/python -m compileall -q /app

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="fraud-platform" \
      org.opencontainers.image.description="Card-fraud platform: pipeline components, Kafka consumer, replay, retraining" \
      org.opencontainers.image.licenses="Apache-2.0"

# Writable state goes to /tmp only: Kubernetes mounts an emptyDir there and keeps the root
# filesystem read-only. TF_* match the Makefile so the image behaves like a developer machine.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TF_USE_LEGACY_KERAS=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PYTHONHASHSEED=0 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib

# A fixed numeric UID, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
# /var/lib/fraud is the consumer's state directory; owning it here makes a fresh Docker named
# volume mounted there writable (Kubernetes uses fsGroup instead).
RUN groupadd --system --gid 10001 fraud \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin fraud \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/fraud

# Root owns the code and the venv: the process can read but never rewrite what it runs.
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app

WORKDIR /app
USER 10001:10001

# The image plays several roles, so "healthy" is role-specific: a long-running role sets
# FRAUD_HEALTHCHECK_URL (e.g. the consumer's metrics endpoint); otherwise the check proves the
# installed package still imports. Kubernetes ignores HEALTHCHECK and uses its own probes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; u = os.environ.get('FRAUD_HEALTHCHECK_URL'); urllib.request.urlopen(u, timeout=4).close() if u else __import__('app.cli')"]

ENTRYPOINT ["fraud"]
CMD ["--help"]
