"""SmoothQuant graph rewrite: same function, flatter MatMul inputs, only the norm -> MatMul pattern touched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from omni_edge.calibration.smoothquant import (
    SmoothQuantReport,
    activation_channel_max,
    find_groups,
    smooth_model,
)
from omni_edge.errors import InputError

# A pure rescale is exact in real arithmetic; in fp32 each rescaled gamma and weight picks up one rounding
# (~6e-8 relative) that the MatMul sums carry into outputs of magnitude ~5, so 1e-4 / 1e-5 has wide margin
# while still catching a wrong or unshared scale (which shifts outputs by O(1)).
RTOL, ATOL = 1e-4, 1e-5


# -- helpers ---------------------------------------------------------------------------------------


def prefill_feed(bundle: Path, token_ids: np.ndarray) -> dict[str, np.ndarray]:
    """thinker_decoder inputs for real embedding rows, so activations look like the runtime's."""
    from safetensors.numpy import load_file

    from omni_edge.bench.inputs import decoder_feeds
    from omni_edge.bundle import load_manifest

    manifest = load_manifest(bundle, verify_files=False)
    table = load_file(str(bundle / "thinker_embed_tokens.safetensors"))["weight"]
    assert table[token_ids].shape == (len(token_ids), manifest.thinker.hidden_size)
    return decoder_feeds(table[token_ids], manifest.kv_cache, past=0)  # a prefill: the decoder, no past


def run(path: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed)))


def assert_same_outputs(original: Path, smoothed: Path, feeds: list[dict[str, np.ndarray]]) -> None:
    for feed in feeds:
        want, got = run(original, feed), run(smoothed, feed)
        assert want.keys() == got.keys()
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=RTOL, atol=ATOL, err_msg=name)


def save_model(path: Path, nodes, inputs, outputs, initializers) -> Path:
    graph = helper.make_graph(
        nodes,
        "g",
        inputs,
        outputs,
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def x_input(channels: int):
    return helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", channels])


def y_output(name: str = "y"):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, None, None])


def initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def flatness(channel_max: np.ndarray) -> float:
    return float(channel_max.max() / np.median(channel_max))


# -- the real tiny thinker -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoothed_prefill(cpu_bundle, tmp_path_factory):
    rng = np.random.default_rng(0)
    calibration = [prefill_feed(cpu_bundle, rng.integers(0, 150_000, n)) for n in (9, 16, 23)]
    out = tmp_path_factory.mktemp("smoothquant") / "thinker_decoder.onnx"
    report = smooth_model(cpu_bundle / "thinker_decoder.onnx", out, calibration, alpha=0.5)
    return cpu_bundle / "thinker_decoder.onnx", out, report


def test_smoothing_preserves_thinker_prefill(cpu_bundle, smoothed_prefill):
    original, smoothed, _ = smoothed_prefill
    assert (smoothed.parent / "thinker_decoder.onnx.data").is_file()  # bundles keep weights beside the graph
    rng = np.random.default_rng(1)  # held out: other tokens and lengths than calibration saw
    held_out = [prefill_feed(cpu_bundle, rng.integers(0, 150_000, n)) for n in (1, 7, 30)]
    assert_same_outputs(original, smoothed, held_out)


