"""Where a Thinker decode step's time goes, per ONNX op type, at a short and a long context: one bundle per
argument (e.g. a standard-op bundle exported before GroupQueryAttention, and a cpu bundle after).

    python scripts/profile_attention.py OLD_BUNDLE NEW_BUNDLE --contexts 128 2048 --out profile.json

Each step runs through the runtime's KV cache (kv_cache.KVCache, in place for a GroupQueryAttention graph) on
one thread, after a prefill of `context` random rows, with ONNX Runtime's profiler on; the figures are ms per
step, the mean over `--steps` steps of the profiler's per-node kernel times summed by op type.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from omni_edge import naming
from omni_edge.bundle import load_manifest
from omni_edge.runtime.engine import OrtEngine
from omni_edge.runtime.kv_cache import new_kv_cache
from omni_edge.runtime.positions import text_positions

PREFILL_CHUNK = 512


def profile(bundle: Path, context: int, steps: int) -> dict[str, float]:
    manifest = load_manifest(bundle, verify_files=False)
    record = manifest.components[naming.THINKER_DECODER]
    engine = OrtEngine(record.name, bundle / record.file, threads=1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.enable_profiling = True
    options.log_severity_level = 3
    options.profile_file_prefix = f"/tmp/profile-attention-{os.getpid()}"
    # OrtEngine takes no profiling option: the profiled session of the same graph stands in for its own.
    engine._session = ort.InferenceSession(str(bundle / record.file), options, providers=["CPUExecutionProvider"])
    cache = new_kv_cache("onnxruntime", manifest.kv_cache, record.shared_kv_buffer)
    rng = np.random.default_rng(0)
    width = manifest.thinker.hidden_size
    rows = rng.standard_normal((1, context, width)).astype(np.float32)
    for start in range(0, context, PREFILL_CHUNK):
        count = min(PREFILL_CHUNK, context - start)
        cache.run(
            engine, {"inputs_embeds": rows[:, start : start + count], "position_ids": text_positions(start, count)}
        )
    step = {
        "inputs_embeds": rng.standard_normal((1, 1, width)).astype(np.float32),
        "position_ids": text_positions(context, 1),
    }
    for _ in range(steps):
        cache.truncate(context)
        cache.run(engine, step)
    path = engine.session.end_profiling()
    events = json.loads(Path(path).read_text())
    os.remove(path)
    first = [e for e in events if e.get("name") == "model_run"][-steps]["ts"]
    per_op: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= first:
            per_op[event["args"]["op_name"]] += event["dur"]
    return {op: round(us / steps / 1000, 3) for op, us in per_op.most_common()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", type=Path)
    parser.add_argument("--contexts", nargs="+", type=int, default=[128, 2048])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    result = {}
    for bundle in args.bundles:
        for context in args.contexts:
            result[f"{bundle.name} context {context}"] = profile(bundle, context, args.steps)
            print(bundle.name, context, result[f"{bundle.name} context {context}"], flush=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
