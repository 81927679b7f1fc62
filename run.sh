#!/usr/bin/env bash
# tango-tpx: the two set-up commands.
#   ./run.sh demo [demo options]   simulated detector + embedded Tango DB + TangoTpx server, live
#   ./run.sh test [pytest options] the whole test suite
# Each creates the virtual environment (.venv) on first use.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
venv="${TANGO_TPX_VENV:-$here/.venv}"
stamp="$venv/.tango-tpx-installed"
if [ ! -x "$venv/bin/python" ] || [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    py="$(command -v python3.11 || command -v python3)"
    echo "[run.sh] creating environment in $venv with $py" >&2
    "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip >&2 || true
    "$venv/bin/python" -m pip install -q -e ".[test]" >&2
    touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
cmd="${1:-}"; shift || true
case "$cmd" in
    demo) exec "$venv/bin/tango-tpx" demo "$@" ;;
    test) exec "$venv/bin/python" -m pytest "$@" ;;
    *) echo "usage: ./run.sh demo [options] | ./run.sh test [pytest options]" >&2; exit 2 ;;
esac