def test_thinker_groups_are_the_norms_and_the_head_is_left_alone(smoothed_prefill):
    original, smoothed, report = smoothed_prefill
    # Tiny thinker, 2 layers: input_layernorm -> q,k,v and post_attention_layernorm -> gate,up per layer.
    # Skipped: o_proj (fed by a Reshape) and down_proj (fed by silu(gate) * up, no constant) per layer,
    # and lm_head, whose input last_hidden_state is a graph output and whose output is the logits.
    assert report == SmoothQuantReport(alpha=0.5, smoothed_groups=4, smoothed_matmuls=10, skipped_matmuls=5)

    before, after = onnx.load(str(original)).graph, onnx.load(str(smoothed)).graph
    w0, w1 = initializers(original), initializers(smoothed)
    nodes1 = {n.name: n for n in after.node}
    head = next(n for n in after.node if n.op_type == "MatMul" and "logits" in n.output)
    final_norm = next(n for n in after.node if "last_hidden_state" in n.output)
    for name in list(head.input) + list(final_norm.input):
        if name in w0:
            np.testing.assert_array_equal(w1[name], w0[name])

    groups, _ = find_groups(before)
    assert sorted(len(g.matmuls) for g in groups) == [2, 2, 3, 3]
    gammas = set()
    for group in groups:
        mul0, mul1 = before.node[group.mul], nodes1[before.node[group.mul].name]
        gamma0, gamma1 = w0[mul0.input[group.gamma_input]], w1[mul1.input[group.gamma_input]]
        gammas.add(mul1.input[group.gamma_input])
        s = gamma0.astype(np.float64) / gamma1  # gamma' = gamma / s
        assert not np.allclose(s, 1.0)
        for i in group.matmuls:
            name = before.node[i].name
            ratio = w1[nodes1[name].input[1]].astype(np.float64) / w0[before.node[i].input[1]]
            # Every MatMul reading the same X got the same row scale, the inverse of the gamma change.
            np.testing.assert_allclose(ratio, np.broadcast_to(s[:, None], ratio.shape), rtol=1e-6)
    # The export deduplicated all (all-ones) RMSNorm gammas into one initializer; each group got its own copy
    # and the final norm still reads the untouched original.
    assert len(gammas) == 4
    assert final_norm.input[0] not in gammas and final_norm.input[1] not in gammas


# -- hand-built graphs -----------------------------------------------------------------------------


def outlier_model(path: Path, rng) -> Path:
    """x -> Mul(x, gamma) -> MatMul(W) -> Relu -> y, the activation with one channel 50x the rest."""
    gamma = rng.uniform(0.5, 1.5, 8)
    w = rng.normal(size=(8, 6))
    nodes = [
        helper.make_node("Mul", ["x", "gamma"], ["h"]),
        helper.make_node("MatMul", ["h", "w"], ["z"]),
        helper.make_node("Relu", ["z"], ["y"]),
    ]
    return save_model(path, nodes, [x_input(8)], [y_output()], {"gamma": gamma, "w": w})


def outlier_feed(rng) -> dict[str, np.ndarray]:
    x = rng.normal(size=(2, 5, 8)).astype(np.float32)
    x[..., 3] *= 50.0
    return {"x": x}


def test_outlier_channel_is_flattened_and_function_kept(tmp_path):
    rng = np.random.default_rng(2)
    original = outlier_model(tmp_path / "m.onnx", rng)
    calibration = [outlier_feed(rng) for _ in range(4)]
    report = smooth_model(original, tmp_path / "s.onnx", calibration, alpha=0.5)
    assert report == SmoothQuantReport(alpha=0.5, smoothed_groups=1, smoothed_matmuls=1, skipped_matmuls=0)

    before = activation_channel_max(original, calibration, ["h"])["h"]
    after = activation_channel_max(tmp_path / "s.onnx", calibration, ["h"])["h"]
    assert flatness(before) > 20.0
    assert flatness(after) < flatness(before) / 3  # alpha 0.5 takes roughly the square root of the outlier
    # With alpha 0.5 the smoothed activation max is exactly sqrt(max|X_j| * max|W_j|) on the calibration set.
    w_max = np.abs(initializers(original)["w"]).max(axis=1)
    np.testing.assert_allclose(after, np.sqrt(before * w_max), rtol=1e-5)
    assert_same_outputs(original, tmp_path / "s.onnx", [outlier_feed(rng) for _ in range(3)])


def test_graph_without_foldable_producer_is_unchanged(tmp_path):
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Relu", ["z"], ["y"])]
    original = save_model(tmp_path / "m.onnx", nodes, [x_input(4)], [y_output()], {"w": rng.normal(size=(4, 3))})
    report = smooth_model(original, tmp_path / "s.onnx", [{"x": rng.normal(size=(1, 2, 4)).astype(np.float32)}])
    assert report == SmoothQuantReport(alpha=0.5, smoothed_groups=0, smoothed_matmuls=0, skipped_matmuls=1)
    assert list(onnx.load(str(tmp_path / "s.onnx")).graph.node) == list(onnx.load(str(original)).graph.node)
    w0, w1 = initializers(original), initializers(tmp_path / "s.onnx")
    assert w0.keys() == w1.keys() and all(np.array_equal(w0[k], w1[k]) for k in w0)


