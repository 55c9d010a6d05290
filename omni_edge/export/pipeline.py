"""omni-export end to end: resolve inputs, export every component into a staging directory, verify,
write the manifest last, then move the staging directory into place.

Nothing is written to the output path until everything succeeded, so a failed or interrupted export
never leaves a directory that looks like a bundle.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from omni_edge import __version__, naming
from omni_edge.bundle import (
    FORMAT_VERSION,
    Manifest,
    MediaInfo,
    ThinkerInfo,
    sha256_file,
    write_manifest,
)
from omni_edge.bundle_trust import MAX_SEQ_LEN
from omni_edge.calibration.calib_set import SYNTHETIC, CalibrationSet, load_calibration_set
from omni_edge.errors import BundleError, InputError, TargetError
from omni_edge.export.staging import (
    check_disk_space,
    check_overwrite,
    disk_full,
    disk_full_error,
    export_disk_bytes,
    make_staging,
    remove_stale_staging,
)
from omni_edge.memory_plan import MemoryPlan, check_fits, plan_memory
from omni_edge.precision_plan import (
    CALIBRATED,
    component_precisions,
    graph_precisions,
    needs_calibration,
    needs_modelopt,
    source_precision,
)
from omni_edge.signals import terminate_as_interrupt
from omni_edge.targets import Target, get_target

if TYPE_CHECKING:
    from omni_edge.export.plugin_stage import PluginDecision

DEFAULT_MAX_SEQ_LEN = 4096
# What the accuracy report says of the synthetic set when no --calib was given (every precision needed none).
UNCALIBRATED_NOTE = "no --calib given: these precisions need none; the built-in requests only measured accuracy"


@dataclass(frozen=True)
class ExportRequest:
    model: str
    target: str
    out: Path
    precision: str = "auto"  # see precision_plan: auto, one precision, or component=precision pairs
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN
    overwrite: bool = False
    components: tuple[str, ...] = ()  # empty: every component this version exports
    memory_gib: float | None = None  # memory budget; None: the target's (a soft default for cpu)
    calib: str | None = None  # calibration data: a directory, "synthetic", or None (only fp32/fp16 then)
    plugins: str = "auto"  # TMRoPE plugin nodes: on (full-TensorRT targets only), off, auto (plain for now)
    engines: bool = True  # False: graphs and manifest only; `omni-build-engines` builds them on the device


@dataclass(frozen=True)
class CheckedRequest:
    """What the checks before any long work resolved: the target, precisions, calibration set."""

    target: Target
    precisions: dict[str, str]  # component -> precision
    calibration: CalibrationSet | None  # None: every component stays as exported (fp32, or fp16: half_source.py)
    plugins: PluginDecision


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
    calib: str | None = None,
    plugins: str = "auto",
    engines: bool = True,
) -> Path:
    """Python API of `omni-export`; returns the bundle directory."""
    request = ExportRequest(
        model=model,
        target=target,
        out=Path(out),
        precision=precision,
        max_seq_len=max_seq_len,
        overwrite=overwrite,
        components=tuple(components),
        memory_gib=memory_gib,
        calib=calib,
        plugins=plugins,
        engines=engines,
    )
    return export_bundle(request, progress or _no_progress)


def _no_progress(total: int, description: str):
    from contextlib import nullcontext

    class _Bar:
        def update(self, n=1):
            pass

        def set_description(self, text):
            pass

    return nullcontext(_Bar())


def check_request(request: ExportRequest) -> CheckedRequest:
    """Every check that needs no model: fail in seconds, before minutes of export."""
    from omni_edge.export.components import check_components, selected
    from omni_edge.export.engine_build import check_can_build
    from omni_edge.export.plugin_stage import decide_plugins

    target = get_target(request.target)
    check_components(request.components)
    precisions = component_precisions(target, request.precision, selected(request.components))
    if request.max_seq_len < 16:
        raise BundleError(f"--max-seq-len {request.max_seq_len} is too small; use at least 16")
    if request.max_seq_len > MAX_SEQ_LEN:
        raise BundleError(f"--max-seq-len {request.max_seq_len} is more than a bundle holds; use at most {MAX_SEQ_LEN}")
    if request.memory_gib is not None and request.memory_gib <= 0:
        raise TargetError(f"--memory-gib {request.memory_gib:g} must be positive")
    plugins = decide_plugins(target, request.plugins)
    if request.engines:
        check_can_build(target)
    check_overwrite(request.out, request.overwrite)
    return CheckedRequest(target, precisions, _calibration(request, target, precisions), plugins)


def _calibration(request: ExportRequest, target: Target, precisions: dict[str, str]) -> CalibrationSet | None:
    """The calibration set, decoded now so a bad file fails before the export starts."""
    calibrated = needs_calibration(precisions, target)
    if calibrated:
        if request.calib is None:
            named = ", ".join(f"{c} {precisions[c]}" for c in calibrated)
            uncalibrated = [p for p in target.precisions if p not in CALIBRATED]
            raise InputError(
                f"target {target.name} at --precision {request.precision} quantizes {named}, which needs "
                f"calibration data: pass --calib DIR (your own wav/png/jpg/mp4 files and .txt prompts) or "
                f"--calib {SYNTHETIC}; or choose --precision {'/'.join(uncalibrated)}"
            )
    if all(p == source_precision(c, p, target) for c, p in precisions.items()):
        return None  # every component is exported at its precision: nothing to reduce
    if needs_modelopt(precisions, target):
        from omni_edge.calibration.quantize import check_modelopt

        check_modelopt()  # its PTQ and its fp16 autocast
    # fp16 and weight-only int8 need no calibration, but their accuracy is still measured on these requests.
    calib = load_calibration_set(request.calib or SYNTHETIC)
    if request.calib is None:
        calib = replace(calib, source=f"{SYNTHETIC}, {UNCALIBRATED_NOTE}")
    counts = calib.counts()
    # An encoder is only reached by requests with its media; find out now, not after the export.
    for component, kinds, files in (
        ("audio_encoder", ("audio",), "wav/flac/ogg/mp3"),
        ("vision_encoder", ("image", "video"), "png/jpg/mp4"),
    ):
        if precisions.get(component, "fp32") != "fp32" and not any(counts[k] for k in kinds):
            # Weight-only int8 needs no calibration, but its accuracy is measured on these files too.
            cannot = "be calibrated" if component in calibrated else "have its accuracy measured"
            raise InputError(
                f"--calib {request.calib} has no {'/'.join(kinds)} files, so {component} "
                f"({precisions[component]}) cannot {cannot}: add {files} files, or keep it unquantized "
                f"with --precision {component}=fp32 (or fp16 on a GPU target)"
            )
    return calib


def plan_request(request: ExportRequest, checked: CheckedRequest, checkpoint: Path) -> MemoryPlan:
    """The bundle's memory plan from the checkpoint's headers; refused here when it cannot fit the target."""
    from omni_edge.export.components import selected

    target = checked.target
    plan = plan_memory(
        checkpoint,
        checked.precisions,
        request.max_seq_len,
        selected(request.components),
        target.high_precision,
        target.kv_dtype,
        target.weight_only,
        target.quantized_heads,
    )
    check_fits(plan, checked.target, request.memory_gib)
    return plan


def _check_export_memory(
    request: ExportRequest, checked: CheckedRequest, checkpoint: Path, plan: MemoryPlan, say
) -> None:
    """The export's own peak, stage by stage, from the headers: printed, and refused if it cannot fit now."""
    from omni_edge.export.components import selected
    from omni_edge.export.export_memory import check_export_fits, machine_bytes, plan_export

    components = selected(request.components)
    reduced = plan if checked.calibration is not None else None
    export_plan = plan_export(checkpoint, components, reduced, checked.target)
    unreduced = plan_export(checkpoint, components, None, checked.target) if reduced is not None else None
    check_export_fits(export_plan, components, machine_bytes(), unreduced)  # a refusal: one line, the numbers
    say(export_plan.summary())


