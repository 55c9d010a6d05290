"""The released checkpoint layout (sharded bf16 safetensors + index, transformers 4.52 config): the writer of
full-size random checkpoints, the lazy reader, and one-line errors for broken shards.

tests/data/hf452-omni was saved by transformers 4.52.4 itself (scripts/make_hf452_fixture.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import assert_one_line_error, cli

from omni_edge.errors import ModelSourceError
from omni_edge.export.lazy_model import LazyOmniModel, graph_weights, hub_name, table_weights
from omni_edge.export.released_layout import planned_tensors, preset_value, write_released_checkpoint
from omni_edge.export.shards import INDEX_FILE, CheckpointShards

FIXTURE = Path(__file__).parent / "data" / "hf452-omni"


def _fixture_config() -> dict:
    from omni_edge.export.tiny import tiny_config_dict

    config = tiny_config_dict()
    config["thinker_config"]["text_config"]["vocab_size"] = 1024  # as make_hf452_fixture.py
    return config


@pytest.fixture(scope="module")
def fixture_copy(tmp_path_factory, tiny_checkpoint) -> Path:
    """The 4.52 fixture plus a tokenizer (the exporter's completeness check asks for one)."""
    path = tmp_path_factory.mktemp("hf452") / "checkpoint"
    shutil.copytree(FIXTURE, path)
    shutil.copy(tiny_checkpoint / "tokenizer.json", path)
    return path


def test_transformers_and_the_lazy_reader_read_the_452_fixture_identically(fixture_copy):
    from omni_edge.export.checkpoint import load_omni_model

    reference = load_omni_model(fixture_copy).state_dict()  # transformers 5's own loader and key mapping
    lazy = LazyOmniModel(fixture_copy)
    with lazy.loaded(lambda name: True) as model:
        ours = model.state_dict()
        assert ours.keys() == reference.keys()
        for name, tensor in reference.items():
            assert torch.equal(ours[name], tensor), name
    assert all(p.device.type == "meta" for p in lazy.model.parameters())  # released after the block


def test_the_writer_matches_the_452_layout(tmp_path):
    write_released_checkpoint(tmp_path, _fixture_config(), seed=3, shard_bytes=1 << 20)
    theirs, ours = CheckpointShards(FIXTURE), CheckpointShards(tmp_path)
    assert ours.tensors.keys() == theirs.tensors.keys()
    for name, info in theirs.tensors.items():
        assert (ours.tensors[name].dtype, ours.tensors[name].shape) == (info.dtype, info.shape), name
    assert {info.dtype for name, info in ours.tensors.items() if name.startswith("token2wav.")} == {"F32"}
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    assert set(index) == set(json.loads((FIXTURE / INDEX_FILE).read_text())) == {"metadata", "weight_map"}
    assert len(set(index["weight_map"].values())) > 1  # sharded, named model-0000N-of-0000M
    assert all(f.startswith("model-0000") and "-of-0000" in f for f in index["weight_map"].values())

    def paths(node, prefix=()):
        if isinstance(node, dict):
            for key, value in node.items():
                yield prefix + (key,)
                yield from paths(value, prefix + (key,))

    config, released = (
        json.loads((tmp_path / "config.json").read_text()),
        json.loads((FIXTURE / "config.json").read_text()),
    )
    assert set(paths(config)) <= set(paths(released))  # no field transformers 4.52 would not have written
    text, text452 = config["thinker_config"]["text_config"], released["thinker_config"]["text_config"]
    assert text["rope_scaling"] == text452["rope_scaling"] and text["rope_theta"] == text452["rope_theta"]
    assert config["architectures"] == ["Qwen2_5OmniModel"] and config["torch_dtype"] == "bfloat16"


def test_a_written_checkpoint_loads_in_transformers_with_its_values(tmp_path):
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

    config = _fixture_config()
    write_released_checkpoint(tmp_path, config, seed=3, shard_bytes=1 << 20)
    shutil.copy(FIXTURE / "spk_dict.pt", tmp_path)  # the presets write theirs beside the weights
    loaded = Qwen2_5OmniForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float32)
    assert loaded.config.thinker_config.text_config.rope_parameters["mrope_section"] == [2, 3, 3]
    for name, param in loaded.state_dict().items():
        expected = preset_value(hub_name(name), tuple(param.shape), seed=3)
        stored = torch.float32 if hub_name(name).startswith("token2wav.") else torch.bfloat16
        assert torch.equal(param, expected.to(stored).float()), name
    assert Qwen2_5OmniConfig.from_pretrained(tmp_path).thinker_config.text_config.vocab_size == 1024


def test_vectors_take_transformers_init(hf_model):
    """preset_value's rule for 1-D parameters (norm scales 1, biases and snake parameters 0) is what
    transformers' own init gives every vector of the model."""
    for name, param in hf_model.named_parameters():
        if param.ndim == 1:
            assert torch.equal(preset_value(hub_name(name), tuple(param.shape), 0), param.detach()), name


