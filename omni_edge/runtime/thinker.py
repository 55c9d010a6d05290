"""The Thinker: its prefill and decode graphs over one KV cache.

A forward feeds a Turn's tokens after the cached ones and returns the last position's logits (the graphs
compute no others) and every fed token's last hidden state, which the Talker reads (H_last).
"""

from __future__ import annotations

import numpy as np

from omni_edge.runtime.conversation import Turn
from omni_edge.runtime.engine import Engine
from omni_edge.runtime.kv_cache import KVCacheBase


class Thinker:
    def __init__(self, prefill: Engine, decode: Engine, cache: KVCacheBase):
        self.prefill, self.decode, self.cache = prefill, decode, cache

    def forward(self, turn: Turn) -> tuple[np.ndarray, np.ndarray]:
        """(logits [vocab] of the last fed token, last hidden state [n, hidden] of every fed token)."""
        feeds = {"inputs_embeds": turn.embeds[None], "position_ids": turn.positions}
        outputs = self.cache.run(self.prefill, self.decode, feeds)
        return outputs["logits"][0, -1], outputs["last_hidden_state"][0]
