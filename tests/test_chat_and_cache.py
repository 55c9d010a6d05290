"""Chat template parity with the checkpoint's jinja template, streaming detokenization, KV-cache bounds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from omni_edge.bundle import KVCacheGeometry
from omni_edge.errors import KVCacheOverflowError
from omni_edge.runtime.chat import Message, TextStreamer, TextTokenizer, render_chat
from omni_edge.runtime.kv_cache import KVCache

CONVERSATIONS = [
    [Message("user", "Hello there")],
    [Message("system", "Be brief."), Message("user", "Hi")],
    [Message("user", "One"), Message("assistant", "Two"), Message("user", "Three?")],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_render_chat_matches_checkpoint_template(tiny_checkpoint, messages):
    from transformers import PreTrainedTokenizerFast

    config = json.loads((tiny_checkpoint / "tokenizer_config.json").read_text())
    hf = PreTrainedTokenizerFast(tokenizer_file=str(tiny_checkpoint / "tokenizer.json"))
    as_dicts = [{"role": m.role, "content": m.content} for m in messages]
    expected = hf.apply_chat_template(as_dicts, chat_template=config["chat_template"], tokenize=False,
                                      add_generation_prompt=True)
    assert render_chat(messages) == expected
    ours = TextTokenizer(tiny_checkpoint / "tokenizer.json").encode(render_chat(messages))
    assert ours == hf(expected, add_special_tokens=False)["input_ids"]


def test_streamer_never_splits_a_character(tiny_checkpoint):
    tokenizer = TextTokenizer(tiny_checkpoint / "tokenizer.json")
    text = "naïve café — 東京 🎤 ok"
    ids = tokenizer.encode(text)
    streamer = TextStreamer(tokenizer)
    deltas = [streamer.push(i) for i in ids] + [streamer.flush()]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)


def _outputs(layers: int, new: int, value: float) -> dict:
    out = {}
    for i in range(layers):
        out[f"present.{i}.key"] = np.full((1, 2, new, 4), value, dtype=np.float32)
        out[f"present.{i}.value"] = np.full((1, 2, new, 4), -value, dtype=np.float32)
    return out


def test_kv_cache_appends_in_place_and_refuses_overflow():
    cache = KVCache(KVCacheGeometry(num_layers=2, num_kv_heads=2, head_dim=4, max_seq_len=8))
    cache.append(_outputs(2, 5, 1.0))
    cache.append(_outputs(2, 2, 2.0))
    past = cache.past_feeds()
    assert past["past.1.key"].shape == (1, 2, 7, 4)
    assert np.all(past["past.1.key"][:, :, 5:] == 2.0) and np.all(past["past.0.value"][:, :, :5] == -1.0)
    with pytest.raises(KVCacheOverflowError, match="max-seq-len"):
        cache.append(_outputs(2, 2, 3.0))
    assert cache.length == 7  # a refused write leaves the cache as it was
    cache.truncate(3)
    cache.append(_outputs(2, 5, 4.0))
    assert cache.length == 8 and np.all(cache.past_feeds()["past.0.key"][:, :, 3:] == 4.0)


def test_session_refuses_a_prompt_longer_than_the_cache(session):
    from omni_edge.runtime.sampling import SamplingConfig

    session.reset()
    with pytest.raises(KVCacheOverflowError, match="KV cache holds 2048"):
        session.generate("word " * 2500, 8, SamplingConfig(greedy=True))
    assert session.cache.length == 0
