"""The Thinker of a Qwen2.5-Omni checkpoint as a plain Qwen2 checkpoint, for the peer benchmark.

    python scripts/peers_extract.py OMNI_CHECKPOINT OUT_DIR

The Thinker's text stack is Qwen2 (q/k/v biases, RMSNorm, SwiGLU, untied head); on text-only input every
TMRoPE axis carries the same position, so its rotary equals plain RoPE and a Qwen2ForCausalLM with the same
tensors must give the same logits. That is checked here, on a text prompt, before any peer sees the weights:
the check's numbers go to OUT_DIR/parity.json. config.json is written by hand with the legacy keys
(`rope_theta`) that llama.cpp's converter and onnxruntime-genai's builder read.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

PROMPT = "You are a helpful assistant. Describe the weather on a sunny day in one short sentence, please."
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def qwen2_config(omni_config: dict) -> dict:
    text = omni_config["thinker_config"]["text_config"]
    thinker = omni_config["thinker_config"]
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": text["vocab_size"],
        "hidden_size": text["hidden_size"],
        "intermediate_size": text["intermediate_size"],
        "num_hidden_layers": text["num_hidden_layers"],
        "num_attention_heads": text["num_attention_heads"],
        "num_key_value_heads": text["num_key_value_heads"],
        "hidden_act": text["hidden_act"],
        "max_position_embeddings": text["max_position_embeddings"],
        "rms_norm_eps": text["rms_norm_eps"],
        "rope_theta": text["rope_parameters"]["rope_theta"],
        "tie_word_embeddings": text["tie_word_embeddings"],
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": text["num_hidden_layers"],
        "attention_dropout": 0.0,
        "use_cache": True,
        "torch_dtype": "float32",
        "bos_token_id": thinker.get("bos_token_id", 151644),
        "eos_token_id": thinker.get("eos_token_id", 151645),
        "pad_token_id": thinker.get("pad_token_id", 151643),
    }


def extract(omni_dir: Path, out: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    config = json.loads((omni_dir / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(qwen2_config(config), indent=2) + "\n")
    tensors = {}
    with safe_open(str(omni_dir / "model.safetensors"), "pt") as handle:
        for key in handle.keys():
            if key.startswith("thinker.model.") or key.startswith("thinker.lm_head."):
                tensors[key.removeprefix("thinker.")] = handle.get_tensor(key).contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    for name in TOKENIZER_FILES:
        shutil.copy(omni_dir / name, out / name)
    gen = {"bos_token_id": config["thinker_config"].get("bos_token_id", 151644), "eos_token_id": 151645}
    (out / "generation_config.json").write_text(json.dumps(gen) + "\n")


def parity(omni_dir: Path, out: Path) -> dict:
    """Logits of transformers' Omni Thinker and of the extracted Qwen2 model on the same text prompt."""
    import torch
    from transformers import AutoTokenizer, Qwen2_5OmniForConditionalGeneration, Qwen2ForCausalLM

    ids = AutoTokenizer.from_pretrained(out)(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        omni = Qwen2_5OmniForConditionalGeneration.from_pretrained(omni_dir, dtype=torch.float32).eval()
        reference = omni.thinker(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].float()
        del omni
        qwen2 = Qwen2ForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        logits = qwen2(input_ids=ids).logits[0].float()
    diff = (logits - reference).abs().max().item()
    scale = reference.abs().max().item()
    agree = (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()
    return {
        "prompt_tokens": int(ids.shape[1]),
        "max_abs_diff": diff,
        "max_abs_logit": scale,
        "argmax_agreement": agree,
        "ok": diff <= 1e-4 * max(scale, 1.0) and agree == 1.0,
    }


def main() -> None:
    omni_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    extract(omni_dir, out)
    result = parity(omni_dir, out)
    (out / "parity.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    if not result["ok"]:
        sys.exit(f"the extracted Qwen2 checkpoint does not match the Omni Thinker: {result}")


if __name__ == "__main__":
    main()
