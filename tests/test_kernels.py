"""Custom kernels: numpy references vs transformers, nvcc builds for every architecture, GPU numerics,
TensorRT plugin registration and the opt-in ONNX rewrite.

What needs what: references, plain graphs, image selection and the graph rewrite run everywhere; the
compile test needs nvcc; GPU numerics need a CUDA device and cuda-python; plugin tests need TensorRT's
Python package (`tensorrt`, or `tensorrt_rtx` for registration only).
"""

from __future__ import annotations

import os
import shutil
import struct
import time

import numpy as np
import pytest

from omni_edge.kernels import build as kbuild
from omni_edge.kernels import plain_graphs
from omni_edge.kernels import reference as R
from omni_edge.kernels.errors import KernelError

ROPE_7B = dict(head_dim=128, mrope_section=(16, 24, 24), theta=1e6)
EPS32 = float(np.finfo(np.float32).eps)
# Two float32 libms (numpy's SIMD paths, torch's, ONNX Runtime's, glibc) each round pow, cos and sin to within
# about 2 ulp of the true value, and which entries land on which side depends on the CPU (AVX-512 Xeons differ
# from AMD EPYCs). Tolerances below are built from that bound, never from one machine's ulp pattern.
LIBM_ULPS = 2


def _angle_error(positions: np.ndarray, head_dim: int, theta: float) -> np.ndarray:
    """[B, S, head_dim] bound on how far two float32 implementations' rotation angles can be apart.

    The angle is pos * inv_freq[j] in float32: inv_freq may differ by 2 x LIBM_ULPS ulp (pow on either side),
    which moves the angle by that relative amount, and each product is rounded once (half an ulp each side).
    Taken over the three axes, so it does not depend on the section mapping under test."""
    freq = theta ** (-np.arange(0, head_dim, 2) / head_dim)
    largest = positions.max(axis=0).astype(np.float64)[..., None] * np.concatenate([freq, freq])
    return 2 * LIBM_ULPS * EPS32 * largest + np.spacing(largest.astype(np.float32)).astype(np.float64)


def _rotation_tolerance(x: np.ndarray, angle_error) -> np.ndarray:
    """Per-element bound on |rot(x) - rot'(x)| for x * cos + rotate_half(x) * sin in float32, when the angles
    differ by at most `angle_error` and cos/sin, the products and the sum are each rounded on either side."""
    magnitude = np.abs(x) + np.abs(R.rotate_half(x))
    return magnitude * (np.asarray(angle_error) + 2 * (LIBM_ULPS + 2) * EPS32)


# ------------------------------------------------------------------------------------ references


def _rotary(text_config: dict):
    from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniTextConfig
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniRotaryEmbedding

    config = Qwen2_5OmniTextConfig(**text_config)
    return config, Qwen2_5OmniRotaryEmbedding(config)


def _text_configs():
    from omni_edge.export.tiny import tiny_config_dict

    tiny = tiny_config_dict()["thinker_config"]["text_config"]
    seven_b_like = dict(
        tiny,
        hidden_size=256,
        num_attention_heads=2,
        num_key_value_heads=1,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
    )
    return {"tiny": tiny, "7b_rope": seven_b_like}


