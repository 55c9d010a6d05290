"""int4-awq for TensorRT targets: blockwise int4 weights behind DequantizeLinear, written one weight at a time.

TensorRT runs MatMul(x, DequantizeLinear(W_int4, scale, axis=0, block_size=B)) as an int4 weight-only GEMM.
That is the graph ModelOpt's int4 awq_clip writes (symmetric int4, scale = block amax / 7, the rest of the
graph cast to fp16 afterwards), but ModelOpt holds the whole fp32 graph as a protobuf beside its ONNX Runtime
calibration session: two copies of the 3B Thinker's 11.5 GiB, more than a 24 GiB machine has. Here the clip
statistics come from one ONNX Runtime run before any weight is read (weight_only.input_grams), then each fp32
weight is read, clipped on them (AWQ's search, weight_only.clip_weight, on the symmetric grid), packed and
dropped before the next: the int4 graph plus one fp32 weight, before the fp16 cast (export_memory prices it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omni_edge.calibration.weight_only import (
    clip_weight,
    drop_unused_initializers,
    gemm_to_matmul,
    input_grams,
    read_weight,
    symmetric_scale,
    weight_matmuls,
)

BITS = 4


@dataclass(frozen=True)
class Int4Result:
    quantized: int  # weight MatMuls now reading DequantizeLinear(int4)
    clipped: int  # of those, clipped on the calibration activations
    block: int
    kept: int  # weight MatMuls left in high precision (`keep`: the heads)

    def method(self) -> str:
        kept = f"; {self.kept} kept in high precision" if self.kept else ""
        return (
            f"int4 weight-only Q/DQ (symmetric, block {self.block}, axis 0): {self.quantized} MatMuls, AWQ clipping "
            f"of {self.clipped} on the calibration activations{kept}"
        )


def int4_qdq_model(src: Path, feeds: list[dict[str, np.ndarray]], keep: tuple[str, ...], block: int):
    """`src` (fp32, or fp16) as an in-memory ModelProto whose weight MatMuls read DequantizeLinear(int4) with scales
    in the weights' precision; every other tensor as it was (the caller casts an fp32 graph to the target's high
    precision). `keep`: MatMul names left as they are."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    model = onnx.load(str(src), load_external_data=False)
    graph = model.graph
    gemm_to_matmul(graph, src.parent)
    every = weight_matmuls(graph)
    matmuls = [n for n in every if n.name not in keep]
    rows = {t.name: int(t.dims[0]) for t in graph.initializer if len(t.dims) == 2}
    if any(rows[n.input[1]] % block for n in matmuls):
        raise ValueError(f"{src.name}: block {block} does not divide every weight's input width")
    grams = input_grams(src, matmuls, feeds, {n.input[0]: block for n in matmuls}) if feeds else {}
    weights = {t.name: t for t in graph.initializer}
    chosen = {n.name for n in matmuls}
    nodes = []
    for node in graph.node:
        if node.name not in chosen:
            nodes.append(node)
            continue
        stored = read_weight(weights[node.input[1]], src.parent)  # this weight alone, not into the graph
        w = stored.astype(np.float32)  # an fp16 graph's weight too (half_source.py); its scales stay fp16
        if grams:
            w = clip_weight(w, grams[node.input[0]], BITS, symmetric=True)
        quantized, scale = quantize_blocks(w, block)
        scale = scale.astype(stored.dtype)
        del w, stored
        name = node.input[1]
        # copied into the graph now, so the tensors made here are freed with this iteration (read_weight)
        graph.initializer.extend(
            [int4_tensor(f"{name}_int4", quantized), onnx.numpy_helper.from_array(scale, f"{name}_scale")]
        )
        dequantized = f"{name}_dequantized"
        nodes.append(
            onnx.helper.make_node(
                "DequantizeLinear",
                [f"{name}_int4", f"{name}_scale"],
                [dequantized],
                name=f"{node.name}_weight_dq",
                axis=0,
                block_size=block,
            )
        )
        node.input[1] = dequantized
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    drop_unused_initializers(graph)
    load_external_data_for_model(model, str(src.parent))  # what is left: norms, biases, the kept heads
    _at_least_opset(model, 21)  # blocked DequantizeLinear and INT4 tensors
    return model, Int4Result(len(matmuls), len(matmuls) if grams else 0, block, len(every) - len(matmuls))


def quantize_blocks(w: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """`w` (K, N) -> (int8 values in [-8, 7], shape (K, N); fp32 scales, shape (K / block, N))."""
    k, n = w.shape
    blocks = w.reshape(k // block, block, n)
    scale = symmetric_scale(blocks, BITS)
    quantized = np.clip(np.rint(blocks / scale), -8, 7).astype(np.int8).reshape(k, n)
    return quantized, scale.reshape(k // block, n).astype(np.float32)


def int4_tensor(name: str, values: np.ndarray):
    """An INT4 TensorProto: two values per byte, the first in the low nibble (ONNX's packing)."""
    import onnx

    flat = values.reshape(-1).astype(np.uint8) & 0x0F
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    packed = (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)
    tensor = onnx.TensorProto(name=name, data_type=onnx.TensorProto.INT4, dims=list(values.shape))
    tensor.raw_data = packed.tobytes()
    return tensor


def _at_least_opset(model, version: int) -> None:
    """Raise the default-domain opset to `version`. From 18 on, opsets 19-21 only add types (float8, int4) and
    options that default to the old behaviour, so the graph's meaning is unchanged; converting with onnx's
    version converter would serialize the whole graph (its 2 GB protobuf limit)."""
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < version:
            opset.version = version
    model.ir_version = max(model.ir_version, 10)
