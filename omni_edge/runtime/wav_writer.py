"""Write audio chunks to a wav file as they arrive; the file appears at its path when the reply is complete.

The header's RIFF and data sizes are rewritten after every chunk and the file is unbuffered, so the hidden
temp file is a playable wav of everything spoken so far at any moment, even if the process is killed. An
interrupted reply (Ctrl-C, or SIGTERM through omni_edge.signals) is moved to its path as it stands: what was
spoken is kept. Any other failure discards it.
"""

from __future__ import annotations

import os
import tempfile
import wave
from pathlib import Path
from typing import BinaryIO

import numpy as np

from omni_edge.errors import InputError


def pcm16(samples: np.ndarray) -> bytes:
    """float -> little-endian int16, sample for sample what libsndfile 1.2 wrote here through soundfile before
    (measured): x * 32768 rounded down, clipped to [-32768, 32767]."""
    scaled = np.floor(np.asarray(samples, dtype=np.float32) * np.float32(32768))
    return np.clip(scaled, -32768, 32767).astype("<i2").tobytes()


class WavWriter:
    """Context manager; a None path makes every call a no-op (text-only runs)."""

    def __init__(self, path: Path | None, sample_rate: int):
        self.path = Path(path) if path is not None else None
        self.sample_rate = sample_rate
        self._raw: BinaryIO | None = None
        self._wav: wave.Wave_write | None = None
        self._tmp: str | None = None

    def __enter__(self) -> WavWriter:
        if self.path is None:
            return self
        if self.path.is_dir():
            raise InputError(f"--out-wav {self.path} is a directory; pass a file path such as {self.path}/reply.wav")
        try:
            handle, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".wav", dir=self.path.parent)
            self._raw = os.fdopen(handle, "wb", buffering=0)  # unbuffered: each chunk and header reaches the OS
            self._wav = wave.open(self._raw, "wb")
            self._wav.setnchannels(1)
            self._wav.setsampwidth(2)
            self._wav.setframerate(self.sample_rate)
            self._wav.writeframes(b"")  # a valid header for zero samples from the start
        except (OSError, wave.Error) as exc:
            self._discard()
            raise InputError(f"cannot write --out-wav {self.path} ({exc}); choose a writable path") from None
        return self

    def write(self, samples: np.ndarray) -> None:
        if self._wav is not None:
            self._wav.writeframes(pcm16(samples))  # wave rewrites the RIFF and data sizes after each call

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._wav is None:
            return
        self._close()
        if exc_type is None or issubclass(exc_type, KeyboardInterrupt):
            assert self._tmp is not None and self.path is not None  # both set when the wav was opened
            os.chmod(self._tmp, 0o644)  # mkstemp makes it private; a reply is an ordinary file
            os.replace(self._tmp, self.path)
        else:
            self._discard()

    def _close(self) -> None:
        wav, raw, self._wav, self._raw = self._wav, self._raw, None, None
        if wav is not None:
            wav.close()
        if raw is not None:
            raw.close()

    def _discard(self) -> None:
        self._close()
        if self._tmp and os.path.exists(self._tmp):
            os.unlink(self._tmp)
