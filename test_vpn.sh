#!/usr/bin/env bash
# Ping checks against a running tunlib demo (start one with: sudo bash run_vpn.sh --background).
#
#   sudo bash test_vpn.sh [--lab-dir DIR]
#
# Reads the demo's names from DIR/lab.env (default: lab/ beside this script), then checks that
# both tunnel processes run, both TUN interfaces appear within 15 s with their address and UP,
# and that pings cross the tunnel both ways. "Cross" is verified, not assumed: each ping must
# also move the packet counters of the sending TUN. In flat mode, where both tunnel addresses
# are local to one namespace, the pings are bound to a TUN (ping -I) and answered by the far
# end's user-space ICMP responder. Exit status 0 if every check passed; the last line is
# "N passed, N failed".
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LAB_DIR=$ROOT/lab
IFACE_TIMEOUT=15
PING_COUNT=3

while [ $# -gt 0 ]; do
    case "$1" in
        --lab-dir)
            [ $# -ge 2 ] || { echo "test_vpn.sh: error: --lab-dir needs a value" >&2; exit 2; }
            LAB_DIR=$2
            shift
            ;;
        --lab-dir=*) LAB_DIR=${1#--lab-dir=} ;;
        -h | --help)
            sed -n '2,12s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
            exit 0
            ;;
        *) echo "test_vpn.sh: error: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

PASSED=0
FAILED=0
pass() {
    PASSED=$((PASSED + 1))
    printf 'PASS  %s\n' "$1"
}
# fail WHAT HINT...: one line for the failed step, then where to look.
fail() {
    FAILED=$((FAILED + 1))
    printf 'FAIL  %s\n' "$1"
    shift
    local hint
    for hint in "$@"; do
        printf '        look at: %s\n' "$hint"
    done
}
finish() {
    if [ "$FAILED" -gt 0 ]; then
        echo "Some checks failed. Logs: ${LAB_SERVER_LOG:-$LAB_DIR/server.log} ${LAB_CLIENT_LOG:-$LAB_DIR/client.log}"
    fi
    echo "$PASSED passed, $FAILED failed"
    [ "$FAILED" -eq 0 ]
    exit
}

if [ "$(id -u)" -ne 0 ]; then
    fail "running as root" "this script enters network namespaces: sudo bash $0"
    finish
fi
STATE_FILE=$LAB_DIR/lab.env
if [ ! -f "$STATE_FILE" ]; then
    fail "finding a running demo ($STATE_FILE is missing)" "start one: sudo bash $ROOT/run_vpn.sh --background"
    finish
fi
# shellcheck source=/dev/null
. "$STATE_FILE"
SERVER_LOG=$LAB_SERVER_LOG
CLIENT_LOG=$LAB_CLIENT_LOG
echo "Checking the $LAB_MODE lab in $LAB_DIR (namespaces: $LAB_NAMESPACES)"

# -- processes -----------------------------------------------------------------------------------
proc_running() { # PID WHAT-IN-CMDLINE
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) && [ "$state" != Z ] &&
        tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF "$2"
}
for end in server client; do
    if [ "$end" = server ]; then pid=$LAB_SERVER_PID log=$SERVER_LOG; else pid=$LAB_CLIENT_PID log=$CLIENT_LOG; fi
    if proc_running "$pid" "$end.py"; then
        pass "$end.py is running (PID $pid)"
    else
        fail "$end.py is running (PID $pid)" "tail -n 30 $log" \
            "restart the demo: sudo bash $ROOT/run_vpn.sh --down${LAB_OPTS:-}; sudo bash $ROOT/run_vpn.sh --background${LAB_UP_OPTS:-}"
    fi
done

# -- interfaces ----------------------------------------------------------------------------------
deadline=$((SECONDS + IFACE_TIMEOUT))
check_interface() { # END NS TUN ADDR LOG PID
    local end=$1 ns=$2 tun=$3 addr=$4 log=$5 pid=$6 line
    until line=$(ip -n "$ns" -o -4 address show dev "$tun" 2>/dev/null) && [ -n "$line" ]; do
        # No point waiting for a TUN whose process is gone: it removes its TUN when it exits.
        if [ "$SECONDS" -ge "$deadline" ] || ! proc_running "$pid" "$end.py"; then
            fail "$end TUN $tun exists in namespace $ns ($(proc_running "$pid" "$end.py" &&
                echo "waited ${IFACE_TIMEOUT}s" || echo "$end.py is not running"))" \
                "ip -n $ns link" "tail -n 30 $log"
            return
        fi
        sleep 0.2
    done
    pass "$end TUN $tun exists in namespace $ns"
    if [[ " $line " == *" inet $addr "* ]]; then
        pass "$end TUN $tun has address $addr"
    else
        fail "$end TUN $tun has address $addr (found: $(awk '{print $4}' <<<"$line"))" "ip -n $ns addr show dev $tun"
    fi
    # <...,UP,LOWER_UP>: administratively up and the carrier is on (a TUN's carrier is its open fd).
    if ip -n "$ns" -o link show dev "$tun" 2>/dev/null | grep -qE '<([^>]*,)?UP,([^>]*,)?LOWER_UP[,>]'; then
        pass "$end TUN $tun is UP"
    else
        fail "$end TUN $tun is UP" "ip -n $ns link show dev $tun" "tail -n 30 $log"
    fi
}
check_interface server "$LAB_SERVER_NS" "$LAB_SERVER_TUN" "$LAB_SERVER_TUN_ADDR" "$SERVER_LOG" "$LAB_SERVER_PID"
check_interface client "$LAB_CLIENT_NS" "$LAB_CLIENT_TUN" "$LAB_CLIENT_TUN_ADDR" "$CLIENT_LOG" "$LAB_CLIENT_PID"

