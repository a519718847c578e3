#!/usr/bin/env bash
# Make a Docker engine and a local stand-in base image available for the container test.
#
# CI machines have no running engine and cannot pull images, so this script:
#   1. installs Debian's docker.io (20.10, legacy builder), debootstrap and buildah when missing,
#   2. starts dockerd when no daemon answers,
#   3. builds a stand-in for the pinned python:3.11-slim-bookworm base with debootstrap + docker import
#      (bookworm's python3 is 3.11, which is what requirements.lock is compiled for),
#      reusing the image when a previous run left it.
# It prints nothing on stdout but the stand-in image reference, so callers can capture it:
#   BASE_IMAGE=$(.ci/docker-setup.sh)
set -euo pipefail

STANDIN_TAG="${REFGEN_STANDIN_TAG:-refgen-standin-base:bookworm}"
# The mirror apt already uses on this host (deb822 or one-line sources); empty lets debootstrap
# pick its default. DEBIAN_MIRROR overrides both.
host_mirror() {
    {
        grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null || true
        grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null || true
    } | awk '{print $2}' | { grep -v -- '-security' || true; } | head -n 1
}
DEBIAN_MIRROR="${DEBIAN_MIRROR:-$(host_mirror)}"
log() { printf 'docker-setup: %s\n' "$*" >&2; }
die() { printf 'docker-setup: error: %s\n' "$*" >&2; exit 1; }

# Debian's client talks to Debian's daemon with the legacy builder; a newer client without buildx cannot.
DOCKER=/usr/bin/docker

# buildah: its --timestamp makes the image ID itself reproducible, which the tests check too.
if [[ ! -x "$DOCKER" ]] || ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null \
        || ! command -v buildah >/dev/null; then
    [[ "$(id -u)" == 0 ]] \
        || die "docker.io/debootstrap/buildah missing and not root: run 'sudo apt-get install docker.io debootstrap buildah'"
    log "installing docker.io, debootstrap and buildah from Debian's packages"
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io debootstrap buildah >&2
fi

if ! "$DOCKER" info >/dev/null 2>&1; then
    [[ "$(id -u)" == 0 ]] || die "no Docker daemon answers and we are not root: start it ('sudo systemctl start docker')"
    log "starting dockerd (log: /var/log/refgen-dockerd.log)"
    nohup dockerd >/var/log/refgen-dockerd.log 2>&1 &
    for _ in $(seq 1 60); do
        "$DOCKER" info >/dev/null 2>&1 && break
        sleep 1
    done
    "$DOCKER" info >/dev/null 2>&1 || die "dockerd did not come up in 60 s; see /var/log/refgen-dockerd.log"
fi

if "$DOCKER" image inspect "$STANDIN_TAG" >/dev/null 2>&1; then
    log "reusing stand-in base $STANDIN_TAG"
else
    log "building stand-in base $STANDIN_TAG with debootstrap (about a minute)"
    rootfs="$(mktemp -d /var/tmp/refgen-rootfs.XXXXXX)"
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" ${DEBIAN_MIRROR:+"$DEBIAN_MIRROR"} >&2 \
        || die "debootstrap failed (network to the Debian mirror? set DEBIAN_MIRROR to a reachable one)"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" --numeric-owner -c . \
        | "$DOCKER" import --platform linux/amd64 \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            - "$STANDIN_TAG" >&2
fi
echo "$STANDIN_TAG"
