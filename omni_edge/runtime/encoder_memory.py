"""Peak activation memory of the audio and vision encoders, from their widths and the input's size.

The memory plan prices the encoders with these (encoder_activation_plan), and the media pre-check can refuse
an image or video whose encoding alone would not fit (media_budget.check_turn_media). Formulas follow the
graphs in omni_edge/export: fp32 activations, and one layer's live tensors set the peak because engines reuse
activation memory layer by layer. Measured with ONNX Runtime (CPU, arena off, peak RSS of one run) on the tiny
checkpoint (2 heads, hidden 32): 448x448 6 MB, 896x896 48 MB, 1344x1344 57 MB, where the dense graph these
replaced took 27, 537 and 2693 MB; the formulas give 7, 28, 63 MB and 35, 547, 2760 MB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from omni_edge.runtime.audio_blocks import BLOCK_FRAMES, TOKENS_PER_BLOCK
from omni_edge.runtime.vision_index import FULL_ATTENTION_CHUNK, full_attention_chunk, window_order

SAMPLE_RATE = 16_000
HOP = 160


@dataclass(frozen=True)
class VisionDims:
    """What the vision encoder's activations scale with (vision_config of the checkpoint)."""

    heads: int
    hidden: int
    intermediate: int
    out_hidden: int
    patch: int = 14
    merge: int = 2
    window: int = 112

    @classmethod
    def from_config(cls, config: dict) -> VisionDims:
        return cls(
            heads=int(config["num_heads"]),
            hidden=int(config["hidden_size"]),
            intermediate=int(config["intermediate_size"]),
            out_hidden=int(config["out_hidden_size"]),
            patch=int(config.get("patch_size", 14)),
            merge=int(config.get("spatial_merge_size", 2)),
            window=int(config.get("window_size", 112)),
        )


# Qwen2.5-Omni-7B's vision tower (3B: the same ViT, out_hidden 2048).
QWEN_OMNI_7B_VISION = VisionDims(heads=16, hidden=1280, intermediate=3420, out_hidden=3584)
SCORE_COPIES = 3  # q.k^T, the scaled and masked scores, the softmax: all live at the attention's peak