@pytest.mark.parametrize("name", ["tiny", "7b_rope"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tmrope_reference_matches_transformers(name, seed):
    torch = pytest.importorskip("torch")
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import apply_rotary_pos_emb

    config, rotary = _rotary(_text_configs()[name])
    head_dim = config.hidden_size // config.num_attention_heads
    section, theta = config.rope_parameters["mrope_section"], config.rope_parameters["rope_theta"]
    rng = np.random.default_rng(seed)
    batch, seq = 2, 11
    positions = rng.integers(0, 32768, (3, batch, seq))  # includes large ids, where float32 angles matter
    cos_t, sin_t = rotary(torch.zeros(1), torch.from_numpy(positions))
    cos, sin = R.tmrope_cos_sin(positions, head_dim, section, theta)
    # numpy's and torch's float32 pow differ by an ulp on a few entries, which entries depending on the CPU.
    np.testing.assert_allclose(R.inv_freq(head_dim, theta), rotary.inv_freq.numpy(), rtol=2 * LIBM_ULPS * EPS32, atol=0)
    # What matters: the angles at the positions used (through cos and sin) and the rotated q and k. A wrong
    # section, axis or theta moves them by far more than float32 rounding of a 32k-position angle can.
    angle_error = _angle_error(positions, head_dim, theta)
    trig_tolerance = angle_error + LIBM_ULPS * EPS32
    assert np.all(np.abs(cos - cos_t.numpy()) <= trig_tolerance)
    assert np.all(np.abs(sin - sin_t.numpy()) <= trig_tolerance)
    q = torch.randn(batch, config.num_attention_heads, seq, head_dim, generator=torch.Generator().manual_seed(seed))
    k = torch.randn(batch, config.num_key_value_heads, seq, head_dim, generator=torch.Generator().manual_seed(seed + 9))
    q_ref, k_ref = apply_rotary_pos_emb(q, k, cos_t, sin_t)
    q_out, k_out = R.tmrope(q.numpy(), k.numpy(), positions, head_dim, section, theta)
    for ours, ref, x in ((q_out, q_ref, q), (k_out, k_ref, k)):
        assert np.all(np.abs(ours - ref.numpy()) <= _rotation_tolerance(x.numpy(), angle_error[:, None]))


def test_rotation_tolerance_still_catches_a_wrong_section():
    """The float32-derived tolerance is loose at 32k positions; it must still fail a real mapping error."""
    positions = np.random.default_rng(0).integers(0, 32768, (3, 2, 11))
    head_dim, theta = ROPE_7B["head_dim"], ROPE_7B["theta"]
    right, _ = R.tmrope_cos_sin(positions, head_dim, (16, 24, 24), theta)
    wrong, _ = R.tmrope_cos_sin(positions, head_dim, (24, 16, 24), theta)
    assert np.any(np.abs(right - wrong) > _angle_error(positions, head_dim, theta) + LIBM_ULPS * EPS32)


def test_tmrope_text_positions_equal_plain_rope():
    positions = np.broadcast_to(np.arange(7), (3, 7))
    cos, _ = R.tmrope_cos_sin(positions, 128, (16, 24, 24), 1e6)
    plain = np.arange(7, dtype=np.float32)[:, None] * R.inv_freq(128, 1e6)
    np.testing.assert_array_equal(cos, np.cos(np.concatenate([plain, plain], -1)).astype(np.float32))


def test_tmrope_rejects_bad_sections():
    with pytest.raises(KernelError, match="mrope_section"):
        R.tmrope_cos_sin(np.zeros((3, 4), np.int64), 128, (16, 24, 23), 1e6)


def _toy_dit(t: float, y: np.ndarray) -> np.ndarray:
    """A stand-in for the DiT on its CFG batch: row 0 conditioned, row 1 unconditioned."""
    cond = -0.7 * y + np.sin(3.0 * t + y)
    uncond = -0.2 * y + 0.1 * t
    return np.stack([cond, uncond]).astype(np.float32)


def _time_grid(steps: int = 10) -> np.ndarray:
    t = np.linspace(0, 1, steps, dtype=np.float32)
    return (t + np.float32(-1.0) * (np.cos(np.float32(np.pi / 2) * t) - 1 + t)).astype(np.float32)


def _integrate_with_kernel_semantics(y: np.ndarray, grid: np.ndarray, scale: float) -> np.ndarray:
    """The runtime loop the ODE kernel serves: 4 DiT calls per interval, each followed by ode_step."""
    ks = np.zeros((3,) + y.shape, np.float32)
    for t0, t1 in zip(grid[:-1], grid[1:]):
        dt = np.float32(t1 - t0)
        state = y
        for stage, t in zip((1, 2, 3, 4), (t0, t0 + dt / 3, t0 + 2 * dt / 3, t1)):
            state, ks = R.ode_step(y, _toy_dit(float(t), state), ks, dt, scale, stage)
        y = state
    return y


def test_rk4_reference_matches_transformers_solver():
    torch = pytest.importorskip("torch")
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import RungeKutta4ODESolver

    scale = 0.5
    y0 = np.random.default_rng(0).standard_normal((24, 80)).astype(np.float32)

    def ode_function(t, y):  # what Qwen2_5OmniToken2WavDiTModel.sample passes to the solver
        out = torch.from_numpy(_toy_dit(float(t), y.numpy()))
        cond, uncond = out[0], out[1]
        return cond + (cond - uncond) * scale

    grid = _time_grid()
    expected = RungeKutta4ODESolver(ode_function, torch.from_numpy(y0)).integrate(torch.from_numpy(grid))[-1]
    np.testing.assert_allclose(_integrate_with_kernel_semantics(y0, grid, scale), expected.numpy(), atol=2e-6, rtol=0)


def test_rk4_reference_matches_direct_numpy_rk4():
    """Against a textbook 3/8-rule RK4 in float64 over a toy f with a known solution (y' = -y)."""

    def f(t, y):
        return np.stack([-y, np.zeros_like(y)])  # cond = -y, uncond = 0 -> v = -y * (1 + scale)

    scale, y0 = 0.5, np.linspace(-1, 1, 80, dtype=np.float32)[None].repeat(3, 0)
    grid = np.linspace(0, 1, 21, dtype=np.float32)
    y, y64 = y0.copy(), y0.astype(np.float64)
    ks = np.zeros((3,) + y.shape, np.float32)
    g = lambda v: -(1 + scale) * v  # noqa: E731
    for t0, t1 in zip(grid[:-1], grid[1:]):
        h = float(t1) - float(t0)
        k1 = g(y64)
        k2 = g(y64 + h * k1 / 3)
        k3 = g(y64 + h * (k2 - k1 / 3))
        k4 = g(y64 + h * (k1 - k2 + k3))
        y64 = y64 + h * (k1 + 3 * (k2 + k3) + k4) / 8
        state = y
        for stage in (1, 2, 3, 4):
            state, ks = R.ode_step(y, f(0.0, state), ks, t1 - t0, scale, stage)
        y = state
    np.testing.assert_allclose(y, y64, atol=1e-6)
    np.testing.assert_allclose(y64, y0 * np.exp(-(1 + scale)), atol=1e-6)  # RK4 error ~ h^4


def test_euler_and_stage_checks():
    y = np.ones((2, 80), np.float32)
    dit = np.stack([np.full_like(y, 2.0), np.full_like(y, 1.0)])
    out, ks = R.ode_step(y, dit, np.zeros((3, 2, 80), np.float32), 0.25, 0.5, stage=0)
    np.testing.assert_array_equal(out, R.euler_update(y, R.cfg_velocity(dit[0], dit[1], 0.5), 0.25))
    np.testing.assert_array_equal(out, np.full_like(y, 1.0 + 0.25 * 2.5))
    assert not ks.any()
    with pytest.raises(KernelError, match="stage"):
        R.ode_step(y, dit, ks, 0.1, 0.5, stage=5)


def test_stitch_tiles_the_streaming_timeline():
    """Qwen's keep rule (first: chunk; middle: drop 48 past + 24 future; last: drop 48 past) tiles exactly."""
    rng = np.random.default_rng(0)
    total, chunk, past, future = 300, 72, 48, 24
    truth = rng.standard_normal((80, total)).astype(np.float32)
    out = np.zeros_like(truth)
    i = 0
    while i * chunk < total:
        start, stop = max(i * chunk - past, 0), min((i + 1) * chunk + future, total)
        window = truth[:, start:stop]  # what the DiT produced for this window (here: the truth)
        keep_from = i * chunk - start
        length = min(chunk, total - i * chunk)
        R.stitch_window(out, window, keep_from, i * chunk, length)
        i += 1
    np.testing.assert_array_equal(out, truth)
    with pytest.raises(KernelError, match="does not fit"):
        R.stitch_window(out, truth[:, :10], 5, 0, 6)


def test_plain_graphs_match_reference():
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(3)

    def run(model, feeds):
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)

    q = rng.standard_normal((2, 4, 9, 128), dtype=np.float32)
    k = rng.standard_normal((2, 2, 9, 128), dtype=np.float32)
    pos = rng.integers(0, 20000, (3, 2, 9)).astype(np.int32)
    got = run(plain_graphs.tmrope_graph(q_heads=4, k_heads=2, **ROPE_7B), {"q": q, "k": k, "positions": pos})
    for a, b, x in zip(got, R.tmrope(q, k, pos, **ROPE_7B), (q, k)):
        # the same inv_freq table and products: only ONNX Runtime's cos/sin and rounding differ from numpy's
        assert np.all(np.abs(a - b) <= _rotation_tolerance(x, 0.0))
    y = rng.standard_normal((144, 80), dtype=np.float32)
    dit = rng.standard_normal((2, 144, 80), dtype=np.float32)
    ks = rng.standard_normal((3, 144, 80), dtype=np.float32)
    for stage in R.ODE_STAGES:
        got = run(
            plain_graphs.ode_step_graph(stage, 0.5),
            {"y": y, "dit_out": dit, "ks": ks, "dt": np.array([0.07], np.float32)},
        )
        for a, b in zip(got, R.ode_step(y, dit, ks, np.float32(0.07), 0.5, stage)):
            np.testing.assert_array_equal(a, b)
    window = rng.standard_normal((80, 144), dtype=np.float32)
    np.testing.assert_array_equal(run(plain_graphs.stitch_graph(48, 72), {"window": window})[0], window[:, 48:120])


def test_torch_baselines_match_reference():
    """The micro-benchmark's PyTorch baselines compute what the kernels do (checked on the CPU)."""
    torch = pytest.importorskip("torch")
    from omni_edge.kernels import torch_baseline as T

    rng = np.random.default_rng(4)
    q = rng.standard_normal((2, 4, 9, 128), dtype=np.float32)
    k = rng.standard_normal((2, 2, 9, 128), dtype=np.float32)
    pos = rng.integers(0, 20000, (3, 2, 9)).astype(np.int32)
    got = T.tmrope(torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(pos), **ROPE_7B)
    for a, b, x in zip(got, R.tmrope(q, k, pos, **ROPE_7B), (q, k)):
        # the same inv_freq table and products: only torch's cos/sin and rounding differ from numpy's
        assert np.all(np.abs(a.numpy() - b) <= _rotation_tolerance(x, 0.0))
    y = rng.standard_normal((144, 80), dtype=np.float32)
    dit = rng.standard_normal((2, 144, 80), dtype=np.float32)
    ks = rng.standard_normal((3, 144, 80), dtype=np.float32)
    for stage in R.ODE_STAGES:
        got = T.ode_step(torch.from_numpy(y), torch.from_numpy(dit), torch.from_numpy(ks), 0.07, 0.5, stage)
        for a, b in zip(got, R.ode_step(y, dit, ks, np.float32(0.07), 0.5, stage)):
            np.testing.assert_array_equal(a.numpy(), b)  # same ops in the same order
    window = rng.standard_normal((80, 144), dtype=np.float32)
    out = T.stitch(torch.zeros(80, 500), torch.from_numpy(window), 48, 100, 72)
    np.testing.assert_array_equal(out.numpy(), R.stitch_window(np.zeros((80, 500), np.float32), window, 48, 100, 72))
    with pytest.raises(KernelError, match="does not fit"):
        T.stitch(torch.zeros(80, 500), torch.from_numpy(window), 100, 0, 72)


# ---------------------------------------------------------------------------------------- nvcc


@pytest.fixture(scope="session")
def kernel_build(tmp_path_factory):
    """One build per session; $OMNI_EDGE_KERNEL_CACHE lets CI reuse it across runs."""
    if (
        shutil.which("nvcc") is None
        and not (kbuild.Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "nvcc").exists()
    ):
        pytest.skip("nvcc not found (install the CUDA toolkit to compile the kernels)")
    out = os.environ.get("OMNI_EDGE_KERNEL_CACHE") or tmp_path_factory.mktemp("kernels")
    start = time.perf_counter()
    result = kbuild.build(out)
    print(f"\nkernel build: {result.compiled} nvcc runs in {time.perf_counter() - start:.1f}s ({result.out_dir})")
    return result


ENTRY_POINTS = {
    "tmrope": ("tmrope_f32", "tmrope_f16", "tmrope_bf16"),
    "audio_decode": ("ode_step_f32", "ode_step_dev_f32", "ode_euler_f32", "stitch_f32", "stitch_b16"),
}


def test_nvcc_compiles_every_kernel_for_every_architecture(kernel_build):
    assert {a.kernel for a in kernel_build.artifacts} == set(kbuild.KERNELS)
    for kernel in kbuild.KERNELS:
        for arch in kbuild.ARCHITECTURES:
            data = kernel_build.path(kernel, f"sm_{arch}").read_bytes()
            assert data[:4] == b"\x7fELF"
            # CUDA cubins store the SM number in bits 8..15 of the ELF header's e_flags.
            assert (struct.unpack_from("<I", data, 48)[0] >> 8) & 0xFF == int(arch), (kernel, arch)
            for entry in ENTRY_POINTS[kernel]:
                assert entry.encode() + b"\0" in data, (kernel, arch, entry)
        ptx = kernel_build.path(kernel, f"compute_{kbuild.PTX_ARCHITECTURE}").read_text()
        assert f".target sm_{kbuild.PTX_ARCHITECTURE}" in ptx
        assert all(f".entry {entry}(" in ptx for entry in ENTRY_POINTS[kernel])
    again = kbuild.build(kbuild.Path(kernel_build.out_dir).parent)
    assert again.compiled == 0 and again.out_dir == kernel_build.out_dir


def test_build_reports_missing_nvcc(monkeypatch):
    monkeypatch.setattr(kbuild.shutil, "which", lambda name: None)
    monkeypatch.setenv("CUDA_HOME", "/nonexistent")
    with pytest.raises(KernelError, match="nvcc not found"):
        kbuild.find_nvcc()


def test_select_image_prefers_cubin_then_same_major_then_ptx(tmp_path):
    from omni_edge.kernels.launch import select_image

    for name in ("k.sm_87.cubin", "k.sm_90.cubin", "k.sm_100.cubin", "k.sm_120.cubin", "k.compute_87.ptx"):
        (tmp_path / name).write_bytes(b"x")
    assert select_image(tmp_path, "k", (8, 7)).name == "k.sm_87.cubin"
    assert select_image(tmp_path, "k", (8, 9)).name == "k.sm_87.cubin"  # same major, older minor
    assert select_image(tmp_path, "k", (10, 3)).name == "k.sm_100.cubin"
    assert select_image(tmp_path, "k", (12, 1)).name == "k.sm_120.cubin"
    assert select_image(tmp_path, "k", (13, 0)).name == "k.compute_87.ptx"  # a future GPU: JIT the PTX
    with pytest.raises(KernelError, match="compute capability 7.5"):
        select_image(tmp_path, "k", (7, 5))
