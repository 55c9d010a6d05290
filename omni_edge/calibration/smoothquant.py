"""SmoothQuant as an ONNX graph rewrite, applied to an fp32 graph before ModelOpt's int8 PTQ.

ModelOpt's ONNX quantizer has no SmoothQuant, so we do it ourselves (Xiao et al. 2023): for a linear
layer Y = X W, per input channel j pick s_j = max|X_j|^alpha / max_k|W_jk|^(1-alpha) and compute
Y = (X / s) (diag(s) W). Activation outliers move into the weights, where per-channel int8 copes with
them. The division by s costs nothing when the op producing X is a Mul by a constant per-channel vector:
the RMSNorm gamma in front of q/k/v and gate/up in our decoders. One s is shared by every MatMul that
reads the same X, since they all see the same rescaled activation.

Only that exact pattern is rewritten; anything else is left alone and counted as skipped.
"""

from __future__ import annotations

import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from omni_edge.errors import InputError
from omni_edge.ort_options import cpu_session

_MIN_SCALE = 1e-5  # the paper's clamp: keeps a near-dead channel from blowing up its weight row
_FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE})


@dataclass(frozen=True)
class SmoothQuantReport:
    alpha: float
    smoothed_groups: int  # norm -> matmul groups rescaled
    smoothed_matmuls: int
    skipped_matmuls: int  # MatMuls with a constant weight that could not be smoothed (no foldable producer)


@dataclass(frozen=True)
class SmoothGroup:
    """One activation X = Mul(..., gamma) and the MatMuls that read it; indices into graph.node."""

    activation: str
    mul: int
    gamma_input: int  # which input of the Mul is gamma (exporters put it on either side)
    matmuls: tuple[int, ...]


# -- pure pieces ------------------------------------------------------------------------------------


def smoothing_scales(act_max: np.ndarray, weight_max: np.ndarray, alpha: float) -> np.ndarray:
    """Per-channel s for activation maxima and weight-row maxima (float64, same length)."""
    act_max = np.asarray(act_max, dtype=np.float64)
    weight_max = np.asarray(weight_max, dtype=np.float64)
    dead = (act_max == 0) | (weight_max == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.power(act_max, alpha) / np.power(weight_max, 1.0 - alpha)
    # A channel that is zero on either side carries no signal through this layer: leave it unscaled.
    s = np.where(dead, 1.0, s)
    return np.maximum(s, _MIN_SCALE)


def channel_max(x: np.ndarray) -> np.ndarray:
    """max |x| per channel of the last axis, over every other axis."""
    x = np.asarray(x)
    if x.ndim == 0:
        raise InputError(
            "SmoothQuant needs tensors with a channel axis, got a scalar; pick a tensor whose last axis is the channel."
        )
    if x.size == 0:
        return np.zeros(x.shape[-1], dtype=np.float64)
    return np.abs(x.reshape(-1, x.shape[-1])).max(axis=0).astype(np.float64)


# -- graph inspection -------------------------------------------------------------------------------


def _subgraphs(node: onnx.NodeProto):
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _name_uses(graph: onnx.GraphProto, counts: Counter | None = None) -> Counter:
    """How often each name is read anywhere, subgraphs included (they may read outer-scope tensors)."""
    counts = Counter() if counts is None else counts
    for node in graph.node:
        counts.update(name for name in node.input if name)
        for sub in _subgraphs(node):
            _name_uses(sub, counts)
    counts.update(out.name for out in graph.output)
    return counts


def _subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    names: set[str] = set()
    for node in graph.node:
        for sub in _subgraphs(node):
            names.update(_name_uses(sub))
    return names


def _constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    # An initializer that is also a graph input can be overridden at run time: not a constant.
    inputs = {i.name for i in graph.input}
    return {t.name: t for t in graph.initializer if t.name not in inputs and t.data_type in _FLOAT_TYPES}


def _weight(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> onnx.TensorProto | None:
    """The constant 2-D right operand of a MatMul, or None."""
    if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
        return None
    w = constants.get(node.input[1])
    return w if w is not None and len(w.dims) == 2 else None


def _gamma_input(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto], channels: int) -> int | None:
    """Which input of a Mul is a constant [channels] vector; None unless exactly one is."""
    if node.op_type != "Mul" or node.domain not in ("", "ai.onnx"):
        return None
    hits = [i for i, name in enumerate(node.input) if name in constants and list(constants[name].dims) == [channels]]
    return hits[0] if len(hits) == 1 else None


def find_groups(graph: onnx.GraphProto) -> tuple[list[SmoothGroup], int]:
    """The foldable norm -> MatMul groups, and how many constant-weight MatMuls are not in one."""
    constants = _constants(graph)
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output}
    consumers: dict[str, list[int]] = defaultdict(list)
    for i, node in enumerate(graph.node):
        for name in dict.fromkeys(node.input):  # a node reading X twice is one consumer
            consumers[name].append(i)
    graph_outputs = {out.name for out in graph.output}
    outer_reads = _subgraph_reads(graph)

    by_activation: dict[str, list[int]] = defaultdict(list)
    for i, node in enumerate(graph.node):
        if _weight(node, constants) is not None:
            by_activation[node.input[0]].append(i)

    groups: list[SmoothGroup] = []
    skipped = 0
    for x, matmuls in by_activation.items():
        group = _match_group(graph, x, matmuls, constants, producer, consumers, graph_outputs, outer_reads)
        if group is None:
            skipped += len(matmuls)
        else:
            groups.append(group)
    return groups, skipped


