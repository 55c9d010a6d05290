"""Media prompts shared by the multimodal and speech parity tests: generated tones, pictures and clips, and the
same front-end outputs in the form transformers' Thinker takes them."""

from __future__ import annotations

import numpy as np
import torch

from omni_edge.runtime.audio_frontend import log_mel
from omni_edge.runtime.vision_frontend import preprocess_image, preprocess_video

rng = np.random.default_rng(42)


def tone(seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.4 * np.sin(2 * np.pi * hz * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def picture(height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def clip(frames: int, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def hf_inputs(audio=(), images=(), videos=(), use_audio_in_video=False) -> dict:
    """The same front-end outputs, in the form transformers' Thinker takes them."""
    kwargs = {}
    waves = list(audio) + ([v[2] for v in videos] if use_audio_in_video else [])
    if waves:
        mels = [log_mel(w) for w in waves]
        longest = max(m.shape[1] for m in mels)
        features = np.zeros((len(mels), 128, longest), np.float32)
        mask = np.zeros((len(mels), longest), np.int64)
        for i, m in enumerate(mels):
            features[i, :, : m.shape[1]], mask[i, : m.shape[1]] = m, 1
        kwargs.update(input_features=torch.tensor(features), feature_attention_mask=torch.tensor(mask))
    if images:
        done = [preprocess_image(i) for i in images]
        kwargs.update(
            pixel_values=torch.tensor(np.concatenate([p for p, _ in done])),
            image_grid_thw=torch.tensor(np.concatenate([g for _, g in done])),
        )
    if videos:
        done = [preprocess_video(frames, fps) for frames, fps, *_ in videos]
        kwargs.update(
            pixel_values_videos=torch.tensor(np.concatenate([p for p, _, _ in done])),
            video_grid_thw=torch.tensor(np.concatenate([g for _, g, _ in done])),
            video_second_per_grid=torch.tensor([s for _, _, s in done]),
        )
    return kwargs


CASES = {
    "audio-only": dict(audio=[tone(3.3)]),
    "two-audios": dict(audio=[tone(1.0, 220), tone(2.5, 660)]),
    "image-only": dict(images=[picture(120, 200)]),
    "video-only": dict(videos=[(clip(6, 84, 112), 2.0)]),
    "video-with-audio": dict(videos=[(clip(8, 84, 140), 2.0, tone(4.0, 300))], use_audio_in_video=True),
    "mixed": dict(audio=[tone(2.2)], images=[picture(64, 96), picture(150, 90)], videos=[(clip(4, 56, 84), 2.0)]),
}
