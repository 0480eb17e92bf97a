#!/usr/bin/env bash
# Make a local Python base image from Debian packages, for machines that reach Debian's and PyPI's
# package servers but no image registry:
#   bash docker/build-base.sh [TAG]          (default d2f-base:<codename of the running Debian>)
#   docker build -f docker/Dockerfile --build-arg BASE_IMAGE=d2f-base:bookworm -t d2f-serve .
# debootstrap of the running release (minbase + python3, venv, CA certificates) with its -updates and
# -security suites applied, the host's CA bundle installed (pip in the build trusts what the host
# trusts), then `docker import`. MIRROR / SECURITY_MIRROR default to the host's apt sources.
set -euo pipefail
. /etc/os-release
SUITE=${SUITE:-${VERSION_CODENAME:?not a Debian release: set SUITE}}
TAG=${1:-d2f-base:$SUITE}
# The host's own Debian mirror (deb822 or one-line sources), so the same proxy/mirror is used.
host_uri() {  # $1: path suffix to match (debian or debian-security)
  cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
    | grep -oE '(https?|file)://[^ ]+' | grep -E "/$1/?\$" | head -1 || true
}
MIRROR=${MIRROR:-$(host_uri debian)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-$(host_uri debian-security)}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
missing=()
for tool in debootstrap docker; do command -v "$tool" >/dev/null || missing+=("$tool"); done
[ ${#missing[@]} = 0 ] || { echo "build-base: missing ${missing[*]} (apt-get install debootstrap docker.io)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "build-base: debootstrap needs root" >&2; exit 2; }
docker info >/dev/null 2>&1 || { echo "build-base: no Docker engine answers (start dockerd)" >&2; exit 2; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
t=$SECONDS
echo "build-base: debootstrap $SUITE from $MIRROR ..."
debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates,passwd \
  "$SUITE" "$root" "$MIRROR" >/dev/null
cat >"$root/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
echo "build-base: applying $SUITE-updates and $SUITE-security ..."
chroot "$root" /bin/sh -c 'export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get upgrade -y -qq >/dev/null && apt-get clean'
# pip inside the build must trust what the host trusts (the package index may sit behind a TLS proxy).
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/tmp/* "$root"/var/log/*.log
# docker import keeps no image config beyond these changes.
tar --numeric-owner -C "$root" -c . | docker import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
  --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
  --change 'CMD ["python3"]' - "$TAG" >/dev/null
echo "build-base: $TAG ($(docker run --rm "$TAG" python3 --version)," \
  "$(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}')) in $((SECONDS - t)) s"