def _match_group(graph, x, matmuls, constants, producer, consumers, graph_outputs, outer_reads):
    # X itself visible outside (a graph output such as last_hidden_state, or read in a subgraph):
    # dividing it by s would change what the caller sees.
    if x in graph_outputs or x in outer_reads or x not in producer:
        return None
    nodes = graph.node
    channels = constants[nodes[matmuls[0]].input[1]].dims[0]
    gamma_input = _gamma_input(nodes[producer[x]], constants, channels)
    if gamma_input is None:
        return None
    for i in consumers[x]:
        node = nodes[i]
        w = _weight(node, constants)
        if w is None or node.input[0] != x or x in node.input[1:] or w.dims[0] != channels:
            return None
        # The head (a MatMul straight to a graph output) stays fp16 in ModelOpt's exclude list, so
        # migrating outliers into it buys nothing and would only change its weights for no reason.
        if any(out in graph_outputs for out in node.output):
            return None
    return SmoothGroup(activation=x, mul=producer[x], gamma_input=gamma_input, matmuls=tuple(consumers[x]))


# -- measuring --------------------------------------------------------------------------------------


def activation_channel_max(
    model_path: str | Path, feeds: list[dict[str, np.ndarray]], tensors: list[str]
) -> dict[str, np.ndarray]:
    """Per-channel max |x| (last axis) of each named tensor, over all other axes and every feed.

    Runs onnxruntime on CPU on a copy of the model with the tensors added as graph outputs; maxima are
    reduced feed by feed so only one feed's activations are held at a time.
    """
    if not feeds:
        raise InputError("SmoothQuant calibration got no feeds; pass at least one dict of model inputs.")
    model = onnx.load(str(model_path))
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initializers]
    produced = {out for node in graph.node for out in node.output}
    unknown = [t for t in tensors if t not in produced and t not in inputs]
    if unknown:
        raise InputError(
            f"{Path(model_path).name} has no tensors named {unknown}; use names of node outputs or graph inputs."
        )
    for i, feed in enumerate(feeds):
        missing = [name for name in inputs if name not in feed]
        if missing:
            raise InputError(
                f"calibration feed {i} lacks inputs {missing} of {Path(model_path).name}; "
                f"every feed must give all of {inputs}."
            )

    existing = {out.name for out in graph.output}
    elem_types = {vi.name: vi.type.tensor_type.elem_type for vi in graph.value_info}
    fetch = [t for t in dict.fromkeys(tensors) if t not in inputs]
    for name in fetch:
        if name not in existing:
            # Shape left unknown: running shape inference on a multi-GB graph just to fill it costs more
            # than it is worth, and onnxruntime does not need it.
            elem = elem_types.get(name) or onnx.TensorProto.FLOAT
            graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))

    maxima: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="omni-edge-smoothquant-") as tmp:
        probe = Path(tmp) / "probe.onnx"
        # Saved with external data so graphs past protobuf's 2 GB limit load the same way.
        onnx.save(
            model, str(probe), save_as_external_data=True, all_tensors_to_one_file=True, location=probe.name + ".data"
        )
        del model, graph
        session = cpu_session(probe)
        for feed in feeds:
            values = dict(zip(fetch, session.run(fetch, {name: feed[name] for name in inputs}))) if fetch else {}
            for name in tensors:
                m = channel_max(values[name] if name in values else feed[name])
                maxima[name] = m if name not in maxima else np.maximum(maxima[name], m)
            del values
        del session
    return maxima


