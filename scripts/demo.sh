#!/usr/bin/env bash
# The demo: set up .venv if needed, then train a ByG LoRA on the toy shapes world and edit with it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh"
cd "$root"
exec "$venv/bin/byg" demo --out "${1:-out/demo}"
