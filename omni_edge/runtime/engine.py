"""The engine interface: a named-tensor function. ONNX Runtime now; TensorRT implements the same surface.

Like Polygraphy's runners, an engine only knows how to run one graph; caching, sampling and
orchestration live elsewhere in the runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from omni_edge.errors import BundleError


class Engine(Protocol):
    name: str
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class OrtEngine:
    """One ONNX graph in an onnxruntime InferenceSession (CPU by default)."""

    def __init__(self, name: str, path: Path, providers: list[str] | None = None, threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BundleError("onnxruntime is not installed; pip install 'omni-edge[ort]'") from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise BundleError(f"cannot load {path.name} into ONNX Runtime ({exc}); re-export the bundle") from None
        self.name = name
        self.input_names = [arg.name for arg in self._session.get_inputs()]
        self.output_names = [arg.name for arg in self._session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._session.run(self.output_names, feeds)
        return dict(zip(self.output_names, values))
