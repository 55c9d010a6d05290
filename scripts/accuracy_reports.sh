#!/usr/bin/env bash
# Regenerate calibration/reports/*.json: the accuracy reports of the tiny model's reduced bundles, as the
# export measured them (per graph vs fp32, and end to end). Usage: bash scripts/accuracy_reports.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
report() {  # name, then omni-export arguments
  local name="$1"; shift
  omni-export --model tiny --out "$work/$name" "$@"
  python - "$work/$name" "$root/calibration/reports/$name.json" "omni-export --model tiny $*" <<'PY'
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
report tiny-cpu-int8 --target cpu --precision int8 --calib synthetic
report tiny-rtx-ada-auto --target rtx-ada --calib synthetic
report tiny-jetson-orin-auto --target jetson-orin --calib synthetic --no-engines
