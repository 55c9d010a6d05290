"""ComponentSpecs for the decoder graphs: thinker_prefill/decode and talker_prefill/decode."""

from __future__ import annotations

from collections.abc import Callable

import torch

from omni_edge.components import component
from omni_edge.export import decoder
from omni_edge.export.spec import ComponentSpec

MAX_SEQ_DIM = 32768


def _dims(with_past: bool, num_layers: int) -> tuple:
    seq = torch.export.Dim("seq", min=1, max=MAX_SEQ_DIM)
    if not with_past:
        return ({1: seq}, {2: seq}, {1: seq})
    past = torch.export.Dim("past", min=1, max=MAX_SEQ_DIM)
    # torch.export cannot express total = past + seq for a separate input, so the mask gets its own axis.
    total = torch.export.Dim("total", min=2, max=2 * MAX_SEQ_DIM)
    return ({1: seq}, {2: seq}, {1: total}, tuple({2: past} for _ in range(2 * num_layers)))


def _profile(with_past: bool, max_seq_len: int) -> dict[str, tuple[int, int, int]]:
    """Prefill: up to the whole cache at once. Decode: past + new tokens fill at most the cache; one new
    token on a half-full cache is the step that runs most, so it is what TensorRT tunes for."""
    if not with_past:
        return {"seq": (1, min(256, max_seq_len), max_seq_len)}
    half = max_seq_len // 2
    return {"seq": (1, 1, max_seq_len - 1), "past": (1, half, max_seq_len - 1), "total": (2, half + 1, max_seq_len)}


def _spec(name: str, get_parts: Callable, with_past: bool, num_layers: int) -> ComponentSpec:
    inputs, outputs = decoder.io_names(num_layers, with_past)
    example = (5, 7) if with_past else (5, 0)
    checks = [(1, 9), (3, 20)] if with_past else [(1, 0), (17, 0)]
    return ComponentSpec(
        name=name,
        build_module=lambda model: decoder.DecoderStep(get_parts(model), with_past).eval(),
        input_names=tuple(inputs),
        output_names=tuple(outputs),
        example_inputs=lambda model: decoder.dummy_inputs(get_parts(model), with_past, *example),
        dynamic_shapes=lambda: _dims(with_past, num_layers),
        check_inputs=lambda model: [
            decoder.dummy_inputs(get_parts(model), with_past, new, past, seed=i + 1)
            for i, (new, past) in enumerate(checks)
        ],
        # fp32 graph vs fp32 eager: only reduction-order noise is expected (measured ~2e-6 on logits).
        atol=1e-4,
        rtol=1e-4,
        profile=lambda model, max_seq_len: _profile(with_past, max_seq_len),
    )


def _pair(names: tuple[str, ...], get_parts: Callable, model) -> list[ComponentSpec]:
    layers = get_parts(model).text_model.config.num_hidden_layers
    prefill, decode = names
    return [_spec(prefill, get_parts, False, layers), _spec(decode, get_parts, True, layers)]


def thinker_specs(model) -> list[ComponentSpec]:
    return _pair(component("thinker").graph_names, decoder.thinker_parts, model)


def talker_specs(model) -> list[ComponentSpec]:
    return _pair(component("talker").graph_names, decoder.talker_parts, model)
