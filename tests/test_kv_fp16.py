"""GPU targets keep the decoders' KV cache in fp16: the decoder graph takes the past and returns the new
keys/values in fp16 and attends in fp32. Stated tolerance on the tiny model: logits within 1e-2 of the fp32
cache over a prefill and 16 greedy steps, and the same greedy tokens."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from helpers import hf_greedy

from omni_edge import naming
from omni_edge.bundle import load_manifest
from omni_edge.memory_plan import plan_memory
from omni_edge.runtime.engine import OrtEngine
from omni_edge.runtime.kv_cache import KVCache
from omni_edge.runtime.positions import text_positions
from omni_edge.targets import TARGETS

LOGITS_ATOL = 1e-2  # fp16 keys/values: 2^-11 relative rounding per element, measured ~1e-3 on the logits


def _greedy(decoder: OrtEngine, cache: KVCache, table: np.ndarray, prompt: list[int], steps: int):
    tokens, logits, ids = [], [], prompt
    for _ in range(steps + 1):
        feeds = {"inputs_embeds": table[ids][None], "position_ids": text_positions(cache.length, len(ids))}
        out = cache.run(decoder, feeds)["logits"][0, -1]
        logits.append(out)
        ids = [int(np.argmax(out))]
        tokens.append(ids[0])
    return tokens, np.stack(logits)


def test_fp16_kv_cache_keeps_the_greedy_tokens(hf_model, cpu_bundle, tmp_path):
    from safetensors.numpy import load_file

    from omni_edge.export.components import component_specs
    from omni_edge.export.verify_loop import export_and_verify

    target = TARGETS["jetson-orin"]
    assert target.kv_dtype == "float16" and TARGETS["cpu"].kv_dtype == "float32"
    (spec,) = component_specs(hf_model, ("thinker",), target)[:1]
    assert spec.name == naming.THINKER_DECODER
    record = export_and_verify(spec, hf_model, tmp_path, max_seq_len=256)  # verified against eager in fp16 KV
    dtypes = {t.name: t.dtype for t in [*record.inputs, *record.outputs]}
    assert dtypes[naming.past_key(0)] == dtypes[naming.present_value(0)] == "float16"
    assert dtypes["inputs_embeds"] == dtypes["logits"] == "float"  # ONNX Runtime's name for float32
    # TensorRT has no GroupQueryAttention: the GPU targets' graph keeps the standard-op attention.
    import onnx

    graph = onnx.load(str(tmp_path / record.file), load_external_data=False).graph
    assert not record.shared_kv_buffer and not [n for n in graph.node if n.domain == "com.microsoft"]

    manifest = load_manifest(cpu_bundle)
    table = load_file(str(cpu_bundle / manifest.thinker.embedding_file))["weight"]
    fp32 = OrtEngine("fp32", cpu_bundle / manifest.components[naming.THINKER_DECODER].file)
    fp16 = OrtEngine("fp16", tmp_path / record.file)
    prompt = [151644, 82, 88, 82, 83, 68, 76, 198, 332, 307, 257]
    want, want_logits = _greedy(fp32, KVCache(manifest.kv_cache), table, prompt, 16)
    cache16 = KVCache(replace(manifest.kv_cache, dtype="float16"))
    got, got_logits = _greedy(fp16, cache16, table, prompt, 16)
    assert got == want == hf_greedy(hf_model, prompt, 17)  # and both are transformers' greedy tokens
    np.testing.assert_allclose(got_logits, want_logits, atol=LOGITS_ATOL)
    assert cache16.past_feeds()[naming.past_key(0)].dtype == np.float16


def test_memory_plan_prices_the_fp16_kv_cache(tiny_checkpoint):
    fp32 = plan_memory(tiny_checkpoint, {"thinker": "fp32"}, 512, ["thinker"], kv_dtype="float32")
    fp16 = plan_memory(tiny_checkpoint, {"thinker": "fp32"}, 512, ["thinker"], kv_dtype="float16")
    assert fp16.kv_bytes["thinker"] * 2 == fp32.kv_bytes["thinker"]
