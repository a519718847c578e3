#!/usr/bin/env bash
# Run the generator in the image, offline, writing into OUTDIR as the calling user.
#
#   docker/run.sh OUTDIR [generate arguments, e.g. --spec /app/specs/NAME.toml]
#
# The container cannot see its own image ID, so this script inspects the image and passes the
# image ID, the base image and the layer DiffIDs to the generator, which records them in the
# manifest. Outputs are written atomically by the generator: a failed run leaves OUTDIR as it was.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[[ $# -ge 1 ]] || die "usage: docker/run.sh OUTDIR [generate arguments]"
mkdir -p "$1"
outdir="$(cd "$1" && pwd)"
shift
[[ -w "$outdir" ]] || die "$outdir is not writable by $(id -un); choose another output folder."

require_engine
require_image

image_id="$("$DOCKER" image inspect --format '{{.Id}}' "$IMAGE")"
layers="$("$DOCKER" image inspect --format '{{json .RootFS.Layers}}' "$IMAGE")"
base="$(label "$IMAGE" org.opencontainers.image.base.name) (image $(label "$IMAGE" io.refgen.base.id))"
revision="$(label "$IMAGE" org.opencontainers.image.revision)"

log "running $IMAGE ($image_id) offline, output in $outdir"
exec "$DOCKER" run --rm --network none \
    --user "$(id -u):$(id -g)" \
    -v "$outdir:/out" \
    -e "REFGEN_CONTAINER_IMAGE=$image_id" \
    -e "REFGEN_BASE_IMAGE=$base" \
    -e "REFGEN_IMAGE_LAYERS=$layers" \
    -e "REFGEN_GIT_COMMIT=${revision#unknown}" \
    "$IMAGE" "$@" --output-dir /out
