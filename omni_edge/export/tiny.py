"""Generate random-weight Qwen2.5-Omni checkpoints in the Hugging Face on-disk format, from presets.

`tiny`: every width 32, for tests and demos. `odd`: other head counts, mrope sections, audio n_window and
DiT block size than `tiny` (tests that nothing the config defines is hard-coded). `medium`: the real Qwen2.5-Omni-3B widths with two layers per
stack, so CPU benchmarks of it say something about the real model's per-layer cost (sizes of matmuls, KV
rows, the 151936-row lm_head) at a size that exports on a laptop.

Every component exists (audio and vision encoders, Thinker, Talker, DiT, BigVGAN, spk_dict.pt, tokenizer),
built with transformers' own classes, so tests and demos exercise the same loading and export code as a
real checkpoint. Seeded and cached: the same preset and seed give the same weights and the same directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from omni_edge.export.tiny_tokenizer import build_tokenizer, save_tokenizer

TINY_SEED = 1234
THINKER_VOCAB = 151936  # >= 151862: the Talker reads ids 151859..151861 from the Thinker vocab
SPEAKER_BOS = {"Chelsie": 151872, "Ethan": 151870}


def tiny_config_dict() -> dict:
    """Every field set explicitly: class defaults are the 7B values, not tiny ones."""
    thinker_hidden = 32
    text_config = {
        "vocab_size": THINKER_VOCAB,
        "hidden_size": thinker_hidden,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
        "tie_word_embeddings": False,
    }
    audio_config = {
        "num_mel_bins": 128,
        "encoder_layers": 2,
        "encoder_attention_heads": 2,
        "encoder_ffn_dim": 64,
        "d_model": 32,
        "max_source_positions": 1500,
        "n_window": 100,
        "output_dim": thinker_hidden,
    }
    vision_config = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,  # head_dim 16: divisible by 4 for the 2D rope split
        "in_channels": 3,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "out_hidden_size": thinker_hidden,
        "fullatt_block_indexes": [1],
    }
    talker_config = {
        "vocab_size": 8448,
        "embedding_size": thinker_hidden,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
        "spatial_merge_size": 2,
    }
    dit_config = {
        "hidden_size": 32,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "head_dim": 16,
        "ff_mult": 2,
        "emb_dim": 16,
        "block_size": 24,
        "look_ahead_layers": [2],
        "look_backward_layers": [0, 3],
        "repeats": 2,
        "num_embeds": 8193,
        "mel_dim": 80,
        "enc_emb_dim": 16,
        "enc_dim": 16,
        "enc_channels": [32, 32, 32, 32, 96],
        "enc_kernel_sizes": [5, 3, 3, 3, 1],
        "enc_dilations": [1, 2, 3, 4, 1],
        "enc_attention_channels": 8,
        "enc_se_channels": 8,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    }
    bigvgan_config = {
        "mel_dim": 80,
        "upsample_initial_channel": 64,  # halves per stage; < 64 leaves a zero-channel stage
        "resblock_kernel_sizes": [3, 7, 11],
        "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        "upsample_rates": [5, 3, 2, 2, 2, 2],
        "upsample_kernel_sizes": [11, 7, 4, 4, 4, 4],
    }
    return {
        "thinker_config": {
            "audio_config": audio_config,
            "vision_config": vision_config,
            "text_config": text_config,
            # Present in the released config.json though not class fields; get_rope_index reads them.
            "vision_start_token_id": 151652,
            "vision_end_token_id": 151653,
            "vision_token_id": 151654,
            "pad_token_id": 151643,
            "bos_token_id": 151644,
            "eos_token_id": 151645,
        },
        "talker_config": talker_config,
        "token2wav_config": {"dit_config": dit_config, "bigvgan_config": bigvgan_config},
        "enable_audio_output": True,
    }


def medium_config_dict() -> dict:
    """Qwen2.5-Omni-3B widths, two layers per stack (four for the DiT, whose long-range layers need indexes).

    Thinker, audio and vision widths are the released 3B values; the Talker is a 3B-like small decoder
    (its widths are not pinned by anything yet); DiT and BigVGAN use the released token2wav widths.
    """
    thinker_hidden = 2048
    config = tiny_config_dict()
    config["thinker_config"]["text_config"] = {
        "vocab_size": THINKER_VOCAB,
        "hidden_size": thinker_hidden,
        "intermediate_size": 11008,
        "num_hidden_layers": 2,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,  # head_dim 128
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
        "tie_word_embeddings": False,
    }
    config["thinker_config"]["audio_config"] = {
        **config["thinker_config"]["audio_config"],
        "encoder_attention_heads": 20,
        "encoder_ffn_dim": 5120,
        "d_model": 1280,
        "output_dim": thinker_hidden,
    }
    config["thinker_config"]["vision_config"] = {
        **config["thinker_config"]["vision_config"],
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,  # head_dim 80
        "out_hidden_size": thinker_hidden,
    }
    config["talker_config"] = {
        **config["talker_config"],
        "embedding_size": thinker_hidden,
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 2,
        "num_attention_heads": 12,
        "num_key_value_heads": 4,
        "head_dim": 128,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    }
    config["token2wav_config"] = {
        "dit_config": {
            **config["token2wav_config"]["dit_config"],
            "hidden_size": 1024,
            "num_attention_heads": 16,
            "head_dim": 64,
            "emb_dim": 512,
            "enc_emb_dim": 192,
            "enc_dim": 128,
            "enc_channels": [256, 256, 256, 256, 768],
            "enc_attention_channels": 64,
            "enc_se_channels": 64,
        },
        "bigvgan_config": {**config["token2wav_config"]["bigvgan_config"], "upsample_initial_channel": 1536},
    }
    return config


def odd_config_dict() -> dict:
    """Shapes `tiny` never has, so numbers the code might hard-code instead of reading from the config show up:
    Thinker 64 wide with 4/2 heads and mrope [4, 2, 2]; audio n_window 50 (1 s blocks); DiT block_size 16."""
    thinker_hidden = 64
    config = tiny_config_dict()
    config["thinker_config"]["text_config"] = {
        **config["thinker_config"]["text_config"],
        "hidden_size": thinker_hidden,
        "intermediate_size": 96,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,  # head_dim 16
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 2, 2]},
    }
    config["thinker_config"]["audio_config"] = {
        **config["thinker_config"]["audio_config"],
        "encoder_attention_heads": 4,
        "d_model": 48,
        "n_window": 50,
        "output_dim": thinker_hidden,
    }
    config["thinker_config"]["vision_config"] = {
        **config["thinker_config"]["vision_config"],
        "hidden_size": 48,
        "num_heads": 3,  # head_dim 16
        "out_hidden_size": thinker_hidden,
    }
    config["talker_config"] = {
        **config["talker_config"],
        "embedding_size": thinker_hidden,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 1, 1]},
    }
    config["token2wav_config"]["dit_config"] = {
        **config["token2wav_config"]["dit_config"],
        "num_attention_heads": 4,
        "head_dim": 8,
        "block_size": 16,
    }
    return config


def _presets() -> dict:
    from omni_edge.export.full_size import deep_config_dict, full_3b_config_dict, full_7b_config_dict

    return {
        "tiny": tiny_config_dict,
        "medium": medium_config_dict,
        "odd": odd_config_dict,
        "deep": deep_config_dict,
        "full-3b": full_3b_config_dict,
        "full-7b": full_7b_config_dict,
    }


PRESETS = _presets()
# The ones written as the hub checkpoints are (sharded bf16, transformers 4.52 config), tensor by tensor.
RELEASED_LAYOUT = ("deep", "full-3b", "full-7b")
_FORMAT = {False: 1, True: 3}  # cache format of save_pretrained / released-layout presets: bump to regenerate


def default_cache_dir() -> Path:
    root = os.environ.get("OMNI_EDGE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "omni-edge")
    return Path(root)


def checkpoint_key(preset: str, seed: int) -> str:
    # The key changes when the config or the generator's seed changes, so a stale cache is never reused.
    blob = json.dumps(
        {"config": PRESETS[preset](), "seed": seed, "format": _FORMAT[preset in RELEASED_LAYOUT]}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def tiny_checkpoint_key(seed: int) -> str:
    return checkpoint_key("tiny", seed)


def ensure_tiny_checkpoint(seed: int = TINY_SEED, cache_dir: Path | None = None) -> Path:
    """Return the directory of the tiny checkpoint for `seed`, generating it on first use."""
    return ensure_preset_checkpoint("tiny", seed, cache_dir)


def ensure_preset_checkpoint(preset: str, seed: int = TINY_SEED, cache_dir: Path | None = None) -> Path:
    """Return the directory of the `preset` checkpoint for `seed`, generating it on first use."""
    cache_dir = cache_dir or default_cache_dir()
    target = cache_dir / f"{preset}-qwen2.5-omni-{checkpoint_key(preset, seed)}"
    if (target / "config.json").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{preset}-", dir=cache_dir))
    try:
        write_preset_checkpoint(staging, preset, seed)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def write_preset_checkpoint(out_dir: Path, preset: str, seed: int = TINY_SEED) -> None:
    import torch

    config = PRESETS[preset]()
    if preset in RELEASED_LAYOUT:
        from omni_edge.export.released_layout import write_released_checkpoint

        write_released_checkpoint(out_dir, config, seed)
    else:
        from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

        torch.manual_seed(seed)
        model = Qwen2_5OmniForConditionalGeneration(Qwen2_5OmniConfig(**config)).eval()
        _widen_random_init(model, seed)
        model.save_pretrained(out_dir, safe_serialization=True)

    dit = config["token2wav_config"]["dit_config"]
    vocab = config["thinker_config"]["text_config"]["vocab_size"]
    generator = torch.Generator().manual_seed(seed + 1)
    speakers = {
        name: {
            "bos_token": bos,
            "cond": torch.randn(1, dit["enc_emb_dim"], generator=generator),
            "ref_mel": torch.randn(1, 96, dit["mel_dim"], generator=generator),
        }
        for name, bos in SPEAKER_BOS.items()
    }
    # save_pretrained does not write the speaker table; real checkpoints ship it next to the weights.
    torch.save(speakers, out_dir / "spk_dict.pt")
    save_tokenizer(build_tokenizer(vocab), out_dir)


def _widen_random_init(model, seed: int) -> None:
    """Re-draw weights with a larger spread than the 0.02 default.

    With std 0.02 and 32-wide layers every logit is nearly equal, so greedy decoding would compare
    numbers that differ in the last bits and a parity test would measure float noise, not the graph.
    """
    import torch

    generator = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2 and "norm" not in name:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=generator) / fan_in**0.5)
