"""Device buffers and stream timing over cuda-python, for the GPU tests and the micro-benchmark.

The runtime and TensorRT own their memory; this is only enough to move numpy arrays to and from a GPU
and time a launch with CUDA events.
"""

from __future__ import annotations

import numpy as np

from omni_edge.runtime.cuda import check, current_context, driver


class DeviceBuffer:
    """One cuMemAlloc'd buffer holding a copy of a numpy array (shape and dtype remembered)."""

    def __init__(self, array: np.ndarray):
        array = np.ascontiguousarray(array)
        current_context()
        self.shape, self.dtype = array.shape, array.dtype
        self.nbytes = max(array.nbytes, 1)
        self.ptr = int(check(driver().cuMemAlloc(self.nbytes)))
        if array.nbytes:
            check(driver().cuMemcpyHtoD(self.ptr, array.ctypes.data, array.nbytes))

    @classmethod
    def empty(cls, shape, dtype) -> DeviceBuffer:
        return cls(np.zeros(shape, dtype))

    def numpy(self) -> np.ndarray:
        out = np.empty(self.shape, self.dtype)
        if out.nbytes:
            check(driver().cuCtxSynchronize())
            check(driver().cuMemcpyDtoH(out.ctypes.data, self.ptr, out.nbytes))
        return out

    def free(self) -> None:
        if self.ptr:
            check(driver().cuMemFree(self.ptr))
            self.ptr = 0

    def __enter__(self) -> DeviceBuffer:
        return self

    def __exit__(self, *exc) -> None:
        self.free()


def time_launches(launch, iterations: int, warmup: int = 3, stream: int = 0) -> list[float]:
    """Milliseconds per call of `launch()` (which enqueues on `stream`), one CUDA event pair per call."""
    drv = driver()
    for _ in range(warmup):
        launch()
    start, stop = check(drv.cuEventCreate(0)), check(drv.cuEventCreate(0))
    samples = []
    try:
        for _ in range(iterations):
            check(drv.cuEventRecord(start, drv.CUstream(stream)))
            launch()
            check(drv.cuEventRecord(stop, drv.CUstream(stream)))
            check(drv.cuEventSynchronize(stop))
            samples.append(float(check(drv.cuEventElapsedTime(start, stop))))
    finally:
        check(drv.cuEventDestroy(start))
        check(drv.cuEventDestroy(stop))
    return samples
