"""numpy TMRoPE ids equal transformers' get_rope_index, prefill and decode, for random multimodal prompts."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration
from transformers.models.qwen2_5_omni.processing_qwen2_5_omni import Qwen2_5OmniProcessor

from omni_edge.errors import InputError
from omni_edge.export.tiny import tiny_config_dict
from omni_edge.runtime.tmrope import QWEN_TOKENS as T
from omni_edge.runtime.tmrope import audio_token_count, decode_positions, frame_times, rope_index

# 4 fps .. 0.5 fps (4.0 steps past a whole 2 s chunk per frame); 0.08 (25 fps) is inexact in float32.
SECONDS_PER_GRID = [0.5, 1.0, 2.0, 4.0, 0.08]


@pytest.fixture(scope="module")
def thinker():
    config = Qwen2_5OmniThinkerConfig(**tiny_config_dict()["thinker_config"])
    return Qwen2_5OmniThinkerForConditionalGeneration(config).eval()


class _ProcessorStub:
    """Just what Qwen2_5OmniProcessor.replace_video_with_audio_token reads; no tokenizer needed."""

    audio_bos_token, audio_eos_token, video_token, audio_token = "B", "E", "V", "A"
    video_processor = SimpleNamespace(merge_size=2)
    get_chunked_index = Qwen2_5OmniProcessor.get_chunked_index
    replace_video_with_audio_token = Qwen2_5OmniProcessor.replace_video_with_audio_token


def _audio_in_video_tokens(grid, seconds, n_audio) -> list[int]:
    """The processor's own layout: <|vision_bos|><|audio_bos|> chunks <|audio_eos|><|vision_eos|>."""
    text = _ProcessorStub().replace_video_with_audio_token(
        {"video_grid_thw": np.array([grid]), "video_second_per_grid": [seconds]},
        0,
        {"num_audio_tokens": [n_audio]},
        0,
        position_id_per_seconds=25,
        seconds_per_chunk=2.0,
    )
    chars = {"B": T.audio_start, "E": T.audio_end, "V": T.video, "A": T.audio}
    return [T.vision_start] + [chars[c] for c in text] + [T.vision_end]


