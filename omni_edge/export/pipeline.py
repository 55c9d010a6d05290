"""omni-export end to end: resolve inputs, export every component into a staging directory, verify,
write the manifest last, then move the staging directory into place.

Nothing is written to the output path until everything succeeded, so a failed or interrupted export
never leaves a directory that looks like a bundle.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from omni_edge import __version__, naming
from omni_edge.bundle import (
    FORMAT_VERSION,
    KVCacheGeometry,
    Manifest,
    MediaInfo,
    ThinkerInfo,
    sha256_file,
    write_manifest,
)
from omni_edge.errors import BundleError, TargetError
from omni_edge.memory_plan import MemoryPlan, check_fits, plan_memory
from omni_edge.targets import COMPONENTS, Target, check_precision, get_target

DEFAULT_MAX_SEQ_LEN = 4096


@dataclass(frozen=True)
class ExportRequest:
    model: str
    target: str
    out: Path
    precision: str = "auto"
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN
    overwrite: bool = False
    components: tuple[str, ...] = ()  # empty: every component this version exports
    memory_gib: float | None = None  # memory budget; None: the target's (a soft default for cpu)


def export(
    model: str,
    target: str,
    out: str | Path,
    precision: str = "auto",
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
    overwrite: bool = False,
    components: tuple[str, ...] = (),
    progress: Callable | None = None,
    memory_gib: float | None = None,
) -> Path:
    """Python API of `omni-export`; returns the bundle directory."""
    request = ExportRequest(model, target, Path(out), precision, max_seq_len, overwrite, tuple(components),
                            memory_gib)
    return export_bundle(request, progress or _no_progress)


def _no_progress(total: int, description: str):
    from contextlib import nullcontext

    class _Bar:
        def update(self, n=1):
            pass

        def set_description(self, text):
            pass

    return nullcontext(_Bar())


def check_request(request: ExportRequest) -> Target:
    """Every check that needs no model: fail in milliseconds, before minutes of export."""
    target = get_target(request.target)
    check_precision(target, request.precision)
    if request.precision not in ("auto", "fp32"):
        raise TargetError(
            f"precision {request.precision} needs quantization, which this version of omni-export does "
            "not do yet; use --precision fp32 or auto"
        )
    from omni_edge.export.components import check_components
    from omni_edge.export.engine_build import check_can_build

    check_components(request.components)
    if request.max_seq_len < 16:
        raise BundleError(f"--max-seq-len {request.max_seq_len} is too small; use at least 16")
    if request.memory_gib is not None and request.memory_gib <= 0:
        raise TargetError(f"--memory-gib {request.memory_gib:g} must be positive")
    check_can_build(target)
    out = request.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not request.overwrite:
        raise BundleError(f"{out} already exists and is not empty; pass --overwrite or choose another --out")
    return target


def component_precisions(target: Target, precision: str) -> dict[str, str]:
    """Precision per component. Until quantization lands, every graph is written in fp32 whatever the target's
    defaults (check_request refuses an explicit lower precision), so auto means fp32 and the manifest says so."""
    return {component: "fp32" for component in COMPONENTS}


def plan_request(request: ExportRequest, target: Target, checkpoint: Path) -> MemoryPlan:
    """The bundle's memory plan from the checkpoint's headers; refused here when it cannot fit the target."""
    from omni_edge.export.components import selected

    plan = plan_memory(checkpoint, component_precisions(target, request.precision), request.max_seq_len,
                       selected(request.components))
    check_fits(plan, target, request.memory_gib)
    return plan


def export_bundle(request: ExportRequest, progress: Callable) -> Path:
    from omni_edge.export.checkpoint import checkpoint_sha256, load_omni_model, read_eos_token_ids, resolve_model_source

    target = check_request(request)
    source = resolve_model_source(request.model)
    plan = plan_request(request, target, source.path)  # before the minutes of loading and exporting
    out = request.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        from omni_edge.export.components import component_specs, graph_count
        from omni_edge.export.decoder import kv_geometry, thinker_parts
        from omni_edge.export.speech_info import talker_info, token2wav_info, write_speech_tables
        from omni_edge.export.verify_loop import export_and_verify

        # steps: load, one per graph (and one per engine), embeddings+tokenizer, manifest
        engines = target.tensorrt is not None
        with progress(graph_count(request.components) * (2 if engines else 1) + 3, "loading checkpoint") as bar:
            model = load_omni_model(source.path)
            bar.update()
            records = {}
            for spec in component_specs(model, request.components):
                bar.set_description(f"exporting {spec.name}")
                records[spec.name] = export_and_verify(spec, model, staging, max_seq_len=request.max_seq_len)
                bar.update()
            tensorrt = None
            if engines:
                from omni_edge.export.engine_build import build_engines

                records, tensorrt = build_engines(staging, records, target, bar)
            bar.set_description("writing embeddings and tokenizer")
            _write_embedding_table(model, staging / naming.THINKER_EMBEDDING_FILE)
            shutil.copyfile(source.path / naming.TOKENIZER_FILE, staging / naming.TOKENIZER_FILE)
            speech = naming.TALKER_PREFILL in records
            if speech:
                write_speech_tables(model, staging)
            bar.update()
            bar.set_description("hashing and writing manifest")
            geo = kv_geometry(thinker_parts(model))
            text_config = model.thinker.config.text_config
            manifest = Manifest(
                format_version=FORMAT_VERSION,
                omni_edge_version=__version__,
                source_model=source.name,
                source_sha256=checkpoint_sha256(source.path),
                target=target.name,
                backend=target.backend,
                tools=_tool_versions(),
                kv_cache=KVCacheGeometry(
                    num_layers=geo["num_layers"],
                    num_kv_heads=geo["num_kv_heads"],
                    head_dim=geo["head_dim"],
                    max_seq_len=request.max_seq_len,
                ),
                thinker=ThinkerInfo(
                    hidden_size=text_config.hidden_size,
                    vocab_size=text_config.vocab_size,
                    eos_token_ids=read_eos_token_ids(source.path),
                    embedding_file=naming.THINKER_EMBEDDING_FILE,
                ),
                media=media_info(model),
                talker=talker_info(model, request.max_seq_len) if speech else None,
                token2wav=token2wav_info(model) if speech else None,
                tokenizer_file=naming.TOKENIZER_FILE,
                components=records,
                files={p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file()},
                tensorrt=tensorrt,
                memory_plan=plan,
            )
            write_manifest(staging, manifest)
            bar.update()
        _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _move_into_place(staging: Path, out: Path) -> None:
    # mkdtemp makes 0700 directories; a bundle is meant to be shared with other users and services.
    staging.chmod(0o755)
    for path in staging.iterdir():
        path.chmod(0o644)
    if out.exists():
        # Keep the old bundle until the new one is in place, so a crash here loses neither.
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        out.rename(trash / out.name)
        staging.rename(out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        staging.rename(out)


def media_info(model) -> MediaInfo:
    thinker, vision = model.thinker.config, model.thinker.config.vision_config
    return MediaInfo(
        audio_token_id=thinker.audio_token_index,
        image_token_id=thinker.image_token_index,
        video_token_id=thinker.video_token_index,
        audio_start_token_id=thinker.audio_start_token_id,
        audio_end_token_id=thinker.audio_end_token_id,
        vision_start_token_id=thinker.vision_start_token_id,
        vision_end_token_id=thinker.vision_end_token_id,
        position_id_per_seconds=thinker.position_id_per_seconds,
        seconds_per_chunk=thinker.seconds_per_chunk,
        patch_size=vision.patch_size,
        temporal_patch_size=vision.temporal_patch_size,
        spatial_merge_size=vision.spatial_merge_size,
        window_size=vision.window_size,
    )


def _write_embedding_table(model, path: Path) -> None:
    from safetensors.numpy import save_file

    table = model.thinker.get_input_embeddings().weight.detach().float().numpy()
    save_file({"weight": table}, str(path))


def _tool_versions() -> dict[str, str | None]:
    import importlib.metadata as md

    versions = {}
    for dist in ("torch", "transformers", "onnx", "onnxruntime", "tensorrt", "tensorrt-rtx"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    return versions
