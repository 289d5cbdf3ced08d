#!/bin/sh
# Makes sure `systemd-analyze` is available, for tests/system/test_systemd_unit.py (it checks
# systemd/goipd.service with `systemd-analyze verify` and `security --offline=yes`; neither needs a
# running systemd). Idempotent: does nothing when the tool is already there. Debian/Ubuntu only.
set -eu

if command -v systemd-analyze >/dev/null 2>&1; then
    exit 0
fi

. "$(dirname "$0")/apt-install.sh"
apt_preflight "systemd-analyze is missing" systemd it
# Installing the package in a container does not make systemd PID 1; it only adds the tools.
apt_install --no-install-recommends systemd
command -v systemd-analyze >/dev/null
