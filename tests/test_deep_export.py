"""The lazy, per-component export at the released depths: the `deep` preset has every stack as deep as
Qwen2.5-Omni-3B's (Thinker 36 layers, audio 32, vision 32, Talker 24, DiT 22) at tiny widths, written in the
released layout (sharded bf16 safetensors, transformers 4.52 config). What a 2-layer checkpoint cannot show
at this size: that every layer is exported and verified, one component at a time, and that the result still
answers like transformers."""

from __future__ import annotations

from pathlib import Path

import pytest

from omni_edge.export.tiny import ensure_preset_checkpoint

pytestmark = pytest.mark.slow

NEW_TOKENS = 16


@pytest.fixture(scope="module")
def deep_checkpoint(cache_dir) -> Path:
    return ensure_preset_checkpoint("deep", cache_dir=cache_dir)


@pytest.fixture(scope="module")
def deep_bundle(deep_checkpoint, tmp_path_factory) -> Path:
    from omni_edge.export.pipeline import ExportRequest, _no_progress, export_bundle

    notes: list[str] = []
    out = tmp_path_factory.mktemp("deep") / "deep-cpu"
    request = ExportRequest(model=str(deep_checkpoint), target="cpu", out=out, precision="fp32", max_seq_len=512)
    bundle = export_bundle(request, _no_progress, say=notes.append)
    assert any(note.startswith("export memory plan: peak") for note in notes), notes
    return bundle


def test_every_layer_is_in_the_graphs(deep_bundle):
    from omni_edge.bundle import load_manifest

    manifest = load_manifest(deep_bundle)
    assert manifest.kv_cache.num_layers == 36
    assert manifest.talker is not None and manifest.talker.kv_cache.num_layers == 24
    for record in manifest.components.values():  # each verified against PyTorch (and transformers) at export
        assert record.measured_max_abs_error is not None


def test_greedy_tokens_match_a_transformers_thinker_loaded_alone(deep_bundle, deep_checkpoint):
    """The reference is transformers' Thinker with only its own weights read from the shards (what the
    full-size parity run does at 3B scale, scripts/scale_run.py parity)."""
    import torch

    from omni_edge.export.lazy_model import LazyOmniModel, graph_weights, table_weights
    from omni_edge.runtime import Done, SamplingConfig, Session

    with Session(deep_bundle, threads=1) as session:
        events = session.generate("Tell me about the sea.", NEW_TOKENS, SamplingConfig(greedy=True))
        result = next(e.result for e in events if isinstance(e, Done))
    thinker, tables = graph_weights("thinker"), table_weights("thinker")
    lazy = LazyOmniModel(deep_checkpoint)
    with lazy.loaded(lambda name: thinker(name) or tables(name)) as model, torch.no_grad():
        assert all(p.device.type == "meta" for p in model.talker.parameters())  # loaded alone
        ids = torch.tensor([list(result.prompt_token_ids)])
        out = model.thinker.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False
        )
    assert list(result.text_token_ids) == out[0, ids.shape[1] :].tolist()


def test_a_spoken_reply_comes_out_of_the_deep_bundle(deep_bundle):
    from omni_edge.runtime import Done, SamplingConfig, Session, SpeechOptions

    with Session(deep_bundle, threads=1) as session:
        events = session.generate(
            "Say hello", 4, SamplingConfig(greedy=True), speech=SpeechOptions(max_codec_tokens=30, solver="euler")
        )
        result = next(e.result for e in events if isinstance(e, Done))
    assert result.codec_token_ids and result.audio_seconds > 0


def test_the_thinker_exports_in_fp16_at_full_depth(deep_checkpoint, tmp_path):
    """A GPU target's fp16 Thinker (export/half_source.py) stays within its tolerance of PyTorch in fp16 over all
    36 layers, and reads only fp16 weights."""
    import onnx

    from omni_edge import naming
    from omni_edge.bundle import load_manifest
    from omni_edge.export.half_source import HALF_ATOL
    from omni_edge.export.pipeline import ExportRequest, _no_progress, export_bundle

    request = ExportRequest(
        str(deep_checkpoint), "jetson-orin", tmp_path / "b", "thinker=fp16", 512, components=("thinker",), engines=False
    )
    manifest = load_manifest(export_bundle(request, _no_progress))
    record = manifest.components[naming.THINKER_DECODER]
    assert manifest.kv_cache.num_layers == 36 and record.precision == "fp16"
    assert 0 < record.measured_max_abs_error <= HALF_ATOL
    graph = onnx.load(str(tmp_path / "b" / record.file), load_external_data=False).graph
    weights = {n.input[1] for n in graph.node if n.op_type == "MatMul"}
    assert {t.data_type for t in graph.initializer if t.name in weights} == {onnx.TensorProto.FLOAT16}
