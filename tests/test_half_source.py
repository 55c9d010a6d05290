"""A GPU target's Thinker headed for fp16 or int4-awq is exported straight in fp16 (export/half_source.py): a 7B
Thinker is 28 GB in fp32. Stated tolerances on the tiny model: the fp16 graph within HALF_ATOL of PyTorch in fp16
at export (measured 4.2e-3), its logits within FP16_LOGITS_ATOL of the fp32 graph's over a prefill and 16 greedy
steps, and the same greedy tokens as transformers in fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import hf_greedy

from omni_edge import naming
from omni_edge.bundle import load_manifest
from omni_edge.export.half_source import HALF_ATOL
from omni_edge.precision_plan import source_precision
from omni_edge.targets import get_target

FP16_LOGITS_ATOL = 5e-2  # measured 1.7e-2
# The tiny Thinker alone at int4-awq against its unreduced graph: 0.783 from the fp16 export, 0.787 from fp32.
INT4_THINKER_COSINE = 0.75


def _export(checkpoint: Path, out: Path, precision: str, calib: str | None = None, engines: bool = False) -> Path:
    from omni_edge.export.pipeline import ExportRequest, _no_progress, export_bundle

    request = ExportRequest(
        str(checkpoint),
        "rtx-ada",
        out,
        precision=precision,
        components=("thinker",),
        max_seq_len=256,
        calib=calib,
        engines=engines,
    )
    return export_bundle(request, _no_progress)


@pytest.fixture(scope="module")
def fp16_thinker(tiny_checkpoint, tmp_path_factory) -> Path:
    return _export(tiny_checkpoint, tmp_path_factory.mktemp("half") / "bundle", "thinker=fp16")


def _graph(path: Path):
    import onnx

    return onnx.load(str(path), load_external_data=False).graph


def test_the_source_precision_per_component_and_target():
    rtx, cpu = get_target("rtx-ada"), get_target("cpu")
    assert source_precision("thinker", "fp16", rtx) == source_precision("thinker", "int4-awq", rtx) == "fp16"
    # ModelOpt's activation Q/DQ calibrates fp32 graphs; an fp32 request is exported in fp32; cpu runs fp32.
    assert source_precision("thinker", "fp8", rtx) == source_precision("thinker", "fp32", rtx) == "fp32"
    assert source_precision("thinker", "int4-awq", cpu) == "fp32"
    assert source_precision("talker", "fp16", rtx) == "fp32"  # 0.7 B at 7B: its fp32 export fits


def test_an_fp16_thinker_has_fp16_weights_and_fp32_io(fp16_thinker):
    import onnx

    manifest = load_manifest(fp16_thinker)
    record = manifest.components[naming.THINKER_DECODER]
    assert record.precision == "fp16" and record.atol == HALF_ATOL
    assert 0 < record.measured_max_abs_error <= HALF_ATOL
    assert manifest.quantization is None  # exported at its precision: nothing was reduced
    dtypes = {t.name: t.dtype for t in [*record.inputs, *record.outputs]}
    assert dtypes["inputs_embeds"] == dtypes["logits"] == dtypes["last_hidden_state"] == "float"
    assert dtypes[naming.past_key(0)] == dtypes[naming.present_value(0)] == "float16"
    graph = _graph(fp16_thinker / record.file)
    weights = {n.input[1] for n in graph.node if n.op_type == "MatMul"}
    assert {t.data_type for t in graph.initializer if t.name in weights} == {onnx.TensorProto.FLOAT16}


def test_the_fp16_thinker_answers_like_the_fp32_one_and_transformers(fp16_thinker, cpu_bundle, hf_model):
    """Teacher-forced on transformers' greedy tokens (fp32): the fp16 graph's logits stay within FP16_LOGITS_ATOL of
    the fp32 graph's, and pick the same token wherever the fp32 logits' top two are further apart than twice that
    (random weights give nearly flat logits: closer margins are fp16 rounding's to flip on another CPU)."""
    from safetensors.numpy import load_file

    from omni_edge.runtime.engine import OrtEngine
    from omni_edge.runtime.kv_cache import KVCache
    from omni_edge.runtime.positions import text_positions

    prompt = [151644, 82, 88, 82, 83, 68, 76, 198, 332, 307, 257]
    tokens = hf_greedy(hf_model, prompt, 17)

    def forced(bundle: Path) -> np.ndarray:
        manifest = load_manifest(bundle)
        table = load_file(str(bundle / manifest.thinker.embedding_file))["weight"]
        decoder = OrtEngine("thinker", bundle / manifest.components[naming.THINKER_DECODER].file)
        cache, logits = KVCache(manifest.kv_cache), []
        for ids in [prompt, *([t] for t in tokens[:-1])]:
            feeds = {"inputs_embeds": table[ids][None], "position_ids": text_positions(cache.length, len(ids))}
            logits.append(cache.run(decoder, feeds)["logits"][0, -1])
        return np.stack(logits)

    want, got = forced(cpu_bundle), forced(fp16_thinker)
    assert list(np.argmax(want, axis=-1)) == tokens  # the fp32 graph is transformers' greedy path
    np.testing.assert_allclose(got, want, atol=FP16_LOGITS_ATOL)
    top2 = np.sort(want, axis=-1)[:, -2:]
    decisive = top2[:, 1] - top2[:, 0] > 2 * FP16_LOGITS_ATOL
    assert decisive.sum() >= len(tokens) // 2
    assert (np.argmax(got, axis=-1) == tokens)[decisive].all()


def test_int4_awq_from_the_fp16_export_reads_its_weights_and_builds(tiny_checkpoint, tmp_path):
    """rtx-ada's default Thinker: int4 weights with fp16 scales, the head and the rest left in the fp16 graph's
    precision (no second cast), calibrated and measured on the fp16 graph; TensorRT-RTX builds it."""
    import importlib.util

    import onnx

    engines = importlib.util.find_spec("tensorrt_rtx") is not None
    bundle = _export(tiny_checkpoint, tmp_path / "int4", "auto", calib="synthetic", engines=engines)
    manifest = load_manifest(bundle)
    graph = _graph(bundle / manifest.components[naming.THINKER_DECODER].file)
    types = {t.name: t.data_type for t in graph.initializer}
    dq = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    assert dq and {types[n.input[0]] for n in dq} == {onnx.TensorProto.INT4}
    assert {types[n.input[1]] for n in dq} == {onnx.TensorProto.FLOAT16}
    matmul_weights = {types[n.input[1]] for n in graph.node if n.op_type == "MatMul" and n.input[1] in types}
    assert matmul_weights == {onnx.TensorProto.FLOAT16}  # the lm_head, kept
    accuracy = manifest.quantization.graphs[naming.THINKER_DECODER]
    assert "1 kept in high precision" in accuracy.method and "exported in fp16" in accuracy.method
    assert INT4_THINKER_COSINE <= accuracy.cosine < 1.0
    if engines:
        assert (bundle / manifest.components[naming.THINKER_DECODER].engine_file).stat().st_size > 0


def test_the_export_plan_prices_the_thinker_as_exported(tiny_checkpoint):
    from omni_edge.export.export_memory import BASE_BYTES, CHILD_BYTES, EXPORT_OVERHEAD, TRACE_BYTES, plan_export
    from omni_edge.memory_plan import count_parameters, plan_memory
    from omni_edge.precision_plan import component_precisions

    weights = count_parameters(tiny_checkpoint).graphs["thinker"]

    def thinker_stage(target_name: str, precision: str) -> int:
        target = get_target(target_name)
        bundle = plan_memory(
            tiny_checkpoint,
            component_precisions(target, precision),
            256,
            ["thinker"],
            target.high_precision,
            target.kv_dtype,
            target.weight_only,
            target.quantized_heads,
        )
        stages = {s.name: s.peak_bytes for s in plan_export(tiny_checkpoint, ["thinker"], bundle, target).stages}
        return stages["export thinker"] - BASE_BYTES - CHILD_BYTES

    def exported(bytes_per_weight: int) -> int:
        size = weights * bytes_per_weight
        return min(size, TRACE_BYTES) + int(size * (1 + EXPORT_OVERHEAD))

    assert thinker_stage("rtx-ada", "auto") == exported(2)  # int4-awq from fp16
    assert thinker_stage("jetson-orin", "thinker=fp16") == exported(2)
    assert thinker_stage("rtx-ada", "thinker=fp8") == exported(4)
    assert thinker_stage("cpu", "int4-awq") == exported(4)
