"""Audio, image and video prompts: encoder graphs and greedy tokens match transformers on the same inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import hf_audio_tower, hf_greedy
from media_cases import CASES, hf_inputs, picture, tone

from omni_edge.runtime.audio_frontend import log_mel
from omni_edge.runtime.sampling import SamplingConfig
from omni_edge.runtime.session import Done
from omni_edge.runtime.vision_frontend import preprocess_image

GREEDY = SamplingConfig(greedy=True)
NEW_TOKENS = 32


@pytest.mark.parametrize("case", list(CASES))
def test_greedy_tokens_match_transformers(session, hf_model, case):
    media = CASES[case]
    session.reset()
    events = list(session.generate("What do you perceive?", NEW_TOKENS, GREEDY, **media))
    result = events[-1].result
    assert isinstance(events[-1], Done) and len(result.text_token_ids) == NEW_TOKENS
    info = session.manifest.media
    placeholders = {info.audio_token_id, info.image_token_id, info.video_token_id}
    assert placeholders & set(result.prompt_token_ids)
    use_audio_in_video = media.get("use_audio_in_video", False)
    expected = hf_greedy(
        hf_model, result.prompt_token_ids, NEW_TOKENS, use_audio_in_video=use_audio_in_video, **hf_inputs(**media)
    )
    assert result.text_token_ids == expected


def test_text_turn_after_media_continues_positions(session, hf_model):
    """A text follow-up after an image turn: cache reuse plus the rope delta of the first turn."""
    media = CASES["image-only"]
    session.reset()
    first = [e for e in session.generate("Look.", 8, GREEDY, **media) if isinstance(e, Done)][0].result
    second = [e for e in session.generate("And now?", 8, GREEDY) if isinstance(e, Done)][0].result
    conversation = first.prompt_token_ids + first.text_token_ids[:-1] + second.prompt_token_ids
    assert second.text_token_ids == hf_greedy(hf_model, conversation, 8, use_audio_in_video=False, **hf_inputs(**media))


@pytest.mark.parametrize("seconds", [0.5, 2.0, 4.7])
def test_audio_encoder_graph_matches_module(session, hf_model, seconds):
    wave = tone(seconds)
    ours = session.media.encode_audio(wave).embeds
    np.testing.assert_allclose(ours, hf_audio_tower(hf_model, log_mel(wave)), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shape", [(56, 56), (300, 200), (28, 640)])
def test_vision_encoder_graph_matches_module(session, hf_model, shape):
    """Sizes the graph was not exported with: every index is built on the host."""
    image = picture(*shape)
    ours = session.media.encode_image(image).embeds
    patches, grid = preprocess_image(image)
    with torch.no_grad():
        ref = hf_model.thinker.model.visual(torch.tensor(patches), grid_thw=torch.tensor(grid)).pooler_output
    np.testing.assert_allclose(ours, ref.numpy(), atol=1e-4, rtol=1e-4)
