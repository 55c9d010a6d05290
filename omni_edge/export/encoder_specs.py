"""ComponentSpecs for the audio and vision encoders (tolerances live here, next to the component)."""

from __future__ import annotations

import torch

from omni_edge import naming
from omni_edge.export import audio_encoder, vision_encoder
from omni_edge.export.spec import ComponentSpec
from omni_edge.runtime.audio_blocks import TOKENS_PER_BLOCK
from omni_edge.runtime.vision_index import FULL_ATTENTION_CHUNK


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
    windows = torch.export.Dim("windows", min=1, max=1 << 18)
    frames = torch.export.Dim("frames", min=1, max=1 << 18)
    chunks = torch.export.Dim("chunks", min=1, max=1 << 18)
    chunk = torch.export.Dim("chunk", min=4, max=1 << 16)
    return ComponentSpec(
        name=naming.VISION_ENCODER,
        build_module=lambda model: vision_encoder.VisionEncoderGraph(_visual(model)).eval(),
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
        atol=1e-4,
        rtol=1e-4,
        profile=_vision_profile,
    )


def audio_encoder_specs(model) -> list[ComponentSpec]:
    return [audio_encoder_spec()]


def vision_encoder_specs(model) -> list[ComponentSpec]:
    return [vision_encoder_spec()]