@pytest.mark.parametrize("case", ["head", "residual"])
def test_norm_feeding_a_head_or_a_non_matmul_is_skipped(tmp_path, case):
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("Mul", ["gamma", "x"], ["h"]), helper.make_node("MatMul", ["h", "w"], ["z"])]
    outputs = [y_output("z")]  # "head": the MatMul writes a graph output, ModelOpt keeps it unquantized
    if case == "residual":  # h also feeds an Add, which cannot absorb the 1/s
        nodes += [
            helper.make_node("Add", ["h", "h"], ["r"]),
            helper.make_node("MatMul", ["r", "w"], ["q"]),
            helper.make_node("Relu", ["z"], ["y"]),
        ]
        outputs = [y_output("y"), y_output("q")]
    original = save_model(
        tmp_path / "m.onnx",
        nodes,
        [x_input(4)],
        outputs,
        {"gamma": rng.uniform(0.5, 1.5, 4), "w": rng.normal(size=(4, 4))},
    )
    report = smooth_model(original, tmp_path / "s.onnx", [{"x": rng.normal(size=(1, 3, 4)).astype(np.float32)}])
    assert report.smoothed_groups == 0
    assert report.skipped_matmuls == (1 if case == "head" else 2)
    w0, w1 = initializers(original), initializers(tmp_path / "s.onnx")
    assert all(np.array_equal(w0[k], w1[k]) for k in w0)


def test_shared_initializers_are_copied_before_rescaling(tmp_path):
    """gamma also scales an unsmoothed graph output; W is also used by a MatMul on the raw input."""
    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("Mul", ["x", "gamma"], ["h"]),
        helper.make_node("MatMul", ["h", "w"], ["a"]),
        helper.make_node("MatMul", ["h", "v"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["y"]),
        helper.make_node("Mul", ["x", "gamma"], ["g"]),  # same gamma, output visible to the caller
        helper.make_node("MatMul", ["x", "w"], ["u"]),  # same W, nothing foldable in front
        helper.make_node("Relu", ["u"], ["p"]),
    ]
    original = save_model(
        tmp_path / "m.onnx",
        nodes,
        [x_input(8)],
        [y_output("y"), y_output("g"), y_output("p")],
        {"gamma": rng.uniform(0.5, 1.5, 8), "w": rng.normal(size=(8, 5)), "v": rng.normal(size=(8, 5))},
    )
    calibration = [outlier_feed(rng) for _ in range(2)]
    report = smooth_model(original, tmp_path / "s.onnx", calibration)
    assert report == SmoothQuantReport(alpha=0.5, smoothed_groups=1, smoothed_matmuls=2, skipped_matmuls=1)
    w0, w1 = initializers(original), initializers(tmp_path / "s.onnx")
    for name in ("gamma", "w"):  # the originals still serve their other readers, untouched
        np.testing.assert_array_equal(w1[name], w0[name])
    assert len(w1) == len(w0) + 2  # private copies of gamma and w for the smoothed group
    assert_same_outputs(original, tmp_path / "s.onnx", [outlier_feed(rng) for _ in range(2)])


def test_bad_arguments_say_what_to_do(tmp_path):
    rng = np.random.default_rng(6)
    original = outlier_model(tmp_path / "m.onnx", rng)
    with pytest.raises(InputError, match="alpha"):
        smooth_model(original, tmp_path / "s.onnx", [outlier_feed(rng)], alpha=1.5)
    with pytest.raises(InputError, match="no feeds"):
        smooth_model(original, tmp_path / "s.onnx", [])
    with pytest.raises(InputError, match="no tensors named"):
        activation_channel_max(original, [outlier_feed(rng)], ["nope"])
    with pytest.raises(InputError, match="lacks inputs"):
        activation_channel_max(original, [{"wrong": np.zeros((1, 1, 8), np.float32)}], ["h"])
