"""Codec tokens -> 24 kHz audio: the flow-matching ODE over dit_window, then bigvgan_window.

Two paths share every piece:
- `full_token2wav`: the whole utterance at once, as transformers' token2wav does (parity reference).
- `Token2WavStream`: the sliding-window scheme of Qwen's streaming code (reference doc section 5.4): a DiT
  window sees 2 blocks back and 1 block ahead of the frames it keeps; the vocoder gets 40 frames of left
  context and holds back the last 20 frames, so chunks tile the timeline with hard cuts. The first chunk
  is emitted as soon as 48 codec tokens exist, long before the Talker finishes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from omni_edge.runtime.engine import Engine

GUIDANCE_SCALE = 0.5
NUM_TIME_POINTS = 10
SWAY_COEFFICIENT = -1.0


@dataclass(frozen=True)
class Speaker:
    name: str
    bos_token_id: int
    cond: np.ndarray  # [1, E] x-vector
    reference_mel: np.ndarray  # [1, R, mel]


@dataclass(frozen=True)
class StreamWindows:
    """Window geometry in mel frames (100 per second); defaults are Qwen's streaming parameters, which are
    whole DiT blocks of the released block_size 24: use `for_dit` for a checkpoint's own block_size."""

    chunk: int = 72  # frames kept per chunk (3 DiT blocks of 24)
    past: int = 48  # DiT look-back context (2 blocks)
    future: int = 24  # DiT look-ahead context (1 block)
    vocoder_context: int = 40  # mel frames of left context for BigVGAN
    vocoder_holdback: int = 20  # mel frames whose audio waits for the next chunk

    @classmethod
    def for_dit(
        cls, block_size: int, look_back_blocks: int = 2, look_ahead_blocks: int = 1, repeats: int = 2
    ) -> StreamWindows:
        """Qwen's windows in whole blocks of `block_size` frames: 3 kept, look_back_blocks behind (one per
        look-backward layer of the DiT), look_ahead_blocks ahead (one per look-ahead layer). Window edges on
        block edges make one DiT pass over a window give the kept frames what the whole sequence gives them."""
        from omni_edge.errors import UnsupportedConfigError

        if block_size < 1 or block_size % repeats:
            raise UnsupportedConfigError(
                f"dit_config.block_size = {block_size} is not supported: the streaming windows need whole codec "
                f"tokens per block, so it must be a positive multiple of dit_config.repeats ({repeats})"
            )
        return cls(chunk=3 * block_size, past=look_back_blocks * block_size, future=look_ahead_blocks * block_size)


def time_grid(points: int = NUM_TIME_POINTS, sway: float = SWAY_COEFFICIENT) -> np.ndarray:
    # float32 throughout, like torch.linspace in the reference, so every evaluation sees the same t.
    t = np.linspace(0, 1, points, dtype=np.float32)
    return (t + np.float32(sway) * (np.cos(np.float32(np.pi / 2) * t) - 1 + t)).astype(np.float32)


def cfg_velocity(velocity_pair: np.ndarray, scale: float = GUIDANCE_SCALE) -> np.ndarray:
    conditioned, unconditioned = velocity_pair[0], velocity_pair[1]
    return conditioned + (conditioned - unconditioned) * np.float32(scale)


def rk4_step(f, t0: np.float32, t1: np.float32, y: np.ndarray) -> np.ndarray:
    """torchdiffeq's 3/8-rule RK4 step, as transformers' RungeKutta4ODESolver writes it."""
    dt = t1 - t0
    third = np.float32(1 / 3)
    k1 = f(t0, y)
    k2 = f(t0 + dt * third, y + dt * k1 * third)
    k3 = f(t0 + dt * np.float32(2 / 3), y + dt * (k2 - k1 * third))
    k4 = f(t1, y + dt * (k1 - k2 + k3))
    return y + (k1 + 3 * (k2 + k3) + k4) * dt / 8


def euler_step(f, t0: np.float32, t1: np.float32, y: np.ndarray) -> np.ndarray:
    return y + (t1 - t0) * f(t0, y)


SOLVERS = {"rk4": rk4_step, "euler": euler_step}


def solve_mel(dit: Engine, noise: np.ndarray, codes: np.ndarray, speaker: Speaker, solver: str = "rk4") -> np.ndarray:
    """Integrate the DiT velocity from noise [T, mel] at t=0 to a mel [T, mel] at t=1."""
    step = SOLVERS[solver]
    fixed = {
        "codes": codes.astype(np.int64)[None],
        "speaker_cond": speaker.cond.astype(np.float32),
        "reference_mel": speaker.reference_mel.astype(np.float32),
    }

    def velocity(t, y):
        feeds = {**fixed, "noisy_mel": y[None].astype(np.float32), "time": np.asarray([t], dtype=np.float32)}
        return cfg_velocity(dit.run(feeds)["velocity"])

    grid = time_grid()
    y = noise.astype(np.float32)
    for t0, t1 in zip(grid[:-1], grid[1:]):
        y = step(velocity, t0, t1, y)
    return y


