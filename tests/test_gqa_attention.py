"""The cpu target's decoder attention: ONNX Runtime's GroupQueryAttention over a KV buffer that the runtime binds
as both past and present, so a step appends in place. The TensorRT targets keep the standard-op attention.

Stated tolerance: at every past length tried, a decode step's logits are within LOGITS_ATOL of the standard-op
graph's (transformers' own attention, exported) and of transformers' forward over the whole sequence; measured
under 3e-6 on the tiny model. The greedy tokens of the in-place path are transformers' (test_thinker_parity,
test_speech_parity and the rest run the cpu bundle, which is this path)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from omni_edge import naming
from omni_edge.bundle import load_manifest
from omni_edge.errors import KVCacheOverflowError
from omni_edge.runtime.engine import OrtEngine
from omni_edge.runtime.kv_cache import KVCache, new_kv_cache
from omni_edge.runtime.positions import text_positions
from omni_edge.targets import TARGETS

LOGITS_ATOL = 1e-4  # fp32 both sides; only reduction order differs (the op's softmax and GEMMs against sdpa's)
PAST_LENGTHS = (0, 1, 63, 300, 1500)


def _decoder(bundle, name=naming.THINKER_DECODER):
    manifest = load_manifest(bundle)
    return manifest, OrtEngine(name, bundle / manifest.components[name].file, threads=1)


def _rows(count: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, count, width)).astype(np.float32)


def _step(cache, decoder, rows: np.ndarray) -> dict:
    feeds = {"inputs_embeds": rows, "position_ids": text_positions(cache.length, rows.shape[1])}
    return cache.run(decoder, feeds)


def _transformers_last_logits(hf_model, rows: np.ndarray) -> np.ndarray:
    """transformers' Thinker over the whole sequence at once: the logits of its last position."""
    import torch

    thinker = hf_model.thinker
    with torch.no_grad():
        hidden = thinker.model.language_model(
            inputs_embeds=torch.from_numpy(rows),
            position_ids=torch.from_numpy(text_positions(0, rows.shape[1])),
        ).last_hidden_state
        return thinker.lm_head(hidden[:, -1]).numpy()[0]


def test_cpu_decoders_append_in_place_and_gpu_targets_keep_standard_ops(cpu_bundle, hf_model):
    import onnx

    from omni_edge.export.components import component_specs

    manifest = load_manifest(cpu_bundle)
    for name in (naming.THINKER_DECODER, naming.TALKER_DECODER):
        record = manifest.components[name]
        assert record.shared_kv_buffer
        graph = onnx.load(str(cpu_bundle / record.file), load_external_data=False).graph
        layers = sum(1 for i in graph.input if i.name.startswith("past.")) // 2
        attention = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
        assert layers and len(attention) == layers and all(n.domain == "com.microsoft" for n in attention)
        # Each layer's past feeds its attention node and nothing else (no Concat of the whole past), and the
        # node's present is the graph output itself, so binding both to one buffer makes ONNX Runtime share it.
        pasts = set(naming.past_names(layers))
        for layer, node in enumerate(attention):
            assert list(node.input[3:5]) == [naming.past_key(layer), naming.past_value(layer)]
            assert list(node.output[1:3]) == [naming.present_key(layer), naming.present_value(layer)]
        assert [n for n in graph.node if pasts & set(n.input)] == attention
    assert TARGETS["cpu"].group_query_attention
    for target in TARGETS.values():
        if target.tensorrt is not None:
            assert not target.group_query_attention
            specs = component_specs(hf_model, ("thinker", "talker"), target)
            decoders = [s for s in specs if s.name in (naming.THINKER_DECODER, naming.TALKER_DECODER)]
            assert len(decoders) == 2 and not any(s.shared_kv_buffer for s in decoders)


def test_decode_logits_match_the_standard_graph_and_transformers_at_several_past_lengths(
    cpu_bundle, standard_thinker_decoder, hf_model
):
    manifest, gqa = _decoder(cpu_bundle)
    standard = OrtEngine("standard", standard_thinker_decoder, threads=1)
    width = manifest.thinker.hidden_size
    for past in PAST_LENGTHS:
        rows = _rows(past + 1, width, seed=past)
        in_place = new_kv_cache("onnxruntime", manifest.kv_cache, shared_buffer=True)
        appended = KVCache(manifest.kv_cache)
        if past:
            _step(in_place, gqa, rows[:, :past])
            _step(appended, standard, rows[:, :past])
        got, want = _step(in_place, gqa, rows[:, past:]), _step(appended, standard, rows[:, past:])
        assert in_place.length == appended.length == past + 1
        np.testing.assert_allclose(got["logits"], want["logits"], atol=LOGITS_ATOL, rtol=0)
        np.testing.assert_allclose(got["last_hidden_state"], want["last_hidden_state"], atol=LOGITS_ATOL, rtol=0)
        np.testing.assert_allclose(got["logits"][0, -1], _transformers_last_logits(hf_model, rows), atol=LOGITS_ATOL)
        # The cache the graph wrote in place holds what the standard graph's presents held.
        np.testing.assert_allclose(
            in_place._buffer[..., : past + 1, :], appended._buffer[..., : past + 1, :], atol=1e-5
        )


@pytest.mark.parametrize("name", [naming.THINKER_DECODER, naming.TALKER_DECODER])
def test_in_place_steps_equal_numpy_feeds_over_turns_chunks_and_truncation(cpu_bundle, name):
    """The bound path and the numpy fallback (a wrapper engine) run the same graph; a cancelled turn's tokens are
    forgotten by truncation and overwritten in place by the next ones."""
    manifest, decoder = _decoder(cpu_bundle, name)
    geometry = manifest.kv_cache if name == naming.THINKER_DECODER else manifest.talker.kv_cache
    width = manifest.thinker.hidden_size
    in_place, fed = KVCache(geometry, shared_buffer=True), KVCache(geometry)
    for step, count in enumerate((9, 1, 1, 5, -4, 3, 1, 1, 17, 1)):
        if count < 0:
            in_place.truncate(in_place.length + count)
            fed.truncate(fed.length + count)
            continue
        rows = _rows(count, width, seed=step)
        got, want = _step(in_place, decoder, rows), _step(fed, decoder, rows)
        assert set(got) == set(want) == {"logits", "last_hidden_state"}
        for key in got:
            np.testing.assert_allclose(got[key], want[key], atol=1e-6, rtol=0)
    assert in_place._bound is not None  # the bound path ran, not the fallback
    assert in_place.length == fed.length == 35
    np.testing.assert_array_equal(in_place._buffer[..., :35, :], fed._buffer[..., :35, :])


def test_a_full_shared_cache_refuses_the_next_tokens_and_keeps_its_contents(cpu_bundle):
    manifest, decoder = _decoder(cpu_bundle)
    cache = KVCache(replace(manifest.kv_cache, max_seq_len=24), shared_buffer=True)
    width = manifest.thinker.hidden_size
    _step(cache, decoder, _rows(20, width, 0))
    _step(cache, decoder, _rows(4, width, 1))  # exactly full: the bound buffer has no slot to spare
    before = cache._buffer.copy()
    with pytest.raises(KVCacheOverflowError, match="re-export with a larger --max-seq-len"):
        _step(cache, decoder, _rows(1, width, 2))
    assert cache.length == 24
    np.testing.assert_array_equal(cache._buffer, before)
    with pytest.raises(ValueError, match="no bucket"):
        KVCache(manifest.kv_cache, bucket=8, shared_buffer=True)
