"""ComponentSpec: everything the generic export-and-verify loop needs to know about one graph."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ComponentSpec:
    name: str  # graph file stem and manifest key, e.g. "thinker_decoder"
    build_module: Callable[[Any], Any]  # HF model -> export-friendly torch module
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    example_inputs: Callable[[Any], tuple]  # inputs traced at export
    dynamic_shapes: Callable[[], tuple]  # torch.export dynamic shapes, same structure as the inputs
    check_inputs: Callable[[Any], list[tuple]]  # other shapes run at verification, to catch baked shapes
    atol: float  # max |onnx - torch| per output at export-time verification, x the output's RMS when above 1
    rtol: float = 0.0
    # (model, max_seq_len) -> {axis name: (min, opt, max)} the runtime feeds: recorded in the manifest and
    # used as the TensorRT optimization profile. Every dynamic axis of the inputs needs a range.
    profile: Callable[[Any, int], dict[str, tuple[int, int, int]]] | None = None
    # (model, check inputs) -> transformers' own module forward on the same inputs, in the graph's output
    # layout (NaN where the graph's value is unused). The export-friendly module re-expresses transformers'
    # math, so this is what catches a re-expression that drifts from it (a config field it does not read).
    # Compared within atol/rtol as well; the worst difference is recorded in the manifest.
    reference: Callable[[Any, tuple], tuple] | None = None
    # Decoder graphs whose present outputs are the whole cache (GroupQueryAttention): see ComponentRecord.
    shared_kv_buffer: bool = False
