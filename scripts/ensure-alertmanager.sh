#!/bin/sh
# Makes sure Alertmanager is available, for tests/accept/test_alerts.py (it starts a real Alertmanager
# on loopback whose webhook receiver is goipd's POST /api/v1/alertmanager). Debian names the
# binary `prometheus-alertmanager`. Idempotent: does nothing when it is already there.
# Debian/Ubuntu only.
#
# The package ships a service listening on :9093 (and :9094 for clustering), so an alertmanager
# daemon the install starts is stopped again (one that ran before is left alone): see
# apt_install_no_daemon in apt-install.sh. pgrep -x matches the 15-character process name, hence
# "prometheus-aler".
set -eu

have_tool() {
    command -v prometheus-alertmanager >/dev/null 2>&1 || command -v alertmanager >/dev/null 2>&1
}

if have_tool; then
    exit 0
fi

. "$(dirname "$0")/apt-install.sh"
apt_preflight "alertmanager missing" prometheus-alertmanager it
apt_install_no_daemon prometheus-aler prometheus-alertmanager \
    --no-install-recommends prometheus-alertmanager

have_tool