def export_bundle(request: ExportRequest, progress: Callable, say: Callable[[str], None] | None = None) -> Path:
    """`say` gets one-line notes (stale staging removed); default: stderr. SIGTERM is handled like Ctrl-C:
    the staging directories are removed before the process ends."""
    with terminate_as_interrupt():
        return _export_bundle(request, progress, say or _to_stderr)


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _export_bundle(request: ExportRequest, progress: Callable, say: Callable[[str], None]) -> Path:
    from omni_edge.export.checkpoint import resolve_model_source
    from omni_edge.export.shards import CheckpointShards

    checked = check_request(request)
    target = checked.target
    source = resolve_model_source(request.model)
    plan = plan_request(request, checked, source.path)  # before the minutes of loading and exporting
    shards = CheckpointShards(source.path)  # headers only: a missing, cut or mis-indexed shard fails here
    out = request.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out, say)
    # A reduced-precision bundle is made from an FP32 one, which also answers the calibration requests.
    reduced = checked.calibration is not None
    needed = export_disk_bytes(plan, reduced, target.tensorrt is not None and request.engines)
    check_disk_space(out.parent, needed)
    _check_export_memory(request, checked, source.path, plan, say)
    staging = fp32_dir = None
    try:  # from the first directory made: a signal at any point after it still removes what was made
        staging = make_staging(out, "partial")
        fp32_dir = make_staging(out, "fp32") if reduced else staging
        from omni_edge.export.components import graph_count
        from omni_edge.export.lazy_model import LazyOmniModel

        graphs = graph_count(request.components)
        engines = target.tensorrt is not None and request.engines
        # steps: headers, one per graph, tokenizer, manifest; reducing: record, one per graph,
        # end to end; engines: one per graph
        steps = graphs * (1 + engines + reduced) + 3 + 2 * reduced
        with progress(steps, "reading checkpoint headers") as bar:
            lazy = LazyOmniModel(source.path, shards)  # a skeleton: each component's weights are read when exported
            model = lazy.model
            bar.update()
            records = _export_components(lazy, request, target, checked.precisions, fp32_dir, bar)
            bar.set_description("writing tokenizer and manifest")
            manifest = _fp32_manifest(model, source, target, request, records, fp32_dir, plan)
            bar.update()
            quantization = None
            if reduced:
                from omni_edge.calibration.stage import reduce_bundle

                assert checked.calibration is not None  # a reduced precision was refused without --calib
                write_manifest(fp32_dir, manifest)  # the calibration replay opens it as a bundle
                manifest, quantization = reduce_bundle(
                    fp32_dir,
                    staging,
                    manifest,
                    graph_precisions(checked.precisions, records),
                    target.high_precision,
                    checked.calibration,
                    bar,
                )
            components, plugins = _plugin_stage(staging, manifest.components, model, checked.plugins)
            tensorrt = None
            if engines:
                from omni_edge.export.engine_build import build_engines

                components, tensorrt = build_engines(staging, components, target, bar)
            bar.set_description("hashing and writing manifest")
            manifest = replace(
                manifest,
                backend=target.backend,
                components=components,
                tensorrt=tensorrt,
                quantization=quantization,
                plugins=plugins,
                files={
                    p.name: sha256_file(p)
                    for p in sorted(staging.iterdir())
                    if p.is_file() and p.name != naming.MANIFEST_FILE
                },
            )
            write_manifest(staging, manifest)
            bar.update()
        _move_into_place(staging, out)
    except BaseException as exc:
        for made in (staging, fp32_dir):
            if made is not None:
                shutil.rmtree(made, ignore_errors=True)
        if disk_full(exc):
            raise disk_full_error(out.parent, needed) from None
        raise
    finally:
        if reduced and fp32_dir is not None:
            shutil.rmtree(fp32_dir, ignore_errors=True)
    return out


