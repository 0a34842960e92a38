#!/usr/bin/env bash
# The browser the UI test drives (tests/pipeline/test_airflow_ui.py): Debian's chromium, as
# root, from the distribution's archive (no browser download by playwright; playwright itself
# is pinned in requirements.lock). Idempotent: nothing to do when it is installed.
set -euo pipefail
CHROMIUM_MAJOR=156  # the Debian 12 build the test was written against; a newer one is fine
if ! command -v chromium >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends chromium
fi
version=$(chromium --version 2>/dev/null | grep -oE '[0-9]+\.[0-9.]+' | head -1)
echo "chromium ${version}"
if [ "${version%%.*}" -lt "$CHROMIUM_MAJOR" ]; then
    echo "chromium ${version} is older than ${CHROMIUM_MAJOR}: the UI test may not work with it" >&2
fi
