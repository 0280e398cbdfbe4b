#!/bin/sh
# Install what tests/streaming/test_browser.py needs: Debian's chromium and chromium-driver
# (apt, as root) and selenium (into the given Python's environment).
#   sh tests/streaming/install_browser.sh [PYTHON]
# Idempotent: installed packages are skipped. Not root, or no apt: says what to install and
# exits 0 (the browser test then skips itself).
set -u
PY=${1:-python3}

"$PY" -c "import selenium" 2>/dev/null || "$PY" -m pip install -q "selenium>=4.20"

missing=""
for p in chromium chromium-driver; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -z "$missing" ]; then
    echo "install_browser: chromium and chromium-driver already installed"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
    echo "install_browser: as root, run: apt-get install$missing (the browser test skips without them)" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq && apt-get install -y -q --no-install-recommends $missing
