#!/usr/bin/env bash
# The browser the UI test drives (tests/pipeline/test_airflow_ui.py): Debian's chromium from
# the distribution's archive (no browser download by playwright; playwright itself is pinned
# in requirements.lock). Idempotent: nothing to do when a good enough chromium is installed.
#
# The pin: CHROMIUM_VERSION, the Debian 12 build the test was written against, is installed
# exactly while the archive holds it. Debian's security archive keeps only its latest
# chromium, so once that build is superseded the archive's current one is installed instead
# (said on stderr); a build older than CHROMIUM_MIN_MAJOR is refused.
set -euo pipefail
CHROMIUM_VERSION=156.0.8078.114-1~deb12u1
CHROMIUM_MIN_MAJOR=156

installed_major() {
    command -v chromium >/dev/null 2>&1 || { echo 0; return; }
    chromium --version 2>/dev/null | grep -oE '[0-9]+\.[0-9.]+' | head -1 | cut -d. -f1
}

if [ "$(installed_major)" -lt "$CHROMIUM_MIN_MAJOR" ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q
    if apt-cache madison chromium | grep -qF " $CHROMIUM_VERSION "; then
        $SUDO apt-get install -y -q --no-install-recommends "chromium=$CHROMIUM_VERSION"
    else
        echo "chromium $CHROMIUM_VERSION is no longer in the archive: installing its current build" >&2
        $SUDO apt-get install -y -q --no-install-recommends chromium
    fi
fi
major=$(installed_major)
echo "chromium $(chromium --version 2>/dev/null || echo missing)"
if [ "$major" -lt "$CHROMIUM_MIN_MAJOR" ]; then
    echo "chromium major ${major} is older than ${CHROMIUM_MIN_MAJOR}: the UI test is not known to work with it" >&2
    exit 1
fi
