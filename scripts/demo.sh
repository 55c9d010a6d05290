#!/usr/bin/env bash
# The main job on the built-in tiny model: export a cpu bundle, then stream a greedy reply with ONNX Runtime.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh"
omni-export --model tiny --target cpu --out "$root/build/tiny-cpu" --overwrite
omni-run "$root/build/tiny-cpu" --prompt "Hello! What can you hear and see?" --greedy --max-new-tokens 32
