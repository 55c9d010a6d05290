"""Each kernel's plain-op path in PyTorch eager: the micro-benchmark's baseline where ONNX Runtime has no GPU.

The plain-op graphs (plain_graphs.py) run on a GPU through onnxruntime-gpu. Where only PyTorch has CUDA
(the GPU machines lent here have no onnxruntime-gpu), the same unfused ops in PyTorch stand in for them:
one launch per op, as the graphs have one node per op. Each function mirrors its numpy reference
(reference.py) op for op, and the tests check that on the CPU. torch is imported by the caller.
"""

from __future__ import annotations

from collections.abc import Sequence

from omni_edge.kernels import reference as R
from omni_edge.kernels.errors import KernelError


def _rotate_half(x):
    import torch

    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def tmrope(q, k, positions, head_dim: int, mrope_section: Sequence[int], theta: float):
    """q [B, H, S, D], k [B, Hkv, S, D], positions [3, B, S] int -> rotated q, k (as R.tmrope)."""
    import torch

    inv = torch.from_numpy(R.inv_freq(head_dim, theta)).to(q.device)
    axes = torch.from_numpy(R.section_axes(head_dim, mrope_section)).to(q.device)
    freqs = positions.to(torch.float32)[..., None] * inv  # [3, B, S, half]
    chosen = torch.gather(freqs, 0, axes.view(1, 1, 1, -1).expand(1, *freqs.shape[1:]))[0]
    emb = torch.cat([chosen, chosen], dim=-1)
    cos, sin = emb.cos()[:, None], emb.sin()[:, None]  # broadcast over heads
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def ode_step(y, dit_out, ks, dt: float, scale: float, stage: int):
    """The fused ODE kernel's work as separate ops (as R.ode_step): returns (state, ks')."""
    if stage not in R.ODE_STAGES:
        raise KernelError(f"ODE stage must be one of {R.ODE_STAGES} (0 = Euler, 1..4 = RK4), got {stage}")
    v = dit_out[0] + (dit_out[0] - dit_out[1]) * scale
    ks = ks.clone()
    if stage == 0:
        return y + dt * v, ks
    third = 1 / 3
    if stage < 4:
        ks[stage - 1] = v
        if stage == 1:
            return y + dt * ks[0] * third, ks
        if stage == 2:
            return y + dt * (ks[1] - ks[0] * third), ks
        return y + dt * (ks[0] - ks[1] + ks[2]), ks
    return y + (ks[0] + 3 * (ks[1] + ks[2]) + v) * dt / 8, ks


def stitch(out, window, src_start: int, dst_start: int, length: int):
    """out[:, dst:dst+length] = window[:, src:src+length], in place (as R.stitch_window)."""
    R.check_stitch(tuple(out.shape), tuple(window.shape), src_start, dst_start, length)
    out[:, dst_start : dst_start + length].copy_(window[:, src_start : src_start + length])
    return out
