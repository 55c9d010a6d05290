"""Host side of the audio encoder: cut log-mel into blocks and pick the valid output tokens.

The encoder graph runs a batch of fixed blocks of `2 * n_window` mel frames (the checkpoint's
audio_config.n_window, recorded in the manifest as MediaInfo.audio_block_frames: 200 frames = 2 s for every
released Qwen2.5-Omni); attention, convolutions and positions restart in every block, so the blocks of one
long recording, of several recordings, or of live microphone audio arriving block by block all go through
the same graph. The token count of a clip does not depend on the block length (every block but the last has
an even length, so the stride-2 conv and the pair pooling never straddle a boundary).
"""

from __future__ import annotations

import numpy as np

BLOCK_FRAMES = 200  # 2 s of 10 ms mel frames (n_window 100 x 2): the released checkpoints' block
TOKENS_PER_BLOCK = 50  # 200 frames -> conv stride 2 -> 100 -> avg-pool 2 -> 50


def block_frames_for(n_window: int) -> int:
    """Mel frames per encoder block for audio_config.n_window (transformers chunks by n_window * 2)."""
    from omni_edge.errors import UnsupportedConfigError

    if n_window < 2 or n_window % 2:
        # An odd n_window makes a chunk's post-conv length odd, so transformers' pair pooling straddles
        # two chunks: that is not a batch of independent blocks any more.
        raise UnsupportedConfigError(
            f"audio_config.n_window = {n_window} is not supported; it must be even and at least 2"
        )
    return 2 * n_window


def tokens_per_block(block_frames: int) -> int:
    return block_frames // 4


def frames_after_conv(mel_frames: np.ndarray | int):
    return (np.asarray(mel_frames) - 1) // 2 + 1


def tokens_for_frames(mel_frames: np.ndarray | int):
    """Audio tokens the Thinker sees for `mel_frames` frames (zero for a 1-frame tail)."""
    return (frames_after_conv(mel_frames) - 2) // 2 + 1


def split_blocks(mel: np.ndarray, block_frames: int = BLOCK_FRAMES) -> tuple[np.ndarray, np.ndarray]:
    """[128, L] log-mel -> ([n, 128, block_frames] zero-padded blocks, [n] valid frames per block)."""
    total = mel.shape[1]
    count = -(-total // block_frames)
    blocks = np.zeros((count, mel.shape[0], block_frames), dtype=np.float32)
    lengths = np.full(count, block_frames, dtype=np.int64)
    for i in range(count):
        piece = mel[:, i * block_frames : (i + 1) * block_frames]
        blocks[i, :, : piece.shape[1]] = piece
        lengths[i] = piece.shape[1]
    return blocks, lengths


def gather_tokens(encoded: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """[n, tokens_per_block, D] per-block encoder output -> [tokens, D] valid tokens in time order."""
    counts = tokens_for_frames(lengths)
    return np.concatenate([encoded[i, :c] for i, c in enumerate(counts)], axis=0)
