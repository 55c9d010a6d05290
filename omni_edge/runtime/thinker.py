"""The Thinker: its decoder graph over one KV cache (a prefill is the same graph with an empty past).

A forward feeds a Turn's tokens after the cached ones and returns the last position's logits (the graphs
compute no others) and every fed token's last hidden state, which the Talker reads (H_last).
"""

from __future__ import annotations

import numpy as np

from omni_edge.runtime.conversation import Turn
from omni_edge.runtime.engine import Engine
from omni_edge.runtime.kv_cache import KVCacheBase


class Thinker:
    def __init__(self, decoder: Engine, cache: KVCacheBase):
        self.decoder, self.cache = decoder, cache

    def forward(self, turn: Turn) -> tuple[np.ndarray, np.ndarray]:
        """(logits [vocab] of the last fed token, last hidden state [n, hidden] of every fed token)."""
        feeds = {"inputs_embeds": turn.embeds[None], "position_ids": turn.positions}
        outputs = self.cache.run(self.decoder, feeds)
        return outputs["logits"][0, -1], outputs["last_hidden_state"][0]