def _export_components(
    lazy, request: ExportRequest, target: Target, precisions: dict[str, str], bundle_dir: Path, bar
) -> dict:
    """One component at a time: load its weights, write its graphs and what PyTorch computes for their check
    inputs, release the weights, then verify here in ONNX Runtime (which loads its own copy). A component with
    large weights is exported in a child process (isolated.py), whose exit returns what the libraries keep.
    The peak is the largest component's weights once, never the model's or two copies. Each is written in fp32,
    or in fp16 where the target's reduction starts from that (precision_plan.source_precision)."""
    from omni_edge.export import verify_loop
    from omni_edge.export.components import selected_components, specs_for
    from omni_edge.export.half_source import spec_for_source
    from omni_edge.export.isolated import isolate_above_bytes, run_isolated
    from omni_edge.export.lazy_model import graph_weights, table_weights

    records = {}
    for component in selected_components(request.components):
        source = source_precision(component.name, precisions[component.name], target)
        specs = specs_for(component, lazy.model, target)  # from the config: the skeleton is enough
        bar.set_description(f"exporting {', '.join(s.name for s in specs)}")
        job = (lazy.path, component.name, target.name, bundle_dir, request.max_seq_len, source)
        if lazy.parameter_count(graph_weights(component.name)) * 4 > isolate_above_bytes():
            answers = run_isolated(_export_one, *job, what=f"exporting {component.name}")
        else:
            answers = _export_one(*job, lazy=lazy)
        for spec, (path, cases, profile) in zip(specs, answers):
            bar.set_description(f"verifying {spec.name}")
            exported = verify_loop.ExportedGraph(spec_for_source(spec, source), path, cases, profile)
            records[spec.name] = verify_loop.verify_exported(exported, source)
            bar.update()
        if component.table_prefixes:
            with lazy.loaded(table_weights(component.name)) as model:  # plain tensors: nothing keeps them
                from omni_edge.export.tables import write_tables

                write_tables(component.name, model, bundle_dir)
    return records


