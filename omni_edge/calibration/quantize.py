"""One graph, one precision: ModelOpt ONNX PTQ with explicit Q/DQ (TensorRT targets), weight-only MatMulNBits
(ONNX Runtime on a CPU: weight_only.py), or a plain fp16 cast.

Every function takes an fp32 graph file and writes the reduced-precision graph to another path, in the
bundle's layout (`<name>.onnx` + `<name>.onnx.data`). Graph inputs and outputs keep their fp32/int64 types,
so the runtime feeds a quantized bundle exactly like an fp32 one.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnxruntime.quantization.calibrate import CalibrationDataReader

from omni_edge.calibration.weight_only import BITS as WEIGHT_ONLY_BITS
from omni_edge.calibration.weight_only import has_weight_matmuls, weight_only_graph
from omni_edge.errors import OmniEdgeError, TargetError
from omni_edge.targets import Target

# omni-edge precision -> (ModelOpt quantize_mode, calibration_method), for the activation-quantizing precisions.
# int4-awq is weight-only: MatMulNBits on a CPU (weight_only.py), int4 Q/DQ under TensorRT (int4_qdq.py).
MODELOPT_MODES = {
    "int8": ("int8", "max"),  # entropy histograms fail on the decoders (masked -inf ranges): measured
    "fp8": ("fp8", "max"),
}
INT4_BLOCK_SIZE = 128  # ModelOpt's default; smaller only when a weight's input width is not a multiple of it


class QuantizationError(OmniEdgeError):
    """ModelOpt could not quantize a graph."""


@dataclass(frozen=True)
class QuantizeSettings:
    precision: str  # "fp16", "int8", "fp8" or "int4-awq"
    high_precision: str  # "fp16" on GPUs (TensorRT runs the rest in half), "fp32" for ONNX Runtime on CPU
    excluded_nodes: tuple[str, ...] = ()  # kept in high precision: output heads (GPU targets), attention matmuls
    block_size: int | None = None  # int4 only
    weight_only: bool = False  # int8/int4 as MatMulNBits (Target.weight_only, a graph with MatMul weights)
    source: str = "fp32"  # the graph's own weights: "fp16" when exported so (export/half_source.py)


def check_modelopt() -> None:
    try:
        import modelopt.onnx.quantization  # noqa: F401
    except ImportError as exc:
        raise TargetError(
            f"quantization needs NVIDIA ModelOpt ({exc}); pip install 'omni-edge[quant]', or export with "
            "--precision fp32 (or fp16)"
        ) from None


def save_graph(model, path: Path) -> None:
    """The bundle's layout: weights in `<file>.data` beside the graph, whatever the graph's size."""
    import onnx

    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)  # onnx refuses to append to an existing data file
    # Small tensors stay inline: ONNX Runtime's shape inference must read shape constants (Expand, Reshape).
    onnx.save(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=1024,
    )


def head_nodes(model) -> tuple[str, ...]:
    """MatMul/Gemm nodes that write a graph output, directly or through the Cast to fp32 of a graph exported in
    fp16 (export/half_source.py): the lm_head and codec head. Their outputs pick the tokens; whether they are
    quantized with the rest is the target's (Target.quantized_heads)."""
    outputs = {o.name for o in model.graph.output}
    outputs |= {n.input[0] for n in model.graph.node if n.op_type == "Cast" and n.output[0] in outputs}
    return tuple(n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and n.output[0] in outputs)


