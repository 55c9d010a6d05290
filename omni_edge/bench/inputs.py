"""The fixed inputs every benchmark run uses: seeded synthetic media, prompts and Thinker feeds.

Ours and the PyTorch reference always receive the same arrays, built here once per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from omni_edge import naming
from omni_edge.bundle import KVCacheGeometry
from omni_edge.runtime.positions import text_positions

SAMPLE_RATE = 16_000
IMAGE_SIZE = (448, 448)  # 32 x 32 patches -> 256 Thinker tokens: a typical camera frame after resizing


def tone(seconds: float, hz: float = 440.0, seed: int = 0) -> np.ndarray:
    """A sine with a little noise (pure silence or a pure tone can hit special cases in a front end)."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    noise = np.random.default_rng(seed).standard_normal(t.size)
    return (0.4 * np.sin(2 * np.pi * hz * t) + 0.05 * noise).astype(np.float32)


def picture(height: int = IMAGE_SIZE[0], width: int = IMAGE_SIZE[1], seed: int = 0) -> np.ndarray:
    """Smooth gradients plus noise, uint8 RGB [H, W, 3]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 200
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Prompt:
    kind: str  # "text", "audio" or "image": also the engine the prompt needs besides the Thinker
    text: str
    audio_seconds: float = 0.0
    image: bool = False

    def media(self) -> dict:
        """Keyword arguments for Session.generate (and, converted, for transformers)."""
        out = {}
        if self.audio_seconds:
            out["audio"] = [tone(self.audio_seconds)]
        if self.image:
            out["images"] = [picture()]
        return out


E2E_PROMPTS = (
    Prompt("text", "Describe the weather on a sunny day in one sentence."),
    Prompt("audio", "What do you hear in this clip?", audio_seconds=3.0),
    Prompt("image", "What is in this picture?", image=True),
)
PROMPT_ENGINE = {"audio": naming.AUDIO_ENCODER, "image": naming.VISION_ENCODER}


def decoder_feeds(rows: np.ndarray, geo: KVCacheGeometry, past: int) -> dict:
    """Feeds of a decoder graph (Thinker or Talker), a prefill when past == 0: `rows` [new, width], random past."""
    rng = np.random.default_rng(0)
    new = len(rows)
    feeds = {
        "inputs_embeds": np.ascontiguousarray(rows, dtype=np.float32)[None],
        "position_ids": text_positions(past, new),
        "attention_mask": np.ones((1, past + new), dtype=np.int64),
    }
    for name in naming.past_names(geo.num_layers):
        feeds[name] = rng.standard_normal((1, geo.num_kv_heads, past, geo.head_dim)).astype(geo.dtype)
    return feeds
