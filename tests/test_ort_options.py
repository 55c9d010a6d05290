"""A graph with fp16 weights on ONNX Runtime's CPU keeps them once: no folded fp32 copies, and each weight's
Cast runs just before its MatMul (ort_options.py), with the answers of the folded graph."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from omni_edge.onnx_external import tensor_data_types
from omni_edge.ort_options import cast_at_run_time, half_weights

LAYERS, WIDTH = 6, 64


def _chain(dtype=np.float16) -> onnx.ModelProto:
    """x -> (MatMul, Tanh) x LAYERS, weights of `dtype` held as initializers."""
    elem = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    rng = np.random.default_rng(0)
    nodes, weights, x = [], [], "x"
    for i in range(LAYERS):
        weights.append(numpy_helper.from_array((rng.standard_normal((WIDTH, WIDTH)) * 0.1).astype(dtype), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"matmul{i}"))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"t{i}"], name=f"tanh{i}"))
        x = f"t{i}"
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", elem, ["rows", WIDTH])],
        [helper.make_tensor_value_info(x, elem, ["rows", WIDTH])],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_tensor_types_of_a_graph_are_read_from_its_bytes():
    half, single = _chain(np.float16).SerializeToString(), _chain(np.float32).SerializeToString()
    assert tensor_data_types(half) == {TensorProto.FLOAT16}
    assert tensor_data_types(single) == {TensorProto.FLOAT}
    assert half_weights(half) and not half_weights(single)


def test_a_quantized_graph_with_fp16_scales_is_not_a_half_weight_one():
    """int4 weights behind DequantizeLinear with fp16 scales keep ORT_ENABLE_ALL, which ONNX Runtime computes
    right for them (see half_weights)."""
    weight = helper.make_tensor("w", TensorProto.INT4, [WIDTH, WIDTH], np.ones(WIDTH * WIDTH, np.int8))
    scale = numpy_helper.from_array(np.full((1, WIDTH), 0.1, np.float16), "s")
    graph = helper.make_graph(
        [
            helper.make_node("DequantizeLinear", ["w", "s"], ["wd"], axis=0, block_size=WIDTH),
            helper.make_node("MatMul", ["x", "wd"], ["y"]),
        ],
        "int4",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["rows", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["rows", WIDTH])],
        [weight, scale],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]).SerializeToString()
    assert tensor_data_types(model) == {TensorProto.INT4, TensorProto.FLOAT16}
    assert not half_weights(model)


def test_fp32_graphs_keep_their_options():
    options = ort.SessionOptions()
    cast_at_run_time(options, _chain(np.float32).SerializeToString())
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.execution_order == ort.ExecutionOrder.DEFAULT


def test_fp16_weights_are_cast_one_at_a_time_as_they_are_used(tmp_path):
    model = _chain().SerializeToString()
    options = ort.SessionOptions()
    cast_at_run_time(options, model)
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "profile")
    session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((3, WIDTH)).astype(np.float16)
    got = session.run(None, {"x": x})[0]
    profile = session.end_profiling()

    # No weight was folded into an fp32 copy: the initializers are the fp16 ones.
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    assert {t.data_type for t in optimized.graph.initializer} == {TensorProto.FLOAT16}
    casts = {n.name: n for n in optimized.graph.node if n.op_type == "Cast" and n.input[0].startswith("w")}
    assert len(casts) == LAYERS
    # Each weight's Cast ran just before the MatMul that reads it, so one fp32 weight at most was alive.
    consumer = {n.output[0]: m.name for n in casts.values() for m in optimized.graph.node if n.output[0] in m.input}
    events = json.loads(open(profile).read())
    order = [e["name"].removesuffix("_kernel_time") for e in events if e["name"].endswith("_kernel_time")]
    for name, cast in casts.items():
        assert order[order.index(name) + 1] == consumer[cast.output[0]]

    folded = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got.astype(np.float32), folded.astype(np.float32), atol=2e-3)


@pytest.mark.parametrize("level", ["ORT_DISABLE_ALL", "ORT_ENABLE_BASIC"])
def test_a_lower_optimization_level_is_kept(level):
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    cast_at_run_time(options, _chain().SerializeToString())
    assert options.graph_optimization_level == getattr(ort.GraphOptimizationLevel, level)
    assert options.execution_order == ort.ExecutionOrder.PRIORITY_BASED
    assert not options.enable_mem_reuse  # ORT 1.32 mis-plans reuse in that order (the fp16 DiT, ort_options)
