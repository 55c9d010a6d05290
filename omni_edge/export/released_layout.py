"""The on-disk layout of the released Qwen2.5-Omni checkpoints, and a writer of full-size random-weight ones.

The hub checkpoints were saved by transformers 4.52: sharded safetensors (`model-0000N-of-0000M.safetensors`
plus `model.safetensors.index.json`), bf16 except the token2wav tensors (fp32), a config.json with that
version's field names (`rope_scaling` holding `mrope_section`, `rope_theta` beside it, `torch_dtype`,
`architectures: ["Qwen2_5OmniModel"]`), `spk_dict.pt` and the tokenizer files. tests/data/hf452-omni is a
tiny checkpoint saved by transformers 4.52.4 itself (scripts/make_hf452_fixture.py); this module writes the
same layout tensor by tensor, so a full-size 3B (11 GB) or 7B (22 GB) is written in a few GB of memory.
"""

from __future__ import annotations

import copy
import json
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The released checkpoints keep the codec-to-wave model in fp32 (its ODE and vocoder are precision-sensitive).
FP32_PREFIXES = ("token2wav.",)


def released_dtype(hub_name: str) -> str:
    """torch dtype name a released checkpoint stores this tensor in."""
    return "float32" if hub_name.startswith(FP32_PREFIXES) else "bfloat16"


def legacy_config_dict(config: dict) -> dict:
    """A preset's config (transformers 5 field names) with the rope fields as transformers 4.52 names them:
    `rope_parameters` {rope_type, rope_theta, mrope_section} becomes `rope_theta` and, where there is an
    mrope section, `rope_scaling` {type, rope_type, mrope_section}."""
    legacy = copy.deepcopy(config)
    _legacy_rope(legacy)
    return legacy


def _legacy_rope(node) -> None:
    if isinstance(node, list):
        for item in node:
            _legacy_rope(item)
    if not isinstance(node, dict):
        return
    rope = node.pop("rope_parameters", None)
    if isinstance(rope, dict):
        node["rope_theta"] = rope.get("rope_theta", 10000.0)
        if "mrope_section" in rope:
            kind = rope.get("rope_type", "default")
            node["rope_scaling"] = {"type": kind, "rope_type": kind, "mrope_section": list(rope["mrope_section"])}
    for value in node.values():
        _legacy_rope(value)


SHARD_BYTES = 5_000_000_000  # transformers 4.52's default max_shard_size ("5GB"): 3 shards for the 3B, 5 for the 7B
_ST_DTYPE = {"bfloat16": "BF16", "float32": "F32"}


# Buffers transformers 4.52 registered as persistent, so the released checkpoints hold them (transformers 5
# computes them at init and ignores the stored copy).
RELEASED_BUFFERS = ("token2wav.code2wav_dit_model.rotary_embed.inv_freq",)


@dataclass(frozen=True)
class PlannedTensor:
    name: str  # hub name
    shape: tuple[int, ...]
    dtype: str  # torch dtype name as stored
    buffer: Any = None  # a RELEASED_BUFFERS value, as the skeleton computed it; None: a random parameter

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * (2 if self.dtype == "bfloat16" else 4)


def write_released_checkpoint(
    out_dir: Path, config_dict: dict, seed: int, shard_bytes: int = SHARD_BYTES, progress=None
) -> None:
    """A random-weight checkpoint of `config_dict`'s shape in the released layout, one tensor in memory at a
    time. Values follow the presets' rule (preset_value), so a released-layout and a save_pretrained
    checkpoint of the same config and seed hold the same numbers up to the bf16 rounding."""
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    legacy = _released_config(config_dict)
    (out_dir / "config.json").write_text(json.dumps(legacy, indent=2, sort_keys=True) + "\n")
    (out_dir / "generation_config.json").write_text(json.dumps(_GENERATION_CONFIG, indent=2) + "\n")
    tensors = planned_tensors(config_dict)
    shards = _split(tensors, shard_bytes)
    weight_map = {}
    done = 0
    for number, shard in enumerate(shards, start=1):
        file = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        with open(out_dir / file, "wb") as handle:
            handle.write(_header(shard))
            for tensor in shard:
                value = tensor.buffer if tensor.buffer is not None else preset_value(tensor.name, tensor.shape, seed)
                value = value.to(getattr(torch, tensor.dtype))
                handle.write(value.contiguous().view(torch.uint8).numpy().tobytes())
                weight_map[tensor.name] = file
                done += tensor.nbytes
                if progress is not None:
                    progress(done)
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors)}, "weight_map": dict(sorted(weight_map.items()))}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def planned_tensors(config_dict: dict) -> list[PlannedTensor]:
    """Every parameter of transformers' model for this config, by hub name, in the model's order."""
    from transformers import Qwen2_5OmniConfig

    from omni_edge.export.checkpoint import quiet_transformers
    from omni_edge.export.lazy_model import build_on_meta, hub_name

    with quiet_transformers():
        model = build_on_meta(Qwen2_5OmniConfig(**config_dict))
    seen: set[int] = set()
    planned = []
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:  # a tied weight is stored once
            continue
        seen.add(id(param))
        stored = hub_name(name)
        planned.append(PlannedTensor(stored, tuple(param.shape), released_dtype(stored)))
    buffers = dict(model.named_buffers())
    for name in RELEASED_BUFFERS:
        planned.append(PlannedTensor(name, tuple(buffers[name].shape), released_dtype(name), buffers[name]))
    return planned


