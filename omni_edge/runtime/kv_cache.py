"""KV-cache manager: preallocated per-layer buffers sized from the manifest, reused across turns.

Graphs return only the new tokens' keys/values; this class writes them at the current length. The cache
never grows: a request that would pass max_seq_len is refused before any graph runs.
"""

from __future__ import annotations

import numpy as np

from omni_edge import naming
from omni_edge.bundle import KVCacheGeometry
from omni_edge.errors import KVCacheOverflowError


class KVCache:
    def __init__(self, geometry: KVCacheGeometry, batch: int = 1):
        self.geometry = geometry
        shape = (geometry.num_layers, 2, batch, geometry.num_kv_heads, geometry.max_seq_len, geometry.head_dim)
        self._buffer = np.zeros(shape, dtype=np.dtype(geometry.dtype))
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.geometry.max_seq_len

    def room(self) -> int:
        return self.capacity - self.length

    def check_room(self, new_tokens: int, what: str = "this request") -> None:
        if new_tokens > self.room():
            raise KVCacheOverflowError(
                f"{what} needs {new_tokens} more tokens but the KV cache holds {self.capacity} "
                f"and {self.length} are in use; shorten the prompt or conversation, lower "
                f"--max-new-tokens, or re-export with a larger --max-seq-len"
            )

    def past_feeds(self) -> dict[str, np.ndarray]:
        """Views of the filled part as graph inputs (ORT copies non-contiguous views itself)."""
        feeds = {}
        for layer in range(self.geometry.num_layers):
            feeds[naming.past_key(layer)] = self._buffer[layer, 0, :, :, : self.length]
            feeds[naming.past_value(layer)] = self._buffer[layer, 1, :, :, : self.length]
        return feeds

    def append(self, outputs: dict[str, np.ndarray]) -> None:
        new = outputs[naming.present_key(0)].shape[2]
        self.check_room(new)
        end = self.length + new
        for layer in range(self.geometry.num_layers):
            self._buffer[layer, 0, :, :, self.length : end] = outputs[naming.present_key(layer)]
            self._buffer[layer, 1, :, :, self.length : end] = outputs[naming.present_value(layer)]
        self.length = end

    def truncate(self, length: int) -> None:
        """Forget everything after `length` tokens (e.g. a cancelled turn); the memory is reused."""
        self.length = min(self.length, max(0, length))

    def reset(self) -> None:
        self.length = 0
