"""Host side of the vision encoder: every index the ViT needs, built in numpy from the patch grid.

transformers builds these with python loops inside forward (not exportable); here they are inputs, so
one vision_encoder graph serves any image size and frame count. Mirrors transformers.vision_utils
(get_vision_position_ids, get_vision_window_index, get_vision_cu_seqlens) for Qwen2.5-VL/Omni.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class VisionIndices:
    patch_positions: np.ndarray  # [N, 2] (row, col) per patch, in window order
    window_index: np.ndarray  # [N/merge^2] merge group -> position in window order
    reverse_index: np.ndarray  # [N/merge^2] argsort(window_index): back to raster order
    window_segments: np.ndarray  # [N] window id per patch, in window order
    frame_segments: np.ndarray  # [N] frame id per patch, in window order (full-attention scope)


def patch_positions(grid_thw, merge: int) -> np.ndarray:
    out = []
    for t, h, w in grid_thw:
        rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        shape = (h // merge, merge, w // merge, merge)
        rows = rows.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
        cols = cols.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
        out.append(np.tile(np.stack([rows, cols], axis=-1), (t, 1)))
    return np.concatenate(out).astype(np.int64)


def window_order(grid_thw, merge: int, window_size: int, patch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(window_index over merge groups, window length in merge groups for each non-empty window)."""
    per_window = window_size // merge // patch_size
    indices, lengths, offset = [], [], 0
    for t, h, w in grid_thw:
        gh, gw = h // merge, w // merge
        index = np.arange(t * gh * gw).reshape(t, gh, gw)
        # Like the reference, pad by a full window when the grid is already a multiple (an empty window).
        pad_h, pad_w = per_window - gh % per_window, per_window - gw % per_window
        padded = np.pad(index, ((0, 0), (0, pad_h), (0, pad_w)), constant_values=-100)
        nh, nw = (gh + pad_h) // per_window, (gw + pad_w) // per_window
        padded = padded.reshape(t, nh, per_window, nw, per_window).transpose(0, 1, 3, 2, 4)
        padded = padded.reshape(t, nh * nw, per_window * per_window)
        counts = (padded != -100).sum(axis=2).reshape(-1)
        flat = padded.reshape(-1)
        indices.append(flat[flat != -100] + offset)
        lengths.extend(int(c) for c in counts if c > 0)
        offset += t * gh * gw
    return np.concatenate(indices).astype(np.int64), np.asarray(lengths, dtype=np.int64)


def vision_indices(grid_thw, merge: int = 2, window_size: int = 112, patch_size: int = 14) -> VisionIndices:
    grid = [tuple(int(v) for v in g) for g in grid_thw]
    unit = merge * merge
    window_index, window_lengths = window_order(grid, merge, window_size, patch_size)
    positions = patch_positions(grid, merge)
    positions = positions.reshape(-1, unit, 2)[window_index].reshape(-1, 2)
    window_segments = np.repeat(np.arange(len(window_lengths)), window_lengths * unit)
    frame_sizes = [h * w for t, h, w in grid for _ in range(t)]
    frame_segments = np.repeat(np.arange(len(frame_sizes)), frame_sizes)
    return VisionIndices(
        patch_positions=positions,
        window_index=window_index,
        reverse_index=np.argsort(window_index).astype(np.int64),
        window_segments=window_segments.astype(np.int64),
        frame_segments=frame_segments.astype(np.int64),
    )