# -- pings ---------------------------------------------------------------------------------------
tun_counter() { # NS TUN rx|tx
    ip netns exec "$1" cat "/sys/class/net/$2/statistics/$3_packets" 2>/dev/null || echo 0
}
# check_ping WHAT FROM-NS FROM-TUN TO-ADDR: ping TO-ADDR from FROM-NS and require that the
# requests left through FROM-TUN and the replies came back through it.
check_ping() {
    local what=$1 ns=$2 tun=$3 to=$4 tx0 rx0 tx1 rx1 out bind=()
    [ "$LAB_MODE" = flat ] && bind=(-I "$tun")
    tx0=$(tun_counter "$ns" "$tun" tx)
    rx0=$(tun_counter "$ns" "$tun" rx)
    out=$(ip netns exec "$ns" ping -n -c "$PING_COUNT" -i 0.2 -W 2 "${bind[@]}" "$to" 2>&1)
    local rc=$?
    tx1=$(tun_counter "$ns" "$tun" tx)
    rx1=$(tun_counter "$ns" "$tun" rx)
    local cmd="ip netns exec $ns ping -c $PING_COUNT ${bind[*]}${bind:+ }$to"
    if [ "$rc" -ne 0 ]; then
        local hints=("$SERVER_LOG and $CLIENT_LOG (if both run, kill -USR1 $LAB_SERVER_PID $LAB_CLIENT_PID logs their counters)")
        if [ "$LAB_MODE" = flat ]; then
            hints+=("ip -n $ns addr; ip -n $ns route"
                "ip netns exec $ns sysctl net.ipv4.conf.all.accept_local net.ipv4.conf.all.rp_filter net.ipv4.conf.$tun.rp_filter (need 1, 0 or 2, 0 or 2)")
        else
            hints+=("ip -n $LAB_SERVER_NS addr; ip -n $LAB_CLIENT_NS addr; ip -n $ns route")
        fi
        fail "$what: $cmd ($(grep -m1 -E 'packet loss|unreachable|error|Cannot' <<<"$out" || echo "exit $rc"))" "${hints[@]}"
        return
    fi
    if [ $((tx1 - tx0)) -lt "$PING_COUNT" ] || [ $((rx1 - rx0)) -lt "$PING_COUNT" ]; then
        fail "$what: replies came back but not through $tun (tx +$((tx1 - tx0)), rx +$((rx1 - rx0)))" \
            "ip -n $ns route get $to" "ip -n $ns -s link show dev $tun"
        return
    fi
    pass "$what: $cmd (through $tun: tx +$((tx1 - tx0)), rx +$((rx1 - rx0)))"
}
check_ping "ping client -> server" "$LAB_CLIENT_NS" "$LAB_CLIENT_TUN" "${LAB_SERVER_TUN_ADDR%/*}"
check_ping "ping server -> client" "$LAB_SERVER_NS" "$LAB_SERVER_TUN" "${LAB_CLIENT_TUN_ADDR%/*}"
# IPv6 inside the tunnel too, where the two ends are in namespaces of their own (in the flat
# lab both addresses are local to one namespace, and IPv6 has no accept_local to force them
# through the TUNs).
if [ "$LAB_MODE" != flat ] && [ -n "${LAB_SERVER_TUN_ADDR6:-}" ]; then
    check_ping "ping -6 client -> server" "$LAB_CLIENT_NS" "$LAB_CLIENT_TUN" "${LAB_SERVER_TUN_ADDR6%/*}"
    check_ping "ping -6 server -> client" "$LAB_SERVER_NS" "$LAB_SERVER_TUN" "${LAB_CLIENT_TUN_ADDR6%/*}"
fi

finish
