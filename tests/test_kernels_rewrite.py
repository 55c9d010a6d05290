"""The opt-in ONNX rewrite: rotary subgraphs exported by torch.onnx (dynamo) -> OmniEdgeTMRoPE nodes.

Runs on CPU: the rewritten graph is evaluated with onnx's reference evaluator, the plugin node computed
by the numpy reference, and compared with ONNX Runtime on the untouched plain-op graph.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import tmrope_plugin_op

from omni_edge.kernels.errors import KernelError

pytest.importorskip("onnx_graphsurgeon", reason="onnx-graphsurgeon is not installed (pip install 'omni-edge[trt]')")
torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from omni_edge.kernels.graph_rewrite import PLUGIN_DOMAIN, TmropeAttrs, rewrite_tmrope, supports_plugins  # noqa: E402
from omni_edge.kernels.plugins import TMROPE_PLUGIN  # noqa: E402


def _text_config() -> dict:
    from omni_edge.export.tiny import tiny_config_dict

    return tiny_config_dict()["thinker_config"]["text_config"]


@pytest.fixture(scope="module")
def rope_onnx(tmp_path_factory):
    """Two 'layers' of transformers' rotary code sharing one cos/sin, exported the way the Thinker is."""
    from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniTextConfig
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniRotaryEmbedding, apply_rotary_pos_emb

    config = Qwen2_5OmniTextConfig(**_text_config())

    class TwoLayers(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rotary = Qwen2_5OmniRotaryEmbedding(config)
            self.mix = torch.nn.Linear(16, 16)

        def forward(self, q, k, position_ids):
            cos, sin = self.rotary(q, position_ids)
            q1, k1 = apply_rotary_pos_emb(q, k, cos, sin)
            # The second layer's q/k depend on the first layer's rotated outputs, as in a decoder.
            q2, k2 = apply_rotary_pos_emb(self.mix(q1), self.mix(k1), cos, sin)
            return q2, k2

    torch.manual_seed(0)
    seq = torch.export.Dim("seq")
    args = (torch.randn(1, 2, 5, 16), torch.randn(1, 1, 5, 16), torch.arange(5).expand(3, 1, 5).clone())
    path = tmp_path_factory.mktemp("rope") / "rope.onnx"
    torch.onnx.export(
        TwoLayers().eval(),
        args,
        str(path),
        dynamo=True,
        input_names=["q", "k", "position_ids"],
        output_names=["q_out", "k_out"],
        dynamic_shapes=({2: seq}, {2: seq}, {2: seq}),
    )
    return onnx.load(str(path))


def _attrs() -> TmropeAttrs:
    return TmropeAttrs.from_text_config(_text_config())


def test_rewrite_replaces_each_rotary_subgraph(rope_onnx):
    rewritten, report = rewrite_tmrope(rope_onnx, _attrs())
    assert report.replaced == 2 and report.left_plain == 0
    plugin_nodes = [n for n in rewritten.graph.node if n.op_type == TMROPE_PLUGIN]
    assert len(plugin_nodes) == 2 and all(n.domain == PLUGIN_DOMAIN for n in plugin_nodes)
    assert not any(n.op_type in ("Cos", "Sin", "Neg") for n in rewritten.graph.node)  # plain ops gone
    assert any(op.domain == PLUGIN_DOMAIN for op in rewritten.opset_import)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in plugin_nodes[0].attribute}
    assert attrs["head_dim"] == 16 and list(attrs["mrope_section"]) == [2, 3, 3]
    assert [o.name for o in rewritten.graph.output] == ["q_out", "k_out"]
    onnx.checker.check_model(rewritten)
    assert report.to_manifest()["replaced"] == 2


def test_rewritten_graph_matches_plain_graph(rope_onnx):
    from onnx.reference import ReferenceEvaluator

    rewritten, _ = rewrite_tmrope(rope_onnx, _attrs())
    rng = np.random.default_rng(0)
    seq = 13
    feeds = {
        "q": rng.standard_normal((1, 2, seq, 16), dtype=np.float32),
        "k": rng.standard_normal((1, 1, seq, 16), dtype=np.float32),
        "position_ids": rng.integers(0, 20000, (3, 1, seq)),
    }
    plain = ort.InferenceSession(rope_onnx.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    fused = ReferenceEvaluator(rewritten, new_ops=[tmrope_plugin_op()]).run(None, feeds)
    for a, b in zip(fused, plain):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=0)


def test_rewrite_is_opt_in_and_leaves_the_input_alone(rope_onnx):
    before = rope_onnx.SerializeToString()
    rewrite_tmrope(rope_onnx, _attrs())
    assert rope_onnx.SerializeToString() == before
    assert not any(n.op_type == TMROPE_PLUGIN for n in rope_onnx.graph.node)


def test_rewrite_refuses_attributes_that_do_not_match_the_graph(rope_onnx):
    attrs = _attrs()
    with pytest.raises(KernelError, match="inv_freq"):
        rewrite_tmrope(rope_onnx, TmropeAttrs(attrs.head_dim, attrs.mrope_section, 1e4))
    with pytest.raises(KernelError, match="mrope_section"):
        rewrite_tmrope(rope_onnx, TmropeAttrs(attrs.head_dim, (3, 2, 3), attrs.theta))


def test_rewrite_leaves_graphs_without_rotary_unchanged():
    from omni_edge.kernels.plain_graphs import stitch_graph

    rewritten, report = rewrite_tmrope(stitch_graph(48, 72), _attrs())
    assert report.replaced == 0
    assert [n.op_type for n in rewritten.graph.node] == ["Slice"]


@pytest.mark.parametrize(
    "target,expected",
    [
        ("cpu", False),
        ("rtx-ada", False),
        ("rtx-blackwell", False),
        ("jetson-orin", True),
        ("jetson-thor", True),
        ("hopper", True),
    ],
)
def test_plugin_path_is_only_offered_where_it_can_run(target, expected):
    from omni_edge.targets import get_target

    ok, why = supports_plugins(get_target(target))
    assert ok is expected, why


def test_rewrite_on_the_exported_thinker_decoder(cpu_bundle, standard_thinker_decoder):
    """The real Thinker graph, with the standard-op attention the TensorRT targets export (onnx's reference
    evaluator has no GroupQueryAttention): every layer's rotary becomes a plugin, outputs unchanged."""
    from onnx.reference import ReferenceEvaluator

    from omni_edge.export.tiny import tiny_config_dict

    model = onnx.load(str(standard_thinker_decoder))
    layers = tiny_config_dict()["thinker_config"]["text_config"]["num_hidden_layers"]
    rewritten, report = rewrite_tmrope(model, _attrs())
    assert (report.replaced, report.left_plain) == (layers, 0)
    from omni_edge.bench.inputs import decoder_feeds
    from omni_edge.bundle import load_manifest

    rng = np.random.default_rng(1)
    seq = 6
    manifest = load_manifest(cpu_bundle, verify_files=False)
    feeds = decoder_feeds(rng.standard_normal((seq, manifest.thinker.hidden_size)), manifest.kv_cache, past=0)
    feeds["position_ids"] = rng.integers(0, 300, (3, 1, seq))  # a prefill at scattered positions
    names = ["last_hidden_state", "present.0.key"]
    plain = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(names, feeds)
    fused = ReferenceEvaluator(rewritten, new_ops=[tmrope_plugin_op()]).run(names, feeds)
    for a, b in zip(fused, plain):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
