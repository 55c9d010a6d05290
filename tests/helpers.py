"""Helpers shared by several test files: the CLI run and its one-line error contract, bf16 bit patterns, and an
onnx reference implementation of the TMRoPE plugin node. Test files import these from here, never from one
another, so a test module's fixtures and module-level state stay its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

BIN = Path(sys.executable).parent


def cli(name: str, *args: str, cache_dir: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if cache_dir is not None:
        env["OMNI_EDGE_CACHE"] = str(cache_dir)
    return subprocess.run([str(BIN / name), *args], capture_output=True, text=True, env=env, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # round to nearest even
    return rounded.astype(np.uint16)


def from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def tmrope_plugin_op():
    """onnx.reference implementation of the plugin node, computed by the numpy reference."""
    from onnx.reference.op_run import OpRun

    from omni_edge.kernels import reference as R
    from omni_edge.kernels.graph_rewrite import PLUGIN_DOMAIN

    class OmniEdgeTMRoPE(OpRun):
        op_domain = PLUGIN_DOMAIN

        def _run(self, q, k, positions, head_dim=None, mrope_section=None, theta=None, plugin_version=None):
            q_out, k_out = R.tmrope(q, k, positions, head_dim, mrope_section, theta)
            return q_out.astype(q.dtype), k_out.astype(k.dtype)

    return OmniEdgeTMRoPE


def hf_greedy(hf_model, ids: list[int], new_tokens: int, **generate_kwargs) -> list[int]:
    """transformers' greedy Thinker tokens after `ids`; media and flags go to generate as they are."""
    import torch

    input_ids = torch.tensor([ids])
    with torch.no_grad():
        out = hf_model.thinker.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=new_tokens,
            do_sample=False,
            **generate_kwargs,
        )
    return out[0, len(ids) :].tolist()


def hf_audio_tower(hf_model, mel: np.ndarray) -> np.ndarray:
    """transformers' audio tower on one log-mel clip [mel_bins, frames]."""
    import torch

    with torch.no_grad():
        return hf_model.thinker.model.audio_tower(
            input_features=torch.tensor(mel), feature_lens=torch.tensor([mel.shape[1]])
        ).last_hidden_state.numpy()
