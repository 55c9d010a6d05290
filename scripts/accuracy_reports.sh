#!/usr/bin/env bash
# Regenerate calibration/reports/*.json: the accuracy reports of reduced bundles, as the export measured them
# (per graph vs fp32, and end to end). Usage: bash scripts/accuracy_reports.sh [NAME...] (default: the tiny
# ones; the medium ones take most of an hour each and need ~14 GB: name them, e.g. medium-cpu-int8)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
wanted=("$@")
report() {  # name, then omni-export arguments
  local name="$1"; shift
  if [ ${#wanted[@]} -eq 0 ] && [[ "$name" != tiny-* ]]; then return; fi
  if [ ${#wanted[@]} -gt 0 ] && [[ ! " ${wanted[*]} " == *" $name "* ]]; then return; fi
  omni-export --out "$work/$name" "$@"
  python - "$work/$name" "$root/calibration/reports/$name.json" "omni-export $*" <<'PY'
import json, platform, sys
from dataclasses import asdict
from omni_edge.bundle import load_manifest
manifest = load_manifest(sys.argv[1])
report = {"command": sys.argv[3], "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
          "target": manifest.target, "tools": manifest.tools,
          "precisions": {n: r.precision for n, r in manifest.components.items()},
          **asdict(manifest.quantization)}
open(sys.argv[2], "w").write(json.dumps(report, indent=2) + "\n")
PY
}
report tiny-cpu-auto --model tiny --target cpu
report tiny-cpu-int8 --model tiny --target cpu --precision int8 --calib synthetic
report tiny-cpu-int4-awq --model tiny --target cpu --precision int4-awq --calib synthetic
report tiny-rtx-ada-auto --model tiny --target rtx-ada --calib synthetic
report tiny-jetson-orin-auto --model tiny --target jetson-orin --calib synthetic --no-engines
report medium-cpu-int8 --model medium --target cpu --precision int8 --calib synthetic
report medium-cpu-int4-awq --model medium --target cpu --precision int4-awq --calib synthetic
