"""Calibration sets: the user's own media (`--calib DIR`) or a seeded synthetic set (`--calib synthetic`).

A set is a list of requests (a prompt, optionally one audio clip or one image or one video) that the export
replays through the FP32 bundle, so every graph is calibrated on the activations the runtime will feed it:
the encoders on real front-end features, the Thinker on spliced media embeddings, the Talker on the
Thinker's hidden states, the DiT and BigVGAN on the Talker's codes. Media are decoded here, up front, so a
broken file fails the export in seconds, not after minutes of exporting.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omni_edge.errors import InputError

SYNTHETIC = "synthetic"
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov", ".webm"}
TEXT_SUFFIXES = {".txt"}
MAX_SAMPLES = 64  # beyond this, calibration time grows and the ranges barely move
MEDIA_PROMPTS = ("Describe what you hear.", "What is in this picture?", "What happens in this video?")

# Varied registers (chat, instruction, code, numbers, another language) so the Thinker's activation ranges
# cover more than one kind of text.
SYNTHETIC_PROMPTS = (
    "Hello, who are you?",
    "Give me three tips for sleeping better.",
    "Write a Python function that reverses a string.",
    "What is 17 times 23? Show your steps.",
    "Translate 'good morning, how are you' into French and German.",
    "Summarize the plot of a detective story in two sentences.",
    "List the planets of the solar system in order.",
    "¿Cuál es la capital de Australia?",
)


@dataclass(frozen=True)
class CalibrationSample:
    prompt: str
    audio: np.ndarray | None = None  # 16 kHz mono float32
    image: np.ndarray | None = None  # HxWx3 uint8
    video: str | None = None  # a path: frames are sampled by the runtime's own front end
    source: str = SYNTHETIC  # file name it came from, for error messages and the report


@dataclass(frozen=True)
class CalibrationSet:
    source: str  # "synthetic" or the directory
    samples: tuple[CalibrationSample, ...]

    def counts(self) -> dict[str, int]:
        return {
            "text": sum(s.audio is None and s.image is None and s.video is None for s in self.samples),
            "audio": sum(s.audio is not None for s in self.samples),
            "image": sum(s.image is not None for s in self.samples),
            "video": sum(s.video is not None for s in self.samples),
        }


def load_calibration_set(calib: str | Path, seed: int = 0) -> CalibrationSet:
    """`synthetic`, or a directory of wav/flac/ogg/mp3, png/jpg/bmp/webp, mp4/mkv/mov/webm and .txt files
    (one prompt per non-empty line)."""
    if str(calib) == SYNTHETIC:
        return synthetic_calibration_set(seed)
    return calibration_set_from_dir(Path(calib))


def calibration_set_from_dir(directory: Path) -> CalibrationSet:
    from omni_edge.runtime.audio_frontend import load_audio
    from omni_edge.runtime.vision_frontend import load_image

    if not directory.is_dir():
        raise InputError(
            f"--calib {directory}: no such directory; pass a directory of wav/png/jpg/mp4/txt "
            f"files, or --calib {SYNTHETIC}"
        )
    files = sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith("."))
    prompts = [
        line.strip()
        for p in files
        if p.suffix.lower() in TEXT_SUFFIXES
        for line in p.read_text(encoding="utf-8", errors="replace").splitlines()
        if line.strip()
    ]
    samples = [CalibrationSample(prompt, source="text") for prompt in prompts]
    for path in files:
        suffix = path.suffix.lower()
        if suffix in AUDIO_SUFFIXES:
            samples.append(CalibrationSample(MEDIA_PROMPTS[0], audio=load_audio(path), source=path.name))
        elif suffix in IMAGE_SUFFIXES:
            samples.append(CalibrationSample(MEDIA_PROMPTS[1], image=load_image(path), source=path.name))
        elif suffix in VIDEO_SUFFIXES:
            samples.append(CalibrationSample(MEDIA_PROMPTS[2], video=str(path), source=path.name))
    if not samples:
        known = sorted(AUDIO_SUFFIXES | IMAGE_SUFFIXES | VIDEO_SUFFIXES | TEXT_SUFFIXES)
        raise InputError(
            f"--calib {directory} holds no usable calibration files (looked for {', '.join(known)}); "
            f"add some, or pass --calib {SYNTHETIC}"
        )
    if len(samples) > MAX_SAMPLES:
        keep = np.linspace(0, len(samples) - 1, MAX_SAMPLES).round().astype(int)
        samples = [samples[i] for i in keep]
    return CalibrationSet(str(directory), tuple(samples))


def synthetic_calibration_set(seed: int = 0) -> CalibrationSet:
    """Prompts of several registers, two speech-like sounds and two images: enough to give every graph
    realistic ranges when the user has no data at hand. Seeded, so a bundle is reproducible."""
    rng = np.random.default_rng(seed)
    samples = [CalibrationSample(prompt) for prompt in SYNTHETIC_PROMPTS]
    samples += [CalibrationSample(MEDIA_PROMPTS[0], audio=synthetic_speechlike(rng, seconds)) for seconds in (2.5, 4.0)]
    samples += [
        CalibrationSample(MEDIA_PROMPTS[1], image=synthetic_image(rng, h, w)) for h, w in ((112, 112), (84, 140))
    ]
    return CalibrationSet(SYNTHETIC, tuple(samples))


def synthetic_speechlike(rng: np.random.Generator, seconds: float, rate: int = 16000) -> np.ndarray:
    """A voiced-speech stand-in: a gliding fundamental with harmonics, syllable-rate envelope, some noise."""
    t = np.arange(int(seconds * rate)) / rate
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, np.pi))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = np.clip(np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, np.pi)), 0, None) ** 0.5
    signal = 0.3 * envelope * voiced + 0.01 * rng.standard_normal(len(t))
    return (signal / max(1e-6, float(np.abs(signal).max())) * 0.5).astype(np.float32)


def synthetic_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth colour gradients with a few solid rectangles: edges and flat areas, like real photos have."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 255
    for _ in range(4):
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
        image[top : top + height // 3, left : left + width // 3] = rng.integers(0, 256, 3)
    return image.astype(np.uint8)
