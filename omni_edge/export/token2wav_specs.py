"""ComponentSpecs for dit_window and bigvgan_window (tolerances live here, next to the component)."""

from __future__ import annotations

import torch

from omni_edge import naming
from omni_edge.export import token2wav
from omni_edge.export.spec import ComponentSpec


def _dit(model):
    return model.token2wav.code2wav_dit_model


def _vocoder(model):
    return model.token2wav.code2wav_bigvgan_model


def dit_spec() -> ComponentSpec:
    codes = torch.export.Dim("codes", min=1, max=16384)
    reference = torch.export.Dim("reference_frames", min=8, max=30000)
    return ComponentSpec(
        name=naming.DIT_WINDOW,
        build_module=lambda model: token2wav.DiTStep(_dit(model)).eval(),
        input_names=token2wav.DIT_INPUTS,
        output_names=token2wav.DIT_OUTPUTS,
        example_inputs=lambda model: token2wav.dit_dummy_inputs(_dit(model), 36),
        # One graph for every window length: streaming uses a few fixed ones (first, middle, last),
        # the full-utterance path and the parity tests use others.
        dynamic_shapes=lambda: ({1: 2 * codes}, {1: codes}, None, {1: reference}, None),
        check_inputs=lambda model: [
            token2wav.dit_dummy_inputs(_dit(model), 72, 100, seed=1),
            token2wav.dit_dummy_inputs(_dit(model), 12, 50, seed=2),
        ],
        atol=1e-4,
        rtol=1e-4,
    )


def bigvgan_spec() -> ComponentSpec:
    frames = torch.export.Dim("frames", min=8, max=30000)
    return ComponentSpec(
        name=naming.BIGVGAN_WINDOW,
        build_module=lambda model: token2wav.BigVGANStep(_vocoder(model)).eval(),
        input_names=token2wav.BIGVGAN_INPUTS,
        output_names=token2wav.BIGVGAN_OUTPUTS,
        example_inputs=lambda model: token2wav.bigvgan_dummy_inputs(_vocoder(model), 60),
        dynamic_shapes=lambda: ({2: frames},),
        check_inputs=lambda model: [
            token2wav.bigvgan_dummy_inputs(_vocoder(model), 92, seed=1),
            token2wav.bigvgan_dummy_inputs(_vocoder(model), 20, seed=2),
        ],
        # Waveform samples in [-1, 1] after ~100 stacked convolutions; measured 1.5e-5.
        atol=2e-4,
        rtol=1e-4,
    )
