#!/usr/bin/env bash
# tunlib demo: a server and a client on one machine, each in its own network namespace.
# Run `bash run_vpn.sh --help` for the options; everything it prints is copy-pasteable.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROG="run_vpn.sh"

# The lab's fixed layout. The tunnel subnet is the server's default (10.0.0.0/24); the veth
# link uses TEST-NET-1 (192.0.2.0/24), which exists only inside the two namespaces.
PORT=55555
SERVER_TUN=tun0
CLIENT_TUN=tun-client0
SUBNET=10.0.0.0/24
SERVER_TUN_ADDR=10.0.0.1/24
CLIENT_TUN_ADDR=10.0.0.2/24
SERVER_VETH_ADDR=192.0.2.1/24
CLIENT_VETH_ADDR=192.0.2.2/24
CLIENT_NAME=client1
UP_TIMEOUT=15
# --gateway: the two ends sit on different networks, joined by an "internet" namespace that routes
# between them and hosts a web server. All TEST-NET (RFC 5737): client side 198.51.100.0/24,
# server side 203.0.113.0/24, the web server 192.0.2.80 (a /32 on the internet's loopback).
GW_CLIENT_VETH_ADDR=198.51.100.2/24
GW_INET_CLIENT_ADDR=198.51.100.1/24
GW_SERVER_VETH_ADDR=203.0.113.2/24
GW_INET_SERVER_ADDR=203.0.113.1/24
GW_WEB_ADDR=192.0.2.80
GW_DNS_ADDR=192.0.2.53

