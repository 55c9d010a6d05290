"""Micro-benchmark: each custom kernel against the plain-op graph it replaces, on the same GPU.

    python -m omni_edge.kernels.bench [--iterations N]

Returns/prints plain dicts. Kernel figures come from CUDA events around one launch (`gpu_p50_ms`) and
from wall time of launch + synchronize (`p50_ms`); the plain-op graph runs in ONNX Runtime's CUDA
execution provider with device-resident I/O binding (`plain`), and the same unfused ops run in PyTorch
eager on the GPU (`torch`, torch_baseline.py), both timed by wall time (`p50_ms`), so compare `p50_ms`
with `p50_ms`. Without a GPU (or without onnxruntime-gpu / CUDA PyTorch for a baseline) the entry says why.
Shapes: Thinker-7B attention (28 q / 4 kv heads, head_dim 128) at decode (S=1) and prefill (S=512);
one streaming DiT window (48 past + 72 chunk + 24 future = 144 mel frames x 80).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

import numpy as np

from omni_edge.kernels import launch, plain_graphs, torch_baseline
from omni_edge.kernels.errors import KernelError
from omni_edge.runtime.cuda import CudaError, cuda_device_status


@dataclass(frozen=True)
class RopeShape:
    """The 7B Thinker's attention: 28 query heads, 4 KV heads of 128, mrope sections 16/24/24."""

    q_heads: int = 28
    k_heads: int = 4
    head_dim: int = 128
    mrope_section: tuple[int, int, int] = (16, 24, 24)
    theta: float = 1e6


ROPE = RopeShape()
ROPE_SEQS = (1, 512)
WINDOW_FRAMES, MEL = 144, 80
STITCH = dict(channels=MEL, win_len=WINDOW_FRAMES, out_len=3000, src=48, dst=500, length=72)


def _p50(samples_ms: list[float]) -> float:
    return float(np.percentile(np.asarray(samples_ms), 50))


def _wall(fn, iterations: int, sync) -> list[float]:
    for _ in range(3):
        fn()
    sync()
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def _kernel_entry(launch_fn, iterations: int) -> dict:
    from omni_edge.kernels.device import time_launches

    drv = launch.driver()
    gpu = time_launches(launch_fn, iterations)
    wall = _wall(launch_fn, iterations, lambda: launch.check(drv.cuCtxSynchronize()))
    return {"p50_ms": _p50(wall), "gpu_p50_ms": _p50(gpu), "iterations": iterations}


