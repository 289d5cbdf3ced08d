#!/bin/sh
# Makes sure `promtool` and `prometheus` are available, for tests/metrics/test_observability.py (it runs
# `promtool check rules` and `promtool test rules` on prometheus/ and on the dashboards' queries).
# Idempotent: does nothing when both tools are already there. Debian/Ubuntu only.
#
# Debian's `prometheus` package ships a service that would listen on :9090 — the port the demo's
# simulator uses too — so a prometheus daemon the install starts is stopped again (one someone
# else runs is left alone): see apt_install_no_daemon in apt-install.sh.
set -eu

have_tools() {
    command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1
}

if have_tools; then
    exit 0
fi

. "$(dirname "$0")/apt-install.sh"
apt_preflight "promtool/prometheus missing" prometheus them
apt_install_no_daemon prometheus prometheus prometheus

have_tools
