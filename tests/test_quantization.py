"""Reduced-precision bundles: ModelOpt Q/DQ graphs (GPU targets) and weight-only MatMulNBits graphs (cpu), from
recorded runtime feeds, measured against FP32.

The stage runs on an FP32 bundle of the target's graphs (`cpu_bundle`; `gpu_fp32_bundle` for the TensorRT
targets, whose attention is standard ops where the cpu graphs use ONNX Runtime's GroupQueryAttention), as the
export runs it on its own FP32 staging bundle; the CLI tests cover the whole `omni-export --precision ...
--calib ...` path.

Accuracy floors below are for the tiny random-weight model, whose logits are nearly flat (so greedy tokens
flip easily); they catch a broken recipe (cosine far below 0.9, NaN, a graph that was not quantized), not
small calibration changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_one_line_error, cli

pytest.importorskip("modelopt.onnx.quantization", reason="quantization needs omni-edge[quant] (NVIDIA ModelOpt)")

from omni_edge import naming
from omni_edge.bundle import Manifest, load_manifest
from omni_edge.calibration.calib_set import synthetic_calibration_set
from omni_edge.calibration.record import Replay
from omni_edge.calibration.stage import reduce_bundle
from omni_edge.components import COMPONENTS
from omni_edge.precision_plan import component_precisions, graph_precisions
from omni_edge.quantization_report import QuantizationReport
from omni_edge.targets import get_target

# Every test here quantizes or casts with ModelOpt, or runs omni-export: the inner loop leaves them out.
pytestmark = pytest.mark.slow

# int4-awq on the tiny model: random weights give nearly flat logits, and the minimum over outputs is the
# last-position logits (measured cosine 0.898); a real checkpoint is measured by its own report.
COSINE_FLOOR = {"fp16": 0.999, "int8": 0.95, "fp8": 0.95, "int4-awq": 0.85}
# BigVGAN's Snake activations and long conv stack lose most in int8 (measured cosine 0.93 on the tiny model),
# which is why every GPU target keeps it fp16 by default; an explicit all-int8 request still gets it.
BIGVGAN_INT8_FLOOR = 0.9
WEIGHT_ONLY_INT8_FLOOR = 0.998


@dataclass(frozen=True)
class Reduced:
    out: Path
    precisions: dict[str, str]
    manifest: Manifest
    report: QuantizationReport


def _reduce(cpu_bundle: Path, out: Path, target: str, replay: Replay, precision: str = "auto") -> Reduced:
    # The FP32 bundle stands in for the target's own FP32 staging bundle: the stage reads the target from it.
    manifest = replace(load_manifest(cpu_bundle, verify_files=False), target=target)
    t = get_target(target)
    precisions = graph_precisions(component_precisions(t, precision), manifest.components)
    out.mkdir()
    reduced, report = reduce_bundle(
        cpu_bundle,
        out,
        manifest,
        precisions,
        t.high_precision,
        synthetic_calibration_set(),
        replayed=replay,
    )
    return Reduced(out, precisions, reduced, report)


def _graph(path: Path):
    import onnx

    return onnx.load(str(path), load_external_data=False).graph


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in _graph(path).node}


def _io_types(path: Path) -> list[tuple[str, int]]:
    graph = _graph(path)
    return [(v.name, v.type.tensor_type.elem_type) for v in [*graph.input, *graph.output]]


@pytest.fixture(scope="session")
def fp32_replay(cpu_bundle) -> Replay:
    """Once for the session: each reduction below would replay the same requests through the same FP32
    bundle (the stage computes both itself when it is not handed them, as in an export)."""
    from omni_edge.calibration.record import replay

    return replay(cpu_bundle, synthetic_calibration_set())


@pytest.fixture(scope="session")
def int8_cpu(cpu_bundle, fp32_replay, tmp_path_factory) -> Reduced:
    return _reduce(cpu_bundle, tmp_path_factory.mktemp("int8") / "bundle", "cpu", fp32_replay, "int8")


@pytest.fixture(scope="session")
def int4_cpu(cpu_bundle, fp32_replay, tmp_path_factory) -> Reduced:
    """The Thinker at int4-awq on cpu, every other component at fp32 (copied as it was)."""
    precision = ",".join(f"{c.name}={'int4-awq' if c.name == 'thinker' else 'fp32'}" for c in COMPONENTS)
    return _reduce(cpu_bundle, tmp_path_factory.mktemp("int4") / "bundle", "cpu", fp32_replay, precision)


@pytest.fixture(scope="session")
def gpu_fp32_bundle(tiny_checkpoint, tmp_path_factory) -> Path:
    """What a TensorRT target's export stages before reducing: its fp32 graphs, under the interim manifest that
    lets ONNX Runtime open them (the pipeline writes the same one before its calibration replay)."""
    from omni_edge.bundle import write_manifest
    from omni_edge.export.pipeline import ExportRequest, _no_progress, export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny-rtx-fp32"
    request = ExportRequest(str(tiny_checkpoint), "rtx-ada", out, precision="fp32", max_seq_len=2048, engines=False)
    export_bundle(request, _no_progress)
    write_manifest(out, replace(load_manifest(out, verify_files=False), backend="onnxruntime", tensorrt=None))
    return out


@pytest.fixture(scope="session")
def gpu_replay(gpu_fp32_bundle) -> Replay:
    from omni_edge.calibration.record import replay

    return replay(gpu_fp32_bundle, synthetic_calibration_set())


@pytest.fixture(scope="session")
def int8_orin(gpu_fp32_bundle, gpu_replay, tmp_path_factory) -> Reduced:
    """Both decoders at int8 on a TensorRT target (Q/DQ, SmoothQuant tried); the rest fp32 to keep it short."""
    rest = ",".join(f"{c}=fp32" for c in ("audio_encoder", "vision_encoder", "dit", "bigvgan"))
    precision = f"thinker=int8,talker=int8,{rest}"
    out = tmp_path_factory.mktemp("orin-int8") / "bundle"
    return _reduce(gpu_fp32_bundle, out, "jetson-orin", gpu_replay, precision)


@pytest.fixture(scope="session")
def rtx_auto(gpu_fp32_bundle, gpu_replay, tmp_path_factory) -> Reduced:
    """rtx-ada's defaults: Thinker int4-awq, Talker and encoders fp8, DiT and BigVGAN fp16."""
    return _reduce(gpu_fp32_bundle, tmp_path_factory.mktemp("rtx") / "bundle", "rtx-ada", gpu_replay)