usage() {
    cat <<EOF
Usage: sudo bash $PROG [--flat | --gateway] [--no-offload] [--background | --foreground]
       sudo bash $PROG --down
Options: [--name PREFIX] [--lab-dir DIR] with any of the above.

Builds a tunlib lab on this machine and leaves it running:

  two-host (default)  namespaces PREFIX-server and PREFIX-client (default PREFIX: tunlib),
                      joined by a veth pair PREFIX-srv 192.0.2.1/24 <-> PREFIX-cli 192.0.2.2/24.
                      server.py listens on 192.0.2.1:$PORT with TUN $SERVER_TUN ${SERVER_TUN_ADDR%/*};
                      client.py dials it and gets TUN $CLIENT_TUN ${CLIENT_TUN_ADDR%/*}.
  --flat              the original single-stack layout: both ends in ONE namespace PREFIX-flat,
                      the client dialing 127.0.0.1, both with --icmp-reply. Both tunnel addresses
                      are then local, so only pings bound to a TUN (ping -I $SERVER_TUN ...) cross
                      the tunnel; the namespace gets accept_local=1 and rp_filter=0 so that their
                      replies are not dropped as martians.
  --gateway           the server as the client's internet gateway: a third namespace PREFIX-inet
                      routes between the client (PREFIX-cli ${GW_CLIENT_VETH_ADDR%/*}) and the server
                      (PREFIX-srv ${GW_SERVER_VETH_ADDR%/*}) and runs a web server on $GW_WEB_ADDR
                      (python3 -m http.server, log web.log). server.py runs with --nat --dns $GW_DNS_ADDR,
                      client.py with --full-tunnel: the client's fetches reach the web server from
                      the server's address.
  --no-offload        run the server in plain mode (one packet per frame, no TUN offloads).
  --background        start the lab, print what to try, and exit; the lab keeps running.
                      This is the default when stdin is not a terminal.
  --foreground        stay in the foreground until Ctrl+C even without a terminal.
  --down              stop a lab started by this script (processes by PID, namespaces, files).
  --name PREFIX       namespace/link name prefix (default tunlib; at most 11 characters).
  --lab-dir DIR       keys, profile, logs and state file (default: lab/ beside this script).
  -h, --help          this text.

Files in the lab directory: state/ (server keys, mode 0700), $CLIENT_NAME.conf (client profile,
mode 0600), server.log, client.log, (--gateway) www/ and web.log, and lab.env (names and PIDs, read by test_vpn.sh and --down).
Needs root: it creates namespaces and TUN devices. Nothing is changed outside the namespaces
except /etc/netns/NAME/ (each namespace's own resolv.conf), removed again at teardown.
EOF
}

die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}

say() {
    printf '%s: %s\n' "$PROG" "$*" >&2
}

# ---------------------------------------------------------------------------------------------
# options

MODE=twohost
OFFLOAD=on
RUN_MODE=""
ACTION=up
PREFIX=tunlib
LAB_DIR=$ROOT/lab
while [ $# -gt 0 ]; do
    case "$1" in
        --flat)
            [ "$MODE" = gateway ] && die "--flat and --gateway cannot be combined"
            MODE=flat
            ;;
        --gateway)
            [ "$MODE" = flat ] && die "--flat and --gateway cannot be combined"
            MODE=gateway
            ;;
        --no-offload) OFFLOAD=off ;;
        --background) RUN_MODE=background ;;
        --foreground) RUN_MODE=foreground ;;
        --down) ACTION=down ;;
        --name)
            [ $# -ge 2 ] || die "--name needs a value"
            PREFIX=$2
            shift
            ;;
        --name=*) PREFIX=${1#--name=} ;;
        --lab-dir)
            [ $# -ge 2 ] || die "--lab-dir needs a value"
            LAB_DIR=$2
            shift
            ;;
        --lab-dir=*) LAB_DIR=${1#--lab-dir=} ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die "unknown option '$1' (see: bash $PROG --help)" ;;
    esac
    shift
done
[[ "$PREFIX" =~ ^[A-Za-z0-9][A-Za-z0-9_-]{0,10}$ ]] ||
    die "bad --name '$PREFIX': 1-11 letters, digits, '-' or '_' (link names are PREFIX-srv, at most 15)"
[ -n "$RUN_MODE" ] || { [ -t 0 ] && RUN_MODE=foreground || RUN_MODE=background; }
[ "$(id -u)" -eq 0 ] || die "must run as root (it creates network namespaces and TUN devices): sudo bash $PROG"
mkdir -p "$LAB_DIR" || die "cannot create lab directory $LAB_DIR"
LAB_DIR=$(cd "$LAB_DIR" && pwd)
STATE_FILE=$LAB_DIR/lab.env
SERVER_LOG=$LAB_DIR/server.log
CLIENT_LOG=$LAB_DIR/client.log
WEB_LOG=$LAB_DIR/web.log
WEB_ROOT=$LAB_DIR/www
STATE_DIR=$LAB_DIR/state
PROFILE=$LAB_DIR/$CLIENT_NAME.conf

# Extra options that printed commands need when the defaults were not used: LAB_OPTS finds this
# lab (test_vpn.sh, --down), UP_OPTS starts the same lab again.
LAB_OPTS=""
[ "$LAB_DIR" = "$ROOT/lab" ] || LAB_OPTS=" --lab-dir $(printf '%q' "$LAB_DIR")"
UP_OPTS=$LAB_OPTS
[ "$PREFIX" = tunlib ] || UP_OPTS="$UP_OPTS --name $PREFIX"
[ "$MODE" = flat ] && UP_OPTS="$UP_OPTS --flat"
[ "$MODE" = gateway ] && UP_OPTS="$UP_OPTS --gateway"
[ "$OFFLOAD" = off ] && UP_OPTS="$UP_OPTS --no-offload"

# ---------------------------------------------------------------------------------------------
# teardown: shared by Ctrl+C, failures during start-up, and --down

SERVER_PID=""
CLIENT_PID=""
WEB_PID=""
NAMESPACES=""
SLEEP_PID=""

# Is PID still the tunnel process this lab started? The command line names this lab's files,
# so a PID reused by an unrelated process is never signalled.
is_our_process() {
    local pid=$1 marker=$2 cmdline
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ "$cmdline" == *"$marker"* ]]
}

# Running, not a zombie: a tunnel process that died stays a zombie child of this shell (and
# kill -0 still succeeds on it) until it is reaped.
alive() {
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) && [ -n "$state" ] && [ "$state" != Z ]
}

stop_process() {
    local pid=$1 marker=$2 what=$3
    if is_our_process "$pid" "$marker"; then
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 50); do
            alive "$pid" && is_our_process "$pid" "$marker" || break
            sleep 0.1
        done
        if alive "$pid" && is_our_process "$pid" "$marker"; then
            say "$what (PID $pid) ignored SIGTERM for 5 s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null
        fi
    fi
    wait "$pid" 2>/dev/null # reaps it if it is a child of this shell; harmless otherwise
    return 0
}

namespace_exists() {
    ip netns list | awk '{print $1}' | grep -qxF "$1"
}

teardown() {
    local ns
    [ -n "$SLEEP_PID" ] && kill "$SLEEP_PID" 2>/dev/null
    stop_process "$CLIENT_PID" "$PROFILE" "client.py"
    stop_process "$SERVER_PID" "$STATE_DIR" "server.py"
    stop_process "$WEB_PID" "$WEB_ROOT" "the web server"
    for ns in $NAMESPACES; do
        if namespace_exists "$ns"; then
            ip netns del "$ns" || say "could not delete namespace $ns"
        fi
        rm -rf "/etc/netns/$ns"
    done
    rm -f "$STATE_FILE"
    NAMESPACES=""
    SERVER_PID=""
    CLIENT_PID=""
    WEB_PID=""
}

if [ "$ACTION" = down ]; then
    if [ ! -f "$STATE_FILE" ]; then
        say "no running lab recorded in $STATE_FILE: nothing to tear down"
        exit 0
    fi
    # shellcheck source=/dev/null
    . "$STATE_FILE"
    # A lab running in the foreground is stopped by its own script (as with Ctrl+C there), so
    # that script does not report its tunnel processes as crashed; whatever is left is done here.
    if [ -n "${LAB_OWNER_PID:-}" ] && is_our_process "$LAB_OWNER_PID" "$PROG"; then
        kill -TERM "$LAB_OWNER_PID" 2>/dev/null
        for _ in $(seq 150); do
            alive "$LAB_OWNER_PID" && is_our_process "$LAB_OWNER_PID" "$PROG" || break
            sleep 0.1
        done
    fi
    NAMESPACES=$LAB_NAMESPACES
    SERVER_PID=$LAB_SERVER_PID
    CLIENT_PID=$LAB_CLIENT_PID
    WEB_PID=${LAB_WEB_PID:-}
    teardown
    for ns in $LAB_NAMESPACES; do
        namespace_exists "$ns" && die "namespace $ns is still there after teardown"
    done
    say "lab stopped ($LAB_NAMESPACES removed); logs kept in $LAB_DIR"
    exit 0
fi

# ---------------------------------------------------------------------------------------------
# start-up

if [ "$MODE" = flat ]; then
    SERVER_NS=$PREFIX-flat
    CLIENT_NS=$PREFIX-flat
    WANTED="$SERVER_NS"
    LISTEN=127.0.0.1:$PORT
elif [ "$MODE" = gateway ]; then
    SERVER_NS=$PREFIX-server
    CLIENT_NS=$PREFIX-client
    INET_NS=$PREFIX-inet
    SERVER_VETH=$PREFIX-srv
    CLIENT_VETH=$PREFIX-cli
    INET_SERVER_VETH=$PREFIX-is
    INET_CLIENT_VETH=$PREFIX-ic
    WANTED="$SERVER_NS $CLIENT_NS $INET_NS"
    LISTEN=${GW_SERVER_VETH_ADDR%/*}:$PORT
else
    SERVER_NS=$PREFIX-server
    CLIENT_NS=$PREFIX-client
    SERVER_VETH=$PREFIX-srv
    CLIENT_VETH=$PREFIX-cli
    WANTED="$SERVER_NS $CLIENT_NS"
    LISTEN=${SERVER_VETH_ADDR%/*}:$PORT
fi

if [ -f "$STATE_FILE" ]; then
    # shellcheck source=/dev/null
    running=$(. "$STATE_FILE" && for ns in $LAB_NAMESPACES; do namespace_exists "$ns" && printf '%s ' "$ns"; done)
    if [ -n "$running" ]; then
        die "a lab is already running from $LAB_DIR (namespaces: ${running% }); stop it first: sudo bash $ROOT/$PROG --down$LAB_OPTS"
    fi
    rm -f "$STATE_FILE" # left by a lab whose namespaces are gone (e.g. after a reboot)
fi
for ns in $WANTED; do
    if namespace_exists "$ns"; then
        die "network namespace '$ns' already exists: is another demo running? Stop it with 'sudo bash $ROOT/$PROG --down', or pick other names with --name PREFIX"
    fi
    [ -e "/etc/netns/$ns" ] && die "/etc/netns/$ns already exists (a namespace named '$ns' is being set up by someone else?); pick other names with --name PREFIX"
done

# shellcheck source=scripts/bootstrap.sh
. "$ROOT/scripts/bootstrap.sh" || die "bootstrap failed (see above)"
PY=$TUNLIB_PYTHON

quiet_pipe() {
    # 'run_vpn.sh | tee demo.log' then Ctrl+C: tee dies first, and the next write to the pipe
    # would kill this shell with SIGPIPE in the middle of its teardown, leaving the lab up.
    # Ignore SIGPIPE and send stdout where stderr goes, so teardown always runs to the end.
    trap '' PIPE
    exec 1>&2
}
on_exit() {
    local rc=$?
    trap - EXIT INT TERM HUP
    quiet_pipe
    if [ -n "$NAMESPACES" ]; then
        say "tearing down the lab"
        teardown
        ip netns list | awk '{print $1}' | grep -qxF -e "$SERVER_NS" -e "$CLIENT_NS" -e "${INET_NS:-$SERVER_NS}" &&
            say "warning: a namespace survived teardown: ip netns list"
    fi
    exit "$rc"
}
on_signal() {
    trap - INT TERM HUP
    quiet_pipe
    printf '\n' >&2
    say "$1 received"
    [ "$STARTED" = yes ] && exit 0 # Ctrl+C is how a running demo ends: teardown is the EXIT trap
    exit 130
}
STARTED=no
OWNER_PID="" # this script's PID while it runs the lab in the foreground
trap on_exit EXIT
trap 'on_signal SIGINT' INT
trap 'on_signal SIGTERM' TERM
trap 'on_signal SIGHUP' HUP

fail() {
    local log
    say "error: $*"
    for log in "$SERVER_LOG" "$CLIENT_LOG" "$WEB_LOG"; do
        if [ -s "$log" ]; then
            printf -- '--- last lines of %s:\n' "$log" >&2
            tail -n 15 "$log" >&2
        fi
    done
    exit 1
}

write_state() {
    {
        echo "# Written by run_vpn.sh for test_vpn.sh and 'run_vpn.sh --down'. Removed at teardown."
        printf 'LAB_MODE=%q\n' "$MODE"
        printf 'LAB_OPTS=%q\n' "$LAB_OPTS"
        printf 'LAB_UP_OPTS=%q\n' "$UP_OPTS"
        printf 'LAB_OFFLOAD=%q\n' "$OFFLOAD"
        printf 'LAB_NAMESPACES=%q\n' "$NAMESPACES"
        printf 'LAB_SERVER_NS=%q\n' "$SERVER_NS"
        printf 'LAB_CLIENT_NS=%q\n' "$CLIENT_NS"
        printf 'LAB_SERVER_TUN=%q\n' "$SERVER_TUN"
        printf 'LAB_CLIENT_TUN=%q\n' "$CLIENT_TUN"
        printf 'LAB_SERVER_TUN_ADDR=%q\n' "$SERVER_TUN_ADDR"
        printf 'LAB_CLIENT_TUN_ADDR=%q\n' "$CLIENT_TUN_ADDR"
        printf 'LAB_SERVER_VETH=%q\n' "${SERVER_VETH:-}"
        printf 'LAB_CLIENT_VETH=%q\n' "${CLIENT_VETH:-}"
        printf 'LAB_LISTEN=%q\n' "$LISTEN"
        printf 'LAB_SERVER_PID=%q\n' "$SERVER_PID"
        printf 'LAB_CLIENT_PID=%q\n' "$CLIENT_PID"
        printf 'LAB_SERVER_LOG=%q\n' "$SERVER_LOG"
        printf 'LAB_CLIENT_LOG=%q\n' "$CLIENT_LOG"
        printf 'LAB_OWNER_PID=%q\n' "$OWNER_PID"
        printf 'LAB_INET_NS=%q\n' "${INET_NS:-}"
        printf 'LAB_WEB_PID=%q\n' "$WEB_PID"
        printf 'LAB_WEB_LOG=%q\n' "$WEB_LOG"
    } >"$STATE_FILE.tmp" && mv "$STATE_FILE.tmp" "$STATE_FILE"
}

add_namespace() {
    local ns=$1
    ip netns add "$ns" || fail "ip netns add $ns failed"
    NAMESPACES="$NAMESPACES${NAMESPACES:+ }$ns"
    # Each namespace gets its own resolv.conf (ip netns exec bind-mounts it over /etc/resolv.conf),
    # so nothing run inside ever uses the host's resolver.
    mkdir -p "/etc/netns/$ns" && printf 'nameserver 127.0.0.1\n' >"/etc/netns/$ns/resolv.conf" ||
        fail "cannot write /etc/netns/$ns/resolv.conf"
    ip -n "$ns" link set lo up || fail "cannot bring up lo in $ns"
}

say "building the ${MODE/twohost/two-host} lab ($WANTED), offload $OFFLOAD"
if [ "$MODE" = flat ]; then
    add_namespace "$SERVER_NS"
    # Both tunnel addresses are local here, so a reply arriving on a TUN carries a local source
    # address: the kernel drops it as a martian unless accept_local is set, and strict rp_filter
    # would still drop it (the route back to a local address is not via that TUN). Only these
    # namespace-local copies of the sysctls are touched.
    ip netns exec "$SERVER_NS" sysctl -q -w net.ipv4.conf.all.accept_local=1 net.ipv4.conf.default.accept_local=1 \
        net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 ||
        fail "cannot set accept_local/rp_filter in $SERVER_NS"
elif [ "$MODE" = gateway ]; then
    add_namespace "$SERVER_NS"
    add_namespace "$CLIENT_NS"
    add_namespace "$INET_NS"
    ip link add "$SERVER_VETH" netns "$SERVER_NS" type veth peer name "$INET_SERVER_VETH" netns "$INET_NS" &&
        ip link add "$CLIENT_VETH" netns "$CLIENT_NS" type veth peer name "$INET_CLIENT_VETH" netns "$INET_NS" ||
        fail "cannot create the veth pairs"
    # The internet routes between the two networks and owns the web server's address; each end
    # has a default route to it, like a host behind its ISP's router.
    ip -n "$SERVER_NS" address add "$GW_SERVER_VETH_ADDR" dev "$SERVER_VETH" &&
        ip -n "$CLIENT_NS" address add "$GW_CLIENT_VETH_ADDR" dev "$CLIENT_VETH" &&
        ip -n "$INET_NS" address add "$GW_INET_SERVER_ADDR" dev "$INET_SERVER_VETH" &&
        ip -n "$INET_NS" address add "$GW_INET_CLIENT_ADDR" dev "$INET_CLIENT_VETH" &&
        ip -n "$INET_NS" address add "$GW_WEB_ADDR/32" dev lo &&
        ip -n "$SERVER_NS" link set "$SERVER_VETH" up &&
        ip -n "$CLIENT_NS" link set "$CLIENT_VETH" up &&
        ip -n "$INET_NS" link set "$INET_SERVER_VETH" up &&
        ip -n "$INET_NS" link set "$INET_CLIENT_VETH" up &&
        ip -n "$SERVER_NS" route add default via "${GW_INET_SERVER_ADDR%/*}" &&
        ip -n "$CLIENT_NS" route add default via "${GW_INET_CLIENT_ADDR%/*}" &&
        ip netns exec "$INET_NS" sysctl -q -w net.ipv4.ip_forward=1 ||
        fail "cannot configure the gateway lab's links"
else
    add_namespace "$SERVER_NS"
    add_namespace "$CLIENT_NS"
    # Created directly inside the namespaces: the veth never exists in the host namespace.
    ip link add "$SERVER_VETH" netns "$SERVER_NS" type veth peer name "$CLIENT_VETH" netns "$CLIENT_NS" ||
        fail "cannot create the veth pair $SERVER_VETH/$CLIENT_VETH"
    ip -n "$SERVER_NS" address add "$SERVER_VETH_ADDR" dev "$SERVER_VETH" &&
        ip -n "$CLIENT_NS" address add "$CLIENT_VETH_ADDR" dev "$CLIENT_VETH" &&
        ip -n "$SERVER_NS" link set "$SERVER_VETH" up &&
        ip -n "$CLIENT_NS" link set "$CLIENT_VETH" up || fail "cannot configure the veth pair"
fi
write_state

# Fresh keys every run: the lab directory is scratch space.
rm -rf "$STATE_DIR" "$PROFILE"
: >"$SERVER_LOG"
: >"$CLIENT_LOG"
"$PY" "$ROOT/server.py" init --state-dir "$STATE_DIR" --subnet "$SUBNET" \
    --listen "$LISTEN" --endpoint "$LISTEN" >/dev/null 2>>"$SERVER_LOG" || fail "server.py init failed"
(umask 077 && "$PY" "$ROOT/server.py" add-client "$CLIENT_NAME" --state-dir "$STATE_DIR" \
    --address "${CLIENT_TUN_ADDR%/*}" >"$PROFILE" 2>>"$SERVER_LOG") || fail "server.py add-client failed"
chmod 600 "$PROFILE"

SERVER_OPTS=()
CLIENT_OPTS=()
[ "$OFFLOAD" = off ] && SERVER_OPTS+=(--no-offload)
[ "$MODE" = flat ] && SERVER_OPTS+=(--icmp-reply) && CLIENT_OPTS+=(--icmp-reply)
[ "$MODE" = gateway ] && SERVER_OPTS+=(--nat --dns "$GW_DNS_ADDR") && CLIENT_OPTS+=(--full-tunnel)

# setsid: the tunnel processes get their own session, so a Ctrl+C typed at this terminal reaches
# only this script, which then stops them in order; and in --background mode they outlive it.
setsid ip netns exec "$SERVER_NS" "$PY" "$ROOT/server.py" run --state-dir "$STATE_DIR" --tun "$SERVER_TUN" \
    "${SERVER_OPTS[@]}" </dev/null >>"$SERVER_LOG" 2>&1 &
SERVER_PID=$!
write_state

wait_for_log() { # PID LOG PATTERN WHAT
    local deadline=$((SECONDS + UP_TIMEOUT))
    while ! grep -q "$3" "$2" 2>/dev/null; do
        alive "$1" || fail "$4 exited during start-up (log: $2)"
        [ "$SECONDS" -lt "$deadline" ] || fail "$4 did not start within ${UP_TIMEOUT}s (log: $2)"
        sleep 0.1
    done
}
wait_for_log "$SERVER_PID" "$SERVER_LOG" "serving on" "server.py"

if [ "$MODE" = gateway ]; then
    # http.server logs one line per request, starting with the address the request came from.
    rm -rf "$WEB_ROOT" && mkdir -p "$WEB_ROOT" || fail "cannot create $WEB_ROOT"
    echo "hello from the internet ($GW_WEB_ADDR)" >"$WEB_ROOT/index.html"
    head -c 20M /dev/urandom >"$WEB_ROOT/20M.bin" && (cd "$WEB_ROOT" && sha256sum 20M.bin >20M.bin.sha256) ||
        fail "cannot write the test download in $WEB_ROOT"
    : >"$WEB_LOG"
    setsid ip netns exec "$INET_NS" "$PY" -u -m http.server 80 --bind "$GW_WEB_ADDR" --directory "$WEB_ROOT" \
        </dev/null >>"$WEB_LOG" 2>&1 &
    WEB_PID=$!
    write_state
    wait_for_log "$WEB_PID" "$WEB_LOG" "Serving HTTP" "the web server"
fi

setsid ip netns exec "$CLIENT_NS" "$PY" "$ROOT/client.py" run --config "$PROFILE" --tun "$CLIENT_TUN" \
    "${CLIENT_OPTS[@]}" </dev/null >>"$CLIENT_LOG" 2>&1 &
CLIENT_PID=$!
write_state
wait_for_log "$CLIENT_PID" "$CLIENT_LOG" "connected to" "client.py"

# The tunnel is up when a ping crosses it (in flat mode only a ping bound to the client's TUN does).
ping_cmd=(ip netns exec "$CLIENT_NS" ping -c 1 -W 1)
[ "$MODE" = flat ] && ping_cmd+=(-I "$CLIENT_TUN")
deadline=$((SECONDS + UP_TIMEOUT))
until "${ping_cmd[@]}" "${SERVER_TUN_ADDR%/*}" >/dev/null 2>&1; do
    alive "$SERVER_PID" || fail "server.py exited (log: $SERVER_LOG)"
    alive "$CLIENT_PID" || fail "client.py exited (log: $CLIENT_LOG)"
    [ "$SECONDS" -lt "$deadline" ] || fail "no ping crossed the tunnel within ${UP_TIMEOUT}s: ${ping_cmd[*]} ${SERVER_TUN_ADDR%/*}"
done

# Gateway mode: one fetch proves the whole path, arriving at the web server from the server's address.
FETCH_PY='import sys, urllib.request as u; print(u.build_opener(u.ProxyHandler({})).open(sys.argv[1], timeout=5).read().decode(), end="")'
if [ "$MODE" = gateway ]; then
    ip netns exec "$CLIENT_NS" "$PY" -c "$FETCH_PY" "http://$GW_WEB_ADDR/" >/dev/null 2>&1 ||
        fail "the client could not fetch http://$GW_WEB_ADDR/ through the tunnel (log: $WEB_LOG)"
    seen_from=$(tail -n 1 "$WEB_LOG" | awk '{print $1}')
    [ "$seen_from" = "${GW_SERVER_VETH_ADDR%/*}" ] ||
        fail "the web server saw the client's fetch come from '$seen_from', not from the server ${GW_SERVER_VETH_ADDR%/*}"
fi
STARTED=yes

# ---------------------------------------------------------------------------------------------
# what to try next

S=${SERVER_TUN_ADDR%/*}
C=${CLIENT_TUN_ADDR%/*}
if [ "$MODE" = flat ]; then
    cat <<EOF

tunlib demo is up: flat lab, both ends in namespace $SERVER_NS (offload $OFFLOAD).
  server.py  PID $SERVER_PID  listens on $LISTEN, TUN $SERVER_TUN $S, answers pings to $S itself (--icmp-reply)
  client.py  PID $CLIENT_PID  dials $LISTEN,        TUN $CLIENT_TUN $C, answers pings to $C itself (--icmp-reply)

Try (as root, in another terminal):
  # Ping across the tunnel both ways. Both addresses are local to the namespace, so the ping must
  # be bound to a TUN (-I) to enter the tunnel; the far end's ICMP responder answers it in user space.
  # (A plain 'ping $C' is answered by the kernel over lo and never touches the tunnel.)
  ip netns exec $SERVER_NS ping -c 3 -I $SERVER_TUN $C
  ip netns exec $CLIENT_NS ping -c 3 -I $CLIENT_TUN $S

  # Throughput through the tunnel: both iperf3 ends bound to a TUN, for the same reason
  ip netns exec $SERVER_NS iperf3 -s -1 -D -B $C --bind-dev $CLIENT_TUN
  ip netns exec $SERVER_NS iperf3 -c $C --bind-dev $SERVER_TUN -t 5

  # Ciphertext on the carrier (TCP on lo) next to plaintext on the TUN: start both captures, then the ping.
  ip netns exec $SERVER_NS tcpdump -ni lo -c 4 -X tcp port $PORT and greater 100
  ip netns exec $SERVER_NS tcpdump -ni $SERVER_TUN -c 4 -X icmp
  ip netns exec $SERVER_NS ping -c 2 -p 74756e6c6962 -I $SERVER_TUN $C      # payload "tunlib" repeated

  # Counters: interface statistics, and the programs' own ("stats: ..." lines in the logs)
  ip -n $SERVER_NS -s link show $SERVER_TUN
  kill -USR1 $SERVER_PID $CLIENT_PID; tail -n 3 $SERVER_LOG $CLIENT_LOG
EOF
elif [ "$MODE" = gateway ]; then
    SV=${GW_SERVER_VETH_ADDR%/*}
    CV=${GW_CLIENT_VETH_ADDR%/*}
    cat <<EOF

tunlib demo is up: gateway lab (offload $OFFLOAD); the server is the client's way to the internet.
  client    namespace $CLIENT_NS: veth $CLIENT_VETH $CV, TUN $CLIENT_TUN $C, client.py --full-tunnel PID $CLIENT_PID
  internet  namespace $INET_NS: routes $CV <-> $SV, web server $GW_WEB_ADDR:80 PID $WEB_PID
  server    namespace $SERVER_NS: veth $SERVER_VETH $SV, TUN $SERVER_TUN $S, server.py --nat --dns $GW_DNS_ADDR PID $SERVER_PID

Try (as root, in another terminal):
  # Fetch a page from the client, then see who the web server says asked: the SERVER's address
  # $SV (its NAT), not the client's $CV, because the request went through the tunnel.
  ip netns exec $CLIENT_NS curl -s http://$GW_WEB_ADDR/
  ip netns exec $CLIENT_NS $PY -c '$FETCH_PY' http://$GW_WEB_ADDR/      # the same, without curl
  tail -n 2 $WEB_LOG

  # How: two half routes (0.0.0.0/1, 128.0.0.0/1) send everything into the TUN, and a host route
  # keeps the carrier to $SV on the veth; the server forwards and masquerades (one nftables table).
  ip -n $CLIENT_NS route
  ip netns exec $SERVER_NS nft list table ip tunlib_nat_$SERVER_TUN

  # 20 MB through the tunnel and the server's NAT, checked against the original
  ip netns exec $CLIENT_NS curl -s http://$GW_WEB_ADDR/20M.bin | sha256sum; cat $WEB_ROOT/20M.bin.sha256

  # On the wire the client only talks to the server: start the capture, then fetch again.
  # Expect TCP $CV <-> $SV.$PORT only, never $GW_WEB_ADDR.
  ip netns exec $CLIENT_NS tcpdump -ni $CLIENT_VETH -c 6 not arp and not ip6

  # The pushed DNS server replaces the client's resolv.conf while the tunnel is up (restored on
  # exit). Nothing answers on $GW_DNS_ADDR in this lab, but a capture in the internet namespace
  # shows the query arriving from the server's address $SV:
  ip netns exec $CLIENT_NS cat /etc/resolv.conf
  ip netns exec $INET_NS tcpdump -ni any -c 1 udp port 53 & sleep 1; ip netns exec $CLIENT_NS timeout 3 getent hosts www.tunlib.test

  # Pings through the tunnel, and counters ("stats: ..." lines in the logs)
  ip netns exec $CLIENT_NS ping -c 3 $S
  kill -USR1 $SERVER_PID $CLIENT_PID; tail -n 3 $SERVER_LOG $CLIENT_LOG
EOF
else
    cat <<EOF

tunlib demo is up: two-host lab (offload $OFFLOAD).
  server  namespace $SERVER_NS: veth $SERVER_VETH ${SERVER_VETH_ADDR%/*}, TUN $SERVER_TUN $S, server.py PID $SERVER_PID listening on $LISTEN
  client  namespace $CLIENT_NS: veth $CLIENT_VETH ${CLIENT_VETH_ADDR%/*}, TUN $CLIENT_TUN $C, client.py PID $CLIENT_PID

Try (as root, in another terminal):
  # Ping through the tunnel, both ways
  ip netns exec $CLIENT_NS ping -c 3 $S
  ip netns exec $SERVER_NS ping -c 3 $C

  # Throughput through the tunnel (iperf3 server in the server namespace exits after one test)
  ip netns exec $SERVER_NS iperf3 -s -1 -D -B $S
  ip netns exec $CLIENT_NS iperf3 -c $S -t 5

  # Ciphertext on the wire (veth) next to plaintext in the tunnel (TUN): start both captures, then the ping.
  ip netns exec $SERVER_NS tcpdump -ni $SERVER_VETH -c 4 -X tcp port $PORT and greater 100
  ip netns exec $SERVER_NS tcpdump -ni $SERVER_TUN -c 4 -X icmp
  ip netns exec $CLIENT_NS ping -c 2 -p 74756e6c6962 $S      # payload "tunlib" repeated

  # Counters: interface statistics, and the programs' own ("stats: ..." lines in the logs)
  ip -n $CLIENT_NS -s link show $CLIENT_TUN
  kill -USR1 $SERVER_PID $CLIENT_PID; tail -n 3 $SERVER_LOG $CLIENT_LOG
EOF
fi
cat <<EOF

  # Logs, and the automated checks against this running lab
  tail -f $SERVER_LOG $CLIENT_LOG
  bash $ROOT/test_vpn.sh$LAB_OPTS

EOF

if [ "$RUN_MODE" = background ]; then
    echo "The lab keeps running. Stop it with: sudo bash $ROOT/$PROG --down$LAB_OPTS"
    NAMESPACES="" # hand the lab over to --down: the EXIT trap must not tear it down
    trap - EXIT INT TERM HUP
    exit 0
fi

echo "Running in the foreground: Ctrl+C stops the tunnel and removes the lab."
OWNER_PID=$$
write_state
while true; do
    sleep 1 &
    SLEEP_PID=$!
    wait "$SLEEP_PID"
    SLEEP_PID=""
    if ! alive "$SERVER_PID"; then
        STARTED=no
        fail "server.py (PID $SERVER_PID) exited; tearing down"
    fi
    if ! alive "$CLIENT_PID"; then
        STARTED=no
        fail "client.py (PID $CLIENT_PID) exited; tearing down"
    fi
    if [ -n "$WEB_PID" ] && ! alive "$WEB_PID"; then
        STARTED=no
        fail "the web server (PID $WEB_PID) exited; tearing down"
    fi
done
