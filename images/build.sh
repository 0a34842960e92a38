#!/usr/bin/env bash
# Build the fgclip images with podman, from the project's own base image and a wheelhouse
# made from the lock, and record what it cost:
#
#   images/build.sh cpu [gpu]        (make image-cpu, make images)
#
# For each family: images/wheelhouse.sh FAMILY (skipped when the wheelhouse is newer than the
# locks, the filter, pyproject.toml's torch pin and the script), then `podman build` of images/FAMILY/Dockerfile tagged as params.yaml's
# kubernetes.images names it. The image's size and the build's time go to
# build/images/FAMILY.json. BASE_IMAGE overrides the base (default: images/base/build.sh's).
# The NPU image is not built here (see images/npu/Dockerfile).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export CONTAINERS_CONF=${CONTAINERS_CONF:-$ROOT/images/engine/containers.conf}
BASE_IMAGE=${BASE_IMAGE:-localhost/fgclip/debian-python:3.11-bookworm}
VERSION=$(sed -nE 's/^version = "([^"]+)"/\1/p' pyproject.toml)
[ $# -gt 0 ] || set -- cpu

if [[ "$BASE_IMAGE" == localhost/fgclip/debian-python:* ]]; then
    images/base/build.sh "$BASE_IMAGE"
fi
mkdir -p build/images
for family in "$@"; do
    case "$family" in
        cpu|gpu) ;;
        npu) echo "images: the npu image needs the Ascend CANN base from a registry; not built here" >&2; exit 2 ;;
        *) echo "images: unknown family $family (cpu or gpu)" >&2; exit 2 ;;
    esac
    tag="fgclip/fgclip-$family:$VERSION"
    wheelhouse="build/wheelhouse/$family"
    started=$(date +%s)
    fresh=1
    for source in requirements.lock requirements-img2dataset.lock images/lock-filter.txt pyproject.toml images/wheelhouse.sh; do
        [ "$wheelhouse/requirements.txt" -nt "$source" ] || fresh=0
    done
    if [ "$fresh" = 1 ]; then
        echo "wheelhouse $family: up to date ($wheelhouse)"
    else
        images/wheelhouse.sh "$family" "$wheelhouse"
    fi
    wheels_s=$(( $(date +%s) - started ))
    echo "building $tag from $BASE_IMAGE"
    started=$(date +%s)
    podman build --network host --layers --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        -f "images/$family/Dockerfile" -t "$tag" . > "build/images/$family.log" 2>&1 \
        || { tail -n 40 "build/images/$family.log" >&2; echo "images: building $tag failed (log: build/images/$family.log)" >&2; exit 1; }
    build_s=$(( $(date +%s) - started ))
    size=$(podman image inspect --format '{{.Size}}' "$tag")
    user=$(podman image inspect --format '{{.Config.User}}' "$tag")
    printf '{"image": "%s", "base": "%s", "size_bytes": %s, "build_seconds": %s, "wheelhouse_seconds": %s, "user": "%s"}\n' \
        "$tag" "$BASE_IMAGE" "$size" "$build_s" "$wheels_s" "$user" > "build/images/$family.json"
    echo "image $tag: $(awk -v s="$size" 'BEGIN {printf "%.2f GB", s/1e9}'), built in $build_s s" \
         "(+ $wheels_s s for the wheelhouse), runs as user $user"
done
