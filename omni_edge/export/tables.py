"""The host-side tables a bundle holds beside its graphs: token embeddings the runtime looks up itself
(Thinker, Talker codec) and the speakers' conditioning. Written while the component's tables are loaded
(lazy_model.table_weights), as safetensors.

The two embedding tables keep the checkpoint's precision: a bf16 checkpoint (the released Qwen2.5-Omni) is
loaded as fp32, and a table whose every value is a bf16 value is written as bf16, half the bytes, widened back
exactly per looked-up row (runtime/embedding_table.py). Any other table is written in fp32."""

from __future__ import annotations

from pathlib import Path

from omni_edge import naming


def write_tables(component: str, model, out_dir: Path) -> None:
    writers = {"thinker": _write_thinker_tables, "talker": _write_talker_tables}
    writers[component](model, out_dir)


def _write_thinker_tables(model, out_dir: Path) -> None:
    write_embedding_table(model.thinker.get_input_embeddings().weight, out_dir / naming.THINKER_EMBEDDING_FILE)


def _write_talker_tables(model, out_dir: Path) -> None:
    from safetensors.numpy import save_file

    write_embedding_table(model.talker.get_input_embeddings().weight, out_dir / naming.TALKER_CODEC_EMBEDDING_FILE)
    mel_dim = model.token2wav.config.dit_config.mel_dim
    speakers = {}
    for name, params in model.speaker_map.items():
        speakers[f"{name}.cond"] = params["cond"].detach().float().reshape(1, -1).numpy()
        speakers[f"{name}.ref_mel"] = params["ref_mel"].detach().float().reshape(1, -1, mel_dim).numpy()
    save_file(speakers, str(out_dir / naming.SPEAKERS_FILE))


def write_embedding_table(weight, path: Path) -> str:
    """`weight` (a torch tensor) as the safetensors table `path`, in bf16 when that loses nothing, else fp32;
    returns the dtype written."""
    import torch
    from safetensors.torch import save_file

    table = weight.detach().float().contiguous()
    exact = is_bf16_exact(table)
    save_file({"weight": table.to(torch.bfloat16) if exact else table}, str(path))
    return "bfloat16" if exact else "float32"


def is_bf16_exact(table, rows: int = 8192) -> bool:
    """Whether every fp32 value of `table` is a bf16 value (its low 16 bits are zero), checked a few thousand
    rows at a time so the check holds no second copy of a 1.2 GB table."""
    import torch

    flat = table.reshape(table.shape[0], -1)
    return all(
        not torch.any(flat[i : i + rows].view(torch.int32) & 0xFFFF).item() for i in range(0, flat.shape[0], rows)
    )
