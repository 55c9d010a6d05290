"""End-to-end latency of our runtime on the fixed prompts: what a user waits for.

TTFT is measured from the call to `Session.generate` (media front ends and encoders included) to the first
sampled token. Speech figures (first audio chunk, Talker tokens/s, real-time factor) are reported when the
session produces audio; until the bundle holds the speech engines they are null, never estimated.
"""

from __future__ import annotations

import time

import numpy as np

from omni_edge.bench.inputs import Prompt
from omni_edge.bench.measure import Policy
from omni_edge.runtime.sampling import SamplingConfig
from omni_edge.runtime.session import Done, Session

GREEDY = SamplingConfig(greedy=True)


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else None


def run_prompt(session: Session, prompt: Prompt, new_tokens: int, policy: Policy, repeats: int) -> dict:
    media = prompt.media()  # decoded arrays: file reading is not what this measures
    ttft, tps, first_audio, rtf = [], [], [], []
    result = None
    for i in range(policy.warmup + repeats):
        session.reset()
        start = time.perf_counter()
        result = next(e.result for e in session.generate(prompt.text, new_tokens, GREEDY, **media)
                      if isinstance(e, Done))
        wall_ms = 1000 * (time.perf_counter() - start)
        if i < policy.warmup:
            continue
        # result.ttft_ms starts when the token loop starts; add what ran before it (front ends, encoders).
        ttft.append(wall_ms - result.total_ms + result.ttft_ms)
        tps.append(result.decode_tokens_per_s)
        first_audio.append(result.first_audio_ms)
        rtf.append(result.rtf)
    session.reset()
    return {
        "kind": prompt.kind,
        "prompt": prompt.text,
        "prompt_tokens": len(result.prompt_token_ids),
        "new_tokens": len(result.text_token_ids),
        "iterations": repeats,
        "ttft_ms_p50": float(np.median(ttft)),
        "ttft_ms_p90": float(np.percentile(ttft, 90)),
        "thinker_tokens_per_s_p50": float(np.median(tps)),
        "first_audio_ms_p50": _median(first_audio),
        "talker_tokens_per_s_p50": None,  # filled when the session reports codec timing
        "rtf_p50": _median(rtf),
        "_prompt_token_ids": list(result.prompt_token_ids),  # for the reference; dropped from the report
    }
