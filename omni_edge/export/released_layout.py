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
