"""Write tests/data/hf452-omni: a tiny Qwen2.5-Omni checkpoint saved by transformers 4.52.x, the version the
released Qwen2.5-Omni checkpoints were written with (sharded bf16 safetensors + index, token2wav in fp32,
that version's config field names). It is the layout fixture the released-layout writer and the lazy
reader are tested against.

Run in a throwaway side environment that has transformers 4.52 (never the project's):
    pip install --no-deps --target /tmp/hf452 transformers==4.52.4 "tokenizers>=0.21,<0.22"
    PYTHONPATH=/tmp/hf452 .venv/bin/python scripts/make_hf452_fixture.py tests/data/hf452-omni
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import transformers
from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

from omni_edge.export.released_layout import legacy_config_dict, released_dtype
from omni_edge.export.tiny import tiny_config_dict

FIXTURE_VOCAB = 1024  # small, so the fixture is a few MB; the layout does not depend on the vocabulary


def main(out: Path) -> None:
    assert transformers.__version__.startswith("4.52"), transformers.__version__
    config_dict = tiny_config_dict()
    config_dict["thinker_config"]["text_config"]["vocab_size"] = FIXTURE_VOCAB
    config = Qwen2_5OmniConfig(**legacy_config_dict(config_dict))
    torch.manual_seed(0)
    model = Qwen2_5OmniForConditionalGeneration(config).eval()
    with torch.no_grad():  # the default 0.02 init underflows nothing, but wider values make a sharper test
        for name, param in model.named_parameters():
            param.copy_(torch.randn(param.shape) * 0.5)
            param.data = param.data.to(getattr(torch, released_dtype(name)))
    model.config.torch_dtype = torch.bfloat16  # what the released config.json says
    model.save_pretrained(out, safe_serialization=True, max_shard_size="1MB")
    speakers = {"Chelsie": {"bos_token": 151872, "cond": torch.randn(1, 16), "ref_mel": torch.randn(1, 96, 80)}}
    torch.save(speakers, out / "spk_dict.pt")
    print(json.dumps({p.name: p.stat().st_size for p in sorted(out.iterdir())}, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
