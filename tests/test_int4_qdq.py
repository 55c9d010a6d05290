"""int4-awq for TensorRT targets (omni_edge/calibration/int4_qdq.py): blockwise int4 weights behind
DequantizeLinear, written weight by weight; checked with ONNX Runtime's own DequantizeLinear on small graphs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from omni_edge.calibration.int4_qdq import int4_qdq_model, quantize_blocks
from omni_edge.calibration.quantize import save_graph
from omni_edge.calibration.weight_only import fake_quant


def _graph_file(tmp_path, w1: np.ndarray, w2: np.ndarray):
    """x -> MatMul(w1) -> Relu -> MatMul(w2, the "head") -> y, weights in an external data file."""
    k = w1.shape[0]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="up"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "w2"], ["y"], name="head"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", w2.shape[1]])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    path = tmp_path / "g.onnx"
    save_graph(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def _run(model, feed):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feed)[
        0
    ]


def test_int4_weights_dequantize_to_the_symmetric_grid_and_the_head_is_kept(tmp_path):
    rng = np.random.default_rng(0)
    w1 = (rng.standard_t(3, size=(64, 96)) * 0.05).astype(np.float32)
    w2 = rng.standard_normal((96, 40)).astype(np.float32)
    path = _graph_file(tmp_path, w1, w2)
    model, result = int4_qdq_model(path, [], keep=("head",), block=32)
    assert (result.quantized, result.clipped, result.kept) == (1, 0, 1)
    int4 = [t for t in model.graph.initializer if t.data_type == TensorProto.INT4]
    assert [t.name for t in int4] == ["w1_int4"] and list(int4[0].dims) == [64, 96]
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear")
    assert {a.name: helper.get_attribute_value(a) for a in dq.attribute} == {"axis": 0, "block_size": 32}
    assert {t.name for t in model.graph.initializer} == {"w1_int4", "w1_scale", "w2"}  # fp32 w1 dropped
    onnx.checker.check_model(model)
    x = rng.standard_normal((5, 64)).astype(np.float32)
    grid = fake_quant(w1.reshape(2, 32, 96).astype(np.float64), 4, symmetric=True).reshape(64, 96)
    expected = np.maximum(x @ grid, 0) @ w2
    got = _run(model, {"x": x})
    assert np.abs(got - expected).max() < 1e-4 * np.abs(expected).max()
    assert np.abs(got - np.maximum(x @ w1, 0) @ w2).max() > 1e-3  # and it did quantize


def test_quantize_blocks_packs_values_in_range_with_amax_scales():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 8)).astype(np.float32)
    w[:32, 3] = 0.0  # an all-zero block keeps a finite scale
    q, scale = quantize_blocks(w, 32)
    assert q.dtype == np.int8 and q.min() >= -8 and q.max() <= 7
    assert scale.shape == (2, 8) and scale[0, 3] == 1.0
    np.testing.assert_allclose(scale[1], np.abs(w[32:]).max(axis=0) / 7, rtol=1e-6)
    assert np.all(q[:32, 3] == 0)


def test_clipping_on_calibration_feeds_lowers_the_output_error(tmp_path):
    rng = np.random.default_rng(2)
    w1 = (rng.standard_t(3, size=(128, 64)) * 0.05).astype(np.float32)
    w2 = np.eye(64, dtype=np.float32)
    path = _graph_file(tmp_path, w1, w2)
    scales = rng.uniform(0.2, 3.0, size=128).astype(np.float32)  # per-channel activation scales
    feeds = [{"x": (rng.standard_normal((16, 128)) * scales).astype(np.float32)} for _ in range(4)]
    plain, _ = int4_qdq_model(path, [], keep=("head",), block=32)
    clipped, result = int4_qdq_model(path, feeds, keep=("head",), block=32)
    assert result.clipped == 1 and "AWQ clipping of 1" in result.method()
    x = (rng.standard_normal((64, 128)) * scales).astype(np.float32)
    exact = np.maximum(x @ w1, 0)
    error = {name: np.linalg.norm(_run(m, {"x": x}) - exact) for name, m in (("rtn", plain), ("awq", clipped))}
    assert error["awq"] < error["rtn"], error
