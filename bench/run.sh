#!/usr/bin/env bash
# Run the tunlib benchmark: sudo bash bench/run.sh [--quick] [other bench.py options]
#
# Uses the project's venv via scripts/bootstrap.sh when the checkout has it (which also
# apt-installs iperf3, openvpn and the rest if missing); otherwise the current python3.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=python3
if [ -f "$root/scripts/bootstrap.sh" ]; then
    # shellcheck source=/dev/null
    source "$root/scripts/bootstrap.sh"
    python=$TUNLIB_PYTHON
fi
cd "$root"
exec "$python" -m bench.bench "$@" # as a module from the repository root: it imports netlab.py and bench/