def vision_activation_bytes(grid_thw, dims: VisionDims, chunk: int = FULL_ATTENTION_CHUNK, itemsize: int = 4) -> int:
    """Peak activation memory of the vision_encoder graph (scoped attention) on `grid_thw`.

    One layer's live tensors set the peak (engines reuse activation memory layer by layer): the residual
    stream and its norm (2 [N, D]), then the larger of the attention (q, k, v [N, D], the scope-gathered k, v
    and output, and SCORE_COPIES score tensors of one scope table: windows [W, heads, Lw, Lw] or one
    full-attention chunk [frames, heads, chunk, frame_len]), the MLP (gate, up and their product [N, I]) and
    the merger. Linear in the patch count for a fixed frame size.
    """
    grid = [tuple(int(v) for v in g) for g in grid_thw]
    n = sum(t * h * w for t, h, w in grid)
    window_len = (dims.window // dims.patch) ** 2
    windows = len(window_order(grid, dims.merge, dims.window, dims.patch)[1])
    frames = sum(t for t, _, _ in grid)
    frame_len = max(h * w for _, h, w in grid)
    step = full_attention_chunk(frame_len, chunk)
    padded_frame = -(-frame_len // step) * step
    rows = max(windows * window_len, frames * padded_frame)  # the larger slot table, flattened
    scores = SCORE_COPIES * dims.heads * max(windows * window_len * window_len, frames * step * padded_frame)
    attention = 3 * n * dims.hidden + 3 * rows * dims.hidden + scores
    mlp = 3 * n * dims.intermediate
    # RMSNorm, the 2x2 regroup and the first Linear are [N, D] each; the second gives [N / merge^2, out].
    merger = 3 * n * dims.hidden + (n // dims.merge**2) * dims.out_hidden
    return itemsize * (2 * n * dims.hidden + max(attention, mlp, merger))


def dense_vision_activation_bytes(grid_thw, dims: VisionDims, itemsize: int = 4) -> int:
    """The same for the dense graph this replaced: [N, N] window and frame masks (float + bool) held through
    every layer and SCORE_COPIES [heads, N, N] score tensors per layer. Kept to state what was saved."""
    n = sum(int(t) * int(h) * int(w) for t, h, w in grid_thw)
    masks = 2 * n * n * (itemsize + 1)
    return masks + itemsize * (2 * n * dims.hidden + 3 * n * dims.hidden + SCORE_COPIES * dims.heads * n * n)


def image_activation_bytes(height: int, width: int, dims: VisionDims, chunk: int = FULL_ATTENTION_CHUNK) -> int:
    """vision_activation_bytes of one image of height x width pixels, at the size the model sees it."""
    from omni_edge.runtime.vision_frontend import smart_resize

    factor = dims.merge * dims.patch
    new_h, new_w = smart_resize(height, width, factor)
    return vision_activation_bytes([(1, new_h // dims.patch, new_w // dims.patch)], dims, chunk)


def largest_image_grid(max_tokens: int, dims: VisionDims) -> tuple[int, int, int]:
    """The grid of the largest square image of at most `max_tokens` tokens (what the memory plan prices)."""
    side = max(1, math.isqrt(max(max_tokens, 1)))
    return (1, side * dims.merge, side * dims.merge)


@dataclass(frozen=True)
class AudioDims:
    """What the audio encoder's activations scale with (audio_config of the checkpoint)."""

    heads: int
    d_model: int
    ffn: int
    output_dim: int
    mel_bins: int = 128
    block_frames: int = BLOCK_FRAMES  # 2 * n_window

    @classmethod
    def from_config(cls, config: dict) -> AudioDims:
        return cls(
            heads=int(config["encoder_attention_heads"]),
            d_model=int(config["d_model"]),
            ffn=int(config["encoder_ffn_dim"]),
            output_dim=int(config["output_dim"]),
            mel_bins=int(config.get("num_mel_bins", 128)),
            block_frames=2 * int(config.get("n_window", BLOCK_FRAMES // 2)),
        )


def audio_activation_bytes(seconds: float, dims: AudioDims, itemsize: int = 4) -> int:
    """Peak activation memory of the audio_encoder graph: independent blocks of 2 * n_window frames (2 s in
    released checkpoints), each attending to itself (scores [blocks, heads, n_window, n_window]), so it is
    linear in the clip's length."""
    block = dims.block_frames
    blocks = max(1, -(-math.ceil(seconds * SAMPLE_RATE / HOP) // block))
    steps = block // 2  # after the stride-2 conv
    conv = dims.mel_bins * block + 2 * dims.d_model * block
    attention = 3 * steps * dims.d_model + SCORE_COPIES * dims.heads * steps * steps
    mlp = 2 * steps * dims.ffn
    return itemsize * blocks * (2 * steps * dims.d_model + max(conv, attention, mlp))


# --------------------------------------------------------------------------------------- the memory plan

PLAN_IMAGE_SIDES = (448, 1344)
MAX_IMAGE_TOKENS = 16384  # preprocess_image's max_pixels / 28^2


def encoder_activation_plan(config: dict, max_seq_len: int, sides=PLAN_IMAGE_SIDES) -> dict[str, int]:
    """Peak activation bytes of the audio and vision encoders of a checkpoint (its config.json, parsed):
    one square image per side in `sides`, the largest image the KV cache takes, the longest audio clip it takes.

    The memory plan adds max(these, the decoder prefill's) as the activation peak: the encoders run before
    the prefill, never at the same time.
    """
    from omni_edge.runtime.audio_frontend import MAX_AUDIO_SECONDS

    thinker = config.get("thinker_config", config)
    out: dict[str, int] = {}
    if "vision_config" in thinker:
        dims = VisionDims.from_config(thinker["vision_config"])
        for side in sides:
            out[f"vision_encoder {side}x{side}"] = image_activation_bytes(side, side, dims)
        tokens = min(max_seq_len, MAX_IMAGE_TOKENS)
        grid = largest_image_grid(tokens, dims)
        out[f"vision_encoder largest image ({tokens} tokens)"] = vision_activation_bytes([grid], dims)
    if "audio_config" in thinker:
        seconds = min(MAX_AUDIO_SECONDS, max_seq_len / (TOKENS_PER_BLOCK / 2))  # 25 tokens per second, any block
        out[f"audio_encoder {seconds:.0f} s"] = audio_activation_bytes(
            seconds, AudioDims.from_config(thinker["audio_config"])
        )
    return out