def _weight_matmuls(path: Path) -> int:
    """MatMuls and Gemms with a 2-D constant weight: what weight-only quantization must turn into MatMulNBits."""
    graph = _graph(path)
    dims = {t.name: len(t.dims) for t in graph.initializer}
    return sum(n.op_type in ("MatMul", "Gemm") and dims.get(n.input[1]) == 2 for n in graph.node)


def _nbits(path: Path) -> list[int]:
    import onnx

    return [
        onnx.helper.get_attribute_value(a)
        for n in _graph(path).node
        if n.op_type == "MatMulNBits"
        for a in n.attribute
        if a.name == "bits"
    ]


def _producer_op(path: Path, output: str) -> str:
    graph = _graph(path)
    return next(n.op_type for n in graph.node if output in n.output)


def test_the_replay_in_passes_answers_like_one_streaming_session(cpu_bundle, fp32_replay):
    """The replay runs encoders, Thinker and Talker in separate passes (so a full-size bundle fits); its answers
    must be what one Session streaming text and speech together gives, token for token."""
    from omni_edge.calibration.record import CODEC_TOKENS, REPLY_TOKENS, answer
    from omni_edge.runtime.session import Session

    calib = synthetic_calibration_set()
    session = Session(cpu_bundle, verify=False)
    for sample, reference in zip(calib.samples, fp32_replay.reference, strict=True):
        streamed = answer(session, sample, REPLY_TOKENS, CODEC_TOKENS)
        assert streamed.text_token_ids == reference.text_token_ids
        assert streamed.codec_token_ids == reference.codec_token_ids
    assert any(r.codec_token_ids for r in fp32_replay.reference)  # the Talker pass ran
    assert {naming.AUDIO_ENCODER, naming.VISION_ENCODER, naming.THINKER_DECODER} <= set(fp32_replay.feeds)
    assert {naming.TALKER_DECODER, naming.DIT_WINDOW, naming.BIGVGAN_WINDOW} <= set(fp32_replay.feeds)


