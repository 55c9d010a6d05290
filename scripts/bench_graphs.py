"""omni-bench's engine rows for two or more bundles of one model side by side, one engine at a time (at most one
graph per bundle open, so a medium comparison stays under 4 GiB), the bundles interleaved within every repeat so
the machine's load drifts over all of them alike. What decided the cpu target's `auto` precisions.

    python scripts/bench_graphs.py BUNDLE_A BUNDLE_B [--threads 1] [--iterations 5] [--repeats 3] \
        [--max-context 512] [--no-solve] > bench/cpu-medium-auto-graphs.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from omni_edge import naming
from omni_edge.bench.engines import ENGINES, BundleEngines
from omni_edge.bench.machine import describe_machine
from omni_edge.bundle import load_manifest
from omni_edge.runtime.embedding_table import EmbeddingTable
from omni_edge.runtime.engine import open_engine


class _Bundle:
    """What BundleEngines reads of a Session, with the Thinker's engine opened only when it is measured."""

    def __init__(self, path: Path, threads: int):
        self.bundle_dir, self.threads = path, threads
        self.manifest = load_manifest(path)
        self.embeddings = EmbeddingTable(path, self.manifest.files, self.manifest.thinker.embedding_file)
        self._decoder = None

    @property
    def thinker(self):
        if self._decoder is None:
            self._decoder = open_engine(self.bundle_dir, self.manifest, naming.THINKER_DECODER, self.threads)
        return SimpleNamespace(decoder=self._decoder)

    def drop_engines(self) -> None:
        self._decoder = None


def _median_ms(run, iterations: int, warmup: int) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _small_enough(case, max_context: int) -> bool:
    return all(case.params.get(key, 0) <= max_context for key in ("new", "past"))


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("bundles", type=Path, nargs="+")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-context", type=int, default=512, help="skip prefills and contexts above this")
    parser.add_argument("--no-solve", action="store_true", help="skip the DiT's 36-evaluation solve row")
    parser.add_argument("--engine", action="append", default=None, help="only these engines (repeatable)")
    args = parser.parse_args(argv)
    bundles = [_Bundle(path, args.threads) for path in args.bundles]
    machine = describe_machine(args.threads)
    rows = []
    for bench in ENGINES:
        if bench.cases is None or (args.engine and bench.name not in args.engine):
            continue
        if not all(bench.name in b.manifest.components for b in bundles):
            continue
        contexts = [BundleEngines(b, args.threads) for b in bundles]
        for case in bench.cases(bundles[0].manifest):
            if not _small_enough(case, args.max_context) or (args.no_solve and "solve" in case.params):
                continue
            assert bench.ours is not None and bench.inputs is not None
            runs = [bench.ours(ctx, case, bench.inputs(ctx, case)) for ctx in contexts]
            medians: list[list[float]] = [[] for _ in bundles]
            for _ in range(args.repeats):
                for i, run in enumerate(runs):
                    medians[i].append(_median_ms(run, args.iterations, args.warmup))
            for bundle, values in zip(bundles, medians):
                rows.append(
                    {
                        "engine": bench.name,
                        "shape": case.label,
                        "bundle": str(bundle.bundle_dir),
                        "precision": bundle.manifest.components[bench.name].precision,
                        "median_ms": round(statistics.median(values), 2),
                        "repeat_medians_ms": [round(v, 2) for v in values],
                    }
                )
            print(
                f"{bench.name} {case.label}: "
                + ", ".join(f"{r['precision']} {r['median_ms']} ms" for r in rows[-len(bundles) :]),
                file=sys.stderr,
            )
        for ctx, bundle in zip(contexts, bundles):
            ctx.close()
            bundle.drop_engines()
        gc.collect()
    return {
        "command": "python scripts/bench_graphs.py " + " ".join(argv),
        "source_model": bundles[0].manifest.source_model,
        "config": {
            "threads": args.threads,
            "iterations": args.iterations,
            "warmup": args.warmup,
            "repeats": args.repeats,
        },
        "machine": machine | {"load_average_at_end": [round(v, 2) for v in os.getloadavg()]},
        "rows": rows,
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=1))
