"""The one export-and-verify loop: every ComponentSpec goes through here, none is special-cased."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omni_edge.bundle import ComponentRecord, TensorSpec, sha256_file
from omni_edge.errors import OmniEdgeError
from omni_edge.export import half_source
from omni_edge.export.spec import ComponentSpec


class ExportVerificationError(OmniEdgeError):
    """An exported graph does not reproduce its PyTorch module within the spec's tolerance."""


@contextlib.contextmanager
def _quiet_exporter():
    """torch.onnx prints progress lines and shape-rename warnings per graph; our progress bar replaces them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        previous = logging.getLogger("torch").level
        logging.getLogger("torch").setLevel(logging.ERROR)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                yield
        finally:
            logging.getLogger("torch").setLevel(previous)


def export_graph(spec: ComponentSpec, module, model, path: Path) -> None:
    import torch

    with torch.no_grad(), _quiet_exporter():
        torch.onnx.export(
            module,
            tuple(spec.example_inputs(model)),  # a plain tuple: torch.export cannot walk tuple subclasses
            str(path),
            input_names=list(spec.input_names),
            output_names=list(spec.output_names),
            dynamic_shapes=spec.dynamic_shapes(),
            dynamo=True,
            verbose=False,
        )


@dataclass
class VerificationCase:
    feeds: dict[str, np.ndarray]
    module_outputs: list[np.ndarray]  # the export-friendly torch module's
    reference_outputs: list[np.ndarray] | None  # transformers' own module's, when the spec names one


@dataclass
class ExportedGraph:
    """A graph written to disk with what PyTorch computed for its check inputs: everything verification needs,
    so the component's weights can be released before ONNX Runtime loads its own copy of them."""

    spec: ComponentSpec
    path: Path
    cases: list[VerificationCase]
    profile: dict[str, list[int]] | None


def expected_outputs(spec: ComponentSpec, module, model) -> list[VerificationCase]:
    """PyTorch's answers on inputs of several shapes (to catch shapes baked into the graph)."""
    import torch

    cases = []
    for inputs in spec.check_inputs(model):
        with torch.no_grad():
            outputs = _numpy(module(*inputs))
            reference = _numpy(spec.reference(model, inputs)) if spec.reference is not None else None
        feeds = {name: tensor.numpy() for name, tensor in zip(spec.input_names, inputs)}
        cases.append(VerificationCase(feeds, outputs, reference))
    return cases


def verify_graph_against(spec: ComponentSpec, module, model, path: Path) -> tuple[float, float | None]:
    """(worst |onnx - module|, worst |onnx - transformers' own forward| or None without spec.reference)."""
    return _verify(spec, _session(path), expected_outputs(spec, module, model))


def _session(path: Path):
    from omni_edge.ort_options import cpu_session

    return cpu_session(path)


def _verify(spec: ComponentSpec, session, cases: list[VerificationCase]) -> tuple[float, float | None]:
    worst, worst_reference = 0.0, None
    for case in cases:
        got = session.run(list(spec.output_names), case.feeds)
        worst = max(worst, _compare(spec, got, case.module_outputs, "PyTorch"))
        if case.reference_outputs is not None:
            error = _compare(spec, got, case.reference_outputs, "transformers' own module")
            worst_reference = max(worst_reference or 0.0, error)
    return worst, worst_reference


def _numpy(result) -> list[np.ndarray]:
    import torch

    return [t.numpy() for t in ((result,) if isinstance(result, torch.Tensor) else result)]


def _compare(spec: ComponentSpec, got: list, expected: list, what: str) -> float:
    """Worst difference over the outputs; NaN in `expected` marks a value the runtime never reads."""
    worst = 0.0
    for name, actual, ref in zip(spec.output_names, got, expected):
        if actual.shape != ref.shape:
            raise ExportVerificationError(
                f"{spec.name}: output {name} has shape {actual.shape} in ONNX but {ref.shape} in {what}"
            )
        used = ~np.isnan(ref)
        actual, ref = actual[used], ref[used]
        error = float(np.max(np.abs(actual - ref))) if actual.size else 0.0
        worst = max(worst, error)
        # atol is in units of the output's RMS where that exceeds 1: a deep random-weight stack (the DiT's 22
        # layers) grows its activations, and fp32 reordering noise grows with them.
        scale = max(1.0, float(np.sqrt(np.mean(np.square(ref, dtype=np.float64))))) if ref.size else 1.0
        if not np.allclose(actual, ref, atol=spec.atol * scale, rtol=spec.rtol):
            raise ExportVerificationError(
                f"{spec.name}: output {name} differs from {what} by {error:.3g} "
                f"(tolerance atol={spec.atol} x output RMS {scale:.3g}, rtol={spec.rtol}); the export is not faithful. "
                "Report this with your transformers and torch versions"
            )
    return worst


def export_with_expectations(
    spec: ComponentSpec, model, out_dir: Path, max_seq_len: int = 4096, source: str = "fp32"
) -> ExportedGraph:
    """Phase one, while the component's weights are loaded: write the graph, compute PyTorch's answers.
    `source`: the loaded weights' precision, "fp32" or "fp16" (half_source.py); the graph's inputs and outputs
    are fp32 either way."""
    kept = half_source.float_inputs(spec, model) if source != "fp32" else set()
    spec = half_source.spec_for_source(spec, source)
    module = spec.build_module(model)
    path = out_dir / f"{spec.name}.onnx"
    export_graph(spec, module, model, path)
    cases = expected_outputs(spec, module, model)
    if source != "fp32":
        half_source.keep_float_io(path, kept)
        for case in cases:
            case.feeds = {k: v.astype(np.float32) if k in kept else v for k, v in case.feeds.items()}
    profile = {axis: list(r) for axis, r in spec.profile(model, max_seq_len).items()} if spec.profile else None
    return ExportedGraph(spec, path, cases, profile)


def verify_exported(exported: ExportedGraph, precision: str = "fp32") -> ComponentRecord:
    """Phase two, after the weights are released: run the graph in ONNX Runtime against those answers."""
    spec = exported.spec
    session = _session(exported.path)
    worst, worst_reference = _verify(spec, session, exported.cases)
    return ComponentRecord(
        name=spec.name,
        file=exported.path.name,
        sha256=sha256_file(exported.path),
        precision=precision,
        inputs=[_tensor_spec(arg) for arg in session.get_inputs()],
        outputs=[_tensor_spec(arg) for arg in session.get_outputs()],
        atol=spec.atol,
        rtol=spec.rtol,
        measured_max_abs_error=worst,
        reference_max_abs_error=worst_reference,
        profile=exported.profile,
        shared_kv_buffer=spec.shared_kv_buffer,
    )


def export_and_verify(
    spec: ComponentSpec, model, out_dir: Path, precision: str = "fp32", max_seq_len: int = 4096
) -> ComponentRecord:
    return verify_exported(export_with_expectations(spec, model, out_dir, max_seq_len), precision)


def _tensor_spec(arg) -> TensorSpec:
    dtype = arg.type.removeprefix("tensor(").removesuffix(")")
    return TensorSpec(name=arg.name, shape=list(arg.shape), dtype=dtype)