def test_the_thinker_pass_is_released_before_the_talker_pass_opens(cpu_bundle, monkeypatch):
    """The passes exist so that a full-size Thinker and the speech graphs are never held together."""
    import gc

    from omni_edge.calibration.record import replay
    from omni_edge.runtime import speech
    from omni_edge.runtime.session import Session

    # Sessions the cycle collector has not freed yet are still in gc.get_objects(), weights and all.
    others = {id(o) for o in gc.get_objects() if isinstance(o, Session)}  # other tests' sessions
    live: list[int] = []
    opened = speech.SpeechPipeline.__init__

    def counting(self, *args, **kwargs):
        live.append(sum(isinstance(o, Session) and id(o) not in others for o in gc.get_objects()))
        opened(self, *args, **kwargs)

    monkeypatch.setattr(speech.SpeechPipeline, "__init__", counting)
    calib = synthetic_calibration_set()
    replay(cpu_bundle, replace(calib, samples=calib.samples[:1]))
    assert live == [0]


def test_cpu_int8_is_weight_only_matmulnbits_with_the_same_io(int8_cpu, cpu_bundle):
    for name, record in int8_cpu.manifest.components.items():
        assert record.precision == "int8"
        ops = _ops(int8_cpu.out / record.file)
        if name == naming.BIGVGAN_WINDOW:  # convolutions only: MatMulNBits cannot hold them, Q/DQ instead
            assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "MatMulNBits" not in ops
        else:
            assert "DequantizeLinear" not in ops and "QuantizeLinear" not in ops, name
            weights = _weight_matmuls(cpu_bundle / record.file)
            assert _nbits(int8_cpu.out / record.file) == [8] * weights, name
            assert _weight_matmuls(int8_cpu.out / record.file) == 0, name
        # The runtime feeds a quantized bundle exactly like an fp32 one.
        assert _io_types(int8_cpu.out / record.file) == _io_types(cpu_bundle / record.file), name
    # The heads are quantized on cpu (Target.quantized_heads): most of a decode step's bytes at 3B widths.
    assert _producer_op(int8_cpu.out / "thinker_decoder.onnx", "logits") == "MatMulNBits"
    assert _producer_op(int8_cpu.out / "talker_decoder.onnx", "logits") == "MatMulNBits"
    # The attention stays GroupQueryAttention appending in place (Target.group_query_attention).
    for name in (naming.THINKER_DECODER, naming.TALKER_DECODER):
        assert int8_cpu.manifest.components[name].shared_kv_buffer
        assert _producer_op(int8_cpu.out / f"{name}.onnx", naming.present_key(0)) == "GroupQueryAttention"


def test_cpu_int4_every_weight_matmul_runs_as_matmulnbits_in_ort(int4_cpu, cpu_bundle, tmp_path):
    """The graph ONNX Runtime actually runs (its optimized graph, saved by the session) has no MatMul left with a
    constant weight: every one, lm_head included, is a 4-bit MatMulNBits."""
    import onnx
    import onnxruntime as ort

    name = "thinker_decoder.onnx"
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / name)
    options.log_severity_level = 3
    ort.InferenceSession(str(int4_cpu.out / name), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / name), load_external_data=False)  # names and attributes only
    constants = {t.name for t in optimized.graph.initializer}
    assert not [n.name for n in optimized.graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in constants]
    weights = _weight_matmuls(cpu_bundle / name)
    assert _nbits(tmp_path / name) == [4] * weights and weights == 2 * 7 + 1  # 2 layers x 7, and the head
    assert _producer_op(tmp_path / name, "logits") == "MatMulNBits"
    assert int4_cpu.precisions[naming.TALKER_DECODER] == "fp32"  # asked for: copied as it was


