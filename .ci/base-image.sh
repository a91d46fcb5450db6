#!/usr/bin/env bash
# The local base image: the stand-in for python:3.11-slim on machines that reach no container
# registry, only a Debian mirror. Debian bookworm (minbase) with its Python 3.11, made with
# debootstrap from the mirror this machine's apt uses, trusting this machine's CA certificates (so
# pip and uv reach the package index through a TLS-inspecting proxy), then imported as an image.
#
#   .ci/base-image.sh ENGINE        prints the image name; builds it only when it is missing
#
# The tag carries a hash of this script: a changed recipe makes a new base, an unchanged one is
# reused. Needs root (debootstrap, chroot) and the debootstrap package.
set -euo pipefail

engine=${1:?usage: base-image.sh ENGINE}
here=$(cd "$(dirname "$0")" && pwd)
recipe=$(sha256sum "$here/base-image.sh" | cut -c1-12)
image="localhost/fraud-base:bookworm-$recipe"

if "$engine" image inspect "$image" >/dev/null 2>&1; then
  echo "$image"
  exit 0
fi

# The first bookworm mirror of apt's sources, in either format (deb822 .sources, one-line .list).
debian_mirror() {
  local files=()
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] && files+=("$f")
  done
  ((${#files[@]})) || return 0
  awk '
    function flush() {
      if (uri != "" && types ~ /(^|[ \t])deb([ \t]|$)/ && (" " suites " ") ~ /[ \t]bookworm[ \t]/)
        print uri
      uri = ""; suites = ""; types = ""
    }
    FNR == 1 { flush() }
    /^[ \t]*#/ { next }
    /^[ \t]*$/ { flush(); next }
    tolower($1) == "types:" { types = $0 }
    tolower($1) == "uris:" { uri = $2 }
    tolower($1) == "suites:" { suites = $0 }
    $1 == "deb" {
      i = 2
      if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
      if ($(i + 1) == "bookworm") print $i
    }
    END { flush() }
  ' "${files[@]}" | head -n1
}

mirror=$(debian_mirror)
if [[ -z $mirror ]]; then
  echo "base-image.sh: no Debian bookworm mirror in /etc/apt/sources.list*;" \
    "pass IMAGE_BASE=default to build on the official python image instead" >&2
  exit 1
fi
if [[ $(id -u) != 0 ]]; then
  echo "base-image.sh: debootstrap needs root; run as root or pass IMAGE_BASE=default" >&2
  exit 1
fi
command -v debootstrap >/dev/null || {
  echo "base-image.sh: debootstrap is not installed (apt-get install debootstrap)" >&2
  exit 1
}

rootfs=$(mktemp -d "${TMPDIR:-/tmp}/fraud-base.XXXXXX")
trap 'rm -rf "$rootfs"' EXIT
echo "base-image.sh: debootstrap bookworm from $mirror" >&2
# python3-venv: the image's venvs; passwd: the Dockerfile's useradd; the rest is minbase.
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,passwd \
  bookworm "$rootfs" "$mirror" >&2
shopt -s nullglob
certs=(/usr/local/share/ca-certificates/*.crt)
if ((${#certs[@]})); then
  cp "${certs[@]}" "$rootfs/usr/local/share/ca-certificates/"
  chroot "$rootfs" update-ca-certificates >&2
fi
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
tar -C "$rootfs" --numeric-owner -c . |
  "$engine" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    - "$image" >&2
echo "$image"
