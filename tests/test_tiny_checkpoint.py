"""The generated tiny checkpoint is a complete Qwen2.5-Omni checkpoint in Hugging Face format."""

from __future__ import annotations

import json

import torch

from omni_edge.export.tiny import SPEAKER_BOS, ensure_tiny_checkpoint, tiny_checkpoint_key


def test_files_and_components(tiny_checkpoint, hf_model):
    for name in ("config.json", "model.safetensors", "spk_dict.pt", "tokenizer.json", "tokenizer_config.json"):
        assert (tiny_checkpoint / name).is_file()
    for component in ("thinker", "talker", "token2wav"):
        assert hasattr(hf_model, component)
    thinker = hf_model.thinker.model
    assert hasattr(thinker, "audio_tower") and hasattr(thinker, "visual")
    assert set(hf_model.speaker_map) == set(SPEAKER_BOS)
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    text = config["thinker_config"]["text_config"]
    assert text["vocab_size"] >= 151862
    assert sum(text["rope_parameters"]["mrope_section"]) * 2 == text["hidden_size"] // text["num_attention_heads"]


def test_speaker_table_loads_with_weights_only(tiny_checkpoint):
    speakers = torch.load(tiny_checkpoint / "spk_dict.pt", weights_only=True)
    assert {name: s["bos_token"] for name, s in speakers.items()} == SPEAKER_BOS
    assert speakers["Chelsie"]["ref_mel"].shape[-1] == 80


def test_tokenizer_keeps_qwen_special_ids(tiny_checkpoint):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tiny_checkpoint / "tokenizer.json"))
    assert tok.token_to_id("<|im_start|>") == 151644
    assert tok.token_to_id("<|AUDIO|>") == 151646
    assert tok.token_to_id("<|IMAGE|>") == 151655
    assert tok.get_vocab_size() == 151936
    assert tok.decode([5000, 70000]).strip()  # filler ids decode to words


def test_generation_is_seeded_and_cached(tiny_checkpoint, cache_dir, tmp_path):
    assert ensure_tiny_checkpoint(cache_dir=cache_dir) == tiny_checkpoint  # cached: same directory
    assert tiny_checkpoint_key(1) != tiny_checkpoint_key(2)
    other = ensure_tiny_checkpoint(cache_dir=tmp_path)
    assert (other / "model.safetensors").read_bytes() == (tiny_checkpoint / "model.safetensors").read_bytes()
