"""vision_encoder graph: the ViT with window attention, full-attention layers and 2D rope.

Every data-dependent index (window permutation, rope positions, attention scopes) comes in from the host
(omni_edge.runtime.vision_index), so the graph's only data-dependent sizes are the patch, window, frame and
chunk counts. Variable-length attention over cu_seqlens becomes attention over padded scopes, so memory grows
with the patch count, not its square: the window layers attend within [windows, window_len] slot tables, the
full-attention layers within each frame, `chunk` queries at a time in a Scan (ONNX Scan: one chunk's scores
[frames, heads, chunk, frame_len] are live at a time).
"""

from __future__ import annotations

import torch
from torch import nn
from torch._higher_order_ops.scan import scan

from omni_edge.runtime.vision_index import vision_indices

INPUT_NAMES = (
    "pixel_patches",
    "patch_positions",
    "window_index",
    "reverse_index",
    "window_slots",
    "window_rows",
    "frame_slots",
    "frame_rows",
)


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

    def forward(
        self,
        pixel_patches,
        patch_positions,
        window_index,
        reverse_index,
        window_slots,
        window_rows,
        frame_slots,
        frame_rows,
    ):
        visual = self.visual
        hidden = visual.patch_embed(pixel_patches)
        count, dim = hidden.shape
        hidden = hidden.reshape(count // self.unit, self.unit, dim)[window_index].reshape(count, dim)
        freqs = patch_positions[..., None].float() * visual.rotary_pos_emb.inv_freq  # [N, 2, F]
        freqs = torch.cat([freqs[:, 0], freqs[:, 1]], dim=-1)
        angles = torch.cat([freqs, freqs], dim=-1)[:, None, :]  # [N, 1, head_dim]
        cos, sin = angles.cos(), angles.sin()
        windows = (window_slots[:, None, :], window_rows)  # one chunk per window
        frames = (frame_slots, frame_rows)
        for index, block in enumerate(visual.blocks):
            scopes = frames if index in self.full_layers else windows
            hidden = hidden + self._attention(block.attn, block.norm1(hidden), cos, sin, *scopes)
            hidden = hidden + block.mlp(block.norm2(hidden))
        return visual.merger(hidden)[reverse_index]

    def _attention(self, attn, x, cos, sin, slots, rows):
        """Attention within scopes: slots [scopes, chunks, chunk] (-1 = padding), rows [N] back to patches."""
        count, dim = x.shape
        q = attn.q(x).reshape(count, self.num_heads, -1)
        k = attn.k(x).reshape(count, self.num_heads, -1)
        v = attn.v(x).reshape(count, self.num_heads, -1)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        scopes, chunks, chunk = slots.shape
        index = slots.clamp(min=0)
        keys = index.reshape(scopes, chunks * chunk)
        k_scope, v_scope = (t[keys].transpose(1, 2) for t in (k, v))  # [scopes, heads, L, head_dim]
        padding = (slots < 0).reshape(scopes, 1, 1, chunks * chunk)
        bias = torch.zeros(padding.shape, dtype=x.dtype).masked_fill(padding, float("-inf"))

        def step(carry, queries):  # queries [scopes, chunk]: one chunk of every scope
            q_chunk = q[queries].transpose(1, 2)  # [scopes, heads, chunk, head_dim]
            scores = torch.matmul(q_chunk, k_scope.transpose(-1, -2)) * self.scaling + bias
            weights = torch.softmax(scores, dim=-1)
            return carry.clone(), torch.matmul(weights, v_scope).transpose(1, 2).reshape(scopes, chunk, dim)

        _, out = scan(step, torch.zeros(1, dtype=x.dtype), index.transpose(0, 1))  # [chunks, scopes, chunk, dim]
        out = out.transpose(0, 1).reshape(scopes * chunks * chunk, dim)[rows]
        return attn.proj(out)


class GraphInputs(tuple):
    """The graph's inputs, and the grids they were made for (transformers' own forward takes the grids)."""

    grid_thw: list


def graph_inputs(visual, pixel_patches: torch.Tensor, grid_thw, chunk: int | None = None) -> GraphInputs:
    config = visual.config
    extra = {} if chunk is None else {"chunk": chunk}
    idx = vision_indices(grid_thw, config.spatial_merge_size, config.window_size, config.patch_size, **extra)
    feeds = idx.feeds(pixel_patches.numpy())
    inputs = GraphInputs((pixel_patches, *(torch.from_numpy(feeds[name]) for name in INPUT_NAMES[1:])))
    inputs.grid_thw = [tuple(g) for g in grid_thw]
    return inputs


def reference_outputs(visual, inputs: tuple) -> tuple:
    """transformers' own vision tower (cu_seqlens attention, its own window index) on the same patches
    (`inputs` made by graph_inputs, which records their grids)."""
    assert isinstance(inputs, GraphInputs), "make vision check inputs with graph_inputs / dummy_inputs"
    with torch.no_grad():
        return (visual(inputs[0], grid_thw=torch.tensor(inputs.grid_thw, dtype=torch.int64)).pooler_output,)


def dummy_inputs(visual, grid_thw, seed: int = 0, chunk: int | None = None) -> tuple:
    config = visual.config
    patches = sum(t * h * w for t, h, w in grid_thw)
    width = config.in_channels * config.temporal_patch_size * config.patch_size**2
    gen = torch.Generator().manual_seed(seed)
    return graph_inputs(visual, torch.randn(patches, width, generator=gen), grid_thw, chunk)
