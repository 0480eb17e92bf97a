#!/usr/bin/env bash
# Make a local Python base image from Debian packages, for machines that reach Debian's and PyPI's
# package servers but no image registry:  bash docker/build-base.sh [TAG]   (default d2f-base:bookworm)
# Then: docker build -f docker/Dockerfile --build-arg BASE_IMAGE=d2f-base:bookworm -t d2f-serve .
set -euo pipefail
TAG=${1:-d2f-base:bookworm}
SUITE=${SUITE:-$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
for tool in debootstrap docker; do
  command -v "$tool" >/dev/null || { echo "missing: $tool (apt-get install debootstrap docker.io)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "debootstrap needs root" >&2; exit 1; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
echo "debootstrap $SUITE from $MIRROR ..."
debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates,passwd \
  "$SUITE" "$root" "$MIRROR" >/dev/null
# pip inside the build must trust what the host trusts (the package index may sit behind a TLS proxy).
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import \
  --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' - "$TAG" >/dev/null
echo "built $TAG ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
