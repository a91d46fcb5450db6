#!/usr/bin/env bash
# Builds the platform image from the repository's Dockerfile (`make image`; the container tests
# call it once per session).
#
#   .ci/image.sh [IMAGE]            default IMAGE: fraud-platform:dev
#
# Engine: CONTAINER_ENGINE when set, else docker when its daemon answers, else podman (with
# .ci/containers.conf, the settings this machine needs). Base image, from IMAGE_BASE:
#   local (default)  the debootstrap base of .ci/base-image.sh: no registry needed;
#   default          the Dockerfile's own PYTHON_IMAGE (the official python:3.11 slim image);
#   anything else    that image reference.
# Progress goes to stderr. The last lines of stdout are the settings the container tests use:
# CONTAINER_ENGINE=..., CONTAINERS_CONF=... (podman only) and IMAGE=... .
set -euo pipefail
cd "$(dirname "$0")/.."
image=${1:-fraud-platform:dev}

engine=${CONTAINER_ENGINE:-}
if [[ -z $engine ]]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    engine=docker
  elif command -v podman >/dev/null; then
    engine=podman
  else
    echo "image.sh: neither a docker daemon nor podman found (apt-get install podman)" >&2
    exit 1
  fi
fi

build_args=()
if [[ $engine == podman ]]; then
  export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/.ci/containers.conf}
  # Docker's image format keeps the Dockerfile's HEALTHCHECK (OCI's has no such field).
  build_args+=(--format docker)
fi

base=${IMAGE_BASE:-local}
case $base in
  local)
    base=$(.ci/base-image.sh "$engine")
    build_args+=(--build-arg "PYTHON_IMAGE=$base")
    [[ $engine == podman ]] && build_args+=(--pull=never)
    ;;
  default) ;;
  *) build_args+=(--build-arg "PYTHON_IMAGE=$base") ;;
esac

echo "image.sh: $engine build -t $image ${build_args[*]} ." >&2
"$engine" build -t "$image" "${build_args[@]}" . >&2

echo "CONTAINER_ENGINE=$engine"
[[ $engine == podman ]] && echo "CONTAINERS_CONF=$CONTAINERS_CONF"
echo "IMAGE=$image"
