#!/usr/bin/env bash
# Build the local base image `local/debian:bookworm` from the Debian mirror apt already uses,
# for machines that reach no container registry (the Dockerfile's BASE build argument).
#
#   deploy/base-image.sh [IMAGE]        # default local/debian:bookworm
#
# debootstrap (minbase + ca-certificates), then the host's extra trusted CA certificates
# (/usr/local/share/ca-certificates/*.crt, e.g. a TLS-intercepting proxy's) are copied into the
# root file system and `update-ca-certificates` runs there, so that apt, pip and npm inside the
# builds trust what the host trusts. This happens at every run: the certificates are never
# committed, and an image built elsewhere never carries this machine's certificates.
set -euo pipefail
IMAGE="${1:-local/debian:bookworm}"
SUITE="${DEBIAN_SUITE:-bookworm}"
# The mirror apt uses for the suite (sources.list or deb822 .sources), unless DEBIAN_MIRROR says.
MIRROR="${DEBIAN_MIRROR:-$(apt-get indextargets --format '$(SITE) $(RELEASE)' 2>/dev/null \
  | awk -v s="$SUITE" '$2 == s { print $1; exit }')}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
ROOTFS="$(mktemp -d /tmp/genjobs-rootfs.XXXXXX)"
trap 'rm -rf "$ROOTFS"' EXIT

echo "base image: debootstrap $SUITE from $MIRROR"
debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$ROOTFS" "$MIRROR" \
  > "$ROOTFS.log" 2>&1 || { tail -20 "$ROOTFS.log"; rm -f "$ROOTFS.log"; exit 1; }
rm -f "$ROOTFS.log"
shopt -s nullglob
certs=(/usr/local/share/ca-certificates/*.crt)
if ((${#certs[@]})); then
  cp "${certs[@]}" "$ROOTFS/usr/local/share/ca-certificates/"
  chroot "$ROOTFS" update-ca-certificates > /dev/null 2>&1
fi
# No package caches or lists in the image; the builds run `apt-get update` themselves.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/lib/apt/lists/* \
  "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/*
tar -C "$ROOTFS" -c . | docker import - "$IMAGE" > /dev/null
echo "base image: $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'), ${#certs[@]} host CA certificate(s) added)"
