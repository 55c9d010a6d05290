"""Resident memory of a loaded bundle against its memory plan: after loading, after a text reply, after a
spoken one (which opens the Talker, DiT and BigVGAN), and the peak.

    python scripts/bundle_rss.py BUNDLE      # prints one JSON object (bench/scale-medium-rss.json)
    python scripts/bundle_rss.py --text-only BUNDLE   # no spoken reply: the Thinker's share alone
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

from omni_edge.runtime import Done, SamplingConfig, Session, SpeechOptions

GIB = 1 << 30


def rss_gib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / GIB


def reply(session: Session, prompt: str, tokens: int, speech: SpeechOptions | None = None):
    events = session.generate(prompt, tokens, SamplingConfig(greedy=True), speech=speech)
    return next(e.result for e in events if isinstance(e, Done))


def main(bundle: str, speech: bool = True) -> dict:
    started = time.perf_counter()
    session = Session(bundle, threads=1)
    loaded = rss_gib()
    text = reply(session, "Describe a sunny day", 16)
    after_text = rss_gib()
    spoken = reply(session, "Say hello", 8, SpeechOptions(max_codec_tokens=60, solver="euler")) if speech else None
    plan = session.manifest.memory_plan
    assert plan is not None
    return {
        "bundle": bundle,
        "load_s": round(time.perf_counter() - started, 1),
        "rss_gib_loaded": round(loaded, 2),
        "rss_gib_after_text": round(after_text, 2),
        "rss_gib_after_speech": round(rss_gib(), 2) if speech else None,
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 2),
        "plan_total_gib": round(plan.total_bytes / GIB, 2),
        "plan_weights_tables_kv_gib": round(
            (plan.weight_bytes + plan.table_bytes + sum(plan.kv_bytes.values())) / GIB, 2
        ),
        "plan_activation_gib": round(plan.activation_bytes / GIB, 2),
        "codec_tokens": len(spoken.codec_token_ids) if spoken else None,
        "text_token_ids": text.text_token_ids,
    }


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--text-only"]
    print(json.dumps(main(args[0], speech="--text-only" not in sys.argv[1:]), indent=1))
