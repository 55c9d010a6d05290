"""Decoder attention as ONNX Runtime's GroupQueryAttention (com.microsoft), for targets that run ONNX Runtime.

The standard-op graph concatenates the whole past onto the new keys/values at every step, expands them from
the kv heads to all heads and transposes them, so a step's attention cost grows with the context (12x from
past 128 to 2048 in issue 17's profile). GroupQueryAttention reads the kv heads as they are and appends the
new tokens into its present output; when the runtime binds past and present to the same max_seq_len buffer
(runtime/kv_cache.py), ONNX Runtime writes them in place and copies no past at all.

Rotary embedding stays transformers' own (the TMRoPE ids come from the host): q and k reach the op already
rotated and its do_rotary is left off, since its cos/sin cache takes one position per token, not TMRoPE's
three. The op takes no mask either: it attends causally over the first `seqlens_k + 1` cache slots, which is
every filled slot, since the ONNX Runtime cache never pads its past (kv_cache.KVCache, bucket 0).

Under torch.onnx.export the attention is one GroupQueryAttention node; in eager PyTorch it is transformers'
sdpa attention over the concatenated past, which is what export-time verification compares the graph against.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

ATTENTION = "omni_edge_group_query_attention"  # the name this attention is registered under in transformers


@dataclass
class AttentionState:
    """What one forward's attention layers read and write besides the hidden states."""

    past: tuple[torch.Tensor, ...]  # past.{i}.key, past.{i}.value, ...: [B, kv_heads, past, head_dim]
    seqlens_k: torch.Tensor  # [B] int32: tokens in the cache after this step, minus one (the op's convention)
    total: torch.Tensor  # [] int32: the largest of seqlens_k + 1
    presents: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # layer -> (key, value)

    @staticmethod
    def from_mask(past: tuple[torch.Tensor, ...], attention_mask: torch.Tensor) -> AttentionState:
        """The cache lengths from the [B, past + new] mask: the op reads how many slots are filled, not which."""
        lengths = attention_mask.sum(dim=1, dtype=torch.int32)
        return AttentionState(past, lengths - 1, lengths.max())


def _causal_after(past: int, new: int) -> torch.Tensor:
    """[1, 1, new, past + new] bool: new token i sees the past and new tokens 0..i."""
    return torch.ones(new, past + new, dtype=torch.bool).tril(diagonal=past)[None, None]


def group_query_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """A transformers attention function: query [B, heads, S, D] and the new key/value [B, kv_heads, S, D], all
    rotated; returns ([B, S, heads, D], None) and records the layer's present key/value in the state."""
    state: AttentionState = kwargs["gqa_state"]
    if getattr(module, "sliding_window", None) is not None:
        raise NotImplementedError("GroupQueryAttention export does not cover sliding-window layers")
    layer = module.layer_idx
    past_key, past_value = state.past[2 * layer], state.past[2 * layer + 1]
    batch, heads, new, head_dim = query.shape
    kv_heads = key.shape[1]
    scale = float(scaling if scaling is not None else head_dim**-0.5)
    if torch.onnx.is_in_onnx_export():
        present_shape = [batch, kv_heads, past_key.shape[2] + new, head_dim]
        out, present_key, present_value = torch.onnx.ops.symbolic_multi_out(
            "com.microsoft::GroupQueryAttention",
            [
                query.transpose(1, 2).reshape(batch, new, heads * head_dim),
                key.transpose(1, 2).reshape(batch, new, kv_heads * head_dim),
                value.transpose(1, 2).reshape(batch, new, kv_heads * head_dim),
                past_key,
                past_value,
                state.seqlens_k,
                state.total,
            ],
            {"num_heads": heads, "kv_num_heads": kv_heads, "scale": scale},
            dtypes=(query.dtype, past_key.dtype, past_value.dtype),
            shapes=([batch, new, heads * head_dim], present_shape, present_shape),
            version=1,
        )
        out = out.reshape(batch, new, heads, head_dim)
    else:
        present_key = torch.cat([past_key, key], dim=2)
        present_value = torch.cat([past_value, value], dim=2)
        mask = _causal_after(past_key.shape[2], new).to(query.device)
        out, _ = sdpa_attention_forward(module, query, present_key, present_value, mask, dropout=dropout, scaling=scale)
    state.presents[layer] = (present_key, present_value)
    return out, None


AttentionInterface.register(ATTENTION, group_query_attention)


@contextlib.contextmanager
def attention_of(config):
    """Run the text model whose config this is on group_query_attention, and restore its own afterwards."""
    previous = config._attn_implementation
    config._attn_implementation = ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = previous