def attention_matmuls(model) -> tuple[str, ...]:
    """MatMuls of two activations (q.k^T and probabilities.v). Kept in high precision: with Q/DQ on them the
    tiny Thinker's fp8 graph fell to cosine 0.76 against fp32, without them it is 0.985 (measured); the
    masked scores and the peaked probabilities do not fit one per-tensor scale."""
    constants = {t.name for t in model.graph.initializer}
    constants |= {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    return tuple(n.name for n in model.graph.node if n.op_type == "MatMul" and not any(i in constants for i in n.input))


def int4_block_size(model) -> int:
    """The largest power of two up to 128 that divides the input width of every constant MatMul weight."""
    widths = _matmul_weight_rows(model)
    block = INT4_BLOCK_SIZE
    while block > 8 and any(w % block for w in widths):
        block //= 2
    return block


def _matmul_weight_rows(model) -> list[int]:
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    return [
        dims[n.input[1]][0] for n in model.graph.node if n.op_type == "MatMul" and len(dims.get(n.input[1], [])) == 2
    ]


def settings_for(src: Path, precision: str, target: Target) -> QuantizeSettings:
    import onnx

    model = onnx.load(str(src), load_external_data=False)
    # BigVGAN holds convolutions only, which MatMulNBits cannot: it keeps Q/DQ on the cpu target too.
    weight_only = target.weight_only and precision in WEIGHT_ONLY_BITS and has_weight_matmuls(model.graph)
    block = int4_block_size(model) if precision == "int4-awq" and not weight_only else None
    heads = () if target.quantized_heads else head_nodes(model)
    excluded = heads + attention_matmuls(model)
    return QuantizeSettings(precision, target.high_precision, excluded, block, weight_only, weights_precision(model))


def weights_precision(model) -> str:
    """fp16 when the graph's MatMul weights are fp16 (exported so: export/half_source.py), else "fp32"."""
    import onnx

    matmul_weights = {n.input[1] for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1}
    types = {t.data_type for t in model.graph.initializer if t.name in matmul_weights}
    return "fp16" if onnx.TensorProto.FLOAT16 in types else "fp32"


def to_fp16(src: Path, dst: Path) -> None:
    """Weights and activations in fp16, inputs and outputs kept fp32, rotary angles kept fp32."""
    import onnx

    model = onnx.load(str(src))
    if has_subgraphs(model):
        raise QuantizationError(
            f"{src.name} cannot be cast to fp16: its chunked attention is an ONNX Scan, and ModelOpt's fp16 "
            "conversion misplaces the casts of values a Scan body reads from the outer graph; give this "
            "component fp32, int8 or fp8 (e.g. --precision vision_encoder=fp8)"
        )
    save_graph(fp16_graph(model, src.name), dst)


def has_subgraphs(model) -> bool:
    """Whether a graph holds control flow (Scan, Loop, If): nodes with a graph attribute."""
    import onnx

    return any(a.type == onnx.AttributeProto.GRAPH for n in model.graph.node for a in n.attribute)


def fp16_graph(model, name: str):
    """ModelOpt's fp16 autocast (as `convert_to_f16`, pinned 0.47), with the rotary-angle nodes held in fp32.

    fp16 has 11 significant bits: position ids above 2048 are rounded (to even numbers, then to multiples of 4)
    before they are multiplied by inv_freq, so an fp16 angle subgraph would rotate q/k by wrong angles at long
    contexts. Only the positions -> Cos/Sin chain stays fp32; cos/sin values themselves are fine in fp16.
    onnxconverter-common's faster converter mistypes the DiT's scalar constants and clamps -inf masks, so
    ModelOpt's is used."""
    check_modelopt()
    import modelopt.onnx.autocast.utils as autocast_utils
    import modelopt.onnx.utils as onnx_utils
    from modelopt.onnx.autocast.convert import LATEST_IR_VERSION_SUPPORTED_BY_ORT, _capture_network_io_metadata
    from modelopt.onnx.autocast.graphsanitizer import GraphSanitizer
    from modelopt.onnx.autocast.precisionconverter import PrecisionConverter

    _quiet_modelopt()
    aside = _set_aside_int4_weights(model)
    try:
        io_metadata = _capture_network_io_metadata(model, True)
        min_opset = max(19, onnx_utils.get_min_opset_for_precisions(onnx_utils.get_qdq_precisions(model)))
        sanitizer = GraphSanitizer(
            model, min_opset=min_opset, trt_plugins=[], max_ir_version=LATEST_IR_VERSION_SUPPORTED_BY_ORT
        )
        sanitizer.find_custom_nodes()
        sanitizer.convert_opset()
        sanitizer.ensure_graph_name_exists()
        sanitizer.convert_fp64_to_fp32()
        model = onnx_utils.infer_types(sanitizer.model, False, strict_mode=True)
        value_info, initializers, node_inits = autocast_utils.setup_mappings(model)
        converter = PrecisionConverter(
            model,
            value_info,
            initializers,
            node_inits,
            keep_io_types=True,
            low_precision_type="fp16",
            custom_ops=sanitizer.custom_ops,
            original_network_io_metadata=io_metadata,
        )
        keep = set(rotary_angle_nodes(model))
        converted = converter.convert(
            [n.name for n in model.graph.node if n.name in keep],
            [n.name for n in model.graph.node if n.name not in keep],
        )
    except Exception as exc:  # ModelOpt's internals raise bare asserts
        raise QuantizationError(f"ModelOpt could not cast {name} to fp16: {type(exc).__name__}: {exc}") from exc
    _put_back(converted, aside)
    return converted


def _set_aside_int4_weights(model) -> list:
    """Move the INT4 weights out of the graph (as graph inputs of their type and shape) while ModelOpt casts it:
    it copies every initializer several times over, and int4 weights are not cast anyway (the medium int4
    Thinker's cast took 84 s with them aside, 222 s without; its 11 GiB peak is the fp32 head's copies).
    Returns them for _put_back."""
    import onnx

    aside = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT4]
    if aside:
        names = {t.name for t in aside}
        kept = [t for t in model.graph.initializer if t.name not in names]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
        model.graph.input.extend(
            onnx.helper.make_tensor_value_info(t.name, onnx.TensorProto.INT4, list(t.dims)) for t in aside
        )
    return aside


