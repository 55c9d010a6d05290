"""numpy sampling filters equal transformers' logits processors on the same logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from omni_edge.errors import InputError
from omni_edge.runtime.sampling import (
    SamplingConfig,
    apply_repetition_penalty,
    filter_top_k,
    filter_top_p,
    sample_token,
)

VOCAB = 300


def _logits(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(VOCAB) * 3


@given(
    seed=st.integers(0, 10_000), penalty=st.floats(0.5, 2.0), history=st.lists(st.integers(0, VOCAB - 1), max_size=20)
)
@settings(max_examples=50, deadline=None)
def test_repetition_penalty_matches_transformers(seed, penalty, history):
    logits = _logits(seed)
    previous = np.asarray(history, dtype=np.int64)
    ours = apply_repetition_penalty(logits, previous, penalty)
    ids = torch.tensor([history if history else [0]])
    ref = RepetitionPenaltyLogitsProcessor(penalty)(ids, torch.tensor(logits)[None].clone())[0].numpy()
    if not history:
        ref = logits  # transformers always gets at least the prompt; an empty history changes nothing
    np.testing.assert_allclose(ours, ref, rtol=1e-12)


@given(seed=st.integers(0, 10_000), k=st.integers(1, VOCAB), temperature=st.floats(0.2, 2.0))
@settings(max_examples=50, deadline=None)
def test_temperature_and_top_k_match_transformers(seed, k, temperature):
    logits = _logits(seed)
    ours = filter_top_k(logits / temperature, k)
    scores = TemperatureLogitsWarper(temperature)(None, torch.tensor(logits)[None])
    ref = TopKLogitsWarper(k)(None, scores)[0].numpy()
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(ref))
    np.testing.assert_allclose(ours[~np.isinf(ours)], ref[~np.isinf(ref)], rtol=1e-12)


@given(seed=st.integers(0, 10_000), p=st.floats(0.05, 1.0))
@settings(max_examples=50, deadline=None)
def test_top_p_matches_transformers(seed, p):
    logits = _logits(seed)
    ours = filter_top_p(logits, p)
    ref = TopPLogitsWarper(p)(None, torch.tensor(logits)[None])[0].numpy()
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(ref))


def test_greedy_is_argmax_after_penalty():
    logits = np.zeros(10)
    logits[3], logits[5] = 2.0, 1.9
    rng = np.random.default_rng(0)
    assert sample_token(logits, np.array([], dtype=np.int64), SamplingConfig(greedy=True), rng) == 3
    penalised = SamplingConfig(greedy=True, repetition_penalty=1.2)
    assert sample_token(logits, np.array([3]), penalised, rng) == 5


def test_sampling_only_draws_kept_tokens():
    logits = _logits(1)
    keep = set(np.argsort(logits)[-5:].tolist())
    rng = np.random.default_rng(0)
    draws = {sample_token(logits, np.array([], dtype=np.int64), SamplingConfig(top_k=5), rng) for _ in range(200)}
    assert draws <= keep and len(draws) > 1


@pytest.mark.parametrize(
    "config",
    [
        SamplingConfig(temperature=0),
        SamplingConfig(top_k=-1),
        SamplingConfig(top_p=0),
        SamplingConfig(repetition_penalty=0),
    ],
)
def test_bad_sampling_options_are_refused(config):
    with pytest.raises(InputError):
        config.validate()
