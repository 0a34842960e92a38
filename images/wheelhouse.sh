#!/usr/bin/env bash
# The wheelhouse an image installs from: every wheel of requirements.lock (less the lines of
# images/lock-filter.txt), the family's torch build, and pip and setuptools, made here, outside
# the build, so an image build reaches no package index (an air-gapped cluster's registry
# builds the same way). Packages published only as source are built into wheels here.
# The cpu family (the one that runs `ingest`) also gets OUT/img2dataset: the wheels of
# requirements-img2dataset.lock, for img2dataset's own environment in the image (its pins
# clash with the project's, as in `make env`).
#
#   images/wheelhouse.sh FAMILY [OUT]      FAMILY: cpu | gpu | npu; OUT: build/wheelhouse/FAMILY
#
# torch per family (its version is pyproject.toml's pin):
#   cpu  torch==X+cpu. Where pip's configuration does not already find it, point
#        TORCH_INDEX at PyTorch's CPU index (https://download.pytorch.org/whl/cpu).
#   gpu  torch==X as PyPI publishes it for Linux x86_64: the CUDA build, which brings the
#        CUDA runtime, cuDNN and NCCL as wheels. pip runs --isolated from local find-links
#        and extra indexes, which may hold a CPU build of the same version.
#   npu  torch==X (CPU build) + torch-npu==X for linux/aarch64 (Ascend hosts): TORCH_INDEX
#        must name PyTorch's CPU index (PyPI's aarch64 torch is another build).
# PIP (default: the project venv's pip, else pip3) and extra PIP_ARGS may be set.
set -euo pipefail

FAMILY=${1:?usage: images/wheelhouse.sh cpu|gpu|npu [OUT]}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${2:-$ROOT/build/wheelhouse/$FAMILY}
PIP=${PIP:-$( [ -x "$ROOT/.venv/bin/pip" ] && echo "$ROOT/.venv/bin/pip" || echo pip3 )}
# The pins the Dockerfiles install with (pip and setuptools are not in a pip freeze).
PIP_VERSION=26.3
SETUPTOOLS_VERSION=84.2.1
TORCH_VERSION=$(sed -nE 's/^ *"torch==([^"]+)".*/\1/p' "$ROOT/pyproject.toml")
[ -n "$TORCH_VERSION" ] || { echo "wheelhouse: no torch== pin in pyproject.toml" >&2; exit 1; }

args=(--quiet)
case "$FAMILY" in
    cpu) torch=("torch==$TORCH_VERSION+cpu")
         [ -z "${TORCH_INDEX:-}" ] || args+=(--extra-index-url "$TORCH_INDEX") ;;
    gpu) torch=("torch==$TORCH_VERSION")
         args+=(--isolated) ;;
    npu) torch=("torch==$TORCH_VERSION" "torch-npu==$TORCH_VERSION")
         [ -n "${TORCH_INDEX:-}" ] || { echo "wheelhouse npu: set TORCH_INDEX to PyTorch's CPU index" >&2; exit 1; }
         args+=(--extra-index-url "$TORCH_INDEX" --only-binary=:all: --python-version 3.11 --implementation cp
                --abi cp311 --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64
                --platform manylinux2014_aarch64) ;;
    *) echo "wheelhouse: unknown family $FAMILY (cpu, gpu or npu)" >&2; exit 2 ;;
esac

mkdir -p "$OUT"
requirements="$OUT/requirements.txt"
{
    echo "# requirements.lock without the lines of images/lock-filter.txt ($FAMILY wheelhouse)"
    grep -v '^#' "$ROOT/images/lock-filter.txt" | grep -Ev -f - "$ROOT/requirements.lock"
} > "$requirements.tmp"
mv "$requirements.tmp" "$requirements"

started=$(date +%s)
echo "wheelhouse $FAMILY: ${torch[*]} + $(grep -vc '^#' "$requirements") locked packages -> $OUT"
# (pip's notes about index locations a host's configuration names but lacks are dropped)
quiet_locations() { grep -v "is ignored: it is neither a file nor a directory" >&2 || true; }
if [ "$FAMILY" = npu ]; then
    # Cross-platform: only published wheels can be fetched for another architecture.
    "$PIP" download "${args[@]}" ${PIP_ARGS:-} --dest "$OUT" -r "$requirements" "${torch[@]}" \
        "pip==$PIP_VERSION" "setuptools==$SETUPTOOLS_VERSION" 2> >(quiet_locations)
else
    "$PIP" wheel "${args[@]}" ${PIP_ARGS:-} --wheel-dir "$OUT" -r "$requirements" "${torch[@]}" \
        "pip==$PIP_VERSION" "setuptools==$SETUPTOOLS_VERSION" 2> >(quiet_locations)
fi

if [ "$FAMILY" = cpu ]; then
    "$PIP" wheel "${args[@]}" ${PIP_ARGS:-} --wheel-dir "$OUT/img2dataset" -r "$ROOT/requirements-img2dataset.lock" \
        "pip==$PIP_VERSION" 2> >(quiet_locations)
fi

# The family's torch must be the build it is meant to be (a CPU build in the GPU image
# would only show on the first CUDA call).
wheels=("$OUT"/torch-"$TORCH_VERSION"*.whl)
case "$FAMILY" in
    cpu|npu) [[ "${wheels[0]}" == *+cpu* || "$FAMILY" == npu ]] || { echo "wheelhouse cpu: ${wheels[0]} is not a CPU build" >&2; exit 1; } ;;
    gpu) [[ "${wheels[0]}" != *+cpu* ]] && compgen -G "$OUT/nvidia_*.whl" > /dev/null \
             || { echo "wheelhouse gpu: ${wheels[0]} is not a CUDA build" >&2; exit 1; } ;;
esac
echo "wheelhouse $FAMILY: $(find "$OUT" -name '*.whl' | wc -l) wheels, $(du -sm "$OUT" | cut -f1) MB, $(( $(date +%s) - started )) s"
