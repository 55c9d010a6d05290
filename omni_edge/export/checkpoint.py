"""Find and load a Qwen2.5-Omni checkpoint: a preset (`tiny`, `medium`), a local directory, or a hub id."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from omni_edge.errors import ModelSourceError

REQUIRED_FILES = ("config.json", "spk_dict.pt", "tokenizer.json")
# Only what the exporter reads: weights as safetensors (never pickles), configs, tokenizer, speakers.
HUB_ALLOW_PATTERNS = ["*.json", "*.safetensors", "spk_dict.pt", "merges.txt", "vocab.json"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSource:
    name: str  # what the user passed
    path: Path  # local directory holding the checkpoint


def resolve_model_source(source: str, cache_dir: Path | None = None) -> ModelSource:
    from omni_edge.export.tiny import PRESETS

    if source in PRESETS:  # generated random-weight checkpoints, cached; see omni_edge/export/tiny.py
        from omni_edge.export.tiny import ensure_preset_checkpoint

        return ModelSource(source, ensure_preset_checkpoint(source, cache_dir=cache_dir))
    local = Path(source).expanduser()
    if local.exists():
        check_checkpoint_dir(local)
        return ModelSource(source, local)
    if _HUB_ID.match(source) and not source.startswith((".", "/", "~")):
        return ModelSource(source, download_from_hub(source))
    raise ModelSourceError(
        f"model {source!r} is neither a local directory nor a Hugging Face hub id (org/name); "
        "pass a checkpoint directory, a hub id such as Qwen/Qwen2.5-Omni-3B, `tiny` or `medium`"
    )


def download_from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub is a core dependency
        raise ModelSourceError("huggingface_hub is not installed; pip install huggingface_hub") from None
    try:
        path = Path(snapshot_download(repo_id=repo_id, allow_patterns=HUB_ALLOW_PATTERNS))
    except Exception as exc:  # the hub client raises many types: offline, 404, auth, disk
        raise ModelSourceError(
            f"could not download {repo_id} from the Hugging Face Hub ({type(exc).__name__}: {exc}). "
            "If this machine is offline, download the checkpoint elsewhere and pass its local directory"
        ) from None
    check_checkpoint_dir(path)
    return path


def check_checkpoint_dir(path: Path) -> None:
    if not path.is_dir():
        raise ModelSourceError(f"{path} is a file; pass the checkpoint directory that holds config.json")
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if not list(path.glob("*.safetensors")):
        missing.append("*.safetensors")
    if missing:
        raise ModelSourceError(
            f"{path} is not a Qwen2.5-Omni checkpoint: missing {', '.join(missing)}; "
            "pass a directory downloaded from the hub (safetensors weights, config.json, spk_dict.pt, tokenizer)"
        )
    check_config(path)
    check_speakers(path)


# Sub-configs the exporter reads, each a JSON object inside config.json (thinker_config.text_config is the
# Thinker's decoder: vocabulary, widths, layers, KV geometry).
_REQUIRED_CONFIGS = (("thinker_config",), ("thinker_config", "text_config"))


def check_config(path: Path) -> dict:
    """config.json, once it is a JSON object with the sub-configs a Qwen2.5-Omni export needs."""
    config_path = path / "config.json"
    try:
        config = json.loads(config_path.read_bytes().decode("utf-8"))
    except (ValueError, OSError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ModelSourceError(
            f"{config_path} is not valid JSON ({str(exc)[:120]}); pass an unmodified Qwen2.5-Omni checkpoint"
        ) from None
    for keys in _REQUIRED_CONFIGS:
        node = config
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            raise ModelSourceError(
                f"{config_path} has no {'.'.join(keys)} object: this is not a (complete) Qwen2.5-Omni checkpoint"
            )
    return config


def check_speakers(path: Path) -> None:
    """spk_dict.pt must be a plain tensor archive: transformers loads it with weights_only=True, which refuses
    pickled objects (good: nothing is executed); this says so in one line instead of a torch traceback."""
    import pickle

    import torch

    speakers = path / "spk_dict.pt"
    if not speakers.is_file():
        raise ModelSourceError(f"{path} has no spk_dict.pt (the speakers' voices); pass a complete checkpoint")
    try:
        torch.load(speakers, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        # torch's message is a page of advice; the line naming the refused global is the one that says why
        reason = next((line for line in lines if "Unsupported global" in line), lines[0] if lines else "")
        reason = reason[:160] or type(exc).__name__
        raise ModelSourceError(
            f"{speakers} is not a plain tensor archive (torch.load with weights_only=True refused it: {reason}); "
            "it may hold pickled code and was not run. Use the spk_dict.pt of the original checkpoint"
        ) from None


def checkpoint_sha256(path: Path) -> str:
    """Hash of config and weights, so a bundle records exactly which checkpoint it came from."""
    digest = hashlib.sha256()
    for file in sorted([path / "config.json", *path.glob("*.safetensors")]):
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            while block := handle.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def quiet_transformers():
    """transformers at error level: its config warnings about talker-side ids are expected and harmless."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def load_omni_model(path: Path):
    """Load the full model in fp32 on CPU (the transformers reference; the export reads lazy_model's)."""
    import torch
    from transformers import Qwen2_5OmniForConditionalGeneration

    check_config(path)
    check_speakers(path)
    with quiet_transformers():
        model = Qwen2_5OmniForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
    return model.eval()


def read_eos_token_ids(path: Path) -> list[int]:
    gen = path / "generation_config.json"
    eos = json.loads(gen.read_text()).get("eos_token_id") if gen.is_file() else None
    if eos is None:
        eos = json.loads((path / "config.json").read_text())["thinker_config"].get("eos_token_id", 151645)
    return [eos] if isinstance(eos, int) else list(eos)
