"""The runtime's CUDA plumbing over cuda-python's driver API: the driver module, result checking, the
device and its context, device tensors and buffers, streams. Used by the TensorRT backend (trt_engine.py,
trt_kv_cache.py) and by the kernels' launchers.

Nothing imports CUDA at module import: `driver()` does it on first use, so the package imports on machines
without cuda-python or a GPU. Objects that own device memory or streams free them in `close()`; they are
context managers, and a Session closes its engines and caches in its own `close()`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from omni_edge.errors import OmniEdgeError


class CudaError(OmniEdgeError):
    """cuda-python is missing, or a CUDA driver call failed."""


_driver = None


def driver():
    """cuda.bindings.driver (cuda-python >= 12.6) or the older cuda.cuda module, imported on first use."""
    global _driver
    if _driver is None:
        try:
            from cuda.bindings import driver as mod
        except ImportError:
            try:
                from cuda import cuda as mod  # cuda-python < 12.6 (JetPack 6 wheels)
            except ImportError:
                raise CudaError(
                    "cuda-python is not installed: pip install 'omni-edge[trt]' "
                    "(or cuda-python matching your CUDA driver)"
                ) from None
        _driver = mod
    return _driver


def check(result):
    """Unpack a cuda-python (CUresult, values...) tuple, raising CudaError on any error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    drv = driver()
    if err != drv.CUresult.CUDA_SUCCESS:
        _, name = drv.cuGetErrorName(err)
        raise CudaError(f"CUDA driver error {name.decode() if isinstance(name, bytes) else name}")
    return values[0] if len(values) == 1 else tuple(values) if values else None


def cuda_device_status() -> tuple[bool, str]:
    """(True, device name) when a CUDA device can be used here, else (False, why not)."""
    try:
        drv = driver()
        check(drv.cuInit(0))
        if check(drv.cuDeviceGetCount()) < 1:
            return False, "no CUDA device"
        name = check(drv.cuDeviceGetName(256, check(drv.cuDeviceGet(0))))
        return True, name.split(b"\0")[0].decode()
    except CudaError as exc:
        return False, f"no CUDA device ({exc})"
    except Exception as exc:  # cuda-python raises its own errors when libcuda.so is missing
        return False, f"no CUDA device ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"


def current_context():
    """The thread's current context (TensorRT/cudart's primary one), or the primary context of device 0."""
    drv = driver()
    check(drv.cuInit(0))
    ctx = check(drv.cuCtxGetCurrent())
    if int(ctx) == 0:
        device = check(drv.cuDeviceGet(int(os.environ.get("OMNI_EDGE_CUDA_DEVICE", "0"))))
        ctx = check(drv.cuDevicePrimaryCtxRetain(device))
        check(drv.cuCtxSetCurrent(ctx))
    return ctx


def compute_capability() -> tuple[int, int]:
    drv = driver()
    current_context()
    device = check(drv.cuCtxGetDevice())
    attr = drv.CUdevice_attribute
    major = check(drv.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device))
    minor = check(drv.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device))
    return int(major), int(minor)


def new_stream():
    return check(driver().cuStreamCreate(0))


def destroy_stream(stream) -> None:
    """Destroy a stream if there is one; returns None for the caller's handle."""
    if stream is not None:
        check(driver().cuStreamDestroy(stream))


class DeviceResource:
    """Owns device memory or streams: freed by close() (idempotent), or on leaving a `with` block."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class DeviceTensor:
    """A tensor in device memory, fed to an engine or kept from one without a host copy."""

    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype


class DeviceBuffer:
    """Grow-only device allocation for one tensor, reused across runs."""

    def __init__(self):
        self.ptr, self.capacity = 0, 0

    def reserve(self, nbytes: int) -> int:
        nbytes = max(nbytes, 1)
        if nbytes > self.capacity:
            self.free()
            self.ptr, self.capacity = int(check(driver().cuMemAlloc(nbytes))), nbytes
        return self.ptr

    def free(self) -> None:
        if self.ptr:
            check(driver().cuMemFree(self.ptr))
            self.ptr, self.capacity = 0, 0