def test_cpu_int4_accuracy_report(int4_cpu):
    graph = int4_cpu.report.graphs[naming.THINKER_DECODER]
    assert set(int4_cpu.report.graphs) == {naming.THINKER_DECODER}
    assert graph.precision == "int4-awq" and "AWQ clipping of 15" in graph.method and "head" in graph.method
    assert COSINE_FLOOR["int4-awq"] <= graph.cosine < 1.0 and 0 < graph.relative_error < 0.5
    e2e = int4_cpu.report.end_to_end
    assert e2e.requests == len(synthetic_calibration_set().samples) and 0 <= e2e.text_token_agreement <= 1


def test_gpu_int8_decoders_are_qdq_with_the_head_unquantized(int8_orin):
    for name in (naming.THINKER_DECODER, naming.TALKER_DECODER):
        path = int8_orin.out / f"{name}.onnx"
        assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(path) and "MatMulNBits" not in _ops(path), name
        graph = _graph(path)
        producer = {out: n for n in graph.node for out in n.output}
        head = producer["logits"]
        while head.op_type == "Cast":  # fp16 graph, fp32 output
            head = producer[head.input[0]]
        assert head.op_type == "MatMul", name
        assert not any(i in producer and producer[i].op_type == "DequantizeLinear" for i in head.input), name


def test_fp32_reference_graphs_are_left_untouched(int8_cpu, cpu_bundle):
    # ModelOpt rewrites the file it is given; the stage hands it a copy, so the FP32 bundle stays verifiable.
    load_manifest(cpu_bundle, verify_files=True)


def test_int8_accuracy_report_per_graph_and_end_to_end(int8_cpu):
    report = int8_cpu.report
    assert set(report.graphs) == set(int8_cpu.manifest.components)
    for name, graph in report.graphs.items():
        assert graph.precision == "int8"
        assert graph.feeds >= 1 and graph.outputs >= 1
        # weight-only 8-bit (every graph but BigVGAN on cpu) measured cosine 0.9994 to 0.9999
        floor = BIGVGAN_INT8_FLOOR if name == naming.BIGVGAN_WINDOW else WEIGHT_ONLY_INT8_FLOOR
        assert floor <= graph.cosine <= 1.0 + 1e-9, (name, graph)
        assert 0 < graph.relative_error < 0.5, (name, graph)  # quantization changed something, not everything
    # The calibration replay reached every graph, the encoders through the synthetic audio and images.
    assert set(report.calibration.feeds) == set(int8_cpu.manifest.components)
    assert report.calibration.requests["audio"] == 2 and report.calibration.requests["image"] == 2
    e2e = report.end_to_end
    assert e2e.requests == len(synthetic_calibration_set().samples)
    assert 0 <= e2e.text_token_agreement <= 1 and 0 <= e2e.text_exact_match <= 1
    assert e2e.codec_token_agreement is not None and 0 <= e2e.codec_token_agreement <= 1
    assert e2e.waveform_relative_error is not None and 0 < e2e.waveform_relative_error < 1
    assert math.isfinite(e2e.waveform_snr_db)


def test_smoothquant_is_tried_on_qdq_int8_decoders_only(int8_orin, int8_cpu):
    for name in (naming.THINKER_DECODER, naming.TALKER_DECODER):
        assert "SmoothQuant" in int8_orin.report.graphs[name].method, name  # kept, or tried and reported
        # weight-only int8 leaves the activations in fp32: nothing to smooth
        assert "SmoothQuant" not in int8_cpu.report.graphs[name].method, name
    assert "SmoothQuant" not in int8_cpu.report.graphs[naming.BIGVGAN_WINDOW].method


