"""The export's plugin stage: which targets get OmniEdgeTMRoPE nodes, and the in-place rewrite of the decoder
graphs of a real exported bundle, fp32 and ModelOpt-quantized. Runs on CPU; the plugin node is evaluated by
onnx's reference evaluator with the numpy reference, as in test_kernels_rewrite.py.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from omni_edge import naming
from omni_edge.bench.inputs import decoder_feeds
from omni_edge.bundle import KVCacheGeometry
from omni_edge.errors import TargetError
from omni_edge.kernels.errors import KernelError
from omni_edge.targets import TARGETS

pytest.importorskip("onnx_graphsurgeon", reason="onnx-graphsurgeon is not installed (pip install 'omni-edge[trt]')")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from helpers import tmrope_plugin_op  # noqa: E402

from omni_edge.export.plugin_stage import PluginChoice, apply_plugins, decide_plugins, tmrope_attrs_for  # noqa: E402
from omni_edge.kernels.graph_rewrite import PLUGIN_DOMAIN, TmropeAttrs  # noqa: E402
from omni_edge.kernels.plugins import TMROPE_PLUGIN  # noqa: E402

FULL_TENSORRT = {"jetson-orin", "jetson-orin-nano", "jetson-thor", "hopper"}
DECODERS = (naming.THINKER_DECODER, naming.TALKER_DECODER)


# ------------------------------------------------------------------------------------------------ decision


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_auto_keeps_plain_ops_until_the_kernels_are_measured(name):
    from omni_edge.export.plugin_stage import AUTO_USES_PLUGINS

    enabled, reason = decide_plugins(TARGETS[name], "auto")
    assert enabled is (name in FULL_TENSORRT and AUTO_USES_PLUGINS), reason
    assert reason


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_on_is_refused_where_plugins_cannot_load(name):
    if name in FULL_TENSORRT:
        assert decide_plugins(TARGETS[name], "on")[0] is True
        return
    with pytest.raises(TargetError) as info:
        decide_plugins(TARGETS[name], "on")
    message = str(info.value)
    assert name in message and "cannot load" in message
    assert "--plugins auto" in message and "--plugins off" in message


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_off_always_keeps_plain_ops(name):
    assert decide_plugins(TARGETS[name], "off") == (False, "--plugins off: plain ONNX ops")


def test_unknown_mode_is_refused():
    with pytest.raises(TargetError, match="auto, on, off"):
        decide_plugins(TARGETS["hopper"], "yes")


# ------------------------------------------------------------------------------------------------ rewrite


def _num_layers(bundle: Path) -> dict[str, int]:
    manifest = json.loads((bundle / naming.MANIFEST_FILE).read_text())
    thinker, talker = manifest["kv_cache"]["num_layers"], manifest["talker"]["kv_cache"]["num_layers"]
    return {naming.THINKER_DECODER: thinker, naming.TALKER_DECODER: talker}


def _copy_graphs(bundle: Path, out: Path, names=DECODERS) -> dict[str, str]:
    """The fixture's bundle is shared by the whole session: rewrite copies, never the original."""
    for name in names:
        for path in bundle.glob(f"{name}.onnx*"):
            shutil.copyfile(path, out / path.name)
    return {name: f"{name}.onnx" for name in names}