def _put_back(model, aside: list) -> None:
    names = {t.name for t in aside}
    inputs = [i for i in model.graph.input if i.name not in names]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    model.graph.initializer.extend(aside)


def rotary_angle_nodes(model, positions: str = "position_ids") -> list[str]:
    """Nodes on a path from the position-id input to a Cos or Sin, those included."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for tensor in node.input:
            consumers.setdefault(tensor, []).append(node)
    downstream, frontier = {}, [positions]
    while frontier:
        for node in consumers.get(frontier.pop(), []):
            if node.name not in downstream:
                downstream[node.name] = node
                frontier.extend(node.output)
    producers = {out: node for node in model.graph.node for out in node.output}
    keep, stack = set(), [n for n in downstream.values() if n.op_type in ("Cos", "Sin")]
    while stack:
        node = stack.pop()
        if node.name in keep or node.name not in downstream:
            continue
        keep.add(node.name)
        stack.extend(producers[t] for t in node.input if t in producers)
    return sorted(keep)


def quantize_graph(src: Path, dst: Path, settings: QuantizeSettings, feeds: list[dict[str, np.ndarray]]) -> str:
    """`src` reduced to `settings.precision`, calibrated on `feeds` (what the runtime fed this graph), written to
    `dst`; returns the method, as the accuracy report names it."""
    if settings.precision == "fp16":
        to_fp16(src, dst)
        return "fp16 cast"
    if settings.precision not in (*MODELOPT_MODES, "int4-awq"):
        raise QuantizationError(f"no quantization recipe for {settings.precision}")
    # int8 weight-only is round-to-nearest and needs no activations; the others are calibrated.
    if not feeds and not (settings.weight_only and settings.precision == "int8"):
        raise QuantizationError(
            f"{src.name}: the calibration run never reached this graph, so it cannot be "
            "calibrated; add calibration data that exercises it (media for the encoders)"
        )
    if settings.weight_only:
        result = weight_only_graph(src, dst, settings.precision, feeds, settings.excluded_nodes)
        return result.method(settings.precision)
    if settings.precision == "int4-awq":  # weight-only too: written weight by weight, not by ModelOpt
        from omni_edge.calibration.int4_qdq import int4_qdq_model

        assert settings.block_size is not None  # settings_for sets it for int4 Q/DQ
        model, int4 = int4_qdq_model(src, feeds, settings.excluded_nodes, settings.block_size)
        _save_in_high_precision(model, src.name, settings, dst)
        return int4.method()
    _modelopt_qdq(src, dst, settings, feeds)
    mode, method = MODELOPT_MODES[settings.precision]
    return f"ModelOpt {mode} {method}"


def _modelopt_qdq(src: Path, dst: Path, settings: QuantizeSettings, feeds: list[dict[str, np.ndarray]]) -> None:
    import onnx

    check_modelopt()
    import modelopt.onnx.quantization as mq

    mode, method = MODELOPT_MODES[settings.precision]
    with tempfile.TemporaryDirectory(prefix="omni-edge-quant-") as work:
        # ModelOpt rewrites the graph file it is given (measured: 0.47 changes its bytes), and src is the FP32
        # reference the accuracy report compares against, so it gets a copy.
        source, out = Path(work) / "fp32" / src.name, Path(work) / dst.name
        source.parent.mkdir()
        copy_graph(src, source)
        try:
            _quiet_modelopt()
            mq.quantize(
                str(source),
                quantize_mode=mode,
                calibration_method=method,
                calibration_data_reader=FeedReader(feeds),
                calibration_eps=["cpu"],
                output_path=str(out),
                # fp32 here; the fp16 pass below keeps the rotary angles in fp32, which ModelOpt's cannot
                high_precision_dtype="fp32",
                nodes_to_exclude=list(settings.excluded_nodes) or None,
                use_external_data_format=True,
                log_level="ERROR",
            )
        except Exception as exc:  # ModelOpt raises bare asserts and numpy errors from deep inside
            raise QuantizationError(
                f"ModelOpt could not quantize {src.name} to {settings.precision}: {type(exc).__name__}: {exc}"
            ) from exc
        if not out.is_file():
            raise QuantizationError(f"ModelOpt wrote no graph for {src.name} ({settings.precision})")
        _save_in_high_precision(onnx.load(str(out)), src.name, settings, dst)


def _save_in_high_precision(model, name: str, settings: QuantizeSettings, dst: Path) -> None:
    """The quantized graph's other ops in the target's high precision (fp16 under TensorRT), written to dst."""
    # A graph with a Scan (the vision encoder's chunked attention) keeps its unquantized ops in fp32: ModelOpt
    # 0.47's fp16 conversion misplaces the casts of values a Scan body reads from the outer graph.
    # A graph exported in fp16 is there already.
    fp16 = settings.high_precision == "fp16" and settings.source == "fp32" and not has_subgraphs(model)
    save_graph(fp16_graph(model, name) if fp16 else model, dst)


def copy_graph(src: Path, dst: Path) -> None:
    """Graph and weights; the file name is kept because the graph names its data file."""
    if src.name != dst.name:
        raise ValueError(f"copy_graph keeps file names: {src.name} -> {dst.name}")
    shutil.copyfile(src, dst)
    data = src.with_name(src.name + ".data")
    if data.is_file():
        shutil.copyfile(data, dst.with_name(dst.name + ".data"))


class FeedReader(CalibrationDataReader):
    """The recorded feeds as a CalibrationDataReader, plus the get_first() ModelOpt also calls."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.feeds = feeds
        self._iter = iter(feeds)

    def get_next(self):
        return next(self._iter, None)

    def get_first(self):
        return self.feeds[0]

    def rewind(self):
        self._iter = iter(self.feeds)

    def __len__(self):
        return len(self.feeds)


def _quiet_modelopt() -> None:
    # ModelOpt logs every pass at INFO to the root handler; our progress bar says what is happening.
    for name in ("modelopt", "modelopt.onnx", "modelopt.onnx.autocast"):
        logging.getLogger(name).setLevel(logging.ERROR)