def test_reduced_bundle_runs_in_the_runtime(int8_cpu):
    from omni_edge.runtime.sampling import SamplingConfig
    from omni_edge.runtime.session import Done, Session

    session = Session(int8_cpu.out, threads=1, verify=False)
    events = list(session.generate("Hello, who are you?", 8, SamplingConfig(greedy=True)))
    result = events[-1].result
    assert isinstance(events[-1], Done) and 1 <= len(result.text_token_ids) <= 8


def test_rtx_defaults_per_component(rtx_auto):
    p = rtx_auto.precisions
    assert p[naming.THINKER_DECODER] == "int4-awq"
    assert p[naming.TALKER_DECODER] == p[naming.AUDIO_ENCODER] == p[naming.VISION_ENCODER] == "fp8"
    assert p[naming.DIT_WINDOW] == p[naming.BIGVGAN_WINDOW] == "fp16"
    for name, graph in rtx_auto.report.graphs.items():
        assert graph.precision == p[name]
        assert graph.cosine >= COSINE_FLOOR[graph.precision], (name, graph)


def test_rtx_graph_contents(rtx_auto):
    import onnx

    thinker = _graph(rtx_auto.out / "thinker_decoder.onnx")
    # int4 weights: blockwise DequantizeLinear of INT4 initializers; the lm_head stays unquantized
    int4 = [t for t in thinker.initializer if t.data_type == onnx.TensorProto.INT4]
    assert int4
    producer = {out: n for n in thinker.node for out in n.output}
    head = producer["logits"]
    while head.op_type == "Cast":  # fp16 graph, fp32 output
        head = producer[head.input[0]]
    assert head.op_type == "MatMul"
    assert not any(i in producer and producer[i].op_type == "DequantizeLinear" for i in head.input)
    fp8 = _graph(rtx_auto.out / "talker_decoder.onnx")
    assert any(t.data_type == onnx.TensorProto.FLOAT8E4M3FN for t in fp8.initializer)
    dit = _graph(rtx_auto.out / "dit_window.onnx")
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in dit.initializer)
    assert dit.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # I/O kept fp32


def test_fp8_is_measured_with_ort_optimizations_disabled(rtx_auto, gpu_fp32_bundle, gpu_replay):
    """The report's fp8 numbers must come from unfused execution (ORT's fusions mis-handle FP8 Q/DQ)."""
    from omni_edge.calibration.accuracy import compare_graphs, ort_session

    name = naming.AUDIO_ENCODER
    feed = gpu_replay.feeds[name][0]
    reported = compare_graphs(gpu_fp32_bundle / f"{name}.onnx", rtx_auto.out / f"{name}.onnx", [feed], "fp8")
    unfused = ort_session(rtx_auto.out / f"{name}.onnx", disable_optimizations=True).run(None, feed)[0]
    expected = ort_session(gpu_fp32_bundle / f"{name}.onnx", disable_optimizations=False).run(None, feed)[0]
    rel = float(np.linalg.norm(unfused - expected) / np.linalg.norm(expected))
    assert reported.relative_error == pytest.approx(rel, rel=1e-4, abs=1e-6)


