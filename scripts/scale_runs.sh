#!/usr/bin/env bash
# The committed scale runs: full-size random-weight checkpoints in the released layout (omni_edge/export/
# full_size.py), exported and run on this machine; one row per run in bench/scale-full-3b.json and
# bench/scale-full-7b.json (peak RSS and wall time per export stage, bundle bytes, refusals with their
# numbers). Bundles go to $SCALE_OUT (default /tmp/omni-scale) and are removed after each row: a 3B fp32
# bundle is 22 GB. Needs ~24 GiB of RAM and ~40 GB of disk; takes about an hour on 2 cores.
#
#   bash scripts/scale_runs.sh            # every run
#   bash scripts/scale_runs.sh 3b-cpu     # one of: 3b-cpu 3b-int4 3b-orin 3b-rtx-thinker 7b-rtx-thinker 7b-rtx 7b-orin
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${SCALE_OUT:-/tmp/omni-scale}"
mkdir -p "$out"
run() { .venv/bin/python scripts/scale_run.py "$@"; }
replies() {  # bundle, label suffix, wav name: its loaded RSS, then a text and a spoken reply through omni-run
  run rss --model full-3b --bundle "$1" --json $j3
  run command --model full-3b --label "omni-run text$2" --json $j3 -- \
    .venv/bin/omni-run "$1" --prompt "Describe a sunny day." --max-new-tokens 32 --greedy
  run command --model full-3b --label "omni-run spoken$2" --json $j3 -- \
    .venv/bin/omni-run "$1" --prompt "Say hello" --max-new-tokens 8 --greedy \
    --out-wav "$out/$3" --ode-solver euler --max-codec-tokens 100
}
want() { [[ $# -eq 0 || " ${SELECTED[*]} " == *" $1 "* ]]; }
SELECTED=("$@")
j3=bench/scale-full-3b.json
j7=bench/scale-full-7b.json

if want 3b-cpu; then
  run export --model full-3b --target cpu --precision fp32 --out "$out/3b-cpu" --json $j3 --memory-gib 24
  run parity --model full-3b --bundle "$out/3b-cpu" --json $j3 --tokens 16
  replies "$out/3b-cpu" "" 3b-hello.wav
  rm -rf "$out/3b-cpu"
fi
if want 3b-int4; then
  run export --model full-3b --target cpu --precision int4-awq --calib synthetic --out "$out/3b-int4" --json $j3 --memory-gib 24
  replies "$out/3b-int4" " (int4)" 3b-int4-hello.wav
  rm -rf "$out/3b-int4"
fi
if want 3b-orin; then
  run export --model full-3b --target jetson-orin --precision auto --calib synthetic --no-engines --out "$out/3b-orin" --json $j3
  rm -rf "$out/3b-orin"
fi
if want 3b-rtx-thinker; then  # the fp16-source Thinker (int4-awq from fp16) at full size, the part the 7B needs
  run export --model full-3b --target rtx-ada --precision auto --calib synthetic --no-engines --components thinker \
    --out "$out/3b-rtx-thinker" --json $j3
  rm -rf "$out/3b-rtx-thinker"
fi
if want 7b-rtx-thinker; then  # the Thinker alone: the part whose fp32 weights (28 GB) the machine cannot hold
  run export --model full-7b --target rtx-ada --precision auto --calib synthetic --no-engines --components thinker \
    --out "$out/7b-rtx-thinker" --json $j7
  rm -rf "$out/7b-rtx-thinker"
fi
if want 7b-rtx; then
  run export --model full-7b --target rtx-ada --precision auto --calib synthetic --no-engines --out "$out/7b-rtx" --json $j7
  rm -rf "$out/7b-rtx"
fi
if want 7b-orin; then
  run export --model full-7b --target jetson-orin --precision auto --calib synthetic --no-engines --out "$out/7b-orin" --json $j7
  rm -rf "$out/7b-orin"
fi