def _export_one(
    checkpoint: Path, component: str, target: str, bundle_dir: Path, max_seq_len: int, source: str, lazy=None
) -> list:
    """Write one component's graphs, from its weights in `source` precision, with PyTorch's answers (path, cases,
    profile) for each; run in a child process (which reads the checkpoint's skeleton again) or, given `lazy`,
    here."""
    from omni_edge.components import component as component_record
    from omni_edge.export import verify_loop
    from omni_edge.export.components import specs_for
    from omni_edge.export.lazy_model import LazyOmniModel, graph_weights

    lazy = lazy or LazyOmniModel(checkpoint)
    entry = component_record(component)
    with lazy.loaded(graph_weights(component), {"fp32": "float32", "fp16": "float16"}[source]) as model:
        graphs = [
            verify_loop.export_with_expectations(spec, model, bundle_dir, max_seq_len, source)
            for spec in specs_for(entry, model, get_target(target))
        ]
    return [(g.path, g.cases, g.profile) for g in graphs]


def _plugin_stage(bundle_dir: Path, records: dict, model, plugins: PluginDecision):
    """Swap rotary subgraphs for plugin nodes where chosen (after the ONNX Runtime accuracy runs, which
    cannot load plugins), and re-hash what changed."""
    from omni_edge.export.plugin_stage import apply_plugins, tmrope_attrs_for

    choice = apply_plugins(bundle_dir, {name: r.file for name, r in records.items()}, tmrope_attrs_for(model), *plugins)
    records = {
        name: replace(r, sha256=sha256_file(bundle_dir / r.file)) if name in choice.graphs else r
        for name, r in records.items()
    }
    return records, choice


def _fp32_manifest(
    model, source, target: Target, request: ExportRequest, records, bundle_dir: Path, plan: MemoryPlan
) -> Manifest:
    """Copy the tokenizer beside the graphs and tables and describe the FP32 bundle (payload files not hashed
    yet). Reads only the config: the skeleton's weights are on the meta device here."""
    from omni_edge.export.checkpoint import checkpoint_sha256, read_eos_token_ids
    from omni_edge.export.decoder import kv_geometry, thinker_parts
    from omni_edge.export.speech_info import talker_info, token2wav_info

    shutil.copyfile(source.path / naming.TOKENIZER_FILE, bundle_dir / naming.TOKENIZER_FILE)
    speech = naming.TALKER_DECODER in records
    text_config = model.thinker.config.text_config
    return Manifest(
        format_version=FORMAT_VERSION,
        omni_edge_version=__version__,
        source_model=source.name,
        source_sha256=checkpoint_sha256(source.path),
        target=target.name,
        # The ONNX graphs as written run in ONNX Runtime: the calibration replay and the accuracy runs open this
        # manifest before the final one names the target's backend.
        backend="onnxruntime",
        tools=_tool_versions(),
        kv_cache=kv_geometry(thinker_parts(model), request.max_seq_len, target.kv_dtype),
        thinker=ThinkerInfo(
            hidden_size=text_config.hidden_size,
            vocab_size=text_config.vocab_size,
            eos_token_ids=read_eos_token_ids(source.path),
            embedding_file=naming.THINKER_EMBEDDING_FILE,
        ),
        media=media_info(model),
        talker=talker_info(model, request.max_seq_len, target.kv_dtype) if speech else None,
        token2wav=token2wav_info(model) if speech else None,
        tokenizer_file=naming.TOKENIZER_FILE,
        components=records,
        memory_plan=plan,
    )


def _move_into_place(staging: Path, out: Path) -> None:
    # mkdtemp makes 0700 directories; a bundle is meant to be shared with other users and services.
    staging.chmod(0o755)
    for path in staging.iterdir():
        path.chmod(0o644)
    if out.exists():
        # Keep the old bundle until the new one is in place, so a crash here loses neither.
        trash = make_staging(out, "old")
        out.rename(trash / out.name)
        staging.rename(out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        staging.rename(out)


def media_info(model) -> MediaInfo:
    from omni_edge.runtime.audio_blocks import block_frames_for

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
        audio_block_frames=block_frames_for(thinker.audio_config.n_window),
    )


def _tool_versions() -> dict[str, str | None]:
    import importlib.metadata as md

    versions: dict[str, str | None] = {}
    for dist in ("torch", "transformers", "onnx", "onnxruntime", "tensorrt", "tensorrt-rtx"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    return versions
