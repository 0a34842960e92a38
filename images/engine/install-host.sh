#!/usr/bin/env bash
# Install the container engine the images and the cluster rehearsal need, from Debian's
# packages: podman (build, run, `kube play`), buildah, runc and mmdebstrap (the project's
# own base image). Idempotent; needs root (or sudo) where something is missing.
set -euo pipefail

needed=()
for tool in podman buildah runc mmdebstrap; do
    command -v "$tool" > /dev/null || needed+=("$tool")
done
if [ ${#needed[@]} -eq 0 ]; then
    echo "container engine: $(podman --version), $(buildah --version | cut -d' ' -f1-3), $(mmdebstrap --version)"
    exit 0
fi
if ! command -v apt-get > /dev/null; then
    echo "install-host: ${needed[*]} missing and this is not a Debian/Ubuntu host: install podman (>= 4.3)," \
         "buildah, runc and mmdebstrap with the host's package manager" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo > /dev/null || { echo "install-host: run as root to install ${needed[*]}" >&2; exit 1; }
    sudo="sudo"
fi
echo "installing from Debian's packages: podman buildah runc mmdebstrap"
$sudo apt-get update -q
# (with the recommended packages: netavark and aardvark-dns give pods on one network DNS)
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q podman buildah runc mmdebstrap > /dev/null
echo "container engine: $(podman --version), $(buildah --version | cut -d' ' -f1-3), $(mmdebstrap --version)"
