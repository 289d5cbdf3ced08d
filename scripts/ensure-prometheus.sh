#!/bin/sh
# Makes sure `promtool` and `prometheus` are available, for tests/test_observability.py (it runs
# `promtool check rules` and `promtool test rules` on prometheus/ and on the dashboards' queries).
# Idempotent: does nothing when both tools are already there. Debian/Ubuntu only.
#
# Debian's `prometheus` package ships a service that would listen on :9090 — the port the demo's
# simulator uses too. Without systemd as PID 1 (containers, CI) the package's maintainer script
# normally starts nothing, but a sysvinit fallback can; so after installing we stop a daemon the
# package started (and only that one: a prometheus someone else runs is left alone).
set -eu

have_tools() {
    command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1
}

if have_tools; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "ensure-prometheus: promtool/prometheus missing; run as root to install Debian's prometheus package" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-prometheus: promtool/prometheus missing and there is no apt-get to install them" >&2
    exit 1
fi

# Daemons running before the install are not ours to stop.
before=" $(pgrep -x prometheus | tr '\n' ' ' || true)"

export DEBIAN_FRONTEND=noninteractive
# policy-rc.d exit 101 tells invoke-rc.d "do not start services": the package's postinst then
# leaves the daemon alone. Only created (and removed) when nobody else has one in place.
policy=/usr/sbin/policy-rc.d
made_policy=no
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    made_policy=yes
fi
cleanup() {
    if [ "$made_policy" = yes ]; then
        rm -f "$policy"
    fi
}
trap cleanup EXIT

apt-get update -qq
apt-get install -y -qq prometheus >/dev/null

# Belt and braces: if the package still started a daemon, stop it (by PID, and through its init
# script/unit when one is usable) so port 9090 stays free.
for pid in $(pgrep -x prometheus || true); do
    case "$before" in
        *" $pid "*) continue ;;
    esac
    echo "ensure-prometheus: stopping the prometheus daemon the package started (pid $pid)" >&2
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now prometheus >/dev/null 2>&1 || true
    elif [ -x /etc/init.d/prometheus ]; then
        /etc/init.d/prometheus stop >/dev/null 2>&1 || true
    fi
    kill "$pid" 2>/dev/null || true
done

have_tools
