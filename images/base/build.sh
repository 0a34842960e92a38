#!/usr/bin/env bash
# The project's own base image: Debian 12 (bookworm) with Python 3.11, built from Debian's
# packages by mmdebstrap and imported into podman, so the images build where no registry
# of base images can be reached (an air-gapped build host, or this project's CI).
#
#   images/base/build.sh [TAG]      default TAG: localhost/fgclip/debian-python:3.11-bookworm
#
# DEBIAN_MIRROR overrides the mirror (default: the host's apt mirror, else deb.debian.org).
# SOURCE_DATE_EPOCH pins file times, so the same packages give the same root file system.
# The image is rebuilt only when it is missing (FORCE=1 rebuilds it).
set -euo pipefail

TAG=${1:-localhost/fgclip/debian-python:3.11-bookworm}
SUITE=bookworm
# python3-dev: DeepSpeed and torch compile C++ extensions against Python's headers at run time.
PACKAGES=python3,python3-venv,python3-dev,ca-certificates
HERE=$(cd "$(dirname "$0")" && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$HERE/../engine/containers.conf}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1735689600}  # 2025-01-01

if [ "${FORCE:-0}" != 1 ] && podman image exists "$TAG"; then
    echo "base image $TAG exists (FORCE=1 rebuilds it)"
    exit 0
fi

host_mirror() {
    # The first Debian archive URI the host's apt uses (deb822 .sources or sources.list).
    local found
    found=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -n1 || true)
    [ -n "$found" ] || found=$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -v security | head -n1 || true)
    echo "${found:-http://deb.debian.org/debian}"
}
MIRROR=${DEBIAN_MIRROR:-$(host_mirror)}
SECURITY=${DEBIAN_SECURITY_MIRROR:-${MIRROR%/debian}/debian-security}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
started=$(date +%s)
echo "mmdebstrap $SUITE ($PACKAGES) from $MIRROR"
mmdebstrap --variant=minbase --include="$PACKAGES" --quiet \
    --aptopt='APT::Install-Recommends "false"' \
    --customize-hook='chroot "$1" dpkg-query -W -f "\${Package} \${Version}\n" > "$1/usr/share/fgclip-base-packages.txt"' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    "$SUITE" "$work/rootfs.tar" \
    "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" "deb $SECURITY $SUITE-security main"
# An imported file system has no configuration: PATH, locale and a shell as the default command.
podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    --change "LABEL org.opencontainers.image.description=Debian $SUITE with Python 3.11 from Debian's packages (mmdebstrap)" \
    --message "mmdebstrap $SUITE $PACKAGES" \
    --quiet "$work/rootfs.tar" "$TAG" > /dev/null
podman run --rm "$TAG" python3 -c 'import sys, ssl, venv; assert sys.version_info[:2] == (3, 11), sys.version'
echo "base image $TAG: $(podman image inspect --format '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}')," \
     "built in $(( $(date +%s) - started )) s"