def _plain_entry(model, feeds: dict, iterations: int) -> dict:
    """Time an ONNX graph in ONNX Runtime on the GPU with inputs and outputs kept on the device."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {"skipped": "onnxruntime is not installed"}
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return {"skipped": "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"}
    session = ort.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider"])
    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
    for output in session.get_outputs():
        binding.bind_output(output.name, "cuda")
    wall = _wall(lambda: session.run_with_iobinding(binding), iterations, binding.synchronize_outputs)
    return {"p50_ms": _p50(wall), "iterations": iterations}


def _torch_entry(fn, arrays: dict, iterations: int) -> dict:
    """Time `fn(tensors)` in PyTorch on the GPU, `arrays` copied to the device once as `tensors`."""
    try:
        import torch
    except ImportError:
        return {"skipped": "PyTorch is not installed"}
    if not torch.cuda.is_available():
        return {"skipped": "PyTorch has no CUDA device"}
    tensors = {name: torch.from_numpy(np.ascontiguousarray(a)).cuda() for name, a in arrays.items()}
    with torch.inference_mode():
        wall = _wall(lambda: fn(tensors), iterations, torch.cuda.synchronize)
    return {"p50_ms": _p50(wall), "iterations": iterations, "torch": torch.__version__}


def _bench_tmrope(seq: int, iterations: int) -> dict:
    from omni_edge.kernels.device import DeviceBuffer

    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, ROPE.q_heads, seq, ROPE.head_dim), dtype=np.float32)
    k = rng.standard_normal((1, ROPE.k_heads, seq, ROPE.head_dim), dtype=np.float32)
    pos = np.broadcast_to(np.arange(seq, dtype=np.int32), (3, 1, seq)).copy()
    bufs = [DeviceBuffer(a) for a in (q, k, pos, np.zeros_like(q), np.zeros_like(k))]
    ptrs = (bufs[0].ptr, bufs[1].ptr, bufs[2].ptr, bufs[3].ptr, bufs[4].ptr)  # q, k, positions, q_out, k_out
    shape = launch.TmropeShape(1, ROPE.q_heads, ROPE.k_heads, seq, ROPE.head_dim)
    try:
        kernel = _kernel_entry(
            lambda: launch.launch_tmrope(*ptrs, shape, ROPE.mrope_section, ROPE.theta),
            iterations,
        )
    finally:
        for b in bufs:
            b.free()
    graph = plain_graphs.tmrope_graph(ROPE.head_dim, ROPE.mrope_section, ROPE.theta, ROPE.q_heads, ROPE.k_heads)
    feeds = {"q": q, "k": k, "positions": pos}
    return {
        "kernel": kernel,
        "plain": _plain_entry(graph, feeds, iterations),
        "torch": _torch_entry(
            lambda t: torch_baseline.tmrope(
                t["q"], t["k"], t["positions"], ROPE.head_dim, ROPE.mrope_section, ROPE.theta
            ),
            feeds,
            iterations,
        ),
    }


def _bench_ode(iterations: int, stage: int = 4) -> dict:
    from omni_edge.kernels.device import DeviceBuffer

    rng = np.random.default_rng(0)
    y = rng.standard_normal((WINDOW_FRAMES, MEL), dtype=np.float32)
    dit = rng.standard_normal((2, WINDOW_FRAMES, MEL), dtype=np.float32)
    ks = rng.standard_normal((3, WINDOW_FRAMES, MEL), dtype=np.float32)
    bufs = [DeviceBuffer(a) for a in (y, dit, ks, np.zeros_like(ks), np.zeros_like(y))]
    ptrs = (bufs[0].ptr, bufs[1].ptr, bufs[2].ptr, bufs[3].ptr, bufs[4].ptr)  # y, dit_out, ks_in, ks_out, out
    try:
        kernel = _kernel_entry(lambda: launch.launch_ode_step(*ptrs, y.size, 0.1, 0.5, stage), iterations)
    finally:
        for b in bufs:
            b.free()
    feeds = {"y": y, "dit_out": dit, "ks": ks, "dt": np.array([0.1], np.float32)}
    return {
        "kernel": kernel,
        "plain": _plain_entry(plain_graphs.ode_step_graph(stage, 0.5, MEL), feeds, iterations),
        "torch": _torch_entry(
            lambda t: torch_baseline.ode_step(t["y"], t["dit_out"], t["ks"], 0.1, 0.5, stage),
            {"y": y, "dit_out": dit, "ks": ks},
            iterations,
        ),
    }


def _bench_stitch(iterations: int) -> dict:
    from omni_edge.kernels.device import DeviceBuffer

    s = STITCH
    window = np.random.default_rng(0).standard_normal((s["channels"], s["win_len"]), dtype=np.float32)
    bufs = [DeviceBuffer(window), DeviceBuffer(np.zeros((s["channels"], s["out_len"]), np.float32))]
    try:
        kernel = _kernel_entry(
            lambda: launch.launch_stitch(
                bufs[0].ptr, bufs[1].ptr, s["channels"], s["win_len"], s["out_len"], s["src"], s["dst"], s["length"]
            ),
            iterations,
        )
    finally:
        for b in bufs:
            b.free()
    out = np.zeros((s["channels"], s["out_len"]), np.float32)
    return {
        "kernel": kernel,
        "plain": _plain_entry(plain_graphs.stitch_graph(s["src"], s["length"]), {"window": window}, iterations),
        "torch": _torch_entry(
            lambda t: torch_baseline.stitch(t["out"], t["window"], s["src"], s["dst"], s["length"]),
            {"window": window, "out": out},
            iterations,
        ),
    }


def bench_kernels(iterations: int = 100) -> dict:
    """p50 latency of each kernel and of its plain-op graph; {"skipped": reason} without a GPU."""
    ok, device = cuda_device_status()
    if not ok:
        return {"skipped": device}
    try:
        results: dict[str, object] = {
            "device": device,
            "compute_capability": ".".join(map(str, launch.compute_capability())),
        }
        for seq in ROPE_SEQS:
            results[f"tmrope_s{seq}"] = _bench_tmrope(seq, iterations)
        results["ode_rk4_update"] = _bench_ode(iterations)
        results["stitch"] = _bench_stitch(iterations)
    except (KernelError, CudaError) as exc:
        return {"skipped": str(exc)}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=100)
    print(json.dumps(bench_kernels(parser.parse_args(argv).iterations), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
