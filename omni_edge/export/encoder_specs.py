"""ComponentSpecs for the audio and vision encoders (tolerances live here, next to the component)."""

from __future__ import annotations

import torch

from omni_edge import naming
from omni_edge.export import audio_encoder, vision_encoder
from omni_edge.export.spec import ComponentSpec
from omni_edge.runtime.audio_blocks import TOKENS_PER_BLOCK


def _audio(model):
    return model.thinker.model.audio_tower


def _visual(model):
    return model.thinker.model.visual


def _audio_profile(model, max_seq_len: int) -> dict[str, tuple[int, int, int]]:
    # Every block gives up to 50 Thinker tokens, and all of them must fit the KV cache; 15 blocks is 30 s.
    blocks = -(-max_seq_len // TOKENS_PER_BLOCK)
    return {"blocks": (1, min(15, blocks), blocks)}


def _vision_profile(model, max_seq_len: int) -> dict[str, tuple[int, int, int]]:
    # One merged group of merge^2 patches is one Thinker token; an image or video cannot exceed the cache.
    merge = _visual(model).config.spatial_merge_size ** 2
    opt = min(256, max_seq_len)
    return {"groups": (1, opt, max_seq_len), "patches": (merge, merge * opt, merge * max_seq_len)}


def audio_encoder_spec() -> ComponentSpec:
    return ComponentSpec(
        name=naming.AUDIO_ENCODER,
        build_module=lambda model: audio_encoder.AudioEncoderBlocks(_audio(model)).eval(),
        input_names=("input_features", "block_lengths"),
        output_names=("audio_embeds",),
        example_inputs=lambda model: audio_encoder.dummy_inputs(_audio(model), [200, 200, 77]),
        dynamic_shapes=lambda: (
            {0: torch.export.Dim("blocks", min=1, max=1024)},
            {0: torch.export.Dim("blocks", min=1, max=1024)},
        ),
        check_inputs=lambda model: [
            audio_encoder.dummy_inputs(_audio(model), lengths, seed=i + 1)
            for i, lengths in enumerate(([200], [31], [200, 200, 200, 200, 5]))
        ],
        atol=1e-4,
        rtol=1e-4,
        profile=_audio_profile,
    )


def vision_encoder_spec() -> ComponentSpec:
    patches = torch.export.Dim("patches", min=4, max=1 << 20)
    groups = torch.export.Dim("groups", min=1, max=1 << 18)
    return ComponentSpec(
        name=naming.VISION_ENCODER,
        build_module=lambda model: vision_encoder.VisionEncoderGraph(_visual(model)).eval(),
        input_names=vision_encoder.INPUT_NAMES,
        output_names=("image_embeds",),
        example_inputs=lambda model: vision_encoder.dummy_inputs(_visual(model), [(1, 12, 16)]),
        dynamic_shapes=lambda: ({0: patches}, {0: patches}, {0: groups}, {0: groups}, {0: patches}, {0: patches}),
        check_inputs=lambda model: [
            vision_encoder.dummy_inputs(_visual(model), grid, seed=i + 1)
            for i, grid in enumerate(([(1, 4, 4)], [(2, 10, 18)], [(1, 20, 34), (4, 6, 8)]))
        ],
        atol=1e-4,
        rtol=1e-4,
        profile=_vision_profile,
    )
