"""Presets at the released models' depth, written in the released layout (released_layout.py).

`full-3b` and `full-7b`: every stack of Qwen2.5-Omni-3B / -7B at full depth and width (Thinker 36 / 28
layers, audio encoder 32, vision encoder 32, Talker 24, DiT 22), random weights: what peak memory, copies
of weights and time per layer are measured on (bench/scale-*.json). The Thinker, audio, vision and
token2wav widths are the released ones; the Talker's are 3B-like (as in `medium`) for full-3b and the 7B's
(896 wide, 18944 MLP, 12/4 heads of 128) for full-7b.

`deep`: every stack at full depth, every width tiny: the lazy, per-component export path at the real
number of layers in a size CI can afford.
"""

from __future__ import annotations

import copy

# Released depths, and the layers the released configs give attention beyond the window.
_DEPTHS: dict[tuple[str, ...], dict] = {
    ("thinker_config", "audio_config"): {"encoder_layers": 32},
    ("thinker_config", "vision_config"): {"depth": 32, "fullatt_block_indexes": [7, 15, 23, 31]},
    ("talker_config",): {"num_hidden_layers": 24},
    ("token2wav_config", "dit_config"): {
        "num_hidden_layers": 22,
        "look_ahead_layers": [10],
        "look_backward_layers": [0, 20],
    },
}


def _at_full_depth(config: dict, thinker_layers: int) -> dict:
    config = copy.deepcopy(config)
    config["thinker_config"]["text_config"]["num_hidden_layers"] = thinker_layers
    for path, fields in _DEPTHS.items():
        node = config
        for key in path:
            node = node[key]
        node.update(fields)
    return config


def deep_config_dict() -> dict:
    from omni_edge.export.tiny import tiny_config_dict

    return _at_full_depth(tiny_config_dict(), thinker_layers=36)


def full_3b_config_dict() -> dict:
    from omni_edge.export.tiny import medium_config_dict

    return _at_full_depth(medium_config_dict(), thinker_layers=36)


def full_7b_config_dict() -> dict:
    from omni_edge.export.tiny import medium_config_dict

    thinker_hidden = 3584
    config = _at_full_depth(medium_config_dict(), thinker_layers=28)
    thinker = config["thinker_config"]
    thinker["text_config"].update(
        vocab_size=152064,
        hidden_size=thinker_hidden,
        intermediate_size=18944,
        num_attention_heads=28,
        num_key_value_heads=4,  # head_dim 128
    )
    thinker["audio_config"]["output_dim"] = thinker_hidden
    thinker["vision_config"]["out_hidden_size"] = thinker_hidden
    config["talker_config"].update(embedding_size=thinker_hidden, intermediate_size=18944)
    return config
