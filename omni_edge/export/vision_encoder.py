"""vision_encoder graph: the ViT with window attention, full-attention layers and 2D rope.

Every data-dependent index (window permutation, rope positions, attention scopes) comes in from the host
(omni_edge.runtime.vision_index), so the graph has one dynamic axis, the patch count. Variable-length
attention over cu_seqlens becomes one masked attention whose mask is built from segment ids in the graph.
"""

from __future__ import annotations

import torch
from torch import nn

from omni_edge.runtime.vision_index import vision_indices

INPUT_NAMES = ("pixel_patches", "patch_positions", "window_index", "reverse_index", "window_segments", "frame_segments")


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class VisionEncoderGraph(nn.Module):
    def __init__(self, visual):
        super().__init__()
        self.visual = visual
        self.unit = visual.spatial_merge_unit
        self.full_layers = set(visual.fullatt_block_indexes)
        self.num_heads = visual.blocks[0].attn.num_heads
        self.scaling = visual.blocks[0].attn.scaling

    def forward(self, pixel_patches, patch_positions, window_index, reverse_index, window_segments, frame_segments):
        visual = self.visual
        hidden = visual.patch_embed(pixel_patches)
        count, dim = hidden.shape
        hidden = hidden.reshape(count // self.unit, self.unit, dim)[window_index].reshape(count, dim)
        freqs = patch_positions[..., None].float() * visual.rotary_pos_emb.inv_freq  # [N, 2, F]
        freqs = torch.cat([freqs[:, 0], freqs[:, 1]], dim=-1)
        angles = torch.cat([freqs, freqs], dim=-1)[:, None, :]  # [N, 1, head_dim]
        cos, sin = angles.cos(), angles.sin()
        window_bias = self._segment_bias(window_segments, hidden.dtype)
        frame_bias = self._segment_bias(frame_segments, hidden.dtype)
        for index, block in enumerate(visual.blocks):
            bias = frame_bias if index in self.full_layers else window_bias
            hidden = hidden + self._attention(block.attn, block.norm1(hidden), cos, sin, bias)
            hidden = hidden + block.mlp(block.norm2(hidden))
        return visual.merger(hidden)[reverse_index]

    @staticmethod
    def _segment_bias(segments, dtype):
        same = segments[:, None] == segments[None, :]
        return torch.zeros(same.shape, dtype=dtype).masked_fill(~same, float("-inf"))[None]

    def _attention(self, attn, x, cos, sin, bias):
        count, dim = x.shape
        q = attn.q(x).reshape(count, self.num_heads, -1)
        k = attn.k(x).reshape(count, self.num_heads, -1)
        v = attn.v(x).reshape(count, self.num_heads, -1)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        q, k, v = (t.transpose(0, 1) for t in (q, k, v))  # [heads, N, head_dim]
        weights = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * self.scaling + bias, dim=-1)
        return attn.proj(torch.matmul(weights, v).transpose(0, 1).reshape(count, dim))


def graph_inputs(visual, pixel_patches: torch.Tensor, grid_thw) -> tuple:
    config = visual.config
    idx = vision_indices(grid_thw, config.spatial_merge_size, config.window_size, config.patch_size)
    return (
        pixel_patches,
        torch.from_numpy(idx.patch_positions),
        torch.from_numpy(idx.window_index),
        torch.from_numpy(idx.reverse_index),
        torch.from_numpy(idx.window_segments),
        torch.from_numpy(idx.frame_segments),
    )


def dummy_inputs(visual, grid_thw, seed: int = 0) -> tuple:
    config = visual.config
    patches = sum(t * h * w for t, h, w in grid_thw)
    width = config.in_channels * config.temporal_patch_size * config.patch_size**2
    gen = torch.Generator().manual_seed(seed)
    return graph_inputs(visual, torch.randn(patches, width, generator=gen), grid_thw)
