"""Opt-in ONNX rewrite: swap each rotary-embedding subgraph for one OmniEdgeTMRoPE plugin node.

The plain-op graph stays the default everywhere; a target that runs full TensorRT may ask for the plugin
(`supports_plugins`), and the export path records what was replaced (`RewriteReport.to_manifest`).

What is matched is what torch.onnx (dynamo) emits for transformers' `apply_rotary_pos_emb` after
`Qwen2_5OmniRotaryEmbedding`, per rotated tensor x (q or k of one layer):

    out = Add(Mul(x, C), Mul(Concat(Neg(Slice(x, D/2:)), Slice(x, :D/2)), S))

where C traces back (through Unsqueeze/Concat/Gather/Split) to a Cos and S to a Sin of
Mul(Cast(position_ids), inv_freq). Before rewriting, the graph's own inv_freq table and mrope Split
sizes are checked against the attributes given, so a plugin never silently computes other angles.
Matches that share one Cos are paired (q with k of the same layer) into one plugin node; a pair is only
formed when neither input depends on the other's output, so no cycle can appear.

Graphs already quantized by ModelOpt match too: its int8 PTQ puts QuantizeLinear->DequantizeLinear pairs on
the inputs of the rotation's Mul and Add ops (x, cos, sin, the rotated half, the two products), its fp8 PTQ
on the Add's, and the matcher looks through such pairs. They quantized ops the plugin now replaces, so they go
with them: the plugin reads x from before its pair and rotates it unquantized. Q/DQ after the rotation (the
attention MatMul's) stay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from omni_edge.kernels.build import ARCHITECTURES
from omni_edge.kernels.errors import KernelError
from omni_edge.kernels.plugins import PLUGIN_VERSION, TMROPE_PLUGIN
from omni_edge.kernels.reference import inv_freq

PLUGIN_DOMAIN = "omni_edge"
_PASS_THROUGH = {
    "Unsqueeze",
    "Concat",
    "Gather",
    "Split",
    "Slice",
    "Reshape",
    "Squeeze",
    "Expand",
    "Cast",
    "Identity",
    "Transpose",
    "QuantizeLinear",
    "DequantizeLinear",
}
PLUGIN_TENSORRT = ("tensorrt",)  # TensorRT-RTX 1.7's INetworkDefinition has no add_plugin_v3


@dataclass(frozen=True)
class TmropeAttrs:
    head_dim: int
    mrope_section: tuple[int, int, int]
    theta: float

    @classmethod
    def from_text_config(cls, text_config: dict) -> TmropeAttrs:
        """From a Thinker/Talker text config dict (rope_parameters holds theta and mrope_section)."""
        rope = text_config.get("rope_parameters") or text_config.get("rope_scaling") or {}
        head_dim = text_config.get("head_dim") or text_config["hidden_size"] // text_config["num_attention_heads"]
        theta = rope.get("rope_theta", text_config.get("rope_theta", 1e6))
        t, h, w = (int(s) for s in rope.get("mrope_section", (16, 24, 24)))
        return cls(int(head_dim), (t, h, w), float(theta))


@dataclass(frozen=True)
class RewriteReport:
    plugin: str
    version: str
    replaced: int  # rotary subgraphs (one q/k pair each) now computed by a plugin node
    left_plain: int  # rotations that matched but could not be paired; they keep the plain ops
    attrs: TmropeAttrs

    def to_manifest(self) -> dict:
        return {
            "plugin": self.plugin,
            "version": self.version,
            "domain": PLUGIN_DOMAIN,
            "replaced": self.replaced,
            "left_plain": self.left_plain,
            "head_dim": self.attrs.head_dim,
            "mrope_section": list(self.attrs.mrope_section),
            "theta": self.attrs.theta,
        }


def supports_plugins(target) -> tuple[bool, str]:
    """Whether a target can run the plugin path, and why not when it cannot."""
    if target.tensorrt not in PLUGIN_TENSORRT:
        return False, f"target {target.name} runs {target.tensorrt or 'onnxruntime'}, which cannot load our plugins"
    arch = (target.compute_capability or "").replace(".", "")
    if arch not in ARCHITECTURES:
        return False, f"no kernel build for compute capability {target.compute_capability}"
    return True, "full TensorRT with a kernel build for this GPU"


@dataclass(frozen=True)
class _Rotation:
    add: Any  # the Add node producing the rotated tensor (an onnx-graphsurgeon Node)
    x: object  # the tensor being rotated
    cos_node: object
    sin_node: object


def _gs():
    try:
        import onnx_graphsurgeon as gs
    except ImportError:
        raise KernelError("onnx-graphsurgeon is not installed: pip install 'omni-edge[trt]'") from None
    return gs


def _producer(tensor):
    return tensor.inputs[0] if len(tensor.inputs) == 1 else None


def _through_qdq(tensor):
    """The tensor before any QuantizeLinear->DequantizeLinear pairs (ModelOpt's fake quantization) on it."""
    while True:
        dq = _producer(tensor)
        q = _producer(dq.inputs[0]) if dq is not None and dq.op == "DequantizeLinear" else None
        if q is None or q.op != "QuantizeLinear":
            return tensor
        tensor = q.inputs[0]


def _source(tensor):
    """The node computing a tensor, looking through Q/DQ pairs; a DQ of a constant weight is kept."""
    return _producer(_through_qdq(tensor))


def _const(gs, tensor):
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    node = _producer(tensor)
    if node is not None and node.op == "Constant" and "value" in node.attrs:
        return np.asarray(node.attrs["value"].values)
    return None


def _trace_to(gs, tensor, op: str):
    """Walk up through shape-only ops to the first `op` node (Cos/Sin); None if the path leaves them."""
    frontier, visited = [tensor], set()
    while frontier:
        node = _producer(frontier.pop())
        if node is None or id(node) in visited:
            continue
        visited.add(id(node))
        if node.op == op:
            return node
        if node.op not in _PASS_THROUGH:
            return None
        frontier.extend(t for t in node.inputs if not isinstance(t, gs.Constant))
    return None


def _is_half_slice(gs, node, x, start: int, half: int) -> bool:
    if node is None or node.op != "Slice" or _through_qdq(node.inputs[0]) is not x:
        return False
    starts = _const(gs, node.inputs[1])
    ends = _const(gs, node.inputs[2])
    axes = _const(gs, node.inputs[3]) if len(node.inputs) > 3 else None
    if starts is None or ends is None or starts.size != 1:
        return False
    last_axis = axes is None or int(axes.reshape(-1)[0]) in (-1, len(x.shape or ()) - 1)
    end_ok = int(ends.reshape(-1)[0]) >= 2 * half if start == half else int(ends.reshape(-1)[0]) == half
    return last_axis and int(starts.reshape(-1)[0]) == start and end_ok


def _match(gs, add, half: int) -> _Rotation | None:
    if add.op != "Add" or len(add.inputs) != 2:
        return None
    muls = [_source(t) for t in add.inputs]
    if any(m is None or m.op != "Mul" for m in muls):
        return None
    for plain, rotated in (muls, muls[::-1]):
        for cat_index in (0, 1):
            concat = _source(rotated.inputs[cat_index])
            if concat is None or concat.op != "Concat" or len(concat.inputs) != 2:
                continue
            neg = _source(concat.inputs[0])
            if neg is None or neg.op != "Neg":
                continue
            low = _source(concat.inputs[1])
            x = _through_qdq(low.inputs[0]) if low is not None and low.op == "Slice" else None
            if x is None or not (
                _is_half_slice(gs, _source(neg.inputs[0]), x, half, half) and _is_half_slice(gs, low, x, 0, half)
            ):
                continue
            plain_x = [i for i, t in enumerate(plain.inputs) if _through_qdq(t) is x]
            if not plain_x:
                continue
            cos_tensor = plain.inputs[1 - plain_x[0]]
            sin_tensor = rotated.inputs[1 - cat_index]
            cos_node = _trace_to(gs, cos_tensor, "Cos")
            sin_node = _trace_to(gs, sin_tensor, "Sin")
            if cos_node is not None and sin_node is not None:
                return _Rotation(add, x, cos_node, sin_node)
    return None


def _positions(gs, cos_node, attrs: TmropeAttrs):
    """The integer position tensor feeding Cos(Mul(Cast(pos), inv_freq)), after checking inv_freq."""
    mul = _source(cos_node.inputs[0])
    if mul is None or mul.op != "Mul":
        raise KernelError(
            "rotary Cos is not fed by Mul(positions, inv_freq); this graph is not the pattern "
            "torch.onnx emits for Qwen2_5OmniRotaryEmbedding"
        )
    table = next((v for v in (_const(gs, _through_qdq(t)) for t in mul.inputs) if v is not None), None)
    expected = inv_freq(attrs.head_dim, attrs.theta)
    if table is None or table.size != expected.size or not np.allclose(table.reshape(-1), expected, rtol=1e-6):
        raise KernelError(
            f"the graph's inv_freq does not match head_dim={attrs.head_dim}, theta={attrs.theta}; "
            "pass the attributes of the model that was exported"
        )
    producers = [_source(t) for t in mul.inputs]
    cast = next((p for p in producers if p is not None and p.op == "Cast"), None)
    if cast is None:
        raise KernelError("rotary positions are not Cast to float before the inv_freq Mul")
    tensor = cast.inputs[0]
    while _producer(tensor) is not None and _producer(tensor).op == "Unsqueeze":
        tensor = _producer(tensor).inputs[0]
    return tensor


def _readers(tensor) -> list:
    """Nodes reading a tensor, looking through Q/DQ so a quantized graph's Split is still checked."""
    found = []
    for node in tensor.outputs:
        found += _readers(node.outputs[0]) if node.op in ("QuantizeLinear", "DequantizeLinear") else [node]
    return found


def _check_sections(gs, cos_node, attrs: TmropeAttrs) -> None:
    for consumer in _readers(cos_node.outputs[0]):
        if consumer.op == "Split" and len(consumer.inputs) > 1:
            sizes = _const(gs, consumer.inputs[1])
            if sizes is not None and tuple(int(s) for s in sizes) != tuple(attrs.mrope_section):
                raise KernelError(
                    f"the graph splits frequencies as {tuple(int(s) for s in sizes)}, not "
                    f"mrope_section={attrs.mrope_section}"
                )


def _ancestors(node) -> set[int]:
    seen, stack = set(), [node]
    while stack:
        for tensor in stack.pop().inputs:
            for parent in tensor.inputs:
                if id(parent) not in seen:
                    seen.add(id(parent))
                    stack.append(parent)
    return seen


def _pair(rotations: list[_Rotation]) -> tuple[list[tuple[_Rotation, _Rotation]], list[_Rotation]]:
    pairs, left = [], []
    queue = list(rotations)
    while queue:
        first = queue.pop(0)
        if queue:
            second = queue[0]
            independent = id(first.add) not in _ancestors(second.add) and id(second.add) not in _ancestors(first.add)
            if independent:
                pairs.append((first, queue.pop(0)))
                continue
        left.append(first)
    return pairs, left


def rewrite_tmrope(model, attrs: TmropeAttrs):
    """Return (new ModelProto, RewriteReport) with rotary subgraphs replaced by OmniEdgeTMRoPE nodes."""
    import onnx

    gs = _gs()
    graph = gs.import_onnx(model)
    half = attrs.head_dim // 2
    rotations = [r for r in (_match(gs, node, half) for node in graph.nodes) if r is not None]
    by_cos: dict[int, list[_Rotation]] = {}
    for rotation in rotations:  # graph.nodes is in topological order: q then k within each layer
        by_cos.setdefault(id(rotation.cos_node), []).append(rotation)

    replaced, left_plain, casts = 0, 0, {}
    for group in by_cos.values():
        cos_node = group[0].cos_node
        _check_sections(gs, cos_node, attrs)
        positions = _positions(gs, cos_node, attrs)
        if id(positions) not in casts:
            pos32 = gs.Variable(f"{positions.name}_int32", dtype=np.int32)
            graph.nodes.append(
                gs.Node(
                    "Cast",
                    name=f"{positions.name}_to_int32",
                    attrs={"to": onnx.TensorProto.INT32},
                    inputs=[positions],
                    outputs=[pos32],
                )
            )
            casts[id(positions)] = pos32
        pairs, left = _pair(group)
        left_plain += len(left)
        for q_rot, k_rot in pairs:
            outputs = [q_rot.add.outputs[0], k_rot.add.outputs[0]]
            q_rot.add.outputs.clear()  # the plugin now produces these tensors; cleanup() drops the old ops
            k_rot.add.outputs.clear()
            graph.nodes.append(
                gs.Node(
                    TMROPE_PLUGIN,
                    name=f"tmrope_{replaced}",
                    domain=PLUGIN_DOMAIN,
                    attrs={
                        "head_dim": attrs.head_dim,
                        "mrope_section": list(attrs.mrope_section),
                        "theta": float(attrs.theta),
                        "plugin_version": PLUGIN_VERSION,
                    },
                    inputs=[q_rot.x, k_rot.x, casts[id(positions)]],
                    outputs=outputs,
                )
            )
            replaced += 1
    graph.cleanup().toposort()
    out = gs.export_onnx(graph)
    if replaced and not any(op.domain == PLUGIN_DOMAIN for op in out.opset_import):
        out.opset_import.append(onnx.helper.make_opsetid(PLUGIN_DOMAIN, 1))
    return out, RewriteReport(TMROPE_PLUGIN, PLUGIN_VERSION, replaced, left_plain, attrs)
