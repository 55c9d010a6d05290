"""Host side of the vision encoder: every index the ViT needs, built in numpy from the patch grid.

transformers builds these with python loops inside forward (not exportable); here they are inputs, so
one vision_encoder graph serves any image size and frame count. Mirrors transformers.vision_utils
(get_vision_position_ids, get_vision_window_index, get_vision_cu_seqlens) for Qwen2.5-VL/Omni.

Attention scopes (cu_seqlens in the reference) become padded slot tables, so the graph attends scope by scope
and never holds an [N, N] tensor: `window_slots` [windows, window_len] for the window layers (a window is at
most (window_size / patch_size)^2 patches), `frame_slots` [frames, chunks, chunk] for the full-attention layers,
whose queries go through the graph `chunk` at a time (peak scores [frames, heads, chunk, frame_len]).
A slot holds a patch's position in window order, -1 where the scope is padding; `*_rows` [N] is the inverse:
each patch's row in the flattened slot table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Queries per step of a full-attention layer: the scores held at once are heads x chunk x frame patches.
FULL_ATTENTION_CHUNK = 256


@dataclass(frozen=True)
class VisionIndices:
    patch_positions: np.ndarray  # [N, 2] (row, col) per patch, in window order
    window_index: np.ndarray  # [N/merge^2] merge group -> position in window order
    reverse_index: np.ndarray  # [N/merge^2] argsort(window_index): back to raster order
    window_slots: np.ndarray  # [windows, window_len] patch (window order) per slot, -1 = padding
    window_rows: np.ndarray  # [N] row of each patch in window_slots.reshape(-1)
    frame_slots: np.ndarray  # [frames, chunks, chunk] the same for the full-attention scope (a frame)
    frame_rows: np.ndarray  # [N] row of each patch in frame_slots.reshape(-1)

    def feeds(self, pixel_patches: np.ndarray) -> dict[str, np.ndarray]:
        """The vision_encoder graph's inputs, by name."""
        return {
            "pixel_patches": np.asarray(pixel_patches, dtype=np.float32),
            "patch_positions": self.patch_positions,
            "window_index": self.window_index,
            "reverse_index": self.reverse_index,
            "window_slots": self.window_slots,
            "window_rows": self.window_rows,
            "frame_slots": self.frame_slots,
            "frame_rows": self.frame_rows,
        }


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
    indices: list[np.ndarray] = []
    lengths: list[int] = []
    offset = 0
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


def padded_scopes(lengths, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive scopes of `lengths` patches -> (slots [scopes, width], -1 padded; rows [sum(lengths)])."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size and lengths.max() > width:
        raise ValueError(f"a scope of {lengths.max()} patches does not fit {width} slots")
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    offsets = np.arange(width, dtype=np.int64)
    slots = np.where(offsets < lengths[:, None], starts[:, None] + offsets, -1)
    scope = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    rows = scope * width + (np.arange(int(lengths.sum()), dtype=np.int64) - starts[scope])
    return slots.astype(np.int64), rows.astype(np.int64)


def full_attention_chunk(frame_len: int, chunk: int = FULL_ATTENTION_CHUNK) -> int:
    """Queries per full-attention step: `chunk`, or the frame rounded up to 4 when it is smaller."""
    return min(chunk, -(-frame_len // 4) * 4)


def vision_indices(
    grid_thw, merge: int = 2, window_size: int = 112, patch_size: int = 14, chunk: int = FULL_ATTENTION_CHUNK
) -> VisionIndices:
    grid = [tuple(int(v) for v in g) for g in grid_thw]
    unit = merge * merge
    window_index, window_lengths = window_order(grid, merge, window_size, patch_size)
    positions = patch_positions(grid, merge)
    positions = positions.reshape(-1, unit, 2)[window_index].reshape(-1, 2)
    window_slots, window_rows = padded_scopes(window_lengths * unit, (window_size // patch_size) ** 2)
    # Frames stay contiguous in window order: windows never cross a frame.
    frame_sizes = [h * w for t, h, w in grid for _ in range(t)]
    chunk = full_attention_chunk(max(frame_sizes), chunk)
    chunks = -(-max(frame_sizes) // chunk)
    frame_slots, frame_rows = padded_scopes(frame_sizes, chunks * chunk)
    return VisionIndices(
        patch_positions=positions,
        window_index=window_index,
        reverse_index=np.argsort(window_index).astype(np.int64),
        window_slots=window_slots,
        window_rows=window_rows,
        frame_slots=frame_slots.reshape(len(frame_sizes), chunks, chunk),
        frame_rows=frame_rows,
    )
