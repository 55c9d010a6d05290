"""Token sampling in numpy: greedy, temperature, top-k, top-p, repetition penalty.

Order of operations follows transformers' logits processors (repetition penalty, then temperature,
top-k, top-p), so the same settings mean the same distribution as in the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from omni_edge.errors import InputError


@dataclass(frozen=True)
class SamplingConfig:
    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def validate(self) -> None:
        # Written as "not (x > 0)" so NaN, which fails every comparison, is refused too: a NaN penalty made every
        # logit NaN and greedy decoding repeat token 0.
        if not math.isfinite(self.temperature) or not self.temperature > 0:
            raise InputError(
                f"--temperature {self.temperature} must be a finite number > 0 (use --greedy for deterministic "
                "decoding)"
            )
        if self.top_k < 0:
            raise InputError("--top-k must be >= 0 (0 turns it off)")
        if not 0 < self.top_p <= 1:
            raise InputError(f"--top-p {self.top_p} must be in (0, 1]")
        if not math.isfinite(self.repetition_penalty) or not self.repetition_penalty > 0:
            raise InputError(
                f"--repetition-penalty {self.repetition_penalty} must be a finite number > 0 (1.0 turns it off)"
            )


def apply_repetition_penalty(logits: np.ndarray, previous: np.ndarray, penalty: float) -> np.ndarray:
    if penalty == 1.0 or previous.size == 0:
        return logits
    logits = logits.copy()
    seen = np.unique(previous)
    scores = logits[seen]
    logits[seen] = np.where(scores < 0, scores * penalty, scores / penalty)
    return logits


def filter_top_k(logits: np.ndarray, k: int) -> np.ndarray:
    if k <= 0 or k >= logits.size:
        return logits
    kth = np.partition(logits, -k)[-k]
    return np.where(logits < kth, -np.inf, logits)


def filter_top_p(logits: np.ndarray, p: float) -> np.ndarray:
    if p >= 1.0:
        return logits
    order = np.argsort(logits)  # ascending, like transformers' TopPLogitsWarper
    probs = _softmax(logits[order])
    cumulative = np.cumsum(probs)
    remove = cumulative <= (1 - p)
    remove[-1] = False  # always keep the most likely token
    out = logits.copy()
    out[order[remove]] = -np.inf
    return out


def sample_token(logits: np.ndarray, previous: np.ndarray, config: SamplingConfig, rng: np.random.Generator) -> int:
    logits = apply_repetition_penalty(logits.astype(np.float64), previous, config.repetition_penalty)
    if config.greedy:
        return int(np.argmax(logits))
    logits = filter_top_p(filter_top_k(logits / config.temperature, config.top_k), config.top_p)
    probs = _softmax(logits)
    return int(rng.choice(probs.size, p=probs))


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - np.max(x))
    return z / z.sum()
