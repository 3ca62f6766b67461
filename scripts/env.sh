#!/usr/bin/env bash
# Creates .venv (once) and installs the pack into it. Sourced by test.sh and demo.sh.
# A torch that is already importable is kept; otherwise torch==2.13.0 is installed
# (on a machine without a GPU that is the CPU build when pip's find-links offer it).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${BYG_VENV:-$root/.venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
py="$venv/bin/python"
if ! "$py" -c "import torch" 2>/dev/null; then
    "$py" -m pip install -q "torch==${BYG_TORCH_VERSION:-2.13.0}"
fi
"$py" -m pip install -q -e "$root[test]"
