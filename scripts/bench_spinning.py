"""How should ONNX Runtime's pool threads wait? Thinker decode steps alone, and Thinker and Talker steps
alternating as in a spoken reply, in each engine.SPINNING mode (spin always, ORT's default; spin within a run
only; never spin), at each thread count: wall and CPU time per step (CPU time counts the spinning), the modes
interleaved and repeated, medians reported with the load average.

    python scripts/bench_spinning.py BUNDLE [--threads 1 2] [--steps 20] [--repeats 5] > bench/cpu-medium-spinning.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from omni_edge import naming
from omni_edge.bench.inputs import decoder_feeds
from omni_edge.bench.machine import describe_machine
from omni_edge.bundle import load_manifest
from omni_edge.runtime.engine import SPINNING, OrtEngine

CONTEXT = 128


def _feeds(width: int, geometry) -> dict:
    import numpy as np

    rows = np.random.default_rng(0).standard_normal((1, width)).astype(np.float32)
    return decoder_feeds(rows, geometry, CONTEXT)


def _runner(runs):
    def run():
        for engine, feeds in runs:
            engine.run(feeds)

    return run


def _median_ms(run, steps: int) -> tuple[float, float]:
    """(median wall ms, mean CPU ms of this process) per call."""
    run()  # warm-up
    times = []
    cpu = time.process_time()
    for _ in range(steps):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), (time.process_time() - cpu) * 1e3 / steps


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    manifest = load_manifest(args.bundle, verify_files=False)
    width = manifest.thinker.hidden_size
    graphs = {
        name: args.bundle / manifest.components[name].file for name in (naming.THINKER_DECODER, naming.TALKER_DECODER)
    }
    thinker_feeds = _feeds(width, manifest.kv_cache)
    talker_feeds = _feeds(width, manifest.talker.kv_cache) if manifest.talker else None
    machine = describe_machine(0)
    samples: dict[tuple[int, str, str], list[tuple[float, float]]] = {}
    for threads in args.threads:
        engines = {
            spin: {
                name: OrtEngine(name, path, threads=threads, spinning=spin)
                for name, path in graphs.items()
                if name == naming.THINKER_DECODER or talker_feeds is not None
            }
            for spin in SPINNING
        }
        for _ in range(args.repeats):
            for spin in SPINNING:  # interleaved: drift in the machine's load hits both alike
                steps = [(engines[spin][naming.THINKER_DECODER], thinker_feeds)]
                cases = [("thinker decode step", steps)]
                if talker_feeds is not None:
                    cases.append(
                        ("thinker step + talker step", [*steps, (engines[spin][naming.TALKER_DECODER], talker_feeds)])
                    )
                for case, runs in cases:
                    samples.setdefault((threads, spin, case), []).append(_median_ms(_runner(runs), args.steps))
    rows = [
        {
            "threads": threads,
            "spinning": spin,
            "case": case,
            "context": CONTEXT,
            "median_ms": round(statistics.median(wall for wall, _ in values), 2),
            "cpu_ms": round(statistics.median(cpu for _, cpu in values), 2),
            "repeat_medians_ms": [round(wall, 2) for wall, _ in values],
        }
        for (threads, spin, case), values in samples.items()
    ]
    return {
        "bundle": str(args.bundle),
        "source_model": manifest.source_model,
        "precisions": {name: r.precision for name, r in manifest.components.items() if name in graphs},
        "command": "python scripts/bench_spinning.py " + " ".join(argv),
        "machine": machine | {"load_average_at_end": [round(v, 2) for v in os.getloadavg()]},
        "rows": rows,
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=1))
