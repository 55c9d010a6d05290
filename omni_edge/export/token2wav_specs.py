"""ComponentSpecs for dit_window and bigvgan_window (tolerances live here, next to the component)."""

from __future__ import annotations

import torch

from omni_edge import naming
from omni_edge.export import token2wav
from omni_edge.export.spec import ComponentSpec
from omni_edge.runtime.token2wav import StreamWindows


def _dit(model):
    return model.token2wav.code2wav_dit_model


def _vocoder(model):
    return model.token2wav.code2wav_bigvgan_model


# The streaming path (runtime/token2wav.py) calls the DiT on at most past + chunk + future mel frames and
# BigVGAN on vocoder_context + chunk, give or take the last window; the full-utterance path (parity checks,
# offline use) is allowed up to FULL_PATH_MAX_CODES codes (about 10 s of speech) in one call.
FULL_PATH_MAX_CODES = 512


def stream_windows(model) -> StreamWindows:
    """The windows the runtime streams with, from the checkpoint's own DiT block size and context layers."""
    dit = model.token2wav.config.dit_config
    return StreamWindows.for_dit(dit.block_size, len(dit.look_backward_layers), len(dit.look_ahead_layers), dit.repeats)


def _reference_frames(model) -> list[int]:
    mel = model.token2wav.config.dit_config.mel_dim
    return [params["ref_mel"].numel() // mel for params in model.speaker_map.values()] or [8]


def _dit_profile(model, max_seq_len: int) -> dict[str, tuple[int, int, int]]:
    repeats, windows = model.token2wav.config.dit_config.repeats, stream_windows(model)
    window = (windows.past + windows.chunk + windows.future) // repeats
    frames = _reference_frames(model)  # each speaker's reference mel has its own fixed length
    return {
        "codes": (1, window, max(window, FULL_PATH_MAX_CODES)),
        "reference_frames": (min(frames), max(frames), max(frames)),
    }


def _bigvgan_profile(model, max_seq_len: int) -> dict[str, tuple[int, int, int]]:
    repeats, windows = model.token2wav.config.dit_config.repeats, stream_windows(model)
    return {
        "frames": (8, windows.vocoder_context + windows.chunk, windows.vocoder_context + FULL_PATH_MAX_CODES * repeats)
    }


def _build_dit(model):
    stream_windows(model)  # refuses, before the export, a block size the runtime could not stream
    return token2wav.DiTStep(_dit(model)).eval()


def dit_spec() -> ComponentSpec:
    codes = torch.export.Dim("codes", min=1, max=16384)
    reference = torch.export.Dim("reference_frames", min=8, max=30000)
    return ComponentSpec(
        name=naming.DIT_WINDOW,
        build_module=_build_dit,
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
        reference=lambda model, inputs: token2wav.dit_reference(_dit(model), *inputs),
        # fp32 reordering noise over 22 transformer blocks: 1.4e-4 x the output's RMS measured at full depth
        # (the `deep` preset), 1e-5 at 4 blocks.
        atol=3e-4,
        rtol=1e-4,
        profile=_dit_profile,
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
        reference=lambda model, inputs: token2wav.bigvgan_reference(_vocoder(model), *inputs),
        profile=_bigvgan_profile,
    )


def dit_specs(model, target=None) -> list[ComponentSpec]:
    return [dit_spec()]


def bigvgan_specs(model, target=None) -> list[ComponentSpec]:
    return [bigvgan_spec()]
