#!/bin/sh
# Makes sure `systemd-analyze` is available, for tests/test_systemd_unit.py (it checks
# systemd/goipd.service with `systemd-analyze verify` and `security --offline=yes`; neither needs a
# running systemd). Idempotent: does nothing when the tool is already there. Debian/Ubuntu only.
set -eu

if command -v systemd-analyze >/dev/null 2>&1; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "ensure-systemd: systemd-analyze is missing; run as root to install Debian's systemd package" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-systemd: systemd-analyze is missing and there is no apt-get to install it" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Installing the package in a container does not make systemd PID 1; it only adds the tools.
apt-get install -y -qq --no-install-recommends systemd >/dev/null
command -v systemd-analyze >/dev/null
