#!/usr/bin/env bash
# Create (once) and activate the project's virtual environment with the export, ORT, dev and quant extras.
# Sourced by scripts/demo.sh and scripts/test.sh, so both work on a fresh machine with only python3.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${OMNI_EDGE_VENV:-$root/.venv}"
stamp="$venv/.omni-edge-installed"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  # torch first and pinned: 2.13.0 is the CPU build this workplace provides; an unpinned resolve could pull
  # a multi-GB CUDA build. The project's own range (>=2.6) is then already satisfied.
  "$venv/bin/python" -m pip install --quiet "torch==2.13.0"
  # quant: NVIDIA ModelOpt for int8/fp8/int4-awq bundles (its ONNX PTQ runs on CPU); pyproject explains the extra.
  "$venv/bin/python" -m pip install --quiet -e "$root[export,ort,dev,quant]"
  # TensorRT-RTX builds engines without a GPU, so the tests build real engines for the rtx targets
  # (~350 MB, ~20 s). It ships x86-64 wheels only; on Jetson, JetPack's TensorRT is used instead.
  if [ "$(uname -m)" = "x86_64" ]; then
    "$venv/bin/python" -m pip install --quiet -e "$root[trt]"
  fi
  touch "$stamp"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
