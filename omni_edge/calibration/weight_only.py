"""Weight-only int8 / int4 for ONNX Runtime on a CPU: every MatMul with a constant weight, output heads included,
becomes a com.microsoft MatMulNBits (blockwise 8- or 4-bit weights).

Why not ModelOpt's Q/DQ here: ONNX Runtime's CPU kernels run a W8A8 Q/DQ MatMul as DequantizeLinear + fp32
MatMul every step (the medium int8 decode was slower than fp32), while MatMulNBits reads the packed weights
directly. accuracy_level 4 quantizes each activation block to int8 inside the kernel; without it the 8-bit
kernel has no fast path at all (a 2048x32768 weight, one thread: fp32 34 ms, 8-bit level 0 281 ms, level 4
3.1 ms; 4-bit level 0 7.5 ms, level 4 1.5 ms, measured on this repository's 2-core bench machine).

int4-awq keeps AWQ's weight clipping: per block of the input dimension and output column, the shrink of the
weight range that minimises that block's output error on the calibration activations. The error of a block
only needs the block-diagonal of X^T X (X: every calibration row fed to the MatMul), accumulated feed by feed,
so the activations are never held: K x block floats per MatMul input.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omni_edge.ort_options import cast_at_run_time

BITS = {"int8": 8, "int4-awq": 4}
# 8-bit: blocks of 128 (accuracy barely changes with the block, and the scales are fewer bytes); 4-bit: 32, as
# onnxruntime-genai's int4 (relative error of a random weight 0.081 against 0.100 at 128, same speed, measured).
MAX_BLOCK = {"int8": 128, "int4-awq": 32}
ACCURACY_LEVEL = 4
CLIP_RATIOS = tuple(float(r) for r in np.linspace(1.0, 0.55, 10))  # AWQ's grid, shrinking to 0.5 at most
_COLUMNS = 4096  # output columns clipped at once: 180 MB per temporary for the 11008-wide down projection


@dataclass(frozen=True)
class WeightOnlyResult:
    quantized: int  # MatMuls now MatMulNBits (Gemms converted first)
    clipped: int  # of those, weights clipped on calibration activations (int4-awq)
    blocks: dict[int, int]  # block size -> MatMuls quantized with it
    kept: int  # weight MatMuls left fp32 (`keep`)
    heads: int  # of the quantized, MatMuls writing a graph output (lm_head, codec head)
    convolutions: int  # Conv/ConvTranspose nodes, whose weights stay fp32

    def method(self, precision: str) -> str:
        parts = [f"{self.quantized} MatMuls" + (" (the output head too)" if self.heads else "")]
        if self.kept:
            parts.append(f"{self.kept} kept fp32")
        if self.clipped:
            parts.append(f"AWQ clipping of {self.clipped} on the calibration activations")
        if self.convolutions:
            parts.append(f"{self.convolutions} convolutions kept fp32")
        if len(self.blocks) == 1:
            blocks = f"block {next(iter(self.blocks))}"
        else:
            blocks = "blocks " + ", ".join(f"{b} ({n})" for b, n in self.blocks.items())
        return (
            f"MatMulNBits {BITS[precision]}-bit weight-only, {blocks}, accuracy_level {ACCURACY_LEVEL}: "
            + "; ".join(parts)
        )


def weight_only_graph(
    src: Path, dst: Path, precision: str, feeds: list[dict[str, np.ndarray]], keep: tuple[str, ...] = ()
) -> WeightOnlyResult:
    """`src` (fp32) -> `dst` with MatMulNBits weights; int4-awq clips each weight on `feeds` first. `keep`: node
    names left in fp32 (the heads, where the target keeps them: Target.quantized_heads).

    Weight by weight, in bounded memory: the graph is read without its weights, the clipping statistics come
    from one ONNX Runtime run before any weight is read here, and each fp32 weight is read, clipped, packed and
    dropped before the next. The peak is the packed graph plus one fp32 weight, not the fp32 graph (the 3B
    Thinker's is 11.5 GiB) held beside an ONNX Runtime copy of it."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, DefaultWeightOnlyQuantizer

    from omni_edge.calibration.quantize import QuantizationError, save_graph

    model = onnx.load(str(src), load_external_data=False)
    gemm_to_matmul(model.graph, src.parent)
    all_matmuls = weight_matmuls(model.graph)
    matmuls = [n for n in all_matmuls if n.name not in keep]
    if not matmuls:
        raise QuantizationError(f"{src.name} has no MatMul weights for weight-only {precision}")
    outputs = {o.name for o in model.graph.output}
    heads = sum(n.output[0] in outputs for n in matmuls)
    rows = {t.name: int(t.dims[0]) for t in model.graph.initializer if len(t.dims) == 2}
    blocks = {n.name: block_size(rows[n.input[1]], MAX_BLOCK[precision]) for n in matmuls}
    bits = BITS[precision]
    # A width no block divides (MatMulNBits pads it) is rounded to nearest, unclipped.
    lined_up = [n for n in matmuls if rows[n.input[1]] % blocks[n.name] == 0]
    grams = {}
    if bits == 4 and feeds and lined_up:
        grams = input_grams(src, lined_up, feeds, {n.input[0]: blocks[n.name] for n in lined_up})
    clip = {n.name for n in lined_up} if grams else set()
    quantizers = {
        block: DefaultWeightOnlyQuantizer(
            DefaultWeightOnlyQuantConfig(
                block_size=block, is_symmetric=bits == 8, accuracy_level=ACCURACY_LEVEL, bits=bits
            )
        )
        for block in set(blocks.values())
    }
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)  # INFO per node
    weights = {t.name: t for t in model.graph.initializer}
    chosen = {n.name for n in matmuls}
    nodes = []
    for node in model.graph.node:
        if node.name not in chosen:
            nodes.append(node)
            continue
        name = node.input[1]
        w = read_weight(weights[name], src.parent)
        if node.name in clip:
            w = clip_weight(w, grams[node.input[0]], bits)
        # The quantizer reads the weight from a graph and appends the packed one to it: a graph of its own, whose
        # memory goes with it (see read_weight), so only the packed tensors are copied into the model.
        alone = onnx.GraphProto(initializer=[onnx.numpy_helper.from_array(w, name)])
        del w
        nodes.extend(quantizers[blocks[node.name]].quantize_matmul(node, [alone]))
        model.graph.initializer.extend(t for t in alone.initializer if t.name != name)
        del alone
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    drop_unused_initializers(model.graph)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    onnx.external_data_helper.load_external_data_for_model(model, str(src.parent))  # what is left: norms, biases
    save_graph(model, dst)
    convolutions = sum(n.op_type in ("Conv", "ConvTranspose") for n in model.graph.node)
    counts = {b: list(blocks.values()).count(b) for b in sorted(set(blocks.values()), reverse=True)}
    return WeightOnlyResult(len(matmuls), len(clip), counts, len(all_matmuls) - len(matmuls), heads, convolutions)


