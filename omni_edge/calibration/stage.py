"""The export's reduce-precision stage: FP32 bundle in, reduced bundle plus its accuracy report out.

replay (FP32 bundle answers the calibration requests: each graph's feeds, and the reference answers)
  -> per graph: quantize / cast on the calibration feeds, compare on the held-out feeds
  -> the reduced bundle answers the same requests: end-to-end agreement with FP32

One bundle is open at a time, the replay opens one pass's graphs at a time (record.py), and a comparison one
graph at a time (accuracy.compare_graphs): the peak is the FP32 Thinker in ONNX Runtime, never two bundles.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from omni_edge import naming
from omni_edge.bundle import ComponentRecord, Manifest, sha256_file, write_manifest
from omni_edge.calibration.accuracy import compare_graphs, end_to_end
from omni_edge.calibration.calib_set import CalibrationSet
from omni_edge.calibration.quantize import copy_graph, quantize_graph, settings_for
from omni_edge.calibration.record import CODEC_TOKENS, REPLY_TOKENS, Replay, replay, split_feeds
from omni_edge.quantization_report import CalibrationInfo, GraphAccuracy, QuantizationReport
from omni_edge.targets import Target, get_target

SMOOTHQUANT_ALPHA = 0.5
SMOOTHQUANT_GRAPHS = (naming.THINKER_DECODER, naming.TALKER_DECODER)


def reduce_bundle(
    fp32_dir: Path,
    out_dir: Path,
    fp32_manifest: Manifest,
    precisions: dict[str, str],
    high_precision: str,
    calib: CalibrationSet,
    bar=None,
    replayed: Replay | None = None,
) -> tuple[Manifest, QuantizationReport]:
    """Write the reduced bundle into out_dir (every payload file, and an interim manifest); return that
    manifest and the report. `precisions`: graph name -> precision; graphs left at fp32 are copied.

    The calibration requests also give the held-out feeds that measure every reduced graph, fp16 ones too
    (they need no calibration, and are measured on the synthetic set when the user gave none).

    `replayed` (what record.replay returns for this bundle and set): computed here when not given. A caller
    reducing one bundle at several precisions computes it once; it is only read.

    How each precision is written (Q/DQ or weight-only MatMulNBits, heads in or out) is the target's, the one
    the manifest names; `high_precision` must be that target's."""
    target = get_target(fp32_manifest.target)
    if high_precision != target.high_precision:
        raise ValueError(f"high precision {high_precision} for target {target.name} ({target.high_precision})")
    records = fp32_manifest.components
    if replayed is None:
        replayed = replay(fp32_dir, calib, bar)
    feeds = replayed.feeds
    if bar is not None:
        bar.update()
    reduced, accuracy = {}, {}
    for name, record in records.items():
        precision = precisions[name]
        src, dst = fp32_dir / record.file, out_dir / record.file
        if precision == record.precision:  # fp32 kept, or a graph exported in its fp16 already (half_source.py)
            copy_graph(src, dst)
            reduced[name] = record
        else:
            if bar is not None:
                bar.set_description(f"{precision} {name}")
            calib_feeds, held_out = split_feeds(feeds.get(name, []))
            accuracy[name] = reduce_graph(src, dst, precision, target, calib_feeds, held_out)
            reduced[name] = replace(record, precision=precision, sha256=sha256_file(dst))
        if bar is not None:
            bar.update()
    for path in fp32_dir.iterdir():  # tables, tokenizer, speakers
        if path.is_file() and path.name != naming.MANIFEST_FILE and not path.name.startswith(_graph_files(records)):
            shutil.copyfile(path, out_dir / path.name)
    manifest = replace(fp32_manifest, components=reduced, files={})
    write_manifest(out_dir, manifest)
    info = CalibrationInfo(calib.source, calib.counts(), {name: len(f) for name, f in feeds.items()})
    e2e = end_to_end(out_dir, calib, REPLY_TOKENS, CODEC_TOKENS, replayed.reference, bar)
    if bar is not None:
        bar.update()
    return manifest, QuantizationReport(info, accuracy, e2e)


def reduce_graph(
    src: Path, dst: Path, precision: str, target: Target, calib_feeds: list, held_out: list
) -> GraphAccuracy:
    """Quantize one graph and measure it; int8 Q/DQ decoders try SmoothQuant too and keep whichever is closer
    (weight-only int8 leaves activations in fp32, so there is nothing to smooth)."""
    settings = settings_for(src, precision, target)
    method = quantize_graph(src, dst, settings, calib_feeds)
    if settings.source != "fp32":  # export/half_source.py
        method += f"; from and against the graph exported in {settings.source}"
    best = compare_graphs(src, dst, held_out, precision, method)
    if precision == "int8" and src.stem in SMOOTHQUANT_GRAPHS and not settings.weight_only:
        best = _try_smoothquant(src, dst, settings, calib_feeds, held_out, best)
    return best


def _try_smoothquant(src, dst, settings, calib_feeds, held_out, plain: GraphAccuracy) -> GraphAccuracy:
    from omni_edge.calibration.smoothquant import smooth_model

    work = dst.with_name(f".{dst.stem}.smooth")
    (work / "quantized").mkdir(parents=True, exist_ok=True)
    try:
        smoothed, quantized = work / src.name, work / "quantized" / src.name
        report = smooth_model(src, smoothed, calib_feeds, alpha=SMOOTHQUANT_ALPHA)
        if report.smoothed_groups == 0:
            return plain
        method = f"{quantize_graph(smoothed, quantized, settings, calib_feeds)} + SmoothQuant({SMOOTHQUANT_ALPHA})"
        candidate = compare_graphs(src, quantized, held_out, settings.precision, method)
        if candidate.relative_error >= plain.relative_error:
            return replace(
                plain, method=f"{plain.method} (SmoothQuant tried: rel.err {candidate.relative_error:.4f}, not better)"
            )
        copy_graph(quantized, dst)
        return candidate
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _graph_files(records: dict[str, ComponentRecord]) -> tuple[str, ...]:
    return tuple(record.file for record in records.values())
