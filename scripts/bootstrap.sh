#!/usr/bin/env bash
# Make this machine ready to run and test tunlib: system packages and the project's venv.
#
#   sudo bash scripts/bootstrap.sh     prints the venv's python path on stdout
#   source scripts/bootstrap.sh        (from another script) also sets and exports TUNLIB_PYTHON
#
# What it does, each step only when needed, so a second run takes well under a second:
#   1. apt-get installs the Debian packages the lab and the tests use (apt-get update first,
#      only if something is missing). Needs root only when something is missing.
#   2. creates .venv at the repo root with Debian's python3 (>= 3.11).
#   3. pip-installs requirements-dev.txt into it when the requirements files are newer than
#      the stamp file .venv/.requirements-stamp (or the stamp is missing).
# Several sessions may run it at once on one checkout: the venv steps hold a lock.
# Errors are one line on stderr, starting with "bootstrap: error:".

# Debian packages the lab, the tests and the benchmark (openvpn) use.
TUNLIB_APT_PACKAGES="iproute2 iptables nftables iputils-ping iperf3 tcpdump procps python3-venv openvpn \
    squid tinyproxy nginx-light curl openssl libndpi-bin tshark systemd passwd util-linux"

_tunlib_bootstrap_err() {
    printf 'bootstrap: error: %s\n' "$*" >&2
}

_tunlib_bootstrap_log() {
    [ -n "${TUNLIB_BOOTSTRAP_QUIET:-}" ] || printf 'bootstrap: %s\n' "$*" >&2
}

_tunlib_missing_packages() {
    local pkg status missing=""
    for pkg in $TUNLIB_APT_PACKAGES; do
        status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)
        case "$status" in
            *" installed") ;;
            *) missing="$missing $pkg" ;;
        esac
    done
    printf '%s' "${missing# }"
}

_tunlib_install_packages() {
    local missing
    if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
        _tunlib_bootstrap_err "this is not a Debian-like system (no dpkg/apt-get): install by hand: $TUNLIB_APT_PACKAGES"
        return 1
    fi
    missing=$(_tunlib_missing_packages)
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        _tunlib_bootstrap_err "missing packages ($missing) and not root: run with sudo"
        return 1
    fi
    _tunlib_bootstrap_log "apt-get installing: $missing"
    local log apt_opts=(-q -y -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
    log=$(mktemp /tmp/tunlib-apt.XXXXXX.log) || return 1
    # shellcheck disable=SC2086  # word splitting of the package list is intended
    if ! DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" update >"$log" 2>&1 ||
        ! DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install --no-install-recommends $missing \
            >>"$log" 2>&1; then
        _tunlib_bootstrap_err "apt-get could not install $missing: see $log"
        return 1
    fi
    missing=$(_tunlib_missing_packages)
    if [ -n "$missing" ]; then
        _tunlib_bootstrap_err "still missing after apt-get install: $missing (see $log)"
        return 1
    fi
    rm -f "$log"
}

_tunlib_base_python() {
    # Debian's python3 first: python3-venv (installed above) is for it, and sudo's PATH finds it
    # anyway. Any other python3 on PATH that is 3.11+ and has venv will do as a fallback.
    local candidate
    for candidate in /usr/bin/python3 "$(command -v python3 2>/dev/null)"; do
        [ -n "$candidate" ] && [ -x "$candidate" ] || continue
        if "$candidate" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            printf '%s' "$candidate"
            return 0
        fi
    done
    return 1
}

_tunlib_setup_venv() {
    local root=$1 venv=$1/.venv base stamp=$1/.venv/.requirements-stamp req log err
    if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        2>/dev/null; then
        if ! base=$(_tunlib_base_python); then
            _tunlib_bootstrap_err "no Python 3.11+ with the venv module found (install python3 and python3-venv)"
            return 1
        fi
        _tunlib_bootstrap_log "creating $venv with $base"
        rm -rf "$venv"
        if ! err=$("$base" -m venv "$venv" 2>&1); then
            _tunlib_bootstrap_err "'$base -m venv $venv' failed: $(printf '%s' "$err" | tail -n 1)"
            return 1
        fi
    fi
    for req in "$root/requirements-dev.txt" "$root/requirements.txt"; do
        if [ -f "$req" ] && { [ ! -f "$stamp" ] || [ "$req" -nt "$stamp" ]; }; then
            _tunlib_bootstrap_log "installing requirements-dev.txt into .venv"
            log=$(mktemp /tmp/tunlib-pip.XXXXXX.log) || return 1
            if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$root/requirements-dev.txt" \
                >"$log" 2>&1; then
                _tunlib_bootstrap_err "pip install -r requirements-dev.txt failed: see $log"
                return 1
            fi
            rm -f "$log"
            touch "$stamp"
            break
        fi
    done
}

tunlib_bootstrap() {
    local root lock_fd rc
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd) || return 1
    if [ ! -f "$root/requirements-dev.txt" ]; then
        _tunlib_bootstrap_err "$root/requirements-dev.txt not found: run from a tunlib checkout"
        return 1
    fi
    _tunlib_install_packages || return 1
    # The lock is on the requirements file itself (opened read-only), so no lock file is left
    # behind; it is released when the descriptor is closed below.
    exec {lock_fd}<"$root/requirements-dev.txt"
    flock "$lock_fd"
    _tunlib_setup_venv "$root"
    rc=$?
    exec {lock_fd}<&-
    [ "$rc" -eq 0 ] || return "$rc"
    TUNLIB_PYTHON=$root/.venv/bin/python
    export TUNLIB_PYTHON
}

if [ "${BASH_SOURCE[0]}" != "$0" ]; then
    tunlib_bootstrap
    return $?
fi
tunlib_bootstrap || exit 1
printf '%s\n' "$TUNLIB_PYTHON"
