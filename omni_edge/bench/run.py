"""omni-bench: run every engine row, the end-to-end prompts, the reference and the roofline; build the report.

Order matters for memory readings: our rows and prompts run first, our engines are released, then the
PyTorch reference is loaded, so each side's peak RSS is its own. Copy bandwidth is probed twice, before
anything is loaded and between the two sides: other processes sharing the cores can only lower a reading,
so the roofline uses the higher one and the report keeps both.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omni_edge.bench import end_to_end
from omni_edge.bench.engines import ENGINES, BundleEngines, Case, EngineBench
from omni_edge.bench.inputs import E2E_PROMPTS, PROMPT_ENGINE
from omni_edge.bench.machine import describe_machine
from omni_edge.bench.measure import Policy, copy_bandwidth, measure, resolve_threads
from omni_edge.bundle import Manifest
from omni_edge.errors import InputError, OmniEdgeError

REPORT_VERSION = 1


@dataclass(frozen=True)
class BenchConfig:
    engines: tuple[str, ...] = ()  # empty: every engine
    iterations: int = 20
    warmup: int = 3
    threads: int = 0  # 0: every core this process may use; ours and the reference use the same number
    max_seconds: float = 0.0  # per row: stop after this much timed work (but not before 3 iterations)
    e2e_new_tokens: int = 32
    e2e_iterations: int = 0  # 0: max(3, iterations // 4)
    speech_codec_tokens: int = 100  # cap of the spoken reply (2 s of audio): random weights rarely stop earlier
    reference: bool = True
    bandwidth_mib: int = 256

    def policy(self) -> Policy:
        return Policy(self.iterations, self.warmup, self.max_seconds)

    def e2e_repeats(self) -> int:
        return self.e2e_iterations or max(3, self.iterations // 4)


def _selected(names: tuple[str, ...]) -> list[EngineBench]:
    known = {bench.name for bench in ENGINES}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InputError(f"unknown engine(s) {', '.join(unknown)}; omni-bench knows: {', '.join(sorted(known))}")
    return [bench for bench in ENGINES if not names or bench.name in names]


def _row(case, stats: dict) -> dict:
    throughput = case.work / (stats["p50_ms"] / 1000)
    return {
        "engine": case.engine,
        "shape": case.label,
        "params": case.params,
        **stats,
        "throughput": throughput,
        "throughput_unit": f"{case.unit}/s",
        "reference": None,
        "latency_ratio": None,
    }


@dataclass
class MeasuredCase:
    """One measured case: its report row, and the case and inputs the reference runs again."""

    case: Case
    inputs: dict
    row: dict


def _engine_rows(ctx: BundleEngines, benches: list[EngineBench], policy: Policy, progress) -> tuple:
    """(rows, engines not measured and why, the MeasuredCases for the reference)."""
    manifest = ctx.manifest
    rows, pending, measured = [], [], []
    for bench in benches:
        if bench.name not in manifest.components:
            pending.append({"engine": bench.name, "planned": bench.planned, "status": "not in bundle"})
            continue
        if bench.cases is None or bench.inputs is None or bench.ours is None:
            pending.append({"engine": bench.name, "planned": bench.planned, "status": "no benchmark yet"})
            continue
        for case in bench.cases(manifest):
            inputs = bench.inputs(ctx, case)
            rows.append(_row(case, measure(bench.ours(ctx, case, inputs), policy)))
            measured.append(MeasuredCase(case, inputs, rows[-1]))
            progress(f"{case.engine} {case.label}: p50 {rows[-1]['p50_ms']:.2f} ms")
    return rows, pending, measured


def _end_to_end(session, config: BenchConfig, policy: Policy, progress) -> tuple:
    """(prompts run, their rows, the spoken-reply row or why there is none)."""
    manifest = session.manifest
    prompts = [p for p in E2E_PROMPTS if PROMPT_ENGINE.get(p.kind) in (None, *manifest.components)]
    e2e = []
    for prompt in prompts:
        e2e.append(end_to_end.run_prompt(session, prompt, config.e2e_new_tokens, policy, config.e2e_repeats()))
        progress(f"end to end ({prompt.kind}): ttft {e2e[-1].row['ttft_ms_p50']:.1f} ms")
    speech = end_to_end.PromptRun(_speech_status(manifest), [])
    if speech.row["status"] == "measured":
        speech = end_to_end.run_speech(
            session, E2E_PROMPTS[0], config.e2e_new_tokens, config.speech_codec_tokens, policy, config.e2e_repeats()
        )
        progress(f"end to end (speech): first audio {speech.row['first_audio_ms_p50'] or 0:.1f} ms")
    return prompts, e2e, speech


def run_bench(bundle_dir: Path, config: BenchConfig, progress: Callable[[str], None] = lambda line: None) -> dict:
    from omni_edge.runtime.session import Session

    benches = _selected(config.engines)  # a typo fails here, before seconds of loading
    threads = resolve_threads(config.threads)
    machine = describe_machine(threads)
    policy = config.policy()
    bandwidth = [copy_bandwidth(threads, config.bandwidth_mib)]
    session = Session(bundle_dir, threads=threads)
    manifest = session.manifest
    ctx = BundleEngines(session, threads)
    rows, pending, measured = _engine_rows(ctx, benches, policy, progress)
    ctx.close()
    prompts, e2e, speech = _end_to_end(session, config, policy, progress)
    del session, ctx
    gc.collect()

    bandwidth.append(copy_bandwidth(threads, config.bandwidth_mib))
    reference = _run_reference(manifest, threads, config, measured, prompts, e2e, speech, progress)
    machine["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    return {
        "report_version": REPORT_VERSION,
        "bundle": str(bundle_dir),
        "source_model": manifest.source_model,
        "target": manifest.target,
        "backend": manifest.backend,
        "config": {
            "iterations": config.iterations,
            "warmup": config.warmup,
            "threads": threads,
            "max_seconds_per_row": config.max_seconds,
            "e2e_new_tokens": config.e2e_new_tokens,
            "e2e_iterations": config.e2e_repeats(),
            "speech_codec_tokens": config.speech_codec_tokens,
            "reference": config.reference,
        },
        "machine": machine,
        "engines": rows,
        "engines_pending": pending,
        "end_to_end": [run.row for run in e2e],
        "speech": speech.row,
        "reference": reference,
        "roofline": roofline(
            Path(bundle_dir),
            manifest,
            rows,
            {
                "copy_bandwidth_gb_s": max(bandwidth),
                "copy_bandwidth_samples_gb_s": bandwidth,
                "array_mib": config.bandwidth_mib,
                "threads": threads,
            },
        ),
    }


def _run_reference(manifest: Manifest, threads, config, measured, prompts, e2e, speech, progress) -> dict:
    if not config.reference:
        return {"status": "skipped (--no-reference)"}
    from omni_edge.bench import reference

    reason = reference.unavailable_reason()
    if reason:
        return {"status": f"unavailable: {reason}"}
    try:
        model, info = reference.load_reference(manifest, threads)
    except OmniEdgeError as exc:  # our rows stand on their own; say why the comparison is missing
        return {"status": f"unavailable: {exc}"}
    policy = config.policy()
    for item in measured:
        case, row = item.case, item.row
        stats = reference.measure_case(model, case, item.inputs, policy)
        if stats is None:
            continue
        row["reference"] = {**stats, "throughput": case.work / (stats["p50_ms"] / 1000)}
        row["latency_ratio"] = row["p50_ms"] / stats["p50_ms"]
        progress(f"reference {case.engine} {case.label}: p50 {stats['p50_ms']:.2f} ms")
    for prompt, run in zip(prompts, e2e):
        row = run.row
        ref = reference.end_to_end(
            model, prompt, run.prompt_token_ids, config.e2e_new_tokens, policy, config.e2e_repeats()
        )
        row["reference"] = ref
        row["ttft_ratio"] = row["ttft_ms_p50"] / ref["ttft_ms_p50"]
        ref_tps = ref["thinker_tokens_per_s_p50"]
        row["tokens_per_s_ratio"] = row["thinker_tokens_per_s_p50"] / ref_tps if ref_tps else None
        progress(f"reference end to end ({prompt.kind}): ttft {ref['ttft_ms_p50']:.1f} ms")
    if speech.row["status"] == "measured":
        spoken = speech.row
        ref = reference.speech_end_to_end(
            model,
            manifest,
            speech.prompt_token_ids,
            config.e2e_new_tokens,
            config.speech_codec_tokens,
            spoken["speaker"],
            policy,
            config.e2e_repeats(),
        )
        spoken["reference"] = ref
        spoken["first_audio_ratio"] = _ratio(spoken["first_audio_ms_p50"], ref["first_audio_ms_p50"])
        spoken["rtf_ratio"] = _ratio(spoken["rtf_p50"], ref["rtf_p50"])
        progress(f"reference end to end (speech): first audio {ref['first_audio_ms_p50']:.1f} ms")
    del model
    gc.collect()
    return {"status": "measured", **info}


def _ratio(ours, ref):
    return ours / ref if ours is not None and ref else None


def _speech_status(manifest: Manifest) -> dict:
    from omni_edge import naming

    engines = [naming.TALKER_DECODER, naming.DIT_WINDOW, naming.BIGVGAN_WINDOW]
    missing = [name for name in engines if name not in manifest.components]
    if missing or manifest.talker is None or manifest.token2wav is None:
        return {"status": "not in bundle", "missing_engines": missing}
    return {"status": "measured"}


def decode_weight_bytes(bundle_dir: Path, manifest: Manifest) -> tuple[int, list[str]]:
    """Bytes of the thinker_decoder graph and its external data: what one decode step has to stream."""
    from omni_edge import naming

    record = manifest.components[naming.THINKER_DECODER]
    files = sorted(name for name in manifest.files if name == record.file or name.startswith(record.file + "."))
    files = files or [record.file]
    return sum(os.path.getsize(bundle_dir / name) for name in files), files


def roofline(bundle_dir: Path, manifest: Manifest, rows: list[dict], bandwidth: dict) -> dict:
    """Decode is memory bound: tokens/s can not beat bandwidth / (weights + KV read per token)."""
    from omni_edge import naming

    out = dict(bandwidth)
    if naming.THINKER_DECODER not in manifest.components:
        return {**out, "status": "no thinker_decoder in bundle"}
    weights, files = decode_weight_bytes(bundle_dir, manifest)
    bytes_per_s = bandwidth["copy_bandwidth_gb_s"] * 1e9
    kv_per_token = manifest.kv_cache.bytes_per_token()
    out.update(
        decode_weight_bytes=weights,
        decode_weight_files=files,
        kv_bytes_per_context_token=kv_per_token,
        roofline_tokens_per_s=bytes_per_s / weights,
        decode=[],
    )
    for row in rows:
        if row["engine"] != naming.THINKER_DECODER or not row["params"]["past"]:
            continue  # decode steps only: a prefill is compute bound
        context = row["params"]["past"]
        bound = bytes_per_s / (weights + context * kv_per_token)
        row["roofline_tokens_per_s"] = bound
        row["roofline_fraction"] = row["throughput"] / bound
        reference = row.get("reference")
        if reference:
            row["reference_roofline_fraction"] = reference["throughput"] / bound
        out["decode"].append(
            {
                "context": context,
                "tokens_per_s": row["throughput"],
                "roofline_tokens_per_s": bound,
                "fraction": row["roofline_fraction"],
                "reference_fraction": row.get("reference_roofline_fraction"),
            }
        )
    return out
