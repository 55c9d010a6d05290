"""Thinker LLM graphs: prefill (no past) and decode (past KV in, new KV out).

Both take embeddings, not ids: the runtime looks up token embeddings and splices encoder outputs in, so
one graph serves text, audio, image and video prompts. Positions come in as TMRoPE triples [3, B, S]
computed by the runtime. The KV outputs hold only the new tokens' keys and values; the runtime owns the
preallocated cache and writes them into it.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.cache_utils import DynamicCache

from omni_edge import naming


class ThinkerStep(nn.Module):
    """One forward of the Thinker text model over `S` new tokens, with an optional explicit past."""

    def __init__(self, thinker, with_past: bool):
        super().__init__()
        self.text_model = thinker.model.language_model
        self.lm_head = thinker.lm_head
        self.config = thinker.config.text_config
        self.num_layers = self.config.num_hidden_layers
        self.with_past = with_past

    def forward(self, inputs_embeds, position_ids, attention_mask, *past):
        cache = DynamicCache(config=self.config)
        if self.with_past:
            for layer in range(self.num_layers):
                cache.update(past[2 * layer], past[2 * layer + 1], layer)
        new_tokens = inputs_embeds.shape[1]
        out = self.text_model(
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
            attention_mask=attention_mask,
            cache=cache,
            use_cache=True,
        )
        hidden = out.last_hidden_state
        logits = self.lm_head(hidden)
        presents = []
        for layer in range(self.num_layers):
            presents.append(cache.layers[layer].keys[:, :, -new_tokens:, :])
            presents.append(cache.layers[layer].values[:, :, -new_tokens:, :])
        return (logits, hidden, *presents)


def kv_geometry(thinker) -> dict:
    text = thinker.config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return {
        "num_layers": text.num_hidden_layers,
        "num_kv_heads": text.num_key_value_heads,
        "head_dim": head_dim,
        "hidden_size": text.hidden_size,
        "vocab_size": text.vocab_size,
    }


def io_names(num_layers: int, with_past: bool) -> tuple[list[str], list[str]]:
    inputs = ["inputs_embeds", "position_ids", "attention_mask"]
    if with_past:
        inputs += naming.past_names(num_layers)
    outputs = ["logits", "last_hidden_state"] + naming.present_names(num_layers)
    return inputs, outputs


def dummy_inputs(thinker, with_past: bool, new_tokens: int, past_tokens: int, seed: int = 0):
    geo = kv_geometry(thinker)
    gen = torch.Generator().manual_seed(seed)
    embeds = torch.randn(1, new_tokens, geo["hidden_size"], generator=gen)
    total = past_tokens + new_tokens
    positions = torch.arange(past_tokens, total).view(1, 1, -1).expand(3, 1, -1).contiguous()
    mask = torch.ones(1, total if with_past else new_tokens, dtype=torch.int64)
    past = []
    if with_past:
        for _ in range(2 * geo["num_layers"]):
            past.append(torch.randn(1, geo["num_kv_heads"], past_tokens, geo["head_dim"], generator=gen))
    return (embeds, positions, mask, *past)
