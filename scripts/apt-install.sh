# Sourced (not run) by scripts/ensure-*.sh: installing a missing test tool from Debian packages,
# the way they all do it. Debian/Ubuntu only; POSIX sh; the callers run under `set -eu`.
# Messages start with the calling script's name (ensure-prometheus: ...).

me=${0##*/}
me=${me%.sh}

# apt_preflight MISSING PACKAGE PRONOUN: unless this shell can install packages (root, with
# apt-get), say that MISSING ("chromium missing") and exit 1.
apt_preflight() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "$me: $1; run as root to install Debian's $2 package" >&2
        exit 1
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "$me: $1 and there is no apt-get to install $3" >&2
        exit 1
    fi
}

# apt_install ARG...: refresh the package lists, then `apt-get install -y -qq ARG...`; each
# waits up to 10 minutes for an apt or dpkg that holds the lock.
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq "$@" >/dev/null
}

# apt_install_no_daemon PROCESS SERVICE ARG...: apt_install ARG..., for a package that ships
# SERVICE. Without systemd as PID 1 (containers, CI) its maintainer script normally starts
# nothing, but a sysvinit fallback can; so the service is kept from starting, and a PROCESS
# daemon (pgrep -x: the first 15 characters of its name) that started all the same is stopped.
# A daemon that ran before the install is not ours and is left alone.
apt_install_no_daemon() {
    apt_process=$1
    apt_service=$2
    shift 2
    apt_before=" $(pgrep -x "$apt_process" | tr '\n' ' ' || true)"
    # policy-rc.d exit 101 tells invoke-rc.d "do not start services": the package's postinst
    # then leaves the daemon alone. Only created (and removed) when nobody else has one in place.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt_install "$@"
    # Belt and braces: if the package still started a daemon, stop it (by PID, and through its
    # init script/unit when one is usable) so its ports stay free.
    for apt_pid in $(pgrep -x "$apt_process" || true); do
        case "$apt_before" in
            *" $apt_pid "*) continue ;;
        esac
        echo "$me: stopping the $apt_service daemon the package started (pid $apt_pid)" >&2
        if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
            systemctl disable --now "$apt_service" >/dev/null 2>&1 || true
        elif [ -x "/etc/init.d/$apt_service" ]; then
            "/etc/init.d/$apt_service" stop >/dev/null 2>&1 || true
        fi
        kill "$apt_pid" 2>/dev/null || true
    done
}
