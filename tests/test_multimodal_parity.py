"""Audio, image and video prompts: encoder graphs and greedy tokens match transformers on the same inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omni_edge.runtime.audio_frontend import log_mel
from omni_edge.runtime.sampling import SamplingConfig
from omni_edge.runtime.session import Done
from omni_edge.runtime.vision_frontend import preprocess_image, preprocess_video

GREEDY = SamplingConfig(greedy=True)
NEW_TOKENS = 32
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


def hf_greedy(hf_model, ids, new_tokens, media: dict, use_audio_in_video: bool) -> list[int]:
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        out = hf_model.thinker.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=new_tokens,
            do_sample=False,
            use_audio_in_video=use_audio_in_video,
            **media,
        )
    return out[0, len(ids) :].tolist()


CASES = {
    "audio-only": dict(audio=[tone(3.3)]),
    "two-audios": dict(audio=[tone(1.0, 220), tone(2.5, 660)]),
    "image-only": dict(images=[picture(120, 200)]),
    "video-only": dict(videos=[(clip(6, 84, 112), 2.0)]),
    "video-with-audio": dict(videos=[(clip(8, 84, 140), 2.0, tone(4.0, 300))], use_audio_in_video=True),
    "mixed": dict(audio=[tone(2.2)], images=[picture(64, 96), picture(150, 90)], videos=[(clip(4, 56, 84), 2.0)]),
}


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
    expected = hf_greedy(hf_model, result.prompt_token_ids, NEW_TOKENS, hf_inputs(**media), use_audio_in_video)
    assert result.text_token_ids == expected


def test_text_turn_after_media_continues_positions(session, hf_model):
    """A text follow-up after an image turn: cache reuse plus the rope delta of the first turn."""
    media = CASES["image-only"]
    session.reset()
    first = [e for e in session.generate("Look.", 8, GREEDY, **media) if isinstance(e, Done)][0].result
    second = [e for e in session.generate("And now?", 8, GREEDY) if isinstance(e, Done)][0].result
    conversation = first.prompt_token_ids + first.text_token_ids[:-1] + second.prompt_token_ids
    assert second.text_token_ids == hf_greedy(hf_model, conversation, 8, hf_inputs(**media), False)


@pytest.mark.parametrize("seconds", [0.5, 2.0, 4.7])
def test_audio_encoder_graph_matches_module(session, hf_model, seconds):
    wave = tone(seconds)
    ours = session.media.encode_audio(wave).embeds
    mel = log_mel(wave)
    with torch.no_grad():
        ref = hf_model.thinker.model.audio_tower(
            input_features=torch.tensor(mel), feature_lens=torch.tensor([mel.shape[1]])
        ).last_hidden_state
    np.testing.assert_allclose(ours, ref.numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shape", [(56, 56), (300, 200), (28, 640)])
def test_vision_encoder_graph_matches_module(session, hf_model, shape):
    """Sizes the graph was not exported with: every index is built on the host."""
    image = picture(*shape)
    ours = session.media.encode_image(image).embeds
    patches, grid = preprocess_image(image)
    with torch.no_grad():
        ref = hf_model.thinker.model.visual(torch.tensor(patches), grid_thw=torch.tensor(grid)).pooler_output
    np.testing.assert_allclose(ours, ref.numpy(), atol=1e-4, rtol=1e-4)
