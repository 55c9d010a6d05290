"""The one export-and-verify loop: every ComponentSpec goes through here, none is special-cased."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np

from omni_edge.bundle import ComponentRecord, TensorSpec, sha256_file
from omni_edge.errors import OmniEdgeError
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


def verify_graph(spec: ComponentSpec, module, model, path: Path) -> float:
    """Run the graph in ONNX Runtime and the module in PyTorch on inputs of several shapes."""
    return verify_graph_against(spec, module, model, path)[0]


def verify_graph_against(spec: ComponentSpec, module, model, path: Path) -> tuple[float, float | None]:
    """(worst |onnx - module|, worst |onnx - transformers' own forward| or None without spec.reference)."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst, worst_reference = 0.0, None
    for inputs in spec.check_inputs(model):
        feeds = {name: tensor.numpy() for name, tensor in zip(spec.input_names, inputs)}
        got = session.run(list(spec.output_names), feeds)
        with torch.no_grad():
            result = module(*inputs)
        worst = max(worst, _compare(spec, got, _numpy(result), "PyTorch"))
        if spec.reference is not None:
            with torch.no_grad():
                expected = spec.reference(model, inputs)
            error = _compare(spec, got, _numpy(expected), "transformers' own module")
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
        if not np.allclose(actual, ref, atol=spec.atol, rtol=spec.rtol):
            raise ExportVerificationError(
                f"{spec.name}: output {name} differs from {what} by {error:.3g} "
                f"(tolerance atol={spec.atol}, rtol={spec.rtol}); the export is not faithful. "
                "Report this with your transformers and torch versions"
            )
    return worst


def export_and_verify(
    spec: ComponentSpec, model, out_dir: Path, precision: str = "fp32", max_seq_len: int = 4096
) -> ComponentRecord:
    import onnxruntime as ort

    module = spec.build_module(model)
    path = out_dir / f"{spec.name}.onnx"
    export_graph(spec, module, model, path)
    worst, worst_reference = verify_graph_against(spec, module, model, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return ComponentRecord(
        name=spec.name,
        file=path.name,
        sha256=sha256_file(path),
        precision=precision,
        inputs=[_tensor_spec(arg) for arg in session.get_inputs()],
        outputs=[_tensor_spec(arg) for arg in session.get_outputs()],
        atol=spec.atol,
        rtol=spec.rtol,
        measured_max_abs_error=worst,
        reference_max_abs_error=worst_reference,
        profile={axis: list(r) for axis, r in spec.profile(model, max_seq_len).items()} if spec.profile else None,
    )


def _tensor_spec(arg) -> TensorSpec:
    dtype = arg.type.removeprefix("tensor(").removesuffix(")")
    return TensorSpec(name=arg.name, shape=list(arg.shape), dtype=dtype)
