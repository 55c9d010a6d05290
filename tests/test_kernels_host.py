"""The CUDA kernels' own source, run on the CPU through the real Python launchers.

tests/host_kernels compiles tmrope.cu and audio_decode.cu with the host C++ compiler (the CUDA headers give
__half / __nv_bfloat16 their host conversions) and runs each launch's grid one thread at a time behind
cuLaunchKernel's calling convention. The launchers in omni_edge/kernels/launch.py (grid and block choice,
argument packing, the TmropeParams struct) drive it exactly as they drive a GPU; only the driver call is
swapped. That checks the kernels' indexing, section and stage logic, dtype conversions and the
Python-to-kernel ABI here, and the TensorRT plugins' enqueue (tensor descs and raw pointers in). It does
not check the device compiler or the GPU's math library: test_kernels_gpu.py does, on a GPU.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import from_bf16_bits, to_bf16_bits

from omni_edge.kernels import launch
from omni_edge.kernels import reference as R
from omni_edge.kernels.build import KERNEL_DIR

HARNESS = Path(__file__).parent / "host_kernels"
ROPE = dict(head_dim=128, mrope_section=(16, 24, 24), theta=1e6)


def _cuda_include() -> Path | None:
    """The CUDA toolkit's include directory (for cuda_fp16.h / cuda_bf16.h), if there is one."""
    candidates = [Path(os.environ["CUDA_HOME"]) / "include"] if os.environ.get("CUDA_HOME") else []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(Path(nvcc).resolve().parent.parent / "include")
    candidates.append(Path("/usr/local/cuda/include"))
    return next((c for c in candidates if (c / "cuda_fp16.h").exists()), None)


