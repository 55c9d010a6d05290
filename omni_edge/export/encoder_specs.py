"""ComponentSpecs for the audio and vision encoders (tolerances live here, next to the component)."""

from __future__ import annotations

import torch

from omni_edge import naming
from omni_edge.errors import UnsupportedConfigError
from omni_edge.export import audio_encoder, vision_encoder
from omni_edge.export.spec import ComponentSpec
from omni_edge.runtime.audio_blocks import block_frames_for, tokens_per_block
from omni_edge.runtime.audio_frontend import N_MELS
from omni_edge.runtime.vision_frontend import MERGE, PATCH, TEMPORAL
from omni_edge.runtime.vision_index import FULL_ATTENTION_CHUNK


def _audio(model):
    return model.thinker.model.audio_tower


def _visual(model):
    return model.thinker.model.visual


def _front_end_fits(component: str, config, expected: dict[str, int]) -> None:
    """The numpy front ends are written for these values; a checkpoint with others is refused, not mis-fed."""
    wrong = {k: getattr(config, k) for k, v in expected.items() if getattr(config, k) != v}
    if wrong:
        found = ", ".join(f"{k} = {v} (supported: {expected[k]})" for k, v in wrong.items())
        raise UnsupportedConfigError(f"{component}: {found}; the runtime's front end is built for the released values")


def _build_audio(model):
    tower = _audio(model)
    _front_end_fits("audio_config", tower.config, {"num_mel_bins": N_MELS})
    return audio_encoder.AudioEncoderBlocks(tower).eval()  # refuses an n_window it cannot block


def _build_vision(model):
    visual = _visual(model)
    supported = {"patch_size": PATCH, "spatial_merge_size": MERGE, "temporal_patch_size": TEMPORAL, "in_channels": 3}
    _front_end_fits("vision_config", visual.config, supported)
    return vision_encoder.VisionEncoderGraph(visual).eval()


def _audio_profile(model, max_seq_len: int) -> dict[str, tuple[int, int, int]]:
    # Every block gives up to n_window / 2 Thinker tokens, and all of them must fit the KV cache; opt is 30 s.
    block = block_frames_for(_audio(model).config.n_window)
    blocks = -(-max_seq_len // tokens_per_block(block))
    return {"blocks": (1, min(3000 // block, blocks), blocks)}


def _vision_profile(model, max_seq_len: int) -> dict[str, tuple[int, int, int]]:
    # One merged group of merge^2 patches is one Thinker token; an image or video cannot exceed the cache.
    # Windows and frames each hold at least one group; a frame's queries go FULL_ATTENTION_CHUNK at a time.
    merge = _visual(model).config.spatial_merge_size ** 2
    opt = min(256, max_seq_len)
    chunk = FULL_ATTENTION_CHUNK
    return {
        "groups": (1, opt, max_seq_len),
        "patches": (merge, merge * opt, merge * max_seq_len),
        "windows": (1, -(-opt // 16), max_seq_len),
        "frames": (1, 1, max_seq_len),
        "chunks": (1, -(-merge * opt // chunk), -(-merge * max_seq_len // chunk)),
        "chunk": (4, chunk, chunk),
    }


def audio_encoder_spec() -> ComponentSpec:
    return ComponentSpec(
        name=naming.AUDIO_ENCODER,
        build_module=_build_audio,
        input_names=("input_features", "block_lengths"),
        output_names=("audio_embeds",),
        example_inputs=lambda model: audio_encoder.dummy_inputs(_audio(model), [1.0, 1.0, 0.385]),
        dynamic_shapes=lambda: (
            {0: torch.export.Dim("blocks", min=1, max=1024)},
            {0: torch.export.Dim("blocks", min=1, max=1024)},
        ),
        check_inputs=lambda model: [
            audio_encoder.dummy_inputs(_audio(model), fractions, seed=i + 1)
            for i, fractions in enumerate(([1.0], [0.155], [1.0, 1.0, 1.0, 1.0, 0.025]))
        ],
        reference=lambda model, inputs: audio_encoder.reference_outputs(_audio(model), *inputs),
        atol=1e-4,
        rtol=1e-4,
        profile=_audio_profile,
    )


def vision_encoder_spec() -> ComponentSpec:
    patches = torch.export.Dim("patches", min=4, max=1 << 20)
    groups = torch.export.Dim("groups", min=1, max=1 << 18)
    windows = torch.export.Dim("windows", min=1, max=1 << 18)
    frames = torch.export.Dim("frames", min=1, max=1 << 18)
    chunks = torch.export.Dim("chunks", min=1, max=1 << 18)
    chunk = torch.export.Dim("chunk", min=4, max=1 << 16)
    return ComponentSpec(
        name=naming.VISION_ENCODER,
        build_module=_build_vision,
        input_names=vision_encoder.INPUT_NAMES,
        output_names=("image_embeds",),
        # Every dynamic axis is at least 2 in the example (an axis of 1 would be specialised away).
        example_inputs=lambda model: vision_encoder.dummy_inputs(_visual(model), [(2, 12, 16)], chunk=64),
        dynamic_shapes=lambda: (
            {0: patches},
            {0: patches},
            {0: groups},
            {0: groups},
            {0: windows},
            {0: patches},
            {0: frames, 1: chunks, 2: chunk},
            {0: patches},
        ),
        check_inputs=lambda model: [
            vision_encoder.dummy_inputs(_visual(model), grid, seed=i + 1, chunk=chunk)
            for i, (grid, chunk) in enumerate(
                (([(1, 4, 4)], None), ([(2, 10, 18)], None), ([(1, 20, 34), (4, 6, 8)], 128), ([(1, 40, 40)], 256))
            )
        ],
        reference=lambda model, inputs: vision_encoder.reference_outputs(_visual(model), inputs),
        atol=1e-4,
        rtol=1e-4,
        profile=_vision_profile,
    )


def audio_encoder_specs(model, target=None) -> list[ComponentSpec]:
    return [audio_encoder_spec()]


def vision_encoder_specs(model, target=None) -> list[ComponentSpec]:
    return [vision_encoder_spec()]