def test_fp16_keeps_rotary_angles_in_fp32_for_long_contexts(gpu_fp32_bundle, tmp_path):
    """Positions above 2048 are not representable in fp16; an fp16 angle chain put 4.4% error on the keys at
    positions 3000+ (measured), the fp32 chain 0.04%."""
    from omni_edge.calibration.accuracy import ort_session
    from omni_edge.calibration.quantize import to_fp16

    name = f"{naming.THINKER_DECODER}.onnx"
    to_fp16(gpu_fp32_bundle / name, tmp_path / name)
    from omni_edge.bench.inputs import decoder_feeds

    manifest = load_manifest(gpu_fp32_bundle, verify_files=False)
    rows = np.random.default_rng(0).standard_normal((8, manifest.thinker.hidden_size)) * 0.02
    feed = decoder_feeds(rows, manifest.kv_cache, past=0)  # a prefill...
    feed["position_ids"] = np.tile(np.arange(3000, 3008), (3, 1, 1)).astype(np.int64)  # ...at positions 3000+
    expected = ort_session(gpu_fp32_bundle / name, False).run(["present.0.key"], feed)[0]
    got = ort_session(tmp_path / name, False).run(["present.0.key"], feed)[0]
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 2e-3


def test_rtx_engines_build_from_the_qdq_graphs(rtx_auto):
    """TensorRT-RTX parses and builds int4/fp8/fp16 graphs as strongly typed networks (on the CPU machine)."""
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed (pip install 'omni-edge[trt]')")
    from omni_edge.export.engine_build import build_engines

    records, info = build_engines(rtx_auto.out, rtx_auto.manifest.components, get_target("rtx-ada"))
    for name, record in records.items():
        assert (rtx_auto.out / record.engine_file).stat().st_size > 0, name
    assert info.flavour == "tensorrt-rtx" and info.compute_capability == "8.9"


# ----------------------------------------------------------------------------------------------- the CLI


def _cli(*args, cache_dir):
    return cli(*args, cache_dir=cache_dir, timeout=1200)


def test_cli_int8_export_prints_and_records_accuracy(tiny_checkpoint, cache_dir, tmp_path):
    out = tmp_path / "int8"
    proc = _cli(
        "omni-export",
        "--model",
        "tiny",
        "--target",
        "cpu",
        "--precision",
        "int8",
        "--calib",
        "synthetic",
        "--components",
        "thinker",
        "--max-seq-len",
        "256",
        "--out",
        str(out),
        cache_dir=cache_dir,
    )
    assert proc.returncode == 0, proc.stderr
    assert "accuracy vs the unreduced graphs" in proc.stderr and "thinker_decoder" in proc.stderr
    assert "text tokens agree" in proc.stderr
    manifest = load_manifest(out)  # hashes of the quantized graphs match
    assert {r.precision for r in manifest.components.values()} == {"int8"}
    assert manifest.quantization.calibration.source == "synthetic"
    assert set(manifest.quantization.graphs) == {naming.THINKER_DECODER}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging or fp32 twin left

    run = _cli(
        "omni-run", str(out), "--prompt", "Hello", "--greedy", "--max-new-tokens", "6", "--json", cache_dir=cache_dir
    )
    assert run.returncode == 0, run.stderr


def test_cli_calibration_from_a_directory_of_user_media(tiny_checkpoint, cache_dir, tmp_path):
    import soundfile as sf
    from PIL import Image

    from omni_edge.calibration.calib_set import load_calibration_set, synthetic_image, synthetic_speechlike

    media = tmp_path / "media"
    media.mkdir()
    rng = np.random.default_rng(3)
    sf.write(media / "a.wav", synthetic_speechlike(rng, 1.5, 44100), 44100)  # resampled by the front end
    Image.fromarray(synthetic_image(rng, 64, 96)).save(media / "b.png")
    (media / "prompts.txt").write_text("What time is it?\n\nTell me a joke.\n")
    (media / "notes.md").write_text("ignored")
    calib = load_calibration_set(media)
    assert calib.counts() == {"text": 2, "audio": 1, "image": 1, "video": 0}
    assert calib.samples[0].prompt == "What time is it?"

    out = tmp_path / "bundle"
    proc = _cli(
        "omni-export",
        "--model",
        "tiny",
        "--target",
        "cpu",
        "--precision",
        "thinker=int8",
        "--calib",
        str(media),
        "--components",
        "thinker,audio_encoder",
        "--max-seq-len",
        "256",
        "--out",
        str(out),
        cache_dir=cache_dir,
    )
    assert proc.returncode == 0, proc.stderr
    manifest = load_manifest(out)
    assert manifest.components[naming.AUDIO_ENCODER].precision == "int8"  # cpu default for the encoder
    assert manifest.quantization.calibration.requests == {"text": 2, "audio": 1, "image": 1, "video": 0}
    assert manifest.quantization.calibration.feeds[naming.AUDIO_ENCODER] == 1