def _ops(path: Path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


def test_attrs_come_from_each_decoders_config(hf_model):
    from omni_edge.export.tiny import tiny_config_dict

    config = tiny_config_dict()
    attrs = tmrope_attrs_for(hf_model)
    assert set(attrs) == set(DECODERS)
    thinker = TmropeAttrs.from_text_config(config["thinker_config"]["text_config"])
    talker = TmropeAttrs.from_text_config(config["talker_config"])
    assert attrs[naming.THINKER_DECODER] == thinker
    assert attrs[naming.TALKER_DECODER] == talker


def test_every_decoder_graph_gets_one_plugin_per_layer(cpu_bundle, hf_model, tmp_path):
    graphs = _copy_graphs(cpu_bundle, tmp_path)
    graphs[naming.AUDIO_ENCODER] = "audio_encoder.onnx"  # not a decoder: must be left alone, even if missing
    choice = apply_plugins(tmp_path, graphs, tmrope_attrs_for(hf_model), True, "test")
    assert isinstance(choice, PluginChoice) and choice.enabled and choice.reason == "test"
    assert set(choice.graphs) == set(DECODERS)
    json.dumps(choice.to_manifest())  # it goes into manifest.json as is
    for name, layers in _num_layers(cpu_bundle).items():
        report = choice.graphs[name]
        assert (report["replaced"], report["left_plain"]) == (layers, 0), name
        assert report["plugin"] == TMROPE_PLUGIN and report["domain"] == PLUGIN_DOMAIN
        path = tmp_path / graphs[name]
        ops = _ops(path)
        assert ops[TMROPE_PLUGIN] == layers
        assert ops["Cos"] == ops["Sin"] == 0  # no rotary angles are computed in plain ops any more
        # The weights stay in <file>.data beside the graph, as the exporter wrote them.
        assert (tmp_path / f"{graphs[name]}.data").stat().st_size > 0
        onnx.checker.check_model(str(path), full_check=True)


def test_rewritten_files_compute_what_the_plain_graph_did(cpu_bundle, standard_thinker_decoder, hf_model, tmp_path):
    """Round trip through disk, external data included: thinker_decoder with a past, plugin vs plain ops. The
    standard-op graph, the TensorRT targets' (onnx's reference evaluator has no GroupQueryAttention)."""
    from onnx.reference import ReferenceEvaluator

    name = naming.THINKER_DECODER
    graphs = _copy_graphs(standard_thinker_decoder.parent, tmp_path, [name])
    apply_plugins(tmp_path, graphs, tmrope_attrs_for(hf_model), True, "test")
    layers = _num_layers(cpu_bundle)[name]
    manifest = json.loads((cpu_bundle / naming.MANIFEST_FILE).read_text())
    kv, hidden = manifest["kv_cache"], manifest["thinker"]["hidden_size"]
    rng = np.random.default_rng(3)
    seq, past = 3, 7
    feeds = {
        "inputs_embeds": rng.standard_normal((1, seq, hidden), dtype=np.float32),
        "position_ids": np.tile(np.arange(past, past + seq), (3, 1, 1)),
        "attention_mask": np.ones((1, past + seq), np.int64),
    }
    for cache_name in naming.past_names(layers):
        feeds[cache_name] = rng.standard_normal((1, kv["num_kv_heads"], past, kv["head_dim"]), dtype=np.float32)
    outputs = ["last_hidden_state", *naming.present_names(layers)]
    plain = ort.InferenceSession(str(standard_thinker_decoder), providers=["CPUExecutionProvider"])
    fused = ReferenceEvaluator(onnx.load(str(tmp_path / graphs[name])), new_ops=[tmrope_plugin_op()])
    for a, b in zip(fused.run(outputs, feeds), plain.run(outputs, feeds)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_disabled_leaves_every_file_byte_identical(cpu_bundle, hf_model, tmp_path):
    graphs = _copy_graphs(cpu_bundle, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    choice = apply_plugins(tmp_path, graphs, tmrope_attrs_for(hf_model), False, "--plugins off: plain ONNX ops")
    assert choice == PluginChoice(False, "--plugins off: plain ONNX ops", {})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_graph_without_rotary_is_an_error_not_a_plain_graph_labelled_plugin(hf_model, tmp_path):
    from omni_edge.kernels.plain_graphs import stitch_graph

    onnx.save(stitch_graph(48, 72), str(tmp_path / "thinker_decoder.onnx"))
    before = (tmp_path / "thinker_decoder.onnx").read_bytes()
    with pytest.raises(KernelError, match="rotary pattern was not found"):
        apply_plugins(
            tmp_path, {naming.THINKER_DECODER: "thinker_decoder.onnx"}, tmrope_attrs_for(hf_model), True, "test"
        )
    assert (tmp_path / "thinker_decoder.onnx").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thinker_decoder.onnx"]  # no scratch left behind


# ------------------------------------------------------------------------------------------------ quantized


class _Calibration:
    """ModelOpt's calibration reader: ONNX Runtime's get_next, plus get_first and rewind."""

    def __init__(self, geo, hidden: int, lengths=(5, 8, 12)):
        rng = np.random.default_rng(0)
        self.feeds = [decoder_feeds(rng.standard_normal((s, hidden)), geo, past=0) for s in lengths]  # prefills
        self.index = 0

    def get_next(self):
        if self.index >= len(self.feeds):
            return None
        self.index += 1
        return self.feeds[self.index - 1]

    def get_first(self):
        return self.feeds[0]

    def rewind(self):
        self.index = 0


def _dq_fed_matmuls(model) -> set[str]:
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name for n in model.graph.node if n.op_type == "MatMul" and any(i in dq_outputs for i in n.input)}


@pytest.mark.slow
def test_int8_quantized_thinker_prefill_is_rewritten_too(cpu_bundle, hf_model, tmp_path):
    """ModelOpt's int8 PTQ puts Q/DQ pairs on every input of the rotation's Mul and Add ops; the matcher looks
    through them, and the attention MatMuls keep their own Q/DQ."""
    mq = pytest.importorskip(
        "modelopt.onnx.quantization", reason="nvidia-modelopt is not installed (pip install 'omni-edge[quant]')"
    )
    source = tmp_path / "fp32"
    source.mkdir()
    _copy_graphs(cpu_bundle, source, [naming.THINKER_DECODER])  # ModelOpt rewrites its input file too
    manifest = json.loads((cpu_bundle / naming.MANIFEST_FILE).read_text())
    quantized = tmp_path / "thinker_decoder.onnx"
    mq.quantize(
        str(source / "thinker_decoder.onnx"),
        quantize_mode="int8",
        calibration_data_reader=_Calibration(
            KVCacheGeometry(**manifest["kv_cache"]), manifest["thinker"]["hidden_size"]
        ),
        calibration_eps=["cpu"],
        output_path=str(quantized),
        high_precision_dtype="fp32",
        log_level="WARNING",
    )
    before = onnx.load(str(quantized), load_external_data=False)
    assert Counter(n.op_type for n in before.graph.node)["QuantizeLinear"] > 0

    choice = apply_plugins(tmp_path, {naming.THINKER_DECODER: quantized.name}, tmrope_attrs_for(hf_model), True, "test")
    layers = _num_layers(cpu_bundle)[naming.THINKER_DECODER]
    report = choice.graphs[naming.THINKER_DECODER]
    assert (report["replaced"], report["left_plain"]) == (layers, 0)
    after = onnx.load(str(quantized))
    ops = Counter(n.op_type for n in after.graph.node)
    assert ops[TMROPE_PLUGIN] == layers and ops["Cos"] == ops["Sin"] == 0
    assert ops["QuantizeLinear"] > 0 and _dq_fed_matmuls(after) == _dq_fed_matmuls(before)
    producers = {o: n for n in after.graph.node for o in n.output}
    for node in (n for n in after.graph.node if n.op_type == TMROPE_PLUGIN):
        # The rotation's own Q/DQ went with the ops they quantized: the plugin rotates unquantized q and k.
        assert all(producers[i].op_type != "DequantizeLinear" for i in node.input[:2])
    onnx.checker.check_model(str(quantized), full_check=True)
