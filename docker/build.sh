#!/usr/bin/env bash
# Stage the context (wheels by hash, verified model snapshots) and build the image offline.
# Usage and environment: see usage() below, or run with --help.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: docker/build.sh [--no-cache] [--skip-stage] [--spec PATH]...

Stage the context (wheels by hash, verified model snapshots) and build the image offline.
Without --spec, the model of every specs/*.toml is baked in.

  --no-cache     build without the engine's layer cache
  --skip-stage   build from the context a previous run staged, as it is (same inputs, twice)
  --spec PATH    a spec whose model is baked in (repeatable)
  -h, --help     show this text

Environment: IMAGE (tag, default refgen:local), BASE_IMAGE (default: the digest-pinned
python:3.11-slim-bookworm in the Dockerfile), PYTHON (a host interpreter with refgen's
dependencies, default .venv/bin/python), REFGEN_DOCKER_CONTEXT (staging folder, default
docker/context/image), SOURCE_DATE_EPOCH (default: the last commit's time), VCS_REF (default:
the commit checked out), DOCKER (client), REFGEN_BUILDER (docker, default; or buildah, whose
--timestamp makes the image ID reproducible).

Network: only the first run needs it (wheels from the package index; the model must already be
in the local HF cache: `nox -s fetch`). The build itself runs with --network none.
EOF
}

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

no_cache=()
specs=()
skip_stage=false
while [[ $# -gt 0 ]]; do
    case "$1" in
        --no-cache) no_cache=(--no-cache); shift ;;
        --skip-stage) skip_stage=true; shift ;;
        --spec) [[ $# -ge 2 ]] || die "--spec needs a path"; specs+=(--spec "$2"); shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
CONTEXT="${REFGEN_DOCKER_CONTEXT:-$ROOT/docker/context/image}"

require_engine
builder="${REFGEN_BUILDER:-docker}"
case "$builder" in
    docker) ;;
    buildah)
        command -v buildah >/dev/null 2>&1 \
            || die "REFGEN_BUILDER=buildah but buildah is not installed (Debian: 'apt-get install buildah')." ;;
    *) die "REFGEN_BUILDER must be 'docker' or 'buildah', not '$builder'." ;;
esac

if [[ "$skip_stage" == true ]]; then
    [[ -d "$CONTEXT/app" ]] || die "--skip-stage: nothing staged in $CONTEXT yet; run once without it."
else
    "$PYTHON" docker/stage.py --context "$CONTEXT" "${specs[@]}"
fi

# Disk: a cold build holds the context, the installed venv (~5x the wheels) and two copies of
# the normalized tree (build stage + final image). Checked up front rather than failing halfway.
docker_root="$("$DOCKER" info --format '{{.DockerRootDir}}' 2>/dev/null || true)"
if [[ -n "$docker_root" ]] && free_kb="$(df -Pk "$docker_root" 2>/dev/null | awk 'NR==2 {print $4}')"; then
    wheels_kb="$(du -skL "$CONTEXT/wheels" | cut -f1)"
    models_kb="$(du -skL "$CONTEXT/hf" | cut -f1)"
    need_kb=$(( 6 * wheels_kb + 3 * models_kb + 1048576 ))
    if (( free_kb < need_kb )); then
        die "not enough disk space for the image build: $((free_kb / 1024)) MB free under $docker_root, about $((need_kb / 1024)) MB needed. Free space ('docker image prune', 'docker builder prune', or remove old refgen images) and run again."
    fi
fi

base_args=()
if [[ -n "${BASE_IMAGE:-}" ]]; then
    base="$BASE_IMAGE"
    base_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
else
    base="$(sed -n 's/^ARG BASE_IMAGE=//p' docker/Dockerfile)"
fi
if ! "$DOCKER" image inspect "$base" >/dev/null 2>&1; then
    log "pulling the base image $base"
    "$DOCKER" pull --platform linux/amd64 "$base" >&2 \
        || die "cannot get the base image $base (no registry access?). Pull it where the network allows and 'docker load' it, or build a local stand-in with .ci/docker-setup.sh and pass BASE_IMAGE=<it>."
fi
base_id="$("$DOCKER" image inspect --format '{{.Id}}' "$base")"
if [[ "$builder" == buildah ]] && ! buildah inspect --type image "$base" >/dev/null 2>&1; then
    log "copying the base image $base from Docker to buildah's storage"
    buildah pull -q "docker-daemon:$base" >/dev/null \
        || die "buildah cannot read $base from the Docker daemon; 'buildah pull' it or use a name:tag reference."
fi

epoch="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"
revision="${VCS_REF:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
source_url="$(git remote get-url origin 2>/dev/null || true)"
[[ "$source_url" == https://* ]] || source_url=unknown
version="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)"

# Every build on a shared daemon (a CI runner, two checkouts) touches only what it made itself:
# its build stage carries this build's ID as a label, images it replaces are removed by ID, and
# nothing is pruned by a label that other builds share (that removed a concurrent build's
# intermediate images mid-build: "unknown parent image ID").
build_id="${REFGEN_BUILD_ID:-$(date +%s)-$$-$RANDOM}"
previous_image="$("$DOCKER" image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
previous_stage="$("$DOCKER" image inspect --format '{{.Id}}' "${IMAGE}-build" 2>/dev/null || true)"
images_before="$(mktemp)"
"$DOCKER" images -aq --no-trunc | sort -u >"$images_before"
log_file="$(mktemp)"
trap 'rm -f "$log_file" "$images_before"' EXIT

# After a failed build: the images this build committed (the legacy builder prints each step's
# result as " ---> ID"), newest first, unless they existed before it started (a cache hit) or
# something else now uses them (`docker rmi` without -f refuses then). Its containers are
# already gone: --force-rm.
remove_this_builds_images() {
    local id full
    grep -oE '^ ---> [0-9a-f]{12}$' "$log_file" | awk '{print $2}' | tac | while read -r id; do
        full="$("$DOCKER" image inspect --format '{{.Id}}' "$id" 2>/dev/null)" || continue
        grep -qx "$full" "$images_before" && continue
        "$DOCKER" rmi --no-prune "$id" >/dev/null 2>&1 || true
    done
}

build_args=(--network none --platform linux/amd64 -f docker/Dockerfile -t "$IMAGE" "${base_args[@]}"
    --build-arg "SOURCE_DATE_EPOCH=$epoch" --build-arg "VCS_REF=$revision"
    --build-arg "VERSION=$version" --build-arg "SOURCE_URL=$source_url"
    --build-arg "BUILD_ID=$build_id" --label "io.refgen.base.id=$base_id")
log "building $IMAGE from $base with $builder (network disabled, build $build_id)"
if [[ "$builder" == buildah ]]; then
    # --timestamp pins every created time and file mtime, so the image ID itself is reproducible;
    # the image is then handed to Docker, which keeps buildah's ID.
    # (buildah keeps no intermediate images without --layers and removes its working
    # containers itself; it refuses --force-rm then)
    build=(buildah build "${no_cache[@]}" --pull-never --timestamp "$epoch" "${build_args[@]}" "$CONTEXT")
else
    build=("$DOCKER" build "${no_cache[@]}" --force-rm "${build_args[@]}" "$CONTEXT")
fi
if ! "${build[@]}" 2>&1 | tee "$log_file" >&2; then
    [[ "$builder" == docker ]] && remove_this_builds_images
    if grep -qi 'no space left on device' "$log_file"; then
        die "the image build ran out of disk space. Free space ('docker image prune', 'docker builder prune', 'buildah rmi --prune') and run again."
    fi
    die "the image build failed (output above)."
fi
if [[ "$builder" == buildah ]]; then
    buildah push -q "$IMAGE" "docker-daemon:$IMAGE" >/dev/null || die "could not hand $IMAGE from buildah to Docker."
    buildah rmi "$IMAGE" >/dev/null  # Docker holds it now; no second multi-GB copy
fi

# The legacy builder leaves the multi-GB build stage as an untagged image. Keep this build's
# (tagged ${IMAGE}-build, so the next build of this image reuses its cached layers) and remove
# the one it replaces, and the image $IMAGE named before, by ID: both only if now untagged and
# unused (`docker rmi` without -f refuses otherwise).
stage_id="$("$DOCKER" images -q --filter "label=io.refgen.build-id=$build_id" | head -n1)"
if [[ -n "$stage_id" ]]; then
    "$DOCKER" tag "$stage_id" "${IMAGE}-build"
fi
current_image="$("$DOCKER" image inspect --format '{{.Id}}' "$IMAGE")"
current_stage="$("$DOCKER" image inspect --format '{{.Id}}' "${IMAGE}-build" 2>/dev/null || true)"
for pair in "$previous_image $current_image" "$previous_stage $current_stage"; do
    read -r old new <<<"$pair"
    if [[ -n "$old" && "$old" != "${new:-}" ]] \
            && [[ -z "$("$DOCKER" image inspect --format '{{join .RepoTags ","}}' "$old" 2>/dev/null)" ]]; then
        "$DOCKER" rmi "$old" >/dev/null 2>&1 || true
    fi
done

log "built $IMAGE: $("$DOCKER" image inspect --format '{{.Id}} ({{.Size}} bytes)' "$IMAGE")"
