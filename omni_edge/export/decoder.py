"""Decoder-LLM graphs (Thinker and Talker): prefill (no past) and decode (past KV in, new KV out).

Both take embeddings, not ids: the runtime looks up token embeddings and splices encoder outputs in (Thinker)
or sums the dual-track input (Talker), so one graph serves every prompt. Positions come in as TMRoPE
triples [3, B, S] computed by the runtime. The runtime owns the preallocated cache. With the standard-op
attention the KV outputs hold only the new tokens' keys and values and the runtime writes them into it; with
GroupQueryAttention (export/gqa.py, ONNX Runtime targets) they hold the whole cache through the new tokens,
and the runtime binds past and present to the same buffer so that the graph appends in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import DynamicCache

from omni_edge import naming
from omni_edge.bundle import KVCacheGeometry
from omni_edge.export import gqa


@dataclass(frozen=True)
class DecoderParts:
    """Where the pieces of one decoder live in the HF model."""

    # A transformers PreTrainedModel: typed Any, since nn.Module types its attributes (config) as Tensor | Module.
    text_model: Any  # takes inputs_embeds, position_ids, attention_mask, cache
    head: nn.Module  # hidden -> logits
    input_proj: nn.Module | None  # applied to inputs_embeds first (Talker: thinker width -> talker width)
    input_width: int  # width of the inputs_embeds the graph takes


def thinker_parts(model) -> DecoderParts:
    thinker = model.thinker
    return DecoderParts(thinker.model.language_model, thinker.lm_head, None, thinker.config.text_config.hidden_size)


def talker_parts(model) -> DecoderParts:
    talker = model.talker
    return DecoderParts(talker.model, talker.codec_head, talker.thinker_to_talker_proj, talker.config.embedding_size)


class DecoderStep(nn.Module):
    """One forward over `S` new tokens after an explicit past (empty for a prefill). The past comes in and the
    new keys/values go out in `kv_dtype` (the KV cache's); attention runs in the model's own precision.

    `group_query_attention`: attention as one GroupQueryAttention node per layer (export/gqa.py), whose present
    outputs are the whole cache (past + new); otherwise transformers' own attention, presents of the new tokens."""

    def __init__(self, parts: DecoderParts, kv_dtype: str = "float32", group_query_attention: bool = False):
        super().__init__()
        self.kv_dtype = getattr(torch, kv_dtype)
        self.text_model = parts.text_model
        self.head = parts.head
        self.input_proj = parts.input_proj
        self.config = parts.text_model.config
        self.num_layers = self.config.num_hidden_layers
        self.group_query_attention = group_query_attention

    def forward(self, inputs_embeds, position_ids, attention_mask, *past):
        if self.input_proj is not None:
            inputs_embeds = self.input_proj(inputs_embeds)
        step = self._grouped if self.group_query_attention else self._standard
        hidden, presents = step(inputs_embeds, position_ids, attention_mask, past)
        # Only the last position's logits are ever sampled from; the head over every prompt position would be
        # a [S, vocab] fp32 tensor (2.4 GB for a 4096-token 7B prefill) that no one reads.
        return (self.head(hidden[:, -1:]), hidden, *presents)

    def _standard(self, inputs_embeds, position_ids, attention_mask, past):
        cache = DynamicCache(config=self.config)
        compute = inputs_embeds.dtype
        for layer in range(self.num_layers):
            cache.update(past[2 * layer].to(compute), past[2 * layer + 1].to(compute), layer)
        new_tokens = inputs_embeds.shape[1]
        out = self.text_model(
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
            attention_mask=attention_mask,
            cache=cache,
            use_cache=True,
        )
        presents = []
        for layer in range(self.num_layers):
            presents.append(cache.layers[layer].keys[:, :, -new_tokens:, :].to(self.kv_dtype))
            presents.append(cache.layers[layer].values[:, :, -new_tokens:, :].to(self.kv_dtype))
        return out.last_hidden_state, presents

    def _grouped(self, inputs_embeds, position_ids, attention_mask, past):
        if any(p.dtype != inputs_embeds.dtype for p in past):
            # The op appends the new keys/values into the past's own buffer, so the two share one dtype.
            raise ValueError("GroupQueryAttention needs the KV cache in the model's precision")
        state = gqa.AttentionState.from_mask(past, attention_mask)
        # A dict of masks is taken as already built: the op masks causally by itself, so none is computed.
        no_masks = {"full_attention": None, "sliding_attention": None}
        with gqa.attention_of(self.config):
            out = self.text_model(
                inputs_embeds=inputs_embeds,
                position_ids=position_ids,
                attention_mask=no_masks,
                use_cache=False,
                gqa_state=state,
            )
        return out.last_hidden_state, [t for layer in range(self.num_layers) for t in state.presents[layer]]


def kv_geometry(parts: DecoderParts, max_seq_len: int, dtype: str = "float32") -> KVCacheGeometry:
    config = parts.text_model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return KVCacheGeometry(
        num_layers=config.num_hidden_layers,
        num_kv_heads=config.num_key_value_heads,
        head_dim=head_dim,
        max_seq_len=max_seq_len,
        dtype=dtype,
    )


def io_names(num_layers: int) -> tuple[list[str], list[str]]:
    inputs = ["inputs_embeds", "position_ids", "attention_mask", *naming.past_names(num_layers)]
    outputs = ["logits", "last_hidden_state"] + naming.present_names(num_layers)
    return inputs, outputs


def dummy_inputs(parts: DecoderParts, new_tokens: int, past_tokens: int, seed: int = 0, kv_dtype: str = "float32"):
    geo = kv_geometry(parts, max_seq_len=0)
    gen = torch.Generator().manual_seed(seed)
    embeds = torch.randn(1, new_tokens, parts.input_width, generator=gen)
    total = past_tokens + new_tokens
    positions = torch.arange(past_tokens, total).view(1, 1, -1).expand(3, 1, -1).contiguous()
    mask = torch.ones(1, total, dtype=torch.int64)
    past = [
        torch.randn(1, geo.num_kv_heads, past_tokens, geo.head_dim, generator=gen).to(getattr(torch, kv_dtype))
        for _ in range(2 * geo.num_layers)
    ]
    return (embeds, positions, mask, *past)
