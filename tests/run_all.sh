#!/usr/bin/env bash
# THE test command for tunlib:   sudo bash tests/run_all.sh
#
# Steps, each reported PASS/FAIL; all run even after a failure:
#   1. scripts/bootstrap.sh: system packages and .venv (a failure here stops the run)
#   2. ruff check .
#   3. pytest tests            (unit tests, and the root-only end-to-end tests in tests/e2e)
#   4. the demo, two-host:     run_vpn.sh --background, test_vpn.sh, run_vpn.sh --down
#   5. the demo, flat:         the same with --flat, and with --gateway
#   6. the benchmark:          bench/run.sh --quick (figures printed, not asserted)
#   7. the attack measurements: bench/attack.py --quick (figures printed, not asserted; < 60 s)
# The demo checks use their own namespace names (tlar<PID>-...) and a temporary lab directory,
# so they never collide with a demo someone is running from lab/. Whatever they start is torn
# down on exit, also on failure or Ctrl+C. Exit status 0 only if every step passed; the last
# line is "steps: N passed, N failed". Runs in about a minute plus the time pytest takes.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
PYTEST_TIMEOUT=${PYTEST_TIMEOUT:-420}
PREFIX=tlar$$

if [ "$(id -u)" -ne 0 ]; then
    echo "run_all.sh: error: must run as root (the end-to-end tests and the demo create namespaces and TUNs): sudo bash tests/run_all.sh" >&2
    exit 1
fi

PASSED=0
FAILED=0
SUMMARY=()
record() { # STATUS NAME
    if [ "$1" -eq 0 ]; then
        PASSED=$((PASSED + 1))
        SUMMARY+=("PASS  $2")
    else
        FAILED=$((FAILED + 1))
        SUMMARY+=("FAIL  $2")
    fi
}
banner() {
    printf '\n===== %s\n' "$*"
}

WORK=$(mktemp -d /tmp/tunlib-run-all.XXXXXX) || exit 1
LAB_DIRS=()
cleanup() {
    local lab
    trap - EXIT INT TERM HUP
    for lab in "${LAB_DIRS[@]}"; do
        [ -f "$lab/lab.env" ] && bash "$ROOT/run_vpn.sh" --down --lab-dir "$lab"
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo "run_all.sh: interrupted" >&2; exit 130' INT TERM HUP

# -- 1. bootstrap ----------------------------------------------------------------------------------
banner "bootstrap: scripts/bootstrap.sh"
# shellcheck source=scripts/bootstrap.sh
if ! . "$ROOT/scripts/bootstrap.sh"; then
    record 1 "bootstrap"
    printf '%s\n' "${SUMMARY[@]}"
    echo "steps: $PASSED passed, $FAILED failed"
    exit 1
fi
PY=$TUNLIB_PYTHON
echo "using $PY ($("$PY" --version 2>&1))"
record 0 "bootstrap"

# -- 2. lint ---------------------------------------------------------------------------------------
banner "lint: ruff check ."
"$PY" -m ruff check .
record $? "ruff check ."

# -- 3. unit and end-to-end tests --------------------------------------------------------------------
banner "pytest tests"
# SIGINT on timeout, so that pytest still runs its fixtures' teardown (namespaces, processes).
timeout --foreground -s INT -k 30 "$PYTEST_TIMEOUT" "$PY" -m pytest tests
rc=$?
case $rc in
    0) record 0 "pytest tests" ;;
    5) echo "run_all.sh: pytest collected no tests: that is a failure here" >&2; record 1 "pytest tests (no tests collected)" ;;
    124) record 1 "pytest tests (timed out after ${PYTEST_TIMEOUT}s)" ;;
    *) record 1 "pytest tests (exit $rc)" ;;
esac

# -- 4, 5. the demo and its checks -----------------------------------------------------------------
show_logs() {
    local log
    for log in "$1/server.log" "$1/client.log"; do
        [ -s "$log" ] && { printf -- '--- last lines of %s:\n' "$log"; tail -n 20 "$log"; }
    done
}
demo_checks() { # LABEL RUN_VPN_OPTIONS...
    local label=$1 lab=$WORK/$1 rc leftovers pids pid
    shift
    LAB_DIRS+=("$lab")
    banner "demo, $label: run_vpn.sh --background${*:+ $*}"
    # What the demo prints for a person to try is kept out of the way unless start-up failed.
    mkdir -p "$lab"
    bash "$ROOT/run_vpn.sh" --background --name "$PREFIX" --lab-dir "$lab" "$@" </dev/null >"$lab/up.out"
    rc=$?
    [ "$rc" -eq 0 ] || cat "$lab/up.out"
    record $rc "demo $label: run_vpn.sh --background${*:+ $*}"
    if [ "$rc" -eq 0 ]; then
        banner "demo, $label: test_vpn.sh"
        bash "$ROOT/test_vpn.sh" --lab-dir "$lab"
        rc=$?
        record $rc "demo $label: test_vpn.sh"
        [ "$rc" -eq 0 ] || show_logs "$lab"
    else
        record 1 "demo $label: test_vpn.sh (not run: the demo did not start)"
    fi
    pids=$(. "$lab/lab.env" 2>/dev/null && echo "$LAB_SERVER_PID $LAB_CLIENT_PID")
    banner "demo, $label: run_vpn.sh --down"
    bash "$ROOT/run_vpn.sh" --down --lab-dir "$lab"
    rc=$?
    # --down must leave nothing behind: no namespace of ours, no tunnel process of ours.
    leftovers=$(ip netns list | awk '{print $1}' | grep -E "^$PREFIX-" | tr '\n' ' ')
    for pid in $pids; do
        [ -d "/proc/$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$lab" &&
            leftovers="$leftovers process $pid"
    done
    if [ -n "$leftovers" ]; then
        echo "run_all.sh: left behind after --down: $leftovers" >&2
        rc=1
    fi
    record $rc "demo $label: run_vpn.sh --down (nothing left behind)"
}
demo_checks two-host
demo_checks flat --flat
demo_checks gateway --gateway

# -- 6. the benchmark, short: proves it runs; its figures are printed, never asserted -----------------
banner "benchmark: bench/run.sh --quick"
timeout --foreground -s INT -k 30 300 bash "$ROOT/bench/run.sh" --quick
record $? "bench/run.sh --quick"

# -- 7. attacks, short: strangers and a rogue client against a lab server; figures printed, not asserted ----
banner "attack measurements: bench/attack.py --quick"
flock -w 600 /tmp/tunlib-bench.lock timeout --foreground -s INT -k 30 180 "$PY" -m bench.attack --quick
record $? "bench/attack.py --quick"

# -- summary -----------------------------------------------------------------------------------
banner "summary"
printf '%s\n' "${SUMMARY[@]}"
echo "steps: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
