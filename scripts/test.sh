#!/usr/bin/env bash
# The whole test suite (parity with transformers, CLI contracts, runtime without torch).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh"
cd "$root"
python -m pytest -q "$@"
