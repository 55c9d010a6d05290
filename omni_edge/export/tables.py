"""The host-side tables a bundle holds beside its graphs: token embeddings the runtime looks up itself
(Thinker, Talker codec) and the speakers' conditioning. Written while the component's tables are loaded
(lazy_model.table_weights), as fp32 safetensors."""

from __future__ import annotations

from pathlib import Path

from omni_edge import naming


def write_tables(component: str, model, out_dir: Path) -> None:
    writers = {"thinker": _write_thinker_tables, "talker": _write_talker_tables}
    writers[component](model, out_dir)


def _write_thinker_tables(model, out_dir: Path) -> None:
    from safetensors.numpy import save_file

    table = model.thinker.get_input_embeddings().weight.detach().float().numpy()
    save_file({"weight": table}, str(out_dir / naming.THINKER_EMBEDDING_FILE))


def _write_talker_tables(model, out_dir: Path) -> None:
    from safetensors.numpy import save_file

    codec = model.talker.get_input_embeddings().weight.detach().float().numpy()
    save_file({"weight": codec}, str(out_dir / naming.TALKER_CODEC_EMBEDDING_FILE))
    mel_dim = model.token2wav.config.dit_config.mel_dim
    speakers = {}
    for name, params in model.speaker_map.items():
        speakers[f"{name}.cond"] = params["cond"].detach().float().reshape(1, -1).numpy()
        speakers[f"{name}.ref_mel"] = params["ref_mel"].detach().float().reshape(1, -1, mel_dim).numpy()
    save_file(speakers, str(out_dir / naming.SPEAKERS_FILE))
