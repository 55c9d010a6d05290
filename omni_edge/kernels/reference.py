"""numpy references for the custom kernels: what each CUDA kernel and TensorRT plugin must compute.

Pure numpy, no torch: the runtime and the GPU tests both use these. Each function mirrors the transformers
code the exported graphs were verified against (tests/test_kernels.py checks that link):
- TMRoPE: `Qwen2_5OmniRotaryEmbedding` (inv_freq, mrope_section recomposition) + `apply_rotary_pos_emb`.
- ODE: `RungeKutta4ODESolver._rk4_step` (torchdiffeq's 3/8-rule RK4) and the CFG combine in
  `Qwen2_5OmniToken2WavDiTModel.sample`.
- Stitching: the hard-cut windowing of Qwen's streaming code2wav (no crossfade).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from omni_edge.kernels.errors import KernelError

# --------------------------------------------------------------------------------------------- TMRoPE


def inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """[head_dim/2] float32 inverse frequencies, computed in float32 like transformers does.

    The CUDA kernel receives this exact table from the host (not a device-side powf) so that the
    rotation angle `pos * inv_freq[j]` is bit-identical to the reference for every position. numpy's
    float32 pow can differ from torch's by 1 ulp on a few entries; the transformers test bounds that.
    """
    exponent = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    return (np.float32(1.0) / (np.float32(theta) ** exponent)).astype(np.float32)


def section_axes(head_dim: int, mrope_section: Sequence[int]) -> np.ndarray:
    """[head_dim/2] axis (0 = time, 1 = height, 2 = width) that frequency j takes its position from."""
    sections = [int(s) for s in mrope_section]
    if len(sections) != 3 or sum(sections) != head_dim // 2 or head_dim % 2:
        raise KernelError(
            f"mrope_section {sections} must have 3 entries summing to head_dim/2 = {head_dim // 2}; "
            "take both from the text config (rope_parameters.mrope_section, head_dim)"
        )
    return np.repeat(np.arange(3), sections)


def tmrope_cos_sin(
    positions: np.ndarray, head_dim: int, mrope_section: Sequence[int], theta: float
) -> tuple[np.ndarray, np.ndarray]:
    """positions [3, S] (or [3, B, S]) int -> cos, sin [S, head_dim] (or [B, S, head_dim]) float32."""
    positions = np.asarray(positions)
    if positions.shape[0] != 3:
        raise KernelError(f"positions must have 3 rows (t, h, w), got shape {positions.shape}")
    axes = section_axes(head_dim, mrope_section)
    freqs = positions.astype(np.float32)[..., None] * inv_freq(head_dim, theta)  # [3, ..., half]
    chosen = np.take_along_axis(freqs, axes.reshape((1,) * (freqs.ndim - 1) + (-1,)), axis=0)[0]
    emb = np.concatenate([chosen, chosen], axis=-1)
    return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)


def rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_tmrope(q: np.ndarray, k: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """q [B, H, S, D], k [B, Hkv, S, D]; cos/sin [S, D] or [B, S, D] -> rotated q, k in float32."""
    cos = np.asarray(cos, np.float32)
    sin = np.asarray(sin, np.float32)
    if cos.ndim == 2:
        cos, sin = cos[None], sin[None]
    cos, sin = cos[:, None], sin[:, None]  # broadcast over heads, as apply_rotary_pos_emb(unsqueeze_dim=1)
    q32, k32 = np.asarray(q, np.float32), np.asarray(k, np.float32)
    return q32 * cos + rotate_half(q32) * sin, k32 * cos + rotate_half(k32) * sin


def tmrope(
    q: np.ndarray, k: np.ndarray, positions: np.ndarray, head_dim: int, mrope_section: Sequence[int], theta: float
) -> tuple[np.ndarray, np.ndarray]:
    """What the TMRoPE kernel/plugin computes: positions [3, B, S] -> rotated q, k (float32)."""
    cos, sin = tmrope_cos_sin(positions, head_dim, mrope_section, theta)
    return apply_tmrope(q, k, cos, sin)


# ------------------------------------------------------------------------------ flow-matching ODE step

# Stage ids of the fused ODE kernel: 0 = Euler step; 1..3 = RK4 stage (the DiT output passed in is k_s,
# the result is the next DiT input); 4 = RK4 final update.
ODE_STAGES = (0, 1, 2, 3, 4)


def cfg_velocity(v_cond: np.ndarray, v_uncond: np.ndarray, scale: float) -> np.ndarray:
    """Classifier-free guidance as the DiT sampler writes it: v_c + (v_c - v_u) * scale."""
    return v_cond + (v_cond - v_uncond) * np.float32(scale)


def rk4_stage_state(y: np.ndarray, ks: Sequence[np.ndarray], dt: float, stage: int) -> np.ndarray:
    """The state fed to the next DiT call after stage 1, 2 or 3 (ks = [k1, ..., k_stage]).

    Operation order follows RungeKutta4ODESolver._rk4_step so float32 rounding matches.
    """
    dt = np.float32(dt)
    third = np.float32(1 / 3)
    if stage == 1:
        return y + dt * ks[0] * third
    if stage == 2:
        return y + dt * (ks[1] - ks[0] * third)
    if stage == 3:
        return y + dt * (ks[0] - ks[1] + ks[2])
    raise KernelError(f"rk4 stage must be 1, 2 or 3 to feed the next DiT call, got {stage}")


def rk4_update(y: np.ndarray, k1: np.ndarray, k2: np.ndarray, k3: np.ndarray, k4: np.ndarray, dt: float) -> np.ndarray:
    """y at the end of the interval: y + (k1 + 3 (k2 + k3) + k4) dt / 8 (3/8-rule RK4)."""
    return y + (k1 + np.float32(3) * (k2 + k3) + k4) * np.float32(dt) / np.float32(8)


def euler_update(y: np.ndarray, v: np.ndarray, dt: float) -> np.ndarray:
    return y + np.float32(dt) * v


def ode_step(
    y: np.ndarray, dit_out: np.ndarray, ks: np.ndarray, dt: float, scale: float, stage: int
) -> tuple[np.ndarray, np.ndarray]:
    """The fused ODE kernel: CFG-combine the batch-2 DiT output, store k_stage, return the next state.

    y [...], dit_out [2, ...] (cond, uncond), ks [3, ...] (k1..k3 so far). Returns (state, ks'):
    stage 0 is an Euler step (ks unchanged); stages 1..3 return the next DiT input; stage 4 returns y
    at the end of the RK4 interval.
    """
    if stage not in ODE_STAGES:
        raise KernelError(f"ODE stage must be one of {ODE_STAGES} (0 = Euler, 1..4 = RK4), got {stage}")
    v = cfg_velocity(dit_out[0], dit_out[1], scale)
    ks = np.array(ks, np.float32, copy=True)
    if stage == 0:
        return euler_update(y, v, dt), ks
    if stage < 4:
        ks[stage - 1] = v
        return rk4_stage_state(y, list(ks[:stage]), dt, stage), ks
    return rk4_update(y, ks[0], ks[1], ks[2], v, dt), ks


def ode_euler_step(y: np.ndarray, dit_out: np.ndarray, dt: float, scale: float) -> np.ndarray:
    return euler_update(y, cfg_velocity(dit_out[0], dit_out[1], scale), dt)


# ------------------------------------------------------------------------------------------ stitching


def check_stitch(out_shape: tuple, window_shape: tuple, src_start: int, dst_start: int, length: int) -> None:
    """Shared bounds check for the reference and the CUDA launcher: a bad window is a caller bug."""
    if len(out_shape) != 2 or len(window_shape) != 2 or out_shape[0] != window_shape[0]:
        raise KernelError(
            f"stitch needs out [C, T_total] and window [C, T_win] with the same C, got {out_shape} and {window_shape}"
        )
    if length < 0 or src_start < 0 or dst_start < 0:
        raise KernelError(f"stitch offsets must be >= 0, got src={src_start} dst={dst_start} len={length}")
    if src_start + length > window_shape[1] or dst_start + length > out_shape[1]:
        raise KernelError(
            f"stitch slice [{src_start}, {src_start + length}) -> [{dst_start}, "
            f"{dst_start + length}) does not fit window {window_shape} / output {out_shape}"
        )


def stitch_window(out: np.ndarray, window: np.ndarray, src_start: int, dst_start: int, length: int) -> np.ndarray:
    """Copy window[:, src:src+length] into out[:, dst:dst+length] (in place) and return out.

    Hard cut, no crossfade: Qwen's streaming code2wav tiles the timeline exactly with the kept slices.
    """
    check_stitch(out.shape, window.shape, src_start, dst_start, length)
    out[:, dst_start : dst_start + length] = window[:, src_start : src_start + length]
    return out
