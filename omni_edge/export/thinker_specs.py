"""ComponentSpecs for the Thinker graphs (tolerances live here, next to the component)."""

from __future__ import annotations

import torch

from omni_edge import naming
from omni_edge.export import thinker
from omni_edge.export.spec import ComponentSpec

MAX_SEQ_DIM = 32768
THINKER_GRAPHS = (naming.THINKER_PREFILL, naming.THINKER_DECODE)


def _dims(with_past: bool, num_layers: int) -> tuple:
    seq = torch.export.Dim("seq", min=1, max=MAX_SEQ_DIM)
    if not with_past:
        return ({1: seq}, {2: seq}, {1: seq})
    past = torch.export.Dim("past", min=1, max=MAX_SEQ_DIM)
    # torch.export cannot express total = past + seq for a separate input, so the mask gets its own axis.
    total = torch.export.Dim("total", min=2, max=2 * MAX_SEQ_DIM)
    return ({1: seq}, {2: seq}, {1: total}, tuple({2: past} for _ in range(2 * num_layers)))


def _spec(name: str, with_past: bool, num_layers: int) -> ComponentSpec:
    inputs, outputs = thinker.io_names(num_layers, with_past)
    example = (5, 7) if with_past else (5, 0)
    checks = [(1, 9), (3, 20)] if with_past else [(1, 0), (17, 0)]
    return ComponentSpec(
        name=name,
        build_module=lambda model: thinker.ThinkerStep(model.thinker, with_past).eval(),
        input_names=tuple(inputs),
        output_names=tuple(outputs),
        example_inputs=lambda model: thinker.dummy_inputs(model.thinker, with_past, *example),
        dynamic_shapes=lambda: _dims(with_past, num_layers),
        check_inputs=lambda model: [
            thinker.dummy_inputs(model.thinker, with_past, new, past, seed=i + 1)
            for i, (new, past) in enumerate(checks)
        ],
        # fp32 graph vs fp32 eager: only reduction-order noise is expected (measured ~2e-6 on logits).
        atol=1e-4,
        rtol=1e-4,
    )


def thinker_specs(model) -> list[ComponentSpec]:
    layers = model.thinker.config.text_config.num_hidden_layers
    prefill, decode = THINKER_GRAPHS
    return [_spec(prefill, with_past=False, num_layers=layers), _spec(decode, with_past=True, num_layers=layers)]
