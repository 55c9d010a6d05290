"""omni-run's greedy Thinker tokens equal transformers' greedy generate on the same checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import hf_greedy

from omni_edge.runtime.sampling import SamplingConfig
from omni_edge.runtime.session import Done, TextDelta

GREEDY = SamplingConfig(greedy=True)
NEW_TOKENS = 64
PROMPTS = [
    "Hello, how are you?",
    "Describe the weather on a sunny day.",
    "What is 2 + 2? Answer with a number.",
    "The quick brown fox",
]


def run_turn(session, prompt, new_tokens=NEW_TOKENS):
    events = list(session.generate(prompt, new_tokens, GREEDY))
    assert isinstance(events[-1], Done)
    result = events[-1].result
    streamed = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert streamed == result.text  # what was streamed is exactly the final text
    return result


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_tokens_match_transformers(session, hf_model, prompt):
    session.reset()
    result = run_turn(session, prompt)
    assert len(result.text_token_ids) == NEW_TOKENS  # random weights: no eos within 64 tokens
    assert result.text_token_ids == hf_greedy(hf_model, result.prompt_token_ids, NEW_TOKENS)


def test_multi_turn_reuses_cache_and_matches_transformers(session, hf_model):
    session.reset()
    first = run_turn(session, PROMPTS[0])
    cached_after_first = session.cache.length
    second = run_turn(session, PROMPTS[1])
    # The cache kept turn one: turn two fed only the unfed last token, the turn close and the new user turn.
    assert cached_after_first == len(first.prompt_token_ids) + NEW_TOKENS - 1
    assert second.prompt_token_ids[0] == first.text_token_ids[-1]
    assert second.prompt_token_ids[1] == session.tokenizer.im_end_id
    conversation = first.prompt_token_ids + first.text_token_ids[:-1] + second.prompt_token_ids
    assert second.text_token_ids == hf_greedy(hf_model, conversation, NEW_TOKENS)
    third = run_turn(session, PROMPTS[2], new_tokens=16)
    conversation += second.text_token_ids[:-1] + third.prompt_token_ids
    assert third.text_token_ids == hf_greedy(hf_model, conversation, 16)


def test_prefill_logits_match_transformers(session, hf_model):
    """Tensor-level check under the token check: last-position logits within the spec tolerance."""
    session.reset()
    turn = session.conversation.user_turn([PROMPTS[0]])
    ids = turn.ids
    logits, _ = session.thinker.forward(turn)
    with torch.no_grad():
        ref = hf_model.thinker(input_ids=torch.tensor([ids])).logits[0, -1].numpy()
    np.testing.assert_allclose(logits, ref, atol=1e-4, rtol=1e-4)
    session.reset()


def test_sampled_run_is_reproducible_with_a_seed(session):
    sampling = SamplingConfig(temperature=0.8, top_k=50, top_p=0.9, repetition_penalty=1.1)
    runs = []
    for _ in range(2):
        session.reset()
        runs.append([e for e in session.generate(PROMPTS[0], 16, sampling, seed=7) if isinstance(e, Done)][0])
    assert runs[0].result.text_token_ids == runs[1].result.text_token_ids
    session.reset()