def read_weight(tensor, data_dir: Path) -> np.ndarray:
    """A weight's values, read from its external data file without writing them into `tensor`. A ModelProto's
    memory (protobuf's upb arena) is freed only with the whole message, not when a field is cleared: loading each
    weight into the graph and clearing it after kept every fp32 weight resident (the 3B Thinker's int4 stage was
    OOM-killed at 24 GiB; 48 weights of 16 MB grew the process by 18 MB each, measured)."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    if not uses_external_data(tensor):
        return onnx.numpy_helper.to_array(tensor).copy()
    info = {entry.key: entry.value for entry in tensor.external_data}
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    shape = tuple(int(d) for d in tensor.dims)
    count = int(np.prod(shape))
    values = np.fromfile(data_dir / info["location"], dtype=dtype, count=count, offset=int(info.get("offset", 0)))
    if values.size != count:
        raise ValueError(f"{tensor.name}: its external data in {info['location']} is cut short")
    return values.reshape(shape)


def drop_unused_initializers(graph) -> None:
    """In place: re-adding the kept ones would copy every packed weight once more (read_weight says why)."""
    used = _inputs(graph)
    for i in reversed([i for i, t in enumerate(graph.initializer) if t.name not in used]):
        del graph.initializer[i]


def has_weight_matmuls(graph) -> bool:
    """Whether a graph has a MatMul (or a Gemm gemm_to_matmul converts) with a 2-D constant weight."""
    dims = {t.name: len(t.dims) for t in graph.initializer}
    return any(n.op_type in ("MatMul", "Gemm") and dims.get(n.input[1]) == 2 for n in graph.node)


def weight_matmuls(graph) -> list:
    """MatMuls of the main graph whose second input is a 2-D initializer (the attention products are left)."""
    dims = {t.name: len(t.dims) for t in graph.initializer}
    return [n for n in graph.node if n.op_type == "MatMul" and dims.get(n.input[1]) == 2]


def gemm_to_matmul(graph, data_dir: Path | None = None) -> int:
    """Gemm(A, B, C) with transB=1 and alpha = beta = 1 (what torch.onnx writes for nn.Linear on 2-D inputs) ->
    MatMul(A, B^T) + C, so MatMulNBits covers it (the quantizer rewrites MatMuls only). `data_dir`: where the
    weights of a graph loaded without its external data are."""
    import onnx
    from onnx import numpy_helper

    weights = {t.name: t for t in graph.initializer}
    count, nodes = 0, []
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
        if node.op_type != "Gemm" or not plain or node.input[1] not in weights:
            nodes.append(node)
            continue
        w = read_weight(weights[node.input[1]], data_dir) if data_dir else numpy_helper.to_array(weights[node.input[1]])
        name = f"{node.input[1]}_matmul"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.T if attrs.get("transB") else w), name))
        has_bias = len(node.input) > 2 and node.input[2]
        product = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        nodes.append(onnx.helper.make_node("MatMul", [node.input[0], name], [product], name=f"{node.name}_matmul"))
        if has_bias:
            nodes.append(onnx.helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=node.name))
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(nodes)
        drop_unused_initializers(graph)
    return count


def _inputs(graph) -> set[str]:
    """Every tensor a node reads, in subgraph bodies too (a Scan body reads outer-scope initializers)."""
    names = set()
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            for body in [attr.g] if attr.HasField("g") else list(attr.graphs):
                names |= _inputs(body)
    return names


def block_size(width: int, largest: int) -> int:
    """The largest power of two from 16 (MatMulNBits' smallest) up to `largest` that divides a weight's input
    width, so the clip search's blocks are the kernel's; `largest` when none does (the kernel pads the last
    block). Per weight: one odd width (the vision MLP's 3420) must not shrink every other weight's blocks."""
    block = largest
    while block > 16 and width % block:
        block //= 2
    return block if width % block == 0 else largest


def input_grams(
    src: Path, matmuls, feeds: list[dict[str, np.ndarray]], blocks: dict[str, int]
) -> dict[str, np.ndarray]:
    """Per MatMul input: sum over the feeds' rows of x_g^T x_g for each block g of the input (`blocks`: input
    name -> block), shape (K / block, block, block), in float64. The graph (fp32, or fp16 with each weight cast
    as it is used: ort_options) runs with those inputs as extra outputs."""
    import onnx
    import onnxruntime as ort

    wanted = sorted({n.input[0] for n in matmuls})
    graph = onnx.load(str(src), load_external_data=False)
    graph.graph.output.extend(onnx.ValueInfoProto(name=name) for name in wanted)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # No arena: every MatMul input is a graph output here, in a new shape for each feed, and the arena kept
    # growing to hold them (the 3B Thinker's statistics grew from 13 to 22 GiB over the feeds; not yet measured
    # at full size without it).
    options.enable_cpu_mem_arena = False
    # The graph is handed over as bytes (its weights stay where they are), so ORT is told where they are.
    options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(src.parent))
    model = graph.SerializeToString()
    cast_at_run_time(options, model)
    session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    grams: dict[str, np.ndarray] = {}
    for feed in feeds:
        for name, x in zip(wanted, session.run(wanted, feed)):
            rows = x.reshape(-1, x.shape[-1]).astype(np.float64)
            parts = rows.reshape(rows.shape[0], -1, blocks[name]).transpose(1, 0, 2)  # (K/block, rows, block)
            gram = parts.transpose(0, 2, 1) @ parts
            grams[name] = grams[name] + gram if name in grams else gram
    return grams


def clip_weight(w: np.ndarray, gram: np.ndarray, bits: int, symmetric: bool = False) -> np.ndarray:
    """`w` (K, N) with each (block, column) range shrunk by the CLIP_RATIOS entry whose quantized weights give
    the least output error d^T (x_g^T x_g) d. The result quantizes (MatMulNBits' min/max rounding, or the
    symmetric amax grid with `symmetric`) to the chosen clipped grid."""
    k, n = w.shape
    nblocks, block = gram.shape[0], gram.shape[1]
    assert nblocks * block == k, (w.shape, gram.shape)
    g = gram.astype(np.float32)
    out = np.empty_like(w)
    for c0 in range(0, n, _COLUMNS):
        wb = w[:, c0 : c0 + _COLUMNS].reshape(nblocks, block, -1)
        lo, hi = wb.min(axis=1, keepdims=True), wb.max(axis=1, keepdims=True)
        best = wb
        best_err = np.full((nblocks, wb.shape[2]), np.inf, dtype=np.float32)
        for ratio in CLIP_RATIOS:
            clipped = np.clip(wb, lo * ratio, hi * ratio)
            d = wb - fake_quant(clipped, bits, symmetric)
            err = np.einsum("gkc,gkc->gc", g @ d, d)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best = np.where(better[:, None, :], clipped, best)
        out[:, c0 : c0 + _COLUMNS] = best.reshape(k, -1)
    return out


def fake_quant(blocks: np.ndarray, bits: int, symmetric: bool = False) -> np.ndarray:
    """Round-to-nearest over axis 1: asymmetric with zero inside the range, as MLAS quantizes MatMulNBits blocks;
    or `symmetric`, scale = block amax / (2^(bits-1) - 1), as TensorRT's int4 Q/DQ weights are (int4_qdq)."""
    if symmetric:
        scale = symmetric_scale(blocks, bits)
        return np.clip(np.rint(blocks / scale), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1) * scale
    top = 2**bits - 1
    lo = np.minimum(blocks.min(axis=1, keepdims=True), 0)
    hi = np.maximum(blocks.max(axis=1, keepdims=True), 0)
    scale = np.where(hi > lo, (hi - lo) / top, 1.0)
    zero = np.clip(np.round(-lo / scale), 0, top)
    return (np.clip(np.round(blocks / scale) + zero, 0, top) - zero) * scale


def symmetric_scale(blocks: np.ndarray, bits: int) -> np.ndarray:
    """Per block (axis 1) and column: amax / (2^(bits-1) - 1); 1 for an all-zero block."""
    amax = np.abs(blocks).max(axis=1, keepdims=True)
    return np.where(amax > 0, amax / (2 ** (bits - 1) - 1), 1.0).astype(blocks.dtype)