# The DiT keeps transformers' 0.02 init: its 22 blocks at 1024 wide, each scaling its residual by a
# modulation drawn from the time embedding, grew unit-gain random weights to an output RMS of 43, where fp32
# reordering noise alone moved the velocity by 10 (a chaotic map, not a faithful test of the graph).
QUIET_PREFIXES = ("token2wav.code2wav_dit_model.",)
INITIALIZER_RANGE = 0.02


def preset_value(name: str, shape: tuple[int, ...], seed: int):
    """The random value of one tensor, from its name and the seed alone (so shards can be written in any
    order). Matrices are N(0, 1/fan_in) (the DiT's N(0, 0.02), see QUIET_PREFIXES): with the 0.02 default
    every logit of a random model is nearly equal and greedy parity would compare float noise. Vectors take transformers' init: norm scales 1,
    biases and the vocoder's snake parameters 0 (tests/test_released_layout.py checks this rule)."""
    import torch

    if len(shape) >= 2 and "norm" not in name:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        if name.startswith(QUIET_PREFIXES):
            return torch.randn(shape, generator=generator) * INITIALIZER_RANGE
        return torch.randn(shape, generator=generator) / math.prod(shape[1:]) ** 0.5
    zero = name.endswith((".bias", ".alpha", ".beta"))
    return torch.zeros(shape) if zero else torch.ones(shape)


def _split(tensors: list[PlannedTensor], shard_bytes: int) -> list[list[PlannedTensor]]:
    shards: list[list[PlannedTensor]] = [[]]
    size = 0
    for tensor in tensors:
        if shards[-1] and size + tensor.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += tensor.nbytes
    return shards


def _header(shard: list[PlannedTensor]) -> bytes:
    """safetensors: 8-byte little-endian header length, the JSON header (padded to 8 bytes), then the data."""
    entries: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for tensor in shard:
        entries[tensor.name] = {
            "dtype": _ST_DTYPE[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + tensor.nbytes],
        }
        offset += tensor.nbytes
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


# What the released generation_config.json holds that the runtime reads: the Thinker's stop ids.
_GENERATION_CONFIG = {"bos_token_id": 151643, "eos_token_id": [151645, 151643], "transformers_version": "4.52.4"}


def _released_config(config_dict: dict) -> dict:
    legacy = legacy_config_dict(config_dict)
    legacy.update(
        architectures=["Qwen2_5OmniModel"],
        model_type="qwen2_5_omni",
        torch_dtype="bfloat16",
        transformers_version="4.52.4",
    )
    for key, kind in _SUB_MODEL_TYPES.items():
        node = legacy
        for part in key:
            node = node[part]
        node["model_type"] = kind
    return legacy


_SUB_MODEL_TYPES = {
    ("thinker_config",): "qwen2_5_omni_thinker",
    ("thinker_config", "text_config"): "qwen2_5_omni_text",
    ("thinker_config", "audio_config"): "qwen2_5_omni_audio_encoder",
    ("thinker_config", "vision_config"): "qwen2_5_omni_vision_encoder",
    ("talker_config",): "qwen2_5_omni_talker",
    ("token2wav_config",): "qwen2_5_omni_token2wav",
    ("token2wav_config", "dit_config"): "qwen2_5_omni_dit",
    ("token2wav_config", "bigvgan_config"): "qwen2_5_omni_bigvgan",
}
