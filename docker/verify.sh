#!/usr/bin/env bash
# Rebuild the committed references inside the pinned image, offline, and compare them.
#
#   docker/verify.sh [verify arguments, e.g. --spec /app/specs/NAME.toml --json]
#
# The committed artifacts (scripts/) are mounted read-only where the image's specs expect them;
# the rebuild happens in the container's /tmp and is removed. The exit code is the verdict's:
# 0 bit for bit, 10 within tolerance, 11 not reproduced, 2 could not run.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

require_engine
require_image

image_id="$("$DOCKER" image inspect --format '{{.Id}}' "$IMAGE")"
layers="$("$DOCKER" image inspect --format '{{json .RootFS.Layers}}' "$IMAGE")"
base="$(label "$IMAGE" org.opencontainers.image.base.name) (image $(label "$IMAGE" io.refgen.base.id))"

log "verifying in $IMAGE ($image_id), offline"
exec "$DOCKER" run --rm --network none \
    --user "$(id -u):$(id -g)" \
    -v "$ROOT/scripts:/app/scripts:ro" \
    -e "REFGEN_CONTAINER_IMAGE=$image_id" \
    -e "REFGEN_BASE_IMAGE=$base" \
    -e "REFGEN_IMAGE_LAYERS=$layers" \
    --entrypoint nox \
    "$IMAGE" --no-venv --envdir /tmp/nox -f /app/noxfile.py -s verify -- "$@"
