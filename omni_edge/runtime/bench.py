"""omni-bench: per-engine latency at the shapes that matter, and end-to-end text latency.

Figures are medians/percentiles over timed iterations after warm-up; nothing here asserts a speed.
"""

from __future__ import annotations

import platform
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omni_edge import naming
from omni_edge.runtime.positions import text_positions
from omni_edge.runtime.sampling import SamplingConfig
from omni_edge.runtime.session import Done, Session

PREFILL_LENGTHS = (128, 512, 2048)
DECODE_CONTEXTS = (128, 512, 2048)
E2E_PROMPTS = (
    "Hello, who are you?",
    "Describe the weather on a sunny day in one sentence.",
    "List three things a robot in a kitchen should listen for.",
)


@dataclass(frozen=True)
class BenchConfig:
    engines: tuple[str, ...] = ()
    iterations: int = 20
    warmup: int = 3
    threads: int = 0
    e2e_new_tokens: int = 32


def _percentiles(samples_s: list[float]) -> dict:
    ms = np.asarray(samples_s) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "iterations": len(ms)}


def _time(fn, config: BenchConfig) -> dict:
    for _ in range(config.warmup):
        fn()
    samples = []
    for _ in range(config.iterations):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return _percentiles(samples)


def _thinker_feeds(session: Session, new: int, past: int) -> dict:
    geo = session.manifest.kv_cache
    rng = np.random.default_rng(0)
    feeds = {
        "inputs_embeds": session.embeddings[rng.integers(0, 1000, new)][None],
        "position_ids": text_positions(past, new),
        "attention_mask": np.ones((1, past + new), dtype=np.int64),
    }
    for layer in range(geo.num_layers):
        for name in (naming.past_key(layer), naming.past_value(layer)):
            if past:
                feeds[name] = rng.standard_normal((1, geo.num_kv_heads, past, geo.head_dim)).astype(np.float32)
    return feeds


def bench_engines(session: Session, config: BenchConfig) -> list[dict]:
    limit = session.manifest.kv_cache.max_seq_len
    rows = []
    wanted = set(config.engines) or {naming.THINKER_PREFILL, naming.THINKER_DECODE}
    if naming.THINKER_PREFILL in wanted:
        for length in (n for n in PREFILL_LENGTHS if n <= limit):
            feeds = _thinker_feeds(session, length, 0)
            stats = _time(lambda: session.prefill.run(feeds), config)
            rows.append({"engine": naming.THINKER_PREFILL, "shape": f"prefill {length} tokens", **stats,
                         "tokens_per_s": length / (stats["p50_ms"] / 1000)})
    if naming.THINKER_DECODE in wanted:
        for context in (n for n in DECODE_CONTEXTS if n < limit):
            feeds = _thinker_feeds(session, 1, context)
            stats = _time(lambda: session.decode.run(feeds), config)
            rows.append({"engine": naming.THINKER_DECODE, "shape": f"decode 1 token at context {context}",
                         **stats, "tokens_per_s": 1 / (stats["p50_ms"] / 1000)})
    return rows


def bench_end_to_end(session: Session, config: BenchConfig) -> list[dict]:
    rows = []
    greedy = SamplingConfig(greedy=True)
    for prompt in E2E_PROMPTS:
        ttft, tps = [], []
        for i in range(config.warmup + max(3, config.iterations // 4)):
            session.reset()
            result = next(e.result for e in session.generate(prompt, config.e2e_new_tokens, greedy)
                          if isinstance(e, Done))
            if i >= config.warmup:
                ttft.append(result.ttft_ms)
                tps.append(result.decode_tokens_per_s)
        rows.append({"prompt": prompt, "new_tokens": config.e2e_new_tokens,
                     "ttft_ms_p50": float(np.median(ttft)), "thinker_tokens_per_s_p50": float(np.median(tps))})
    session.reset()
    return rows


def run_bench(bundle_dir: Path, config: BenchConfig) -> dict:
    session = Session(bundle_dir, threads=config.threads)
    engines = bench_engines(session, config)
    end_to_end = bench_end_to_end(session, config)
    return {
        "bundle": str(bundle_dir),
        "target": session.manifest.target,
        "backend": session.manifest.backend,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
        "engines": engines,
        "end_to_end": end_to_end,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def format_report(report: dict) -> str:
    lines = [f"bundle {report['bundle']} (target {report['target']}, {report['backend']})", "",
             f"{'engine':<18}{'shape':<34}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'tok/s':>12}"]
    for row in report["engines"]:
        lines.append(f"{row['engine']:<18}{row['shape']:<34}{row['p50_ms']:>10.2f}{row['p90_ms']:>10.2f}"
                     f"{row['p99_ms']:>10.2f}{row['tokens_per_s']:>12.1f}")
    lines += ["", f"{'end to end (greedy)':<60}{'ttft ms':>10}{'tok/s':>10}"]
    for row in report["end_to_end"]:
        lines.append(f"{row['prompt'][:58]:<60}{row['ttft_ms_p50']:>10.2f}{row['thinker_tokens_per_s_p50']:>10.1f}")
    lines.append(f"\npeak RSS {report['peak_rss_mib']:.0f} MiB")
    return "\n".join(lines)
