"""Host side of the audio encoder: cut log-mel into 2-second blocks and pick the valid output tokens.

The encoder graph runs a batch of fixed 200-frame blocks; attention, convolutions and positions restart in
every block, so the blocks of one long recording, of several recordings, or of live microphone audio
arriving block by block all go through the same graph.
"""

from __future__ import annotations

import numpy as np

BLOCK_FRAMES = 200  # 2 s of 10 ms mel frames (n_window 100 x 2)
TOKENS_PER_BLOCK = 50  # 200 frames -> conv stride 2 -> 100 -> avg-pool 2 -> 50


def frames_after_conv(mel_frames: np.ndarray | int):
    return (np.asarray(mel_frames) - 1) // 2 + 1


def tokens_for_frames(mel_frames: np.ndarray | int):
    """Audio tokens the Thinker sees for `mel_frames` frames (zero for a 1-frame tail)."""
    return (frames_after_conv(mel_frames) - 2) // 2 + 1


def split_blocks(mel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[128, L] log-mel -> ([n, 128, 200] zero-padded blocks, [n] valid frames per block)."""
    total = mel.shape[1]
    count = -(-total // BLOCK_FRAMES)
    blocks = np.zeros((count, mel.shape[0], BLOCK_FRAMES), dtype=np.float32)
    lengths = np.full(count, BLOCK_FRAMES, dtype=np.int64)
    for i in range(count):
        piece = mel[:, i * BLOCK_FRAMES : (i + 1) * BLOCK_FRAMES]
        blocks[i, :, : piece.shape[1]] = piece
        lengths[i] = piece.shape[1]
    return blocks, lengths


def gather_tokens(encoded: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """[n, 50, D] per-block encoder output -> [tokens, D] valid tokens in time order."""
    counts = tokens_for_frames(lengths)
    return np.concatenate([encoded[i, :c] for i, c in enumerate(counts)], axis=0)
