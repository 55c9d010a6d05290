"""The plain-op ONNX graphs each kernel replaces, built with onnx.helper (no torch).

They are what the benchmark times the kernels against, and a CPU test checks them against the numpy
references in ONNX Runtime, so "kernel == reference == plain graph" holds on any machine.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from omni_edge.kernels.reference import inv_freq, section_axes

OPSET = 18
_ONNX_TYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}


def _const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _model(nodes, inputs, outputs, initializers, name: str) -> onnx.ModelProto:
    used = {name for node in nodes for name in node.input}
    graph = helper.make_graph(nodes, name, inputs, outputs, [t for t in initializers if t.name in used])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9  # readable by older ONNX Runtime / TensorRT parsers too
    onnx.checker.check_model(model)
    return model


def tmrope_graph(
    head_dim: int, mrope_section, theta: float, q_heads: int, k_heads: int, dtype: str = "float32"
) -> onnx.ModelProto:
    """q [B, Hq, S, D], k [B, Hk, S, D], positions [3, B, S] int32 -> q_out, k_out (plain ops)."""
    half = head_dim // 2
    onehot = np.zeros((3, 1, 1, half), np.float32)
    onehot[section_axes(head_dim, mrope_section), 0, 0, np.arange(half)] = 1.0
    elem = _ONNX_TYPES[dtype]
    inits = [
        _const("inv_freq", inv_freq(head_dim, theta)),
        _const("axis_onehot", onehot),
        _const("axes0", np.array([0], np.int64)),
        _const("axes1", np.array([1], np.int64)),
        _const("axes_last", np.array([-1], np.int64)),
        _const("zero", np.array([0], np.int64)),
        _const("half", np.array([half], np.int64)),
        _const("dim", np.array([head_dim], np.int64)),
    ]
    nodes = [
        helper.make_node("Cast", ["positions"], ["pos_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["pos_f", "axes_last"], ["pos_4d"]),
        helper.make_node("Mul", ["pos_4d", "inv_freq"], ["freqs"]),  # [3, B, S, half]
        # Pick each frequency's axis with a one-hot mask and a sum: exact, since two of three terms are 0.
        helper.make_node("Mul", ["freqs", "axis_onehot"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axes0"], ["chosen"], keepdims=0),  # [B, S, half]
        helper.make_node("Concat", ["chosen", "chosen"], ["emb"], axis=-1),
        helper.make_node("Cos", ["emb"], ["cos_f"]),
        helper.make_node("Sin", ["emb"], ["sin_f"]),
        helper.make_node("Unsqueeze", ["cos_f", "axes1"], ["cos_4d_f"]),
        helper.make_node("Unsqueeze", ["sin_f", "axes1"], ["sin_4d_f"]),
        helper.make_node("Cast", ["cos_4d_f"], ["cos_4d"], to=elem),  # HF casts cos/sin to the q dtype
        helper.make_node("Cast", ["sin_4d_f"], ["sin_4d"], to=elem),
    ]
    for x in ("q", "k"):
        nodes += [
            helper.make_node("Slice", [x, "zero", "half", "axes_last"], [f"{x}_lo"]),
            helper.make_node("Slice", [x, "half", "dim", "axes_last"], [f"{x}_hi"]),
            helper.make_node("Neg", [f"{x}_hi"], [f"{x}_neg"]),
            helper.make_node("Concat", [f"{x}_neg", f"{x}_lo"], [f"{x}_rot"], axis=-1),
            helper.make_node("Mul", [x, "cos_4d"], [f"{x}_c"]),
            helper.make_node("Mul", [f"{x}_rot", "sin_4d"], [f"{x}_s"]),
            helper.make_node("Add", [f"{x}_c", f"{x}_s"], [f"{x}_out"]),
        ]
    inputs = [
        helper.make_tensor_value_info("q", elem, ["B", q_heads, "S", head_dim]),
        helper.make_tensor_value_info("k", elem, ["B", k_heads, "S", head_dim]),
        helper.make_tensor_value_info("positions", TensorProto.INT32, [3, "B", "S"]),
    ]
    outputs = [
        helper.make_tensor_value_info("q_out", elem, ["B", q_heads, "S", head_dim]),
        helper.make_tensor_value_info("k_out", elem, ["B", k_heads, "S", head_dim]),
    ]
    return _model(nodes, inputs, outputs, inits, "tmrope_plain")


def ode_step_graph(stage: int, scale: float, mel_dim: int = 80) -> onnx.ModelProto:
    """y [T, mel], dit_out [2, T, mel], ks [3, T, mel], dt [1] -> y_next, ks_next for one fixed stage."""
    f = TensorProto.FLOAT
    inits = [
        _const("scale", np.float32(scale)),
        _const("third", np.float32(1 / 3)),
        _const("three", np.float32(3)),
        _const("eight", np.float32(8)),
    ] + [_const(f"i{j}", np.array(j, np.int64)) for j in range(3)]
    nodes = [
        helper.make_node("Gather", ["dit_out", "i0"], ["vc"], axis=0),
        helper.make_node("Gather", ["dit_out", "i1"], ["vu"], axis=0),
        helper.make_node("Sub", ["vc", "vu"], ["diff"]),
        helper.make_node("Mul", ["diff", "scale"], ["guide"]),
        helper.make_node("Add", ["vc", "guide"], ["v"]),
    ]
    k = []
    for j in range(3):
        if j == stage - 1:
            k.append("v")
        else:
            nodes.append(helper.make_node("Gather", ["ks", f"i{j}"], [f"k{j}"], axis=0))
            k.append(f"k{j}")
    if stage == 0:
        nodes += [helper.make_node("Mul", ["dt", "v"], ["delta"])]
    elif stage == 1:
        nodes += [helper.make_node("Mul", ["dt", k[0]], ["a"]), helper.make_node("Mul", ["a", "third"], ["delta"])]
    elif stage == 2:
        nodes += [
            helper.make_node("Mul", [k[0], "third"], ["a"]),
            helper.make_node("Sub", [k[1], "a"], ["b"]),
            helper.make_node("Mul", ["dt", "b"], ["delta"]),
        ]
    elif stage == 3:
        nodes += [
            helper.make_node("Sub", [k[0], k[1]], ["a"]),
            helper.make_node("Add", ["a", k[2]], ["b"]),
            helper.make_node("Mul", ["dt", "b"], ["delta"]),
        ]
    else:
        nodes += [
            helper.make_node("Add", [k[1], k[2]], ["a"]),
            helper.make_node("Mul", ["three", "a"], ["b"]),
            helper.make_node("Add", [k[0], "b"], ["c"]),
            helper.make_node("Add", ["c", "v"], ["d"]),
            helper.make_node("Mul", ["d", "dt"], ["e"]),
            helper.make_node("Div", ["e", "eight"], ["delta"]),
        ]
    nodes.append(helper.make_node("Add", ["y", "delta"], ["y_next"]))
    for j in range(3):
        nodes.append(helper.make_node("Unsqueeze", [k[j], "axes0"], [f"ku{j}"]))
    nodes.append(helper.make_node("Concat", ["ku0", "ku1", "ku2"], ["ks_next"], axis=0))
    inits.append(_const("axes0", np.array([0], np.int64)))
    inputs = [
        helper.make_tensor_value_info("y", f, ["T", mel_dim]),
        helper.make_tensor_value_info("dit_out", f, [2, "T", mel_dim]),
        helper.make_tensor_value_info("ks", f, [3, "T", mel_dim]),
        helper.make_tensor_value_info("dt", f, [1]),
    ]
    outputs = [
        helper.make_tensor_value_info("y_next", f, ["T", mel_dim]),
        helper.make_tensor_value_info("ks_next", f, [3, "T", mel_dim]),
    ]
    return _model(nodes, inputs, outputs, inits, f"ode_stage{stage}_plain")


def stitch_graph(src_start: int, length: int) -> onnx.ModelProto:
    """window [C, T_win] -> the kept slice [C, length] (the copy into the output timeline)."""
    inits = [
        _const("starts", np.array([src_start], np.int64)),
        _const("ends", np.array([src_start + length], np.int64)),
        _const("axes", np.array([1], np.int64)),
    ]
    nodes = [helper.make_node("Slice", ["window", "starts", "ends", "axes"], ["kept"])]
    inputs = [helper.make_tensor_value_info("window", TensorProto.FLOAT, ["C", "T"])]
    outputs = [helper.make_tensor_value_info("kept", TensorProto.FLOAT, ["C", length])]
    return _model(nodes, inputs, outputs, inits, "stitch_plain")
