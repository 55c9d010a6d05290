"""audio_encoder graph: the Whisper-style encoder as a batch of independent blocks of 2 * n_window frames.

transformers packs all blocks into one sequence and splits attention with python loops over cu_seqlens
(not exportable). Each block only ever attends to itself, so the same math is a plain batch over blocks
with a key-padding mask for the tail block. The module below reuses the checkpoint's own submodules and
re-expresses only the attention call.
"""

from __future__ import annotations

import torch
from torch import nn

from omni_edge.runtime.audio_blocks import block_frames_for


class AudioEncoderBlocks(nn.Module):
    def __init__(self, audio_tower):
        super().__init__()
        self.tower = audio_tower
        attn = audio_tower.layers[0].self_attn
        self.num_heads = attn.num_heads
        self.scaling = attn.scaling
        self.block_frames = block_frames_for(audio_tower.config.n_window)

    def forward(self, input_features, block_lengths):
        """input_features [n, 128, 2*n_window], block_lengths [n] int64 -> [n, n_window/2, output_dim]."""
        tower = self.tower
        frames = torch.arange(self.block_frames, device=input_features.device)
        frame_mask = (frames[None, :] < block_lengths[:, None]).unsqueeze(1).to(input_features.dtype)
        hidden = nn.functional.gelu(tower.conv1(input_features)) * frame_mask
        hidden = nn.functional.gelu(tower.conv2(hidden)).transpose(1, 2)  # [n, 100, D]
        steps = hidden.shape[1]
        hidden = hidden + tower.positional_embedding.positional_embedding[:steps].unsqueeze(0)
        valid = (block_lengths - 1) // 2 + 1
        key_mask = torch.arange(steps, device=hidden.device)[None, :] < valid[:, None]
        bias = torch.zeros(key_mask.shape, dtype=hidden.dtype).masked_fill(~key_mask, float("-inf"))
        bias = bias[:, None, None, :]  # [n, 1, 1, keys]
        for layer in tower.layers:
            hidden = self._layer(layer, hidden, bias)
        pooled = hidden.reshape(hidden.shape[0], steps // 2, 2, hidden.shape[2]).mean(dim=2)
        return tower.proj(tower.ln_post(pooled))

    def _layer(self, layer, hidden, bias):
        residual = hidden
        x = layer.self_attn_layer_norm(hidden)
        x = self._attention(layer.self_attn, x, bias)
        hidden = residual + x
        residual = hidden
        x = layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(hidden))))
        return residual + x

    def _attention(self, attn, x, bias):
        n, steps, dim = x.shape
        shape = (n, steps, self.num_heads, dim // self.num_heads)
        q = attn.q_proj(x).view(shape).transpose(1, 2)
        k = attn.k_proj(x).view(shape).transpose(1, 2)
        v = attn.v_proj(x).view(shape).transpose(1, 2)
        weights = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * self.scaling + bias, dim=-1)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(n, steps, dim)
        return attn.out_proj(out)


def dummy_inputs(audio_tower, fractions: list[float], seed: int = 0):
    """One block per entry, `fraction` of it valid (1.0: a full block), whatever the block length."""
    block = block_frames_for(audio_tower.config.n_window)
    lengths = [max(1, min(block, round(f * block))) for f in fractions]
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(len(lengths), audio_tower.num_mel_bins, block, generator=gen)
    block_lengths = torch.tensor(lengths, dtype=torch.int64)
    features = features * (torch.arange(block)[None, None, :] < block_lengths[:, None, None])
    return features, block_lengths


def reference_outputs(audio_tower, features, block_lengths) -> tuple:
    """transformers' own audio tower on the same blocks, each block its own recording, laid out as the graph's
    output [n, tokens_per_block, D]; rows past a block's valid tokens are NaN (not compared: the runtime
    drops them)."""
    from omni_edge.runtime.audio_blocks import tokens_for_frames

    packed = torch.cat([features[i, :, :length] for i, length in enumerate(block_lengths.tolist())], dim=1)
    with torch.no_grad():
        tokens = audio_tower(packed, feature_lens=block_lengths).last_hidden_state
    counts = [int(c) for c in tokens_for_frames(block_lengths.numpy())]
    out = torch.full((len(counts), features.shape[2] // 4, tokens.shape[1]), float("nan"))
    for i, piece in enumerate(torch.split(tokens, counts)):
        out[i, : counts[i]] = piece
    return (out,)
