# Shared by docker/build.sh and docker/run.sh (sourced, not executed).
# shellcheck shell=bash

# shellcheck disable=SC2034  # used by the scripts that source this file
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE="${IMAGE:-refgen:local}"
DOCKER="${DOCKER:-docker}"

die() { printf '%s: error: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }
log() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }

# Fail early, naming what is missing and how to get it.
require_engine() {
    command -v "$DOCKER" >/dev/null 2>&1 \
        || die "no Docker client ('$DOCKER' not found). Install an engine (Debian: 'apt-get install docker.io'; CI: .ci/docker-setup.sh) or set DOCKER=/path/to/docker."
    local err
    if ! err="$("$DOCKER" info 2>&1 >/dev/null)"; then
        case "$err" in
            *"permission denied"*)
                die "the Docker daemon refuses this user ($err). Add yourself to the 'docker' group or use sudo." ;;
            *)
                die "the Docker daemon is not running or not reachable ($err). Start it ('sudo systemctl start docker', or 'sudo dockerd &'; CI: .ci/docker-setup.sh)." ;;
        esac
    fi
    # A client without the buildx plugin cannot use BuildKit: fall back to the legacy builder,
    # which this Dockerfile supports (no `# syntax=` line, nothing BuildKit-only).
    if [[ -z "${DOCKER_BUILDKIT:-}" ]] && ! "$DOCKER" buildx version >/dev/null 2>&1; then
        export DOCKER_BUILDKIT=0
    fi
}

require_image() {
    "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1 \
        || die "image $IMAGE does not exist. Build it with docker/build.sh (or 'make reference')."
}

label() {  # label IMAGE NAME -> the label's value, empty when unset
    "$DOCKER" image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1"
}
