#!/usr/bin/env bash
# Install tunlib as a system service, or remove it again.
#
#   sudo bash scripts/install.sh [--prefix /opt/tunlib]        install or upgrade
#   sudo bash scripts/install.sh --uninstall [--prefix ...]    remove code, units and group
#
# Installing copies the programs to PREFIX (default /opt/tunlib), makes PREFIX/.venv with
# requirements.txt, writes the units tunlib-client.service and tunlib-server@.service to
# /etc/systemd/system (with PREFIX in their paths), and creates the system group "tunlib"
# whose members may drive the client daemon. It enables nothing; it prints what to run.
# Uninstalling stops and disables the units first. It keeps server state directories and
# /var/lib/tunlib (keys and imported profiles): delete those yourself if you mean to.
# Errors are one line on stderr, starting with "install: error:".
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=/opt/tunlib
UNIT_DIR=/etc/systemd/system
GROUP=tunlib
UNINSTALL=0

die() {
    printf 'install: error: %s\n' "$*" >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; PREFIX=$2; shift 2 ;;
        --uninstall) UNINSTALL=1; shift ;;
        -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (try --help)" ;;
    esac
done
case "$PREFIX" in
    /*) ;;
    *) die "--prefix must be an absolute path, not '$PREFIX'" ;;
esac
[ "$PREFIX" != / ] || die "--prefix must not be /"
[ "$(id -u)" -eq 0 ] || die "must run as root: sudo bash scripts/install.sh"

have_systemd() {
    [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
}

if [ "$UNINSTALL" -eq 1 ]; then
    if have_systemd; then
        mapfile -t servers < <(systemctl list-units --all --plain --no-legend 'tunlib-server@*.service' | awk '{print $1}')
        systemctl disable --now tunlib-client.service "${servers[@]}" >/dev/null 2>&1 || true
    fi
    rm -f "$UNIT_DIR/tunlib-client.service" "$UNIT_DIR/tunlib-server@.service"
    have_systemd && systemctl daemon-reload
    if [ -f "$PREFIX/.tunlib-installed" ]; then
        rm -rf "$PREFIX"
    elif [ -e "$PREFIX" ]; then
        echo "install: $PREFIX was not made by this script (no .tunlib-installed); left alone" >&2
    fi
    if getent group "$GROUP" >/dev/null; then
        groupdel "$GROUP"
    fi
    echo "tunlib removed (kept: server state directories and /var/lib/tunlib)"
    exit 0
fi

command -v python3 >/dev/null || die "python3 is missing: apt-get install python3 python3-venv"
mkdir -p "$PREFIX"
chmod 0755 "$PREFIX"
touch "$PREFIX/.tunlib-installed"
# The programs are every top-level module; tests, lab and benchmark stay behind.
for file in "$ROOT"/*.py "$ROOT"/requirements.txt "$ROOT"/README.md "$ROOT"/PROTOCOL.md "$ROOT"/NOTE.txt; do
    install -m 0644 "$file" "$PREFIX/"
done
if [ ! -x "$PREFIX/.venv/bin/python" ]; then
    python3 -m venv "$PREFIX/.venv" || die "could not create $PREFIX/.venv (apt-get install python3-venv)"
fi
"$PREFIX/.venv/bin/python" -m pip install -q --disable-pip-version-check -r "$PREFIX/requirements.txt" ||
    die "pip could not install requirements.txt into $PREFIX/.venv"

mkdir -p "$UNIT_DIR"
for unit in tunlib-client.service tunlib-server@.service; do
    sed "s|/opt/tunlib|$PREFIX|g" "$ROOT/systemd/$unit" >"$UNIT_DIR/$unit"
    chmod 0644 "$UNIT_DIR/$unit"
done
getent group "$GROUP" >/dev/null || groupadd --system "$GROUP"
have_systemd && systemctl daemon-reload

cat <<EOT
tunlib installed in $PREFIX; units in $UNIT_DIR; group '$GROUP'.
  client:  sudo systemctl enable --now tunlib-client.service
           sudo usermod -aG $GROUP \$USER     (then log in again)
           python3 $PREFIX/client.py import laptop.conf && python3 $PREFIX/client.py connect --best
  server:  sudo python3 $PREFIX/server.py init --state-dir /etc/tunlib --endpoint HOST:55555
           sudo python3 $PREFIX/server.py set --state-dir /etc/tunlib --nat --dns 1.1.1.1
           sudo systemctl enable --now tunlib-server@etc-tunlib.service
EOT
