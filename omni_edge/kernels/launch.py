"""Load the compiled kernels with cuda-python's driver API and launch them on a caller's stream.

The driver calls come from the runtime's CUDA module (omni_edge.runtime.cuda), which imports CUDA on first
use, so the package imports on machines without cuda-python or a GPU. Every launch takes raw device pointers (ints) and a stream handle
(int), which is what TensorRT's plugin `enqueue` hands over, so plugins and the runtime share one path.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

from omni_edge.kernels import build as kbuild
from omni_edge.kernels.errors import KernelError
from omni_edge.kernels.reference import ODE_STAGES, check_stitch, inv_freq, section_axes
from omni_edge.runtime.cuda import check, compute_capability, current_context, driver

TMROPE_MAX_HALF = 128  # keep equal to TMROPE_MAX_HALF in tmrope.cu
TMROPE_DTYPES = {"float32": "tmrope_f32", "float16": "tmrope_f16", "bfloat16": "tmrope_bf16"}

_modules: dict[tuple[int, str], object] = {}  # (context handle, kernel) -> CUmodule
_functions: dict[tuple[int, str, str], object] = {}


def kernel_dir() -> Path:
    """Where the cubin/PTX images are: $OMNI_EDGE_KERNEL_DIR (prebuilt), else build into the cache."""
    prebuilt = os.environ.get("OMNI_EDGE_KERNEL_DIR")
    if prebuilt:
        return Path(prebuilt)
    return Path(kbuild.build(kbuild.default_cache_dir()).out_dir)


def select_image(directory: Path, kernel: str, capability: tuple[int, int]) -> Path:
    """The cubin for this GPU, else a same-major cubin for an older minor, else the PTX (JIT-compiled).

    A cubin runs only on its own major version with an equal or newer minor (sm_87 on 8.7 and 8.9,
    sm_100 on 10.x, sm_120 on 12.x); PTX runs on anything at least as new as its target.
    """
    major, minor = capability
    exact = directory / f"{kernel}.sm_{major}{minor}.cubin"
    if exact.exists():
        return exact
    same_major = sorted(
        (int(p.name.split(".sm_")[1].split(".")[0]), p) for p in directory.glob(f"{kernel}.sm_{major}*.cubin")
    )
    older = [p for sm, p in same_major if sm // 10 == major and sm % 10 <= minor]
    if older:
        return older[-1]
    for ptx in sorted(directory.glob(f"{kernel}.compute_*.ptx")):
        target = int(ptx.name.split(".compute_")[1].split(".")[0])
        if (target // 10, target % 10) <= (major, minor):
            return ptx
    raise KernelError(
        f"no {kernel} image in {directory} runs on compute capability {major}.{minor}; "
        "rebuild with `python -m omni_edge.kernels.build --arch "
        f"{major}{minor} --out DIR`"
    )


def function(kernel: str, name: str):
    """CUfunction `name` from kernel image `kernel` ("tmrope", "audio_decode") in the current context."""
    ctx = int(current_context())
    key = (ctx, kernel, name)
    if key not in _functions:
        if (ctx, kernel) not in _modules:
            image = select_image(kernel_dir(), kernel, compute_capability())
            data = image.read_bytes() + (b"\0" if image.suffix == ".ptx" else b"")  # PTX must end in NUL
            try:
                _modules[(ctx, kernel)] = check(driver().cuModuleLoadData(data))
            except KernelError as exc:
                raise KernelError(
                    f"{exc} loading {image.name}: a cubin/PTX from a newer CUDA toolkit than "
                    "the driver supports fails here; build with the device's toolkit"
                ) from None
        _functions[key] = check(driver().cuModuleGetFunction(_modules[(ctx, kernel)], name.encode()))
    return _functions[key]


def _launch(fn, grid: tuple[int, int, int], block: tuple[int, int, int], args: list, stream: int) -> None:
    """cuLaunchKernel with kernelParams as a void*[] of pointers to ctypes values (kept alive here)."""
    pointers = (ctypes.c_void_p * len(args))(*[ctypes.addressof(a) for a in args])
    drv = driver()
    check(drv.cuLaunchKernel(fn, *grid, *block, 0, drv.CUstream(int(stream)), ctypes.addressof(pointers), 0))


def _grid_1d(n: int, block: int = 256) -> tuple[int, int, int]:
    return (max(1, min((n + block - 1) // block, 65535 * 4)), 1, 1)  # grid-stride loops cover the rest


# ------------------------------------------------------------------------------------------- TMRoPE


class TmropeParams(ctypes.Structure):
    """Mirror of `struct TmropeParams` in tmrope.cu, passed to the kernel by value."""

    _fields_ = [
        ("inv_freq", ctypes.c_float * TMROPE_MAX_HALF),
        ("section_end0", ctypes.c_int),
        ("section_end1", ctypes.c_int),
        ("half", ctypes.c_int),
        ("batch", ctypes.c_int),
        ("seq", ctypes.c_int),
        ("q_heads", ctypes.c_int),
        ("k_heads", ctypes.c_int),
    ]


@dataclass(frozen=True)
class TmropeShape:
    batch: int
    q_heads: int
    k_heads: int
    seq: int
    head_dim: int


def tmrope_params(shape: TmropeShape, mrope_section, theta: float) -> TmropeParams:
    half = shape.head_dim // 2
    if half > TMROPE_MAX_HALF:
        raise KernelError(f"head_dim {shape.head_dim} is above the kernel's limit {2 * TMROPE_MAX_HALF}")
    section_axes(shape.head_dim, mrope_section)  # validates the sections
    params = TmropeParams()
    table = inv_freq(shape.head_dim, theta)
    ctypes.memmove(params.inv_freq, table.ctypes.data, table.nbytes)
    params.section_end0 = int(mrope_section[0])
    params.section_end1 = int(mrope_section[0]) + int(mrope_section[1])
    params.half, params.batch, params.seq = half, shape.batch, shape.seq
    params.q_heads, params.k_heads = shape.q_heads, shape.k_heads
    return params


def launch_tmrope(
    q: int,
    k: int,
    positions: int,
    q_out: int,
    k_out: int,
    shape: TmropeShape,
    mrope_section,
    theta: float,
    dtype: str = "float32",
    stream: int = 0,
) -> None:
    """Rotate q [B, Hq, S, D] and k [B, Hk, S, D] by positions [3, B, S] int32 (device pointers)."""
    if dtype not in TMROPE_DTYPES:
        raise KernelError(f"tmrope dtype must be one of {sorted(TMROPE_DTYPES)}, got {dtype}")
    params = tmrope_params(shape, mrope_section, theta)
    half = shape.head_dim // 2
    block_x = min(half, 128)
    block_y = max(1, min(shape.q_heads + shape.k_heads, 256 // block_x))
    args = [
        ctypes.c_void_p(q),
        ctypes.c_void_p(k),
        ctypes.c_void_p(positions),
        ctypes.c_void_p(q_out),
        ctypes.c_void_p(k_out),
        params,
    ]
    _launch(
        function("tmrope", TMROPE_DTYPES[dtype]), (shape.batch * shape.seq, 1, 1), (block_x, block_y, 1), args, stream
    )


# ------------------------------------------------------------------------------- streaming audio decode


def launch_ode_step(
    y: int,
    dit_out: int,
    ks_in: int,
    ks_out: int,
    out: int,
    n: int,
    dt: float,
    scale: float,
    stage: int,
    stream: int = 0,
) -> None:
    """Fused CFG + ODE stage over n float32 elements: stage 0 Euler, 1..4 RK4 (see audio_decode.cu)."""
    if stage not in ODE_STAGES:
        raise KernelError(f"ODE stage must be one of {ODE_STAGES}, got {stage}")
    args = [
        ctypes.c_void_p(y),
        ctypes.c_void_p(dit_out),
        ctypes.c_void_p(ks_in),
        ctypes.c_void_p(ks_out),
        ctypes.c_void_p(out),
        ctypes.c_longlong(n),
        ctypes.c_float(dt),
        ctypes.c_float(scale),
        ctypes.c_int(stage),
    ]
    _launch(function("audio_decode", "ode_step_f32"), _grid_1d(n), (256, 1, 1), args, stream)


def launch_ode_step_dev(
    y: int, dit_out: int, ks_in: int, ks_out: int, out: int, n: int, dt: int, scale: float, stage: int, stream: int = 0
) -> None:
    """Same as launch_ode_step with dt (float32) and stage (int32) read from device memory."""
    args = [
        ctypes.c_void_p(y),
        ctypes.c_void_p(dit_out),
        ctypes.c_void_p(ks_in),
        ctypes.c_void_p(ks_out),
        ctypes.c_void_p(out),
        ctypes.c_longlong(n),
        ctypes.c_void_p(dt),
        ctypes.c_float(scale),
        ctypes.c_void_p(stage),
    ]
    _launch(function("audio_decode", "ode_step_dev_f32"), _grid_1d(n), (256, 1, 1), args, stream)


def launch_ode_euler(y: int, dit_out: int, out: int, n: int, dt: float, scale: float, stream: int = 0) -> None:
    args = [
        ctypes.c_void_p(y),
        ctypes.c_void_p(dit_out),
        ctypes.c_void_p(out),
        ctypes.c_longlong(n),
        ctypes.c_float(dt),
        ctypes.c_float(scale),
    ]
    _launch(function("audio_decode", "ode_euler_f32"), _grid_1d(n), (256, 1, 1), args, stream)


def launch_stitch(
    window: int,
    out: int,
    channels: int,
    win_len: int,
    out_len: int,
    src_start: int,
    dst_start: int,
    length: int,
    itemsize: int = 4,
    stream: int = 0,
) -> None:
    """out[:, dst:dst+length] = window[:, src:src+length] for [C, T] buffers of 4- or 2-byte elements."""
    check_stitch((channels, out_len), (channels, win_len), src_start, dst_start, length)
    name = {4: "stitch_f32", 2: "stitch_b16"}.get(itemsize)
    if name is None:
        raise KernelError(f"stitch copies 4- or 2-byte elements, got itemsize {itemsize}")
    args = [
        ctypes.c_void_p(window),
        ctypes.c_void_p(out),
        ctypes.c_int(channels),
        ctypes.c_longlong(win_len),
        ctypes.c_longlong(out_len),
        ctypes.c_longlong(src_start),
        ctypes.c_longlong(dst_start),
        ctypes.c_longlong(length),
    ]
    _launch(function("audio_decode", name), _grid_1d(channels * length), (256, 1, 1), args, stream)
