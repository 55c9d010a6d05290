"""Which TensorRT this machine has, by name, without importing it until asked.

Two flavours share one Python API surface (same class and method names, different module):
- "tensorrt": full TensorRT (JetPack's python3-libnvinfer on Jetson, `pip install tensorrt` on x86). It builds
  engines for the GPU it runs on, so a Jetson or Hopper bundle is built on that device.
- "tensorrt-rtx": TensorRT for RTX (`pip install tensorrt-rtx`, module `tensorrt_rtx`). It builds ahead of time
  on a CPU-only machine for a compute capability set in the builder config and JIT-compiles on the GPU.

The names are the ones targets.py, the manifest and pip use; `module_name` maps them to Python modules.
"""

from __future__ import annotations

import importlib
import importlib.util

MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}
LABELS = {"tensorrt": "TensorRT", "tensorrt-rtx": "TensorRT-RTX"}
OLDEST_FULL_TENSORRT = (10, 3)  # JetPack 6; nothing newer is used on the full-TensorRT path


def module_name(flavour: str) -> str:
    return MODULES[flavour]


def is_installed(flavour: str) -> bool:
    """A find_spec look-up only: milliseconds, and safe on machines whose TensorRT libs would fail to load."""
    return importlib.util.find_spec(MODULES[flavour]) is not None


def import_flavour(flavour: str):
    """The flavour's Python module; ImportError (with pip's hint) when it is missing or broken."""
    try:
        return importlib.import_module(MODULES[flavour])
    except ImportError as exc:
        raise ImportError(f"{LABELS[flavour]} ({MODULES[flavour]}) cannot be imported: {exc}") from None


def version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("."):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)


def rtx_compute_capability(trt, capability: str):
    """ "8.9" -> trt.ComputeCapability.SM89, or None when this TensorRT-RTX cannot build for it."""
    return getattr(trt.ComputeCapability, "SM" + capability.replace(".", ""), None)


def describe(flavour: str, version: str | None = None) -> str:
    return f"{LABELS.get(flavour, flavour)} {version}" if version else LABELS.get(flavour, flavour)