def vocode(bigvgan: Engine, mel: np.ndarray) -> np.ndarray:
    """mel [T, mel_dim] (natural-log amplitude) -> waveform [T * 240] float32."""
    return bigvgan.run({"mel": mel.T[None].astype(np.float32)})["waveform"][0]


def dit_codes(codes, num_embeddings: int) -> np.ndarray:
    """Codes as the DiT looks them up. `num_embeddings` is dit_config.num_embeds (8193): transformers' codec
    table has num_embeds + 1 rows, so code num_embeds (8193) is a row like any other, as in transformers.
    Codes above it (the Talker's special ids, which transformers' DiT cannot index and fails on) become 0."""
    codes = np.asarray(codes, dtype=np.int64)
    return np.where(codes > num_embeddings, 0, codes)


def full_token2wav(
    dit, bigvgan, codes, speaker: Speaker, noise: np.ndarray, num_embeddings: int, repeats: int = 2, solver: str = "rk4"
) -> np.ndarray:
    """The whole utterance in one ODE solve and one vocoder pass (transformers' token2wav)."""
    frames = len(codes) * repeats
    mel = solve_mel(dit, noise[:frames], dit_codes(codes, num_embeddings), speaker, solver)
    return vocode(bigvgan, mel)


class Token2WavStream:
    """Feed codec tokens as the Talker makes them; get audio chunks as soon as their windows are complete."""

    def __init__(
        self,
        dit: Engine,
        bigvgan: Engine,
        speaker: Speaker,
        noise: np.ndarray,
        num_embeddings: int,
        repeats: int = 2,
        samples_per_frame: int = 240,
        solver: str = "rk4",
        windows: StreamWindows = StreamWindows(),
    ):
        self.dit, self.bigvgan, self.speaker, self.noise = dit, bigvgan, speaker, noise
        self.num_embeddings, self.repeats, self.spf, self.solver, self.w = (
            num_embeddings,
            repeats,
            samples_per_frame,
            solver,
            windows,
        )
        self.codes: list[int] = []
        self.next_chunk = 0
        self.kept_mel = np.zeros((0, noise.shape[1]), dtype=np.float32)  # vocoder context source

    def push(self, codes: list[int]) -> list[np.ndarray]:
        self.codes.extend(codes)
        frames = len(self.codes) * self.repeats
        out = []
        while frames >= (self.next_chunk + 1) * self.w.chunk + self.w.future:
            out.append(self._emit(last=False))
        return out

    def finish(self) -> list[np.ndarray]:
        if self.next_chunk * self.w.chunk >= len(self.codes) * self.repeats:
            return []  # nothing left (or nothing at all)
        return [self._emit(last=True)]

    def _emit(self, last: bool) -> np.ndarray:
        w, i = self.w, self.next_chunk
        total = len(self.codes) * self.repeats
        keep_start = i * w.chunk
        keep_end = total if last else keep_start + w.chunk
        start = max(keep_start - w.past, 0)
        end = total if last else keep_end + w.future
        codes = dit_codes(self.codes[start // self.repeats : end // self.repeats], self.num_embeddings)
        mel = solve_mel(self.dit, self.noise[start:end], codes, self.speaker, self.solver)
        kept = mel[keep_start - start : keep_end - start]
        context = self.kept_mel[-w.vocoder_context :] if i > 0 else self.kept_mel[:0]
        audio = vocode(self.bigvgan, np.concatenate([context, kept]))
        drop_front = w.vocoder_holdback * self.spf if i > 0 else 0
        drop_back = 0 if last else w.vocoder_holdback * self.spf
        self.kept_mel = np.concatenate([self.kept_mel, kept])
        self.next_chunk += 1
        return audio[drop_front : len(audio) - drop_back]


def windowed_token2wav(
    dit, bigvgan, codes, speaker: Speaker, noise: np.ndarray, num_embeddings: int, **kwargs
) -> np.ndarray:
    """The streaming windows computed in one go from the complete code sequence (the offline reference)."""
    stream = Token2WavStream(dit, bigvgan, speaker, noise, num_embeddings, **kwargs)
    chunks = stream.push(list(codes)) + stream.finish()
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
