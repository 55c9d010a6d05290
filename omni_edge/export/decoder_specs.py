"""ComponentSpecs for the decoder graphs: thinker_decoder and talker_decoder.

One graph per decoder answers both prefill and decode: the past is a dynamic axis that may be empty, so a
prefill is the same graph fed a past of length 0 (as onnxruntime-genai and TensorRT-Edge-LLM do). The
decoder's weights exist once in the bundle, in memory and on the device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from omni_edge.components import component
from omni_edge.export import decoder
from omni_edge.export.spec import ComponentSpec
from omni_edge.targets import Target

MAX_SEQ_DIM = 32768


def _dims(num_layers: int) -> tuple:
    seq = torch.export.Dim("seq", min=1, max=MAX_SEQ_DIM)
    # Traced with a non-empty past (an axis of size 0 or 1 would be specialised); the graph's symbolic
    # axis takes 0 as well, which the export verifies (check_inputs below).
    past = torch.export.Dim("past", min=1, max=MAX_SEQ_DIM)
    # torch.export cannot express total = past + seq for a separate input, so the mask gets its own axis.
    total = torch.export.Dim("total", min=2, max=2 * MAX_SEQ_DIM)
    return ({1: seq}, {2: seq}, {1: total}, tuple({2: past} for _ in range(2 * num_layers)))


def _profile(max_seq_len: int) -> dict[str, tuple[int, int, int]]:
    """past + new tokens fill at most the cache; a prefill has no past. One new token on a half-full cache is
    the step that runs most, so it is what TensorRT tunes for."""
    half = max_seq_len // 2
    return {"seq": (1, 1, max_seq_len), "past": (0, half, max_seq_len - 1), "total": (1, half + 1, max_seq_len)}


def _spec(
    name: str, get_parts: Callable, num_layers: int, kv_dtype: str, group_query_attention: bool = False
) -> ComponentSpec:
    inputs, outputs = decoder.io_names(num_layers)
    # (new tokens, past): prefills of 1 and 17 tokens, decode steps, a chunk after a past
    checks = [(1, 0), (17, 0), (1, 9), (3, 20)]
    return ComponentSpec(
        name=name,
        build_module=lambda model: decoder.DecoderStep(get_parts(model), kv_dtype, group_query_attention).eval(),
        input_names=tuple(inputs),
        output_names=tuple(outputs),
        example_inputs=lambda model: decoder.dummy_inputs(get_parts(model), 5, 7, kv_dtype=kv_dtype),
        dynamic_shapes=lambda: _dims(num_layers),
        check_inputs=lambda model: [
            decoder.dummy_inputs(get_parts(model), new, past, seed=i + 1, kv_dtype=kv_dtype)
            for i, (new, past) in enumerate(checks)
        ],
        # fp32 graph vs fp32 eager: only reduction-order noise is expected (measured ~2e-6 on logits). An fp16
        # KV cache rounds the new keys/values to fp16 in both, so noise there can flip their last bit: 1 ulp of
        # fp16 is 2^-10 relative.
        atol=1e-4 if kv_dtype == "float32" else 2e-3,
        rtol=1e-4 if kv_dtype == "float32" else 2e-3,
        profile=lambda model, max_seq_len: _profile(max_seq_len),
        shared_kv_buffer=group_query_attention,
    )


_PARTS = {"thinker": decoder.thinker_parts, "talker": decoder.talker_parts}


def decoder_spec(
    component_name: str, model, kv_dtype: str = "float32", group_query_attention: bool = False
) -> ComponentSpec:
    """The decoder graph of component "thinker" or "talker", with that KV cache dtype and attention."""
    (name,) = component(component_name).graph_names
    get_parts = _PARTS[component_name]
    layers = get_parts(model).text_model.config.num_hidden_layers
    return _spec(name, get_parts, layers, kv_dtype, group_query_attention)


def thinker_specs(model, target: Target) -> list[ComponentSpec]:
    return [decoder_spec("thinker", model, target.kv_dtype, target.group_query_attention)]


def talker_specs(model, target: Target) -> list[ComponentSpec]:
    return [decoder_spec("talker", model, target.kv_dtype, target.group_query_attention)]
