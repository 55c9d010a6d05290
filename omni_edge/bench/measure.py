"""How things are timed: warm-up then timed iterations, percentiles, peak RSS, copy bandwidth.

Nothing here knows about engines; a measurement is a callable (with an optional untimed setup per
iteration, e.g. a fresh KV cache for the PyTorch reference) and a policy.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

MIN_ITERATIONS = 3  # a time budget never cuts a row below this many timed runs


@dataclass(frozen=True)
class Policy:
    iterations: int = 20
    warmup: int = 3
    max_seconds: float = 0.0  # per row; 0: always run `iterations` times


def resolve_threads(threads: int) -> int:
    """0 means one per physical core this process may run on (the runtime's default); ours and the reference
    then use the same number."""
    from omni_edge.runtime.engine import default_threads

    return threads or default_threads()


def measure(run: Callable, policy: Policy, setup: Callable | None = None) -> dict:
    """Time `run(setup())` (or `run()`): p50/p90/p99 in ms, iterations done, and the row's peak RSS.

    RSS is the whole process: `rss_before_mib` is what earlier rows left resident (weights, ONNX Runtime's
    arena), `peak_rss_mib` the high-water mark while this row ran.
    """
    before = (_status_kib("VmRSS") or 0) / 1024
    reset_peak_rss()
    for _ in range(policy.warmup):
        run(setup()) if setup else run()
    samples: list[float] = []
    spent = 0.0
    floor = min(MIN_ITERATIONS, policy.iterations)
    while len(samples) < policy.iterations:
        arg = setup() if setup else None
        start = time.perf_counter()
        run(arg) if setup else run()
        samples.append(time.perf_counter() - start)
        spent += samples[-1]
        if policy.max_seconds and spent >= policy.max_seconds and len(samples) >= floor:
            break
    return {**percentiles(samples), "peak_rss_mib": peak_rss_mib(), "rss_before_mib": before}


def percentiles(samples_s: list[float]) -> dict:
    ms = np.asarray(samples_s) * 1000
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "iterations": len(ms),
    }


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> None:
    """Reset the kernel's high-water mark (VmHWM), so the next reading is this row's peak, not the run's."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass  # not Linux, or not allowed: readings are then the process peak so far


def peak_rss_mib() -> float:
    kib = _status_kib("VmHWM")
    if kib is None:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 1024


def copy_bandwidth(threads: int, mib: int = 256, repeats: int = 7) -> float:
    """GB/s of a large array copy with `threads` workers, counting read + write bytes (median of `repeats`).

    Decode streams every weight once per token; a copy of an array far larger than the caches is the
    simplest measure of how fast this machine streams bytes (STREAM "copy" convention: 2 x size).
    """
    count = mib * (1 << 20) // 8
    src = np.ones(count, dtype=np.float64)
    dst = np.empty_like(src)
    bounds = np.linspace(0, count, threads + 1, dtype=np.int64)
    chunks = [(src[a:b], dst[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]

    def copy_all(pool):
        list(pool.map(lambda pair: np.copyto(pair[1], pair[0]), chunks))  # numpy releases the GIL here

    samples = []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        copy_all(pool)  # first touch: page faults are not bandwidth
        for _ in range(repeats):
            start = time.perf_counter()
            copy_all(pool)
            samples.append(time.perf_counter() - start)
    return 2 * src.nbytes / statistics.median(samples) / 1e9