# -- rewriting --------------------------------------------------------------------------------------


def _private(
    graph: onnx.GraphProto, node: onnx.NodeProto, index: int, uses: Counter, by_name: dict[str, onnx.TensorProto]
) -> onnx.TensorProto:
    """The initializer at node.input[index], copied under a new name first if anything else reads it.

    Exporters deduplicate equal constants: in the tiny checkpoint every RMSNorm gamma is all ones and
    they all end up as one initializer, which the final norm (an unsmoothed graph output) also reads.
    """
    name = node.input[index]
    if uses[name] <= 1:
        return by_name[name]
    copy_name, n = f"{name}.smoothquant", 0
    while copy_name in uses or copy_name in by_name:
        n += 1
        copy_name = f"{name}.smoothquant.{n}"
    copy = graph.initializer.add()
    copy.CopyFrom(by_name[name])
    copy.name = copy_name
    node.input[index] = copy_name
    uses[name] -= 1
    uses[copy_name] = 1
    by_name[copy_name] = copy
    return copy


def _store(tensor: onnx.TensorProto, values: np.ndarray) -> None:
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    tensor.CopyFrom(numpy_helper.from_array(values.astype(dtype), tensor.name))


def smooth_model(
    model_path: str | Path, out_path: str | Path, feeds: list[dict[str, np.ndarray]], alpha: float = 0.5
) -> SmoothQuantReport:
    """Rescale every foldable norm -> MatMul group of the graph at model_path and save it to out_path.

    The saved graph computes the same function (up to fp32 rounding); its MatMul inputs have flatter
    per-channel ranges, which is what int8 activation quantization needs.
    """
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"SmoothQuant alpha must lie in [0, 1], got {alpha}; 0.5 is the paper's default.")
    if not feeds:
        raise InputError("SmoothQuant calibration got no feeds; pass at least one dict of model inputs.")
    model = onnx.load(str(model_path))
    graph = model.graph
    groups, skipped = find_groups(graph)

    if groups:
        act_max = activation_channel_max(model_path, feeds, [g.activation for g in groups])
        uses = _name_uses(graph)
        by_name = {t.name: t for t in graph.initializer}
        for group in groups:
            weight_max = np.max(
                [channel_max(numpy_helper.to_array(by_name[graph.node[i].input[1]]).T) for i in group.matmuls], axis=0
            )
            s = smoothing_scales(act_max[group.activation], weight_max, alpha)
            mul = graph.node[group.mul]
            gamma = _private(graph, mul, group.gamma_input, uses, by_name)
            _store(gamma, numpy_helper.to_array(gamma).astype(np.float64) / s)
            for i in group.matmuls:
                w = _private(graph, graph.node[i], 1, uses, by_name)
                _store(w, numpy_helper.to_array(w).astype(np.float64) * s[:, None])

    out_path = Path(out_path)
    data = out_path.with_name(out_path.name + ".data")
    # onnx appends to an existing data file instead of replacing it; start from an empty one.
    data.unlink(missing_ok=True)
    onnx.save(model, str(out_path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name)
    return SmoothQuantReport(
        alpha=alpha,
        smoothed_groups=len(groups),
        smoothed_matmuls=sum(len(g.matmuls) for g in groups),
        skipped_matmuls=skipped,
    )
