"""Chat template parity with the checkpoint's jinja template, streaming detokenization, KV-cache bounds and
padded (bucketed) past feeds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omni_edge.bundle import KVCacheGeometry
from omni_edge.errors import KVCacheOverflowError
from omni_edge.runtime.chat import Message, TextStreamer, TextTokenizer, render_chat
from omni_edge.runtime.kv_cache import KVCache, attention_mask, choose_padded_length

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
    expected = hf.apply_chat_template(
        as_dicts, chat_template=config["chat_template"], tokenize=False, add_generation_prompt=True
    )
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


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 600), st.integers(1, 600), st.integers(0, 700), st.integers(0, 64))
def test_padded_length_stays_in_bounds_and_keeps_a_valid_pitch(current, lowest, spare, bucket):
    highest = lowest + spare
    padded = choose_padded_length(current, lowest, highest, bucket)
    assert lowest <= padded <= highest
    if lowest <= current <= highest:
        assert padded == current  # no re-layout while the bound length still fits
    elif bucket and -(-lowest // bucket) * bucket <= highest:
        assert padded % bucket == 0 and padded - lowest < bucket
    with pytest.raises(ValueError):
        choose_padded_length(current, highest + 1, highest, bucket)


def test_attention_mask_masks_only_the_padding_slots():
    assert attention_mask(3, 5, 2).tolist() == [[1, 1, 1, 0, 0, 1, 1]]
    assert attention_mask(0, 0, 4).tolist() == [[1, 1, 1, 1]]


def _steps(cache, decoder, hidden, garbage=None):
    """Logits of a fixed run of steps (prefill, single tokens, a chunk, a truncation and a re-feed)."""
    from omni_edge.runtime.positions import text_positions

    logits, position = [], 0
    for count in (6, 1, 1, 4, 1, "truncate", 2, 1, 1):
        if count == "truncate":
            cache.truncate(cache.length - 3)
            position -= 3
            continue
        if garbage is not None and cache.length:  # slots past the filled ones hold stale, finite values
            cache._buffer[:, :, :, :, cache.length :] = garbage.standard_normal(
                cache._buffer[..., cache.length :, :].shape
            )
        embeds = np.random.default_rng(position).standard_normal((1, count, hidden)).astype(np.float32)
        outputs = cache.run(decoder, {"inputs_embeds": embeds, "position_ids": text_positions(position, count)})
        logits.append(outputs["logits"])
        position += count
    return logits, cache


def test_padded_past_matches_the_exact_past(cpu_bundle, standard_thinker_decoder):
    """The device cache feeds the past padded to a bucket, padding masked out; the standard-op decoder graphs
    (the TensorRT targets'; the cpu target's GroupQueryAttention graph is fed its exact past) must give the
    exact-length answer for it, whatever the padding slots hold."""
    from omni_edge.bundle import load_manifest
    from omni_edge.runtime.engine import OrtEngine

    manifest = load_manifest(cpu_bundle)
    decoder = OrtEngine("decoder", standard_thinker_decoder)
    hidden = manifest.thinker.hidden_size
    exact, _ = _steps(KVCache(manifest.kv_cache), decoder, hidden)
    padded, cache = _steps(KVCache(manifest.kv_cache, bucket=8), decoder, hidden, np.random.default_rng(1))
    assert cache.padded % 8 == 0 and cache.padded > cache.length - 1
    for got, want in zip(padded, exact):
        # fp32 graph, different reduction lengths: measured <= 2e-6
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
