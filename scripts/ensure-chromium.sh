#!/bin/sh
# Makes sure a headless-capable Chromium is available, for tests/system/test_status_page.py (it loads
# goipd's status page in `chromium --headless` and checks the rendered DOM and a screenshot).
# Idempotent: does nothing when chromium is already there. Debian/Ubuntu only.
#
# Debian's `chromium` package starts no service, so unlike ensure-prometheus.sh there is no
# daemon to stop afterwards. --no-install-recommends keeps out the desktop extras (sound
# themes, fonts for every script) a headless run does not need; fonts-dejavu-core gives the
# screenshot legible text.
set -eu

have_tool() {
    command -v chromium >/dev/null 2>&1
}

if have_tool; then
    exit 0
fi

. "$(dirname "$0")/apt-install.sh"
apt_preflight "chromium missing" chromium it
apt_install --no-install-recommends chromium fonts-dejavu-core

have_tool