@pytest.fixture(scope="module")
def host_kernels(tmp_path_factory, monkeypatch_module):
    compiler, include = shutil.which("g++") or shutil.which("c++"), _cuda_include()
    if compiler is None or include is None:
        pytest.skip("needs a host C++ compiler and the CUDA headers (cuda_fp16.h) to build the kernels for the CPU")
    lib_path = tmp_path_factory.mktemp("host_kernels") / "kernels.so"
    command = [
        compiler,
        "-std=c++17",
        "-O1",
        "-shared",
        "-fPIC",
        "-ffp-contract=off",
        "-include",
        str(HARNESS / "shim.h"),
        f"-I{include}",
        f"-I{KERNEL_DIR}",
        str(HARNESS / "harness.cpp"),
        "-o",
        str(lib_path),
    ]
    built = subprocess.run(command, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    lib = ctypes.CDLL(str(lib_path))

    def run_on_host(fn, grid, block, args, stream):
        dims = (ctypes.c_uint * 6)(*grid, *block)
        pointers = (ctypes.c_void_p * len(args))(*[ctypes.addressof(a) for a in args])
        fn(dims, pointers)

    monkeypatch_module.setattr(launch, "function", lambda kernel, name: getattr(lib, f"run_{name}"))
    monkeypatch_module.setattr(launch, "_launch", run_on_host)
    return lib


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def _ptr(array: np.ndarray) -> int:
    return array.ctypes.data


# dtype -> (store, load, tolerance vs the float32 reference on the stored inputs). Measured on 28+4 heads:
# 4.8e-7 (float32: libm's sincosf vs numpy), 1.1e-3 and 1.2e-2 (the float16 / bfloat16 output rounding).
DTYPES = {
    "float32": (lambda x: x.astype(np.float32), lambda x: x, 2e-6),
    "float16": (lambda x: x.astype(np.float16), lambda x: x.astype(np.float32), 4e-3),
    "bfloat16": (to_bf16_bits, from_bf16_bits, 3e-2),
}


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("batch,q_heads,k_heads,seq", [(1, 4, 2, 1), (2, 3, 1, 7), (1, 28, 4, 3)])
def test_tmrope_kernel_on_host_matches_reference(host_kernels, dtype, batch, q_heads, k_heads, seq):
    store, load, atol = DTYPES[dtype]
    rng = np.random.default_rng(batch * 100 + seq)
    q = store(rng.standard_normal((batch, q_heads, seq, ROPE["head_dim"]), dtype=np.float32))
    k = store(rng.standard_normal((batch, k_heads, seq, ROPE["head_dim"]), dtype=np.float32))
    positions = rng.integers(0, 30000, (3, batch, seq)).astype(np.int32)  # t, h, w differ: sections matter
    q_out, k_out = np.zeros_like(q), np.zeros_like(k)
    shape = launch.TmropeShape(batch, q_heads, k_heads, seq, ROPE["head_dim"])
    launch.launch_tmrope(
        _ptr(q), _ptr(k), _ptr(positions), _ptr(q_out), _ptr(k_out), shape, ROPE["mrope_section"], ROPE["theta"], dtype
    )
    want_q, want_k = R.tmrope(load(q), load(k), positions, **ROPE)
    np.testing.assert_allclose(load(q_out), want_q, atol=atol, rtol=0)
    np.testing.assert_allclose(load(k_out), want_k, atol=atol, rtol=0)


@pytest.mark.parametrize("stage", R.ODE_STAGES)
def test_ode_kernels_on_host_match_reference(host_kernels, stage):
    rng = np.random.default_rng(stage)
    frames, mel = 37, 80  # n = 2960: more than one 256-thread block, fewer than the grid cap
    y = rng.standard_normal((frames, mel), dtype=np.float32)
    dit = rng.standard_normal((2, frames, mel), dtype=np.float32)
    ks = rng.standard_normal((3, frames, mel), dtype=np.float32)
    want_out, want_ks = R.ode_step(y, dit, ks, np.float32(0.07), 0.5, stage)
    # host scalars, into a separate ks buffer (as the TensorRT plugin writes)
    out, ks_out = np.zeros_like(y), np.zeros_like(ks)
    launch.launch_ode_step(_ptr(y), _ptr(dit), _ptr(ks), _ptr(ks_out), _ptr(out), y.size, 0.07, 0.5, stage)
    np.testing.assert_allclose(out, want_out, atol=2e-6, rtol=0)
    np.testing.assert_array_equal(ks_out, want_ks)
    # device scalars, ks updated in place (as the runtime's own ODE loop does)
    dt, stage_arg = np.array([0.07], np.float32), np.array([stage], np.int32)
    in_place, out = ks.copy(), np.zeros_like(y)
    launch.launch_ode_step_dev(
        _ptr(y), _ptr(dit), _ptr(in_place), _ptr(in_place), _ptr(out), y.size, _ptr(dt), 0.5, _ptr(stage_arg)
    )
    np.testing.assert_allclose(out, want_out, atol=2e-6, rtol=0)
    np.testing.assert_array_equal(in_place, want_ks)
    if stage == 0:
        euler = np.zeros_like(y)
        launch.launch_ode_euler(_ptr(y), _ptr(dit), _ptr(euler), y.size, 0.07, 0.5)
        np.testing.assert_allclose(euler, R.ode_euler_step(y, dit, np.float32(0.07), 0.5), atol=2e-6, rtol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_stitch_kernel_on_host_matches_reference(host_kernels, dtype):
    window = np.random.default_rng(5).standard_normal((80, 144)).astype(dtype)
    out = np.full((80, 500), 7, dtype)
    launch.launch_stitch(_ptr(window), _ptr(out), 80, 144, 500, 48, 300, 72, itemsize=window.itemsize)
    want = R.stitch_window(np.full((80, 500), 7, dtype), window, 48, 300, 72)
    np.testing.assert_array_equal(out, want)


# ------------------------------------------------------------------- the plugins' enqueue, on the host


@pytest.fixture(scope="module")
def plugin_types(host_kernels):
    from omni_edge.kernels import plugins
    from omni_edge.kernels.errors import KernelError

    try:
        trt = plugins.tensorrt()
    except KernelError as exc:
        pytest.skip(str(exc))
    return trt, plugins.plugin_classes(trt)


def _desc(trt, shape, dtype):
    desc = trt.PluginTensorDesc()
    desc.dims, desc.type = trt.Dims(list(shape)), dtype
    return desc


def test_tmrope_plugin_enqueue_on_host(plugin_types):
    """What TensorRT hands enqueue (tensor descs, raw pointers) reaches the kernel as the layout it expects."""
    trt, classes = plugin_types
    rng = np.random.default_rng(11)
    q = rng.standard_normal((2, 6, 5, ROPE["head_dim"]), dtype=np.float32).astype(np.float16)
    k = rng.standard_normal((2, 2, 5, ROPE["head_dim"]), dtype=np.float32).astype(np.float16)
    positions = rng.integers(0, 3000, (3, 2, 5)).astype(np.int32)
    q_out, k_out = np.zeros_like(q), np.zeros_like(k)
    plugin = classes["TMRoPEPlugin"](ROPE["head_dim"], ROPE["mrope_section"], ROPE["theta"])
    half, i32 = trt.DataType.HALF, trt.DataType.INT32
    inputs = [_desc(trt, q.shape, half), _desc(trt, k.shape, half), _desc(trt, positions.shape, i32)]
    plugin.enqueue(
        inputs,
        [_desc(trt, q.shape, half), _desc(trt, k.shape, half)],
        [_ptr(q), _ptr(k), _ptr(positions)],
        [_ptr(q_out), _ptr(k_out)],
        0,
        0,
    )
    want_q, want_k = R.tmrope(q.astype(np.float32), k.astype(np.float32), positions, **ROPE)
    np.testing.assert_allclose(q_out.astype(np.float32), want_q, atol=4e-3, rtol=0)
    np.testing.assert_allclose(k_out.astype(np.float32), want_k, atol=4e-3, rtol=0)


@pytest.mark.parametrize("stage", R.ODE_STAGES)
def test_audio_decode_plugin_enqueue_on_host(plugin_types, stage):
    trt, classes = plugin_types
    rng = np.random.default_rng(stage + 20)
    y = rng.standard_normal((24, 80), dtype=np.float32)
    dit = rng.standard_normal((2, 24, 80), dtype=np.float32)
    ks = rng.standard_normal((3, 24, 80), dtype=np.float32)
    dt, stage_arg = np.array([0.05], np.float32), np.array([stage], np.int32)
    out, ks_out = np.zeros_like(y), np.zeros_like(ks)
    f32, i32 = trt.DataType.FLOAT, trt.DataType.INT32
    inputs = [_desc(trt, a.shape, i32 if a is stage_arg else f32) for a in (y, dit, ks, dt, stage_arg)]
    plugin = classes["AudioDecodeStepPlugin"](0.5)
    plugin.enqueue(
        inputs,
        [_desc(trt, y.shape, f32), _desc(trt, ks.shape, f32)],
        [_ptr(a) for a in (y, dit, ks, dt, stage_arg)],
        [_ptr(out), _ptr(ks_out)],
        0,
        0,
    )
    want_out, want_ks = R.ode_step(y, dit, ks, np.float32(0.05), 0.5, stage)
    np.testing.assert_allclose(out, want_out, atol=2e-6, rtol=0)
    np.testing.assert_array_equal(ks_out, want_ks)
