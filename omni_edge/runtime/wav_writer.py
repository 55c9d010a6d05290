"""Write audio chunks to a wav file as they arrive; the file appears at its path only when complete."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from omni_edge.errors import InputError


class WavWriter:
    """Context manager; a None path makes every call a no-op (text-only runs)."""

    def __init__(self, path: Path | None, sample_rate: int):
        self.path = Path(path) if path is not None else None
        self.sample_rate = sample_rate
        self._file = None
        self._tmp: str | None = None

    def __enter__(self) -> WavWriter:
        if self.path is None:
            return self
        import soundfile as sf

        if self.path.is_dir():
            raise InputError(f"--out-wav {self.path} is a directory; pass a file path such as {self.path}/reply.wav")
        try:
            handle, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".wav", dir=self.path.parent)
            os.close(handle)
            self._file = sf.SoundFile(self._tmp, "w", samplerate=self.sample_rate, channels=1, subtype="PCM_16")
        except (OSError, RuntimeError) as exc:
            self._discard()
            raise InputError(f"cannot write --out-wav {self.path} ({exc}); choose a writable path") from None
        return self

    def write(self, samples: np.ndarray) -> None:
        if self._file is not None:
            self._file.write(np.clip(samples, -1.0, 1.0).astype(np.float32))

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._file is None:
            return
        self._file.close()
        if exc_type is None:
            os.chmod(self._tmp, 0o644)  # mkstemp makes it private; a reply is an ordinary file
            os.replace(self._tmp, self.path)
        else:
            self._discard()

    def _discard(self) -> None:
        if self._tmp and os.path.exists(self._tmp):
            os.unlink(self._tmp)
