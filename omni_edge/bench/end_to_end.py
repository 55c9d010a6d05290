"""End-to-end latency of our runtime on the fixed prompts: what a user waits for.

Every figure is measured from the call to `Session.generate` (media front ends and encoders included):
TTFT to the first sampled token; for a spoken reply, first audio chunk, codec tokens per wall second and the
real-time factor (wall time / seconds of audio). A bundle without the speech engines gets no speech figures;
they are never estimated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from omni_edge.bench.inputs import Prompt
from omni_edge.bench.measure import Policy
from omni_edge.runtime.sampling import SamplingConfig
from omni_edge.runtime.session import Done, Session
from omni_edge.runtime.speech import SpeechOptions

GREEDY = SamplingConfig(greedy=True)


@dataclass
class PromptRun:
    """One end-to-end case: its report row, and the ids it fed (the reference replays exactly those)."""

    row: dict
    prompt_token_ids: list[int]


def _run(session: Session, prompt: Prompt, new_tokens: int, speech: SpeechOptions | None = None):
    """One reply: (result, wall ms). The result's timings start when the turn is handed over, as ours do."""
    media = prompt.media()
    session.reset()
    start = time.perf_counter()
    result = next(
        e.result
        for e in session.generate(prompt.text, new_tokens, GREEDY, speech=speech, **media)
        if isinstance(e, Done)
    )
    wall_ms = 1000 * (time.perf_counter() - start)
    session.reset()
    return result, wall_ms


def run_prompt(session: Session, prompt: Prompt, new_tokens: int, policy: Policy, repeats: int) -> PromptRun:
    ttft, tps = [], []
    for i in range(policy.warmup + repeats):
        result, _ = _run(session, prompt, new_tokens)
        if i >= policy.warmup:
            ttft.append(result.ttft_ms)
            tps.append(result.decode_tokens_per_s)
    row = {
        "kind": prompt.kind,
        "prompt": prompt.text,
        "prompt_tokens": len(result.prompt_token_ids),
        "new_tokens": len(result.text_token_ids),
        "iterations": repeats,
        "ttft_ms_p50": float(np.median(ttft)),
        "ttft_ms_p90": float(np.percentile(ttft, 90)),
        "thinker_tokens_per_s_p50": float(np.median(tps)),
    }
    return PromptRun(row, list(result.prompt_token_ids))


def run_speech(
    session: Session, prompt: Prompt, new_tokens: int, codec_tokens: int, policy: Policy, repeats: int
) -> PromptRun:
    """A spoken reply (default speaker, greedy Talker, RK4 token2wav), streamed as the runtime does it."""
    options = SpeechOptions(max_codec_tokens=codec_tokens)
    ttft, first_audio, rtf, codec_rate = [], [], [], []
    for i in range(policy.warmup + repeats):
        result, wall_ms = _run(session, prompt, new_tokens, options)
        if i < policy.warmup:
            continue
        ttft.append(result.ttft_ms)
        if result.first_audio_ms is not None:
            first_audio.append(result.first_audio_ms)
        if result.audio_seconds:
            rtf.append(wall_ms / 1000 / result.audio_seconds)
        codec_rate.append(len(result.codec_token_ids) / (wall_ms / 1000))
    row = {
        "status": "measured",
        "prompt": prompt.text,
        "speaker": options.speaker,
        "solver": options.solver,
        "new_tokens": len(result.text_token_ids),
        "codec_tokens": len(result.codec_token_ids),
        "max_codec_tokens": codec_tokens,
        "talker_stop_reason": result.talker_stop_reason,
        "audio_seconds": result.audio_seconds,
        "iterations": repeats,
        "ttft_ms_p50": float(np.median(ttft)),
        "first_audio_ms_p50": float(np.median(first_audio)) if first_audio else None,
        "rtf_p50": float(np.median(rtf)) if rtf else None,
        "codec_tokens_per_s_p50": float(np.median(codec_rate)),
    }
    return PromptRun(row, list(result.prompt_token_ids))
