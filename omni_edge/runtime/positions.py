"""Position ids for the Thinker graphs (3 TMRoPE rows: temporal, height, width).

Text tokens use the same id on all three rows; multimodal prompts shift later ids by a rope delta,
which the session keeps so decode steps continue from the right place.
"""

from __future__ import annotations

import numpy as np


def text_positions(start: int, count: int) -> np.ndarray:
    """[3, 1, count] int64 ids start..start+count-1 on every axis."""
    row = np.arange(start, start + count, dtype=np.int64)
    return np.broadcast_to(row, (3, 1, count)).copy()
