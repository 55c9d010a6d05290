"""token2wav graphs: one DiT evaluation (both classifier-free-guidance branches) and the BigVGAN vocoder.

The flow-matching ODE, its time grid, the noise and the window bookkeeping all live in the runtime, so each
graph is a plain tensor function: the runtime calls dit_window 9 (Euler) or 36 (RK4) times per window.
"""

from __future__ import annotations

import torch
from torch import nn

DIT_INPUTS = ("noisy_mel", "codes", "speaker_cond", "reference_mel", "time")
DIT_OUTPUTS = ("velocity",)  # [2, T, mel]: conditioned, unconditioned
BIGVGAN_INPUTS = ("mel",)
BIGVGAN_OUTPUTS = ("waveform",)


class DiTStep(nn.Module):
    def __init__(self, dit):
        super().__init__()
        self.dit = dit

    def forward(self, noisy_mel, codes, speaker_cond, reference_mel, time):
        """noisy_mel [1,T,80], codes [1,T/2] int64, speaker_cond [1,E], reference_mel [1,R,80], time [1]."""
        frames = noisy_mel.shape[1]
        return self.dit(
            hidden_states=noisy_mel,
            condition_vector=reference_mel,
            speaker_embedding=speaker_cond.unsqueeze(1).expand(1, frames, speaker_cond.shape[1]),
            quantized_code=codes,
            time_step=time,
            apply_cfg=True,
        )


class BigVGANStep(nn.Module):
    """The vocoder up to its clamp; transformers' trailing squeeze().cpu() is left to the host."""

    def __init__(self, bigvgan):
        super().__init__()
        self.vocoder = bigvgan

    def forward(self, mel):
        v = self.vocoder
        hidden = v.conv_pre(v.process_mel_spectrogram(mel))
        for index in range(v.num_upsample_layers):
            hidden = v.ups[index][0](hidden)
            blocks = [v.resblocks[index * v.num_residual_blocks + b](hidden) for b in range(v.num_residual_blocks)]
            hidden = sum(blocks) / v.num_residual_blocks
        waveform = v.conv_post(v.activation_post(hidden))
        return torch.clamp(waveform, min=-1.0, max=1.0)[:, 0, :]  # [1, T*240]


def dit_dummy_inputs(dit, codes: int, reference_frames: int = 96, seed: int = 0):
    config = dit.config
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(1, codes * config.repeats, config.mel_dim, generator=gen),
        torch.randint(0, config.num_embeds + 1, (1, codes), generator=gen),  # every row of the codec table
        torch.randn(1, config.enc_emb_dim, generator=gen),
        torch.randn(1, reference_frames, config.mel_dim, generator=gen),
        torch.rand(1, generator=gen),
    )


def dit_reference(dit, noisy_mel, codes, speaker_cond, reference_mel, time) -> tuple:
    """transformers' DiT forward with its own argument layout (CFG batch of 2), the graph's inputs fed in."""
    with torch.no_grad():
        return (
            dit(
                hidden_states=noisy_mel,
                condition_vector=reference_mel,
                speaker_embedding=speaker_cond[:, None, :].repeat(1, noisy_mel.shape[1], 1),
                quantized_code=codes,
                time_step=time,
            ),
        )


def bigvgan_reference(bigvgan, mel) -> tuple:
    """transformers' own BigVGAN forward (which ends in squeeze().cpu()), as the graph's [1, samples]."""
    with torch.no_grad():
        return (bigvgan(mel).reshape(1, -1),)


def bigvgan_dummy_inputs(bigvgan, frames: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(1, bigvgan.config.mel_dim, frames, generator=gen) - 5.0,)
