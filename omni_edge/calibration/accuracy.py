"""How much a reduced-precision bundle departs from its FP32 twin: per graph and end to end.

Per graph: the reduced graph and the FP32 graph run on the same held-out feeds (recorded from real
requests, never used for calibration); every floating output is compared. End to end: both bundles answer
the same requests greedily; the text and codec tokens are compared position by position, and the
waveform error is measured by vocoding the FP32 bundle's codes with each bundle's DiT and BigVGAN (with the
same noise), so it measures token2wav precision and not a change of words.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from omni_edge import naming
from omni_edge.calibration.calib_set import CalibrationSet
from omni_edge.calibration.record import ReferenceAnswer, answer, vocode
from omni_edge.quantization_report import EndToEndAccuracy, GraphAccuracy


def ort_session(path: Path, disable_optimizations: bool):
    import onnxruntime as ort

    from omni_edge.ort_options import cpu_session

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if disable_optimizations:
        # ONNX Runtime's graph fusions mis-compute FP8 Q/DQ graphs (measured, see DESIGN.md); unfused is exact.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return cpu_session(path, options)


def compare_graphs(
    reference: Path, candidate: Path, feeds: list[dict[str, np.ndarray]], precision: str, method: str = ""
) -> GraphAccuracy:
    """Both graphs on the same feeds, one graph open at a time: the reference's outputs wait on disk (beside
    the candidate graph) while the candidate runs, so a full-size fp32 Thinker is never held beside its twin."""
    import tempfile

    ref = ort_session(reference, disable_optimizations=False)
    names = [o.name for o in ref.get_outputs()]
    with tempfile.TemporaryDirectory(prefix=".compare-", dir=candidate.parent) as work:
        for i, feed in enumerate(feeds):
            np.savez(Path(work) / f"{i}.npz", *ref.run(names, feed))
        del ref
        test = ort_session(candidate, disable_optimizations=precision == "fp8")
        cosine, relative, max_abs, compared = 1.0, 0.0, 0.0, 0
        for i, feed in enumerate(feeds):
            with np.load(Path(work) / f"{i}.npz") as saved:
                expected = [saved[f"arr_{j}"] for j in range(len(names))]
            for e, g in zip(expected, test.run(names, feed)):
                if not np.issubdtype(e.dtype, np.floating) or e.size == 0:
                    continue
                e, g = e.astype(np.float64).ravel(), g.astype(np.float64).ravel()
                cosine = min(cosine, cosine_similarity(e, g))
                relative = max(relative, float(np.linalg.norm(g - e) / max(np.linalg.norm(e), 1e-30)))
                max_abs = max(max_abs, float(np.abs(g - e).max()))
                compared += 1
    return GraphAccuracy(
        precision, round(cosine, 6), round(relative, 6), max_abs, len(feeds), compared // max(1, len(feeds)), method
    )


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    return float(a @ b / max(na * nb, 1e-30))


def token_agreement(reference: list[int], candidate: list[int]) -> float:
    """Equal tokens at equal positions over the longer sequence: a late divergence costs little, an early
    one a lot, and a shorter or longer reply counts its missing positions as disagreements."""
    longest = max(len(reference), len(candidate))
    if longest == 0:
        return 1.0
    return sum(a == b for a, b in zip(reference, candidate)) / longest


def end_to_end(
    reduced_dir: Path,
    calib: CalibrationSet,
    reply_tokens: int,
    codec_tokens: int,
    reference: list[ReferenceAnswer],
    bar=None,
) -> EndToEndAccuracy:
    """`reference`: the FP32 bundle's answers to `calib` at the same token limits (record.replay)."""
    from omni_edge.runtime.session import Session

    requests = calib.samples
    if len(reference) != len(requests):
        raise ValueError(f"{len(reference)} reference answers for {len(requests)} calibration requests")
    session = Session(reduced_dir, verify=False)
    speaks = naming.TALKER_DECODER in session.manifest.components
    text, exact, codec, wave_err, snr = [], [], [], [], []
    for i, (sample, ref) in enumerate(zip(requests, reference)):
        if bar is not None:
            bar.set_description(f"end-to-end accuracy: request {i + 1}/{len(requests)}")
        result = answer(session, sample, reply_tokens, codec_tokens if speaks else None)
        text.append(token_agreement(ref.text_token_ids, result.text_token_ids))
        exact.append(ref.text_token_ids == result.text_token_ids)
        if speaks and ref.waveform is not None:
            codec.append(token_agreement(ref.codec_token_ids, result.codec_token_ids))
            ref_wave, test_wave = ref.waveform, vocode(session.speech(), ref.codec_token_ids)
            err = float(np.linalg.norm(test_wave - ref_wave) / max(np.linalg.norm(ref_wave), 1e-30))
            wave_err.append(err)
            snr.append(-20 * np.log10(max(err, 1e-12)))
    mean = lambda xs: round(float(np.mean(xs)), 6) if xs else None  # noqa: E731
    # Every request has text, so the text figures are never None (0.0 only for an empty set).
    return EndToEndAccuracy(
        len(requests), mean(text) or 0.0, mean(exact) or 0.0, mean(codec), mean(wave_err), mean(snr)
    )