@st.composite
def prompts(draw, use_audio_in_video: bool):
    """A random prompt and its media lists, built as the Qwen2.5-Omni processor lays them out."""
    p = SimpleNamespace(ids=[], images=[], videos=[], mels=[], seconds=[], use_audio_in_video=use_audio_in_video)
    even = st.integers(1, 8).map(lambda x: 2 * x)
    for kind in draw(st.lists(st.sampled_from(["text", "audio", "image", "video"]), min_size=1, max_size=6)):
        if kind == "text":
            p.ids += draw(st.lists(st.integers(0, 151_000), min_size=1, max_size=5))
        elif kind == "audio":
            p.mels.append(draw(st.integers(3, 1000)))
            p.ids += [T.audio_start] + [T.audio] * audio_token_count(p.mels[-1]) + [T.audio_end]
        elif kind == "image":
            grid = (1, draw(even), draw(even))
            p.images.append(grid)
            p.ids += [T.vision_start] + [T.image] * (grid[1] * grid[2] // 4) + [T.vision_end]
        else:
            grid = (draw(st.integers(1, 8)), draw(even), draw(even))
            p.videos.append(grid)
            p.seconds.append(draw(st.sampled_from(SECONDS_PER_GRID)))
            if use_audio_in_video:
                p.mels.append(draw(st.integers(3, 1000)))
                p.ids += _audio_in_video_tokens(grid, p.seconds[-1], audio_token_count(p.mels[-1]))
            else:
                p.ids += [T.vision_start] + [T.video] * (np.prod(grid) // 4) + [T.vision_end]
    return p


def _ours(p):
    return rope_index(np.array(p.ids), p.images, p.videos, p.mels, p.seconds, p.use_audio_in_video)


def _hf(thinker, p):
    """transformers' ids as the processor's outputs reach it: absent modalities are None."""
    ids = torch.tensor([p.ids])
    positions, deltas = thinker.get_rope_index(
        ids,
        torch.tensor(p.images) if p.images else None,
        torch.tensor(p.videos) if p.videos else None,
        torch.ones_like(ids),
        p.use_audio_in_video,
        torch.tensor(p.mels) if p.mels else None,
        torch.tensor(p.seconds) if p.seconds else None,
    )
    return positions[:, 0].numpy(), int(deltas[0, 0])


def _assert_same(thinker, p):
    positions, delta = _ours(p)
    hf_positions, hf_delta = _hf(thinker, p)
    assert positions.dtype == np.int64 and positions.shape == (3, len(p.ids))
    np.testing.assert_array_equal(positions, hf_positions)
    assert delta == hf_delta


@settings(max_examples=60, deadline=None)
@given(p=prompts(use_audio_in_video=False))
def test_matches_transformers(thinker, p):
    _assert_same(thinker, p)


@settings(max_examples=60, deadline=None)
@given(p=prompts(use_audio_in_video=True))
def test_matches_transformers_audio_in_video(thinker, p):
    _assert_same(thinker, p)


@settings(max_examples=20, deadline=None)
@given(p=prompts(use_audio_in_video=True), steps=st.integers(1, 3))
def test_decode_continues_like_transformers(thinker, p, steps):
    _, delta = _ours(p)
    model = thinker.model
    model.rope_deltas = None
    # Prefill (no cache) stores transformers' deltas; later calls see a cache and add them to cache positions.
    model.compute_3d_position_ids(
        torch.tensor([p.ids]),
        torch.tensor(p.images) if p.images else None,
        torch.tensor(p.videos) if p.videos else None,
        None,
        torch.ones(1, len(p.ids), dtype=torch.long),
        None,
        p.use_audio_in_video,
        torch.tensor(p.mels) if p.mels else None,
        torch.tensor(p.seconds) if p.seconds else None,
    )
    for generated in range(3):
        cache = SimpleNamespace(get_seq_length=lambda n=len(p.ids) + generated: n)
        embeds = torch.zeros(1, steps, 1)
        hf = model.compute_3d_position_ids(torch.zeros(1, steps, dtype=torch.long), None, None, embeds, None, cache)
        np.testing.assert_array_equal(decode_positions(len(p.ids) + generated, steps, delta), hf.numpy())


def test_worked_example():
    """2 fps video (1 s per merged frame pair), 2x2 merged grid, 3 frames: frames 25 ids apart."""
    ids = [7, T.vision_start] + [T.video] * 12 + [T.vision_end, 8]
    positions, delta = rope_index(np.array(ids), video_grid_thw=[(3, 4, 4)], second_per_grid=[1.0])
    assert positions[0, 2:14].tolist() == [2] * 4 + [27] * 4 + [52] * 4
    assert positions[1, 2:6].tolist() == [2, 2, 3, 3] and positions[2, 2:6].tolist() == [2, 3, 2, 3]
    assert positions[:, 14:].tolist() == [[53, 54]] * 3
    assert delta == 55 - len(ids)


def test_audio_in_video_eos_takes_last_chunk_max(thinker):
    """A transformers quirk kept for parity: a tall frame with short audio puts the eos pair inside the video's ids."""
    p = SimpleNamespace(
        ids=[1] + _audio_in_video_tokens((1, 16, 2), 1.0, 1) + [2],
        images=[],
        videos=[(1, 16, 2)],
        mels=[3],
        seconds=[1.0],
        use_audio_in_video=True,
    )
    _assert_same(thinker, p)
    positions, _ = _ours(p)
    eos = positions[0, -3]
    assert eos < positions.max()


def test_frame_times_truncate_in_float32_like_transformers():
    # 5 * 0.08 * 25 is 10 in float64 but 9.99999 in float32, which transformers truncates to 9.
    assert frame_times(6, 0.08, 25).tolist() == [0, 2, 4, 6, 8, 9]


def test_text_only_is_plain_rope():
    positions, delta = rope_index(np.arange(5))
    assert positions.tolist() == [list(range(5))] * 3 and delta == 0


def test_rejects_audio_too_short_for_a_token():
    assert audio_token_count(2) == 0
    with pytest.raises(InputError, match="mel frames"):
        rope_index(np.array([T.audio_start, T.audio, T.audio_end]), audio_mel_lengths=[2])


@pytest.mark.parametrize(
    "ids, kwargs, match",
    [
        ([T.vision_start] + [T.image] * 3 + [T.vision_end], {"image_grid_thw": [(1, 4, 4)]}, "placeholders"),
        ([T.vision_start] + [T.image] * 4 + [T.vision_end], {}, "more image"),
        ([1, 2], {"image_grid_thw": [(1, 4, 4)]}, "no placeholder block"),
        ([T.image] * 4 + [T.vision_end], {"image_grid_thw": [(1, 4, 4)]}, "vision_bos"),
        ([T.vision_start] + [T.video] * 4 + [T.vision_end], {"video_grid_thw": [(1, 4, 4)]}, "second_per_grid"),
        (
            [T.vision_start] + [T.video] * 4 + [T.vision_end],
            {"video_grid_thw": [(1, 4, 4)], "second_per_grid": [1.0], "use_audio_in_video": True},
            "carry its audio",
        ),
        (np.zeros((1, 3), dtype=np.int64), {}, "1-D"),
    ],
)
def test_rejects_inconsistent_prompts(ids, kwargs, match):
    with pytest.raises(InputError, match=match):
        rope_index(np.array(ids), **kwargs)