def test_bad_calibration_input_fails_before_export(tmp_path, cache_dir):
    def export(*args):
        return _cli(
            "omni-export",
            "--model",
            "tiny",
            "--target",
            "cpu",
            "--out",
            str(tmp_path / "b"),
            *args,
            cache_dir=cache_dir,
        )

    assert_one_line_error(export("--precision", "int8"), "needs calibration data", "--calib synthetic")
    assert_one_line_error(export("--precision", "int8", "--calib", str(tmp_path / "none")), "no such directory")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.md").write_text("nothing usable")
    assert_one_line_error(
        export("--precision", "int8", "--calib", str(tmp_path / "empty")), "no usable calibration files"
    )
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "clip.wav").write_bytes(b"RIFF not really a wav")
    assert_one_line_error(export("--precision", "int8", "--calib", str(tmp_path / "broken")), "clip.wav")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "p.txt").write_text("Hello there\n")
    assert_one_line_error(
        export("--precision", "int8", "--calib", str(tmp_path / "text")),
        "no audio files",
        "audio_encoder (int8) cannot have its accuracy measured",  # weight-only int8 needs no calibration
    )
    assert_one_line_error(export("--plugins", "on"), "--plugins on is not possible for target cpu")
    assert not (tmp_path / "b").exists()


def test_orin_bundle_without_engines_carries_plugins_and_int4(tiny_checkpoint, cache_dir, tmp_path):
    """A Jetson bundle made on this machine: Orin's defaults, TMRoPE plugin nodes (opted in), engines left to the
    device."""
    import onnx

    out = tmp_path / "orin"
    proc = _cli(
        "omni-export",
        "--model",
        "tiny",
        "--target",
        "jetson-orin",
        "--calib",
        "synthetic",
        "--plugins",
        "on",
        "--components",
        "thinker",
        "--no-engines",
        "--max-seq-len",
        "256",
        "--out",
        str(out),
        cache_dir=cache_dir,
    )
    assert proc.returncode == 0, proc.stderr
    assert "omni-build-engines" in proc.stderr
    manifest = load_manifest(out)
    assert manifest.backend == "tensorrt" and manifest.tensorrt is None
    assert {r.precision for r in manifest.components.values()} == {"int4-awq"}
    assert manifest.plugins.enabled and set(manifest.plugins.graphs) == {naming.THINKER_DECODER}
    for name, rewrite in manifest.plugins.graphs.items():
        assert rewrite["replaced"] == manifest.kv_cache.num_layers and rewrite["left_plain"] == 0
        ops = [n.op_type for n in onnx.load(str(out / f"{name}.onnx"), load_external_data=False).graph.node]
        assert ops.count("OmniEdgeTMRoPE") == manifest.kv_cache.num_layers and "Cos" not in ops
    # accuracy was measured on the plain-op graphs, before the plugin swap
    assert manifest.quantization.graphs[naming.THINKER_DECODER].precision == "int4-awq"

    run = _cli("omni-run", str(out), "--prompt", "Hello", cache_dir=cache_dir)
    assert_one_line_error(run, "no TensorRT engines yet", f"omni-build-engines {out}")
    before = (out / "manifest.json").read_bytes()
    build = _cli("omni-build-engines", str(out), cache_dir=cache_dir)
    assert_one_line_error(build, "jetson-orin")  # no full TensorRT / Orin GPU here: refused up front
    assert (out / "manifest.json").read_bytes() == before and not list(out.glob("*.engine"))