def test_full_size_presets_have_the_released_parameter_counts():
    from omni_edge.export.tiny import PRESETS

    count = {name: sum(t.nbytes for t in planned_tensors(PRESETS[name]())) for name in ("full-3b", "full-7b")}
    params = {
        name: sum(int(torch.tensor(t.shape).prod()) for t in planned_tensors(PRESETS[name]()))
        for name in ("full-3b", "full-7b")
    }
    assert round(params["full-3b"] / 1e9, 2) == 5.58  # Qwen2.5-Omni-3B, every stack at full depth
    assert round(params["full-7b"] / 1e9, 1) == 10.7
    assert 11 < count["full-3b"] / 2**30 < 11.5  # bf16 with token2wav in fp32, as on the hub


def test_loaded_holds_only_the_selected_component(fixture_copy):
    lazy = LazyOmniModel(fixture_copy)
    with lazy.loaded(graph_weights("audio_encoder")) as model:
        real = {n for n, p in model.named_parameters() if p.device.type != "meta"}
        assert real and all(n.startswith("thinker.model.audio_tower.") for n in real)
    with lazy.loaded(table_weights("thinker")) as model:
        real = {n for n, p in model.named_parameters() if p.device.type != "meta"}
        assert real == {"thinker.model.language_model.embed_tokens.weight"}
    expected = sum(t.numel() for n, t in model.state_dict().items() if n.startswith("thinker.model.audio_tower."))
    assert lazy.parameter_count(graph_weights("audio_encoder")) == expected


# ------------------------------------------------------------------------------------------ broken shards


def _broken(fixture_copy: Path, tmp_path: Path) -> Path:
    path = tmp_path / "broken"
    shutil.copytree(fixture_copy, path)
    return path


def test_a_missing_shard_is_one_line(fixture_copy, tmp_path):
    path = _broken(fixture_copy, tmp_path)
    (path / "model-00002-of-00004.safetensors").unlink()
    with pytest.raises(ModelSourceError, match="lists shard model-00002-of-00004.safetensors, which is missing"):
        CheckpointShards(path)
    proc = cli("omni-export", "--model", str(path), "--out", str(tmp_path / "b"))
    assert_one_line_error(proc, "model-00002-of-00004.safetensors", "missing")
    assert not (tmp_path / "b").exists()


def test_a_truncated_shard_is_one_line(fixture_copy, tmp_path):
    path = _broken(fixture_copy, tmp_path)
    shard = path / "model-00003-of-00004.safetensors"
    shard.write_bytes(shard.read_bytes()[:-1000])
    proc = cli("omni-export", "--model", str(path), "--out", str(tmp_path / "b"))
    assert_one_line_error(proc, "model-00003-of-00004.safetensors is truncated", "re-download")


def test_a_header_whose_offsets_do_not_hold_the_shape_is_one_line(fixture_copy, tmp_path):
    path = _broken(fixture_copy, tmp_path)
    shard = path / "model-00001-of-00004.safetensors"
    data = shard.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    name = next(n for n, info in header.items() if n != "__metadata__" and info["shape"][:1] > [1])
    header[name]["shape"][0] -= 1  # a row fewer than the offsets hold
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= length
    shard.write_bytes(data[:8] + text.ljust(length) + data[8 + length :])
    with pytest.raises(ModelSourceError, match=f"the header gives tensor {name} bytes"):
        CheckpointShards(path)


def test_an_index_naming_a_tensor_no_shard_has_is_one_line(fixture_copy, tmp_path):
    path = _broken(fixture_copy, tmp_path)
    index = json.loads((path / INDEX_FILE).read_text())
    index["weight_map"]["thinker.model.layers.0.mlp.gate_proj.weight"] = "model-00004-of-00004.safetensors"
    (path / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(ModelSourceError, match="says tensor thinker.model.layers.0.mlp.gate_proj.weight is in"):
        CheckpointShards(path)
    index["weight_map"]["thinker.model.layers.7.mlp.gate_proj.weight"] = "model-00009-of-00009.safetensors"
    (path / INDEX_FILE).write_text(json.dumps(index))
    proc = cli("omni-export", "--model", str(path), "--out", str(tmp_path / "b"))
    assert_one_line_error(proc, "model-00009-of-00009.safetensors", "missing")


def test_a_tensor_the_config_needs_but_no_shard_has_is_one_line(fixture_copy, tmp_path):
    from safetensors.torch import load_file, save_file

    path = _broken(fixture_copy, tmp_path)
    index = json.loads((path / INDEX_FILE).read_text())
    name = "talker.codec_head.weight"
    shard = path / index["weight_map"].pop(name)
    tensors = load_file(shard)
    del tensors[name]
    save_file(tensors, shard, metadata={"format": "pt"})
    (path / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(ModelSourceError, match=f"has no tensor {name}"):
        LazyOmniModel(path)
