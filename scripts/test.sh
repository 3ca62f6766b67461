#!/usr/bin/env bash
# The test command: set up .venv if needed, then run the whole suite on the CPU.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh"
cd "$root"
exec "$py" -m pytest -q "$@"
