"""The export's plugin stage: per target, either keep the plain-op decoder graphs or swap their rotary
subgraphs for OmniEdgeTMRoPE plugin nodes, and say which in the manifest.

Plain ops stay the default wherever the plugin is not needed: only full-TensorRT targets can load our
plugins (`supports_plugins`), and the plain rotary ops build and run there too (TensorRT 10.3 included), so
the plugin is a speed choice. Until its kernel has been measured on a GPU, for numerics and for speed against
the plain ops (scripts/gpu_check.sh), `--plugins auto` keeps plain ops and `--plugins on` opts in; flip
AUTO_USES_PLUGINS once those numbers are recorded. The rewrite runs on the graphs
already in the bundle directory, after export and after any ModelOpt quantization, and replaces them in
place. A graph where nothing was replaced is an error, never a silent fallback: a bundle labelled as using
the plugin must not run the plain ops.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple

from omni_edge.bundle import PluginChoice
from omni_edge.components import component
from omni_edge.errors import BundleError, TargetError
from omni_edge.kernels.errors import KernelError
from omni_edge.kernels.graph_rewrite import RewriteReport, TmropeAttrs, rewrite_tmrope, supports_plugins

PLUGIN_MODES = ("auto", "on", "off")
AUTO_USES_PLUGINS = False  # see the module docstring: the kernels have not run on a GPU yet
_ROTARY_OPS = ("Cos", "Sin")


class PluginDecision(NamedTuple):
    enabled: bool
    reason: str  # why: the target's capability or the user's --plugins choice


def decide_plugins(target, mode: str) -> PluginDecision:
    """What to do for `--plugins auto|on|off` on a Target. Needs no model, so the CLI checks it first."""
    if mode not in PLUGIN_MODES:
        raise TargetError(f"unknown --plugins {mode!r}; choose one of: {', '.join(PLUGIN_MODES)}")
    if mode == "off":
        return PluginDecision(False, "--plugins off: plain ONNX ops")
    ok, why = supports_plugins(target)
    if mode == "on" and not ok:
        raise TargetError(
            f"--plugins on is not possible for target {target.name}: {why}. "
            "Use --plugins auto or --plugins off (plain ONNX ops)"
        )
    if mode == "auto" and ok and not AUTO_USES_PLUGINS:
        return PluginDecision(
            False,
            "--plugins auto: plain ONNX ops; the TMRoPE plugin is opt-in (--plugins on) until its kernel "
            "is measured on a GPU",
        )
    return PluginDecision(ok, f"--plugins {mode}: {why}")


def tmrope_attrs_for(model) -> dict[str, TmropeAttrs]:
    """Plugin attributes per decoder graph, from the config each decoder's rotary embedding was built with."""
    from omni_edge.export.decoder import talker_parts, thinker_parts

    parts = [(component("thinker").graph_names, thinker_parts)]
    if getattr(model, "talker", None) is not None:  # a checkpoint loaded without speech output has no Talker
        parts.append((component("talker").graph_names, talker_parts))
    attrs = {}
    for names, get_parts in parts:
        config = get_parts(model).text_model.config.to_dict()
        attrs.update(dict.fromkeys(names, TmropeAttrs.from_text_config(config)))
    return attrs


def apply_plugins(
    bundle_dir: Path, graphs: dict[str, str], attrs_by_graph: dict[str, TmropeAttrs], enabled: bool, reason: str
) -> PluginChoice:
    """Rewrite, in place, every graph named in both `graphs` (component -> file in bundle_dir) and
    `attrs_by_graph` when enabled; other graphs (encoders, token2wav) are left alone.

    Files change, so the caller hashes graphs for the manifest after this step."""
    if not enabled:
        return PluginChoice(False, reason, {})
    reports = {}
    for name, file in graphs.items():
        if name in attrs_by_graph:
            reports[name] = _rewrite_in_place(Path(bundle_dir) / file, attrs_by_graph[name]).to_manifest()
    return PluginChoice(True, reason, reports)


def _rewrite_in_place(path: Path, attrs: TmropeAttrs) -> RewriteReport:
    import onnx
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    if not path.is_file():
        raise BundleError(f"{path} is missing; the plugin stage runs on graphs the export has just written")
    model = onnx.load(str(path), load_external_data=False)
    external = any(uses_external_data(t) for t in model.graph.initializer)
    load_external_data_for_model(model, str(path.parent))
    rewritten, report = rewrite_tmrope(model, attrs)
    if report.replaced == 0:
        raise KernelError(
            f"{path.name}: the rotary pattern was not found, so no OmniEdgeTMRoPE node replaces it "
            "and the bundle would be mislabelled as using the plugin. Export with --plugins off, "
            "and report this with your torch, transformers and ModelOpt versions"
        )
    left = [n.name for n in rewritten.graph.node if n.op_type in _ROTARY_OPS]
    if left and not report.left_plain:
        raise KernelError(
            f"{path.name}: {report.replaced} rotary subgraphs became plugin nodes but "
            f"{', '.join(left)} still compute rotary angles in plain ops that the matcher did not "
            "recognise; export with --plugins off"
        )
    _save_over(rewritten, path, external)
    return report


def _save_over(model, path: Path, external: bool) -> None:
    """Replace `path` (and its `<file>.data`) with `model`. Both are written in a scratch directory beside
    them under their final names, so the graph's external-data location stays `<file>.data`, then moved over
    the originals; the export writes the manifest last, so the moment between the two moves is never seen."""
    import onnx

    data = path.with_name(f"{path.name}.data")
    external = external or sum(len(t.raw_data) for t in model.graph.initializer) > 1_800_000_000
    scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.plugins-", dir=path.parent))
    try:
        onnx.save(model, str(scratch / path.name), save_as_external_data=external, location=data.name)
        if (scratch / data.name).exists():
            os.replace(scratch / data.name, data)
        elif data.exists():
            data.unlink()  # every weight now sits inside the graph; a stale data file would only mislead
        os.replace(scratch / path.name, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
