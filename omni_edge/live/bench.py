"""Live latency and agreement: a real spoken question fed as a microphone would, against the whole-clip path.

    python -m omni_edge.live.bench BUNDLE --wav tests/data/speech_question.wav [--speak] --out bench/live-tiny.json

Per iteration, both paths answer the same clip on a fresh conversation:
- offline: the user stops, then `Session.generate(audio=[clip])` (log-mel, every block, the whole prefill);
- live: the clip arrives in 20 ms chunks; every completed 2 s block is encoded and prefilled as it arrives
  (timed per block: it must take less than the block's 2 s for the live path to keep up in real time); when
  the user stops, only the last partial block, the closing tokens and the first decode step remain.
Both are timed from the moment the user stops (the last chunk) to the first text token and the first audio
chunk. A VAD ends the turn `end_ms` after the last voiced frame in either path; that wait is the same for
both and is reported apart (`vad_end_ms`), not inside these figures. Chunks are fed as fast as they are
processed, not at 1x: the figures after the end of speech are the same as in real time whenever every
block's prefill keeps up (`block_ms_max` < 2000).

Agreement: greedy tokens of the live path (running-max log-mel floor) against the offline path, as the
length of their common prefix, and the features' error (fraction of values changed, max |diff|).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

CHUNK = 320


def _first_times(events, started: float) -> tuple[float | None, float | None, list[int]]:
    from omni_edge.runtime import AudioChunk, Done, TextDelta

    text = audio = None
    tokens: list[int] = []
    for event in events:
        now = time.perf_counter()
        if isinstance(event, TextDelta) and text is None:
            text = 1000 * (now - started)
        elif isinstance(event, AudioChunk) and audio is None:
            audio = 1000 * (now - started)
        elif isinstance(event, Done):
            tokens = event.result.text_token_ids
    return text, audio, tokens


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def live_bench(bundle: Path, wav: Path, iterations: int, tokens: int, speak: bool, threads: int) -> dict:
    from omni_edge.bench.machine import describe_machine
    from omni_edge.live import LiveTurn
    from omni_edge.runtime import SamplingConfig, Session, SpeechOptions
    from omni_edge.runtime.audio_frontend import load_audio, log_mel

    greedy = SamplingConfig(greedy=True)
    clip = load_audio(wav)
    rows: dict[str, list] = {k: [] for k in ("offline_text", "offline_audio", "live_text", "live_audio", "blocks")}
    with Session(bundle, threads=threads) as session:
        speech = SpeechOptions(solver="euler", max_codec_tokens=64) if speak else None
        for iteration in range(iterations + 1):  # the first run warms the engines up and is not counted
            session.reset()
            started = time.perf_counter()
            offline = _first_times(session.generate("", tokens, greedy, audio=[clip], speech=speech), started)
            session.reset()
            turn = LiveTurn(session)
            blocks = []
            for start in range(0, len(clip), CHUNK):
                before = time.perf_counter()
                if turn.add_audio(clip[start : start + CHUNK]):
                    blocks.append(1000 * (time.perf_counter() - before))
            started = time.perf_counter()  # the user has stopped: the last chunk is in
            live = _first_times(turn.reply(tokens, greedy, speech=speech), started)
            if iteration == 0:
                features = np.concatenate([b for b in _live_features(turn, clip)], axis=1)
                reference = log_mel(clip)
                agreement = _common_prefix(live[2], offline[2])
                continue
            rows["offline_text"].append(offline[0])
            rows["offline_audio"].append(offline[1])
            rows["live_text"].append(live[0])
            rows["live_audio"].append(live[1])
            rows["blocks"] += blocks

    def median(values):
        values = [v for v in values if v is not None]
        return round(statistics.median(values), 1) if values else None

    diff = np.abs(features - reference)
    return {
        "bundle": str(bundle),
        "wav": str(wav),
        "clip_seconds": round(len(clip) / 16_000, 2),
        "iterations": iterations,
        "end_of_speech_to_first_text_ms": {"live": median(rows["live_text"]), "offline": median(rows["offline_text"])},
        "end_of_speech_to_first_audio_ms": {
            "live": median(rows["live_audio"]),
            "offline": median(rows["offline_audio"]),
        },
        "block_ms_median": median(rows["blocks"]),
        "block_ms_max": round(max(rows["blocks"]), 1) if rows["blocks"] else None,
        "blocks_prefilled_while_speaking": turn.blocks_prefilled,
        "vad_end_ms": 600,
        "mel_rule": "running max: each 2 s block floored at max(frames so far) - 8; the last block at the clip's",
        "mel_values_changed": round(float((diff > 0).mean()), 4),
        "mel_max_abs_diff": round(float(diff.max()), 4),
        "greedy_tokens_agreeing": agreement,
        "greedy_tokens": tokens,
        "machine": describe_machine(threads),
        "raw_ms": rows,
    }


def _live_features(turn, clip):
    """The live path's normalised features for the clip, recomputed the way the turn computed them."""
    from omni_edge.live import CausalLogMel

    mel = CausalLogMel(turn.block_frames)
    for start in range(0, len(clip), CHUNK):
        yield from mel.add(clip[start : start + CHUNK])
    yield mel.finish()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--wav", type=Path, default=Path("tests/data/speech_question.wav"))
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=32, help="greedy tokens per reply (agreement)")
    parser.add_argument("--speak", action="store_true", help="spoken replies: first audio chunk too")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    report = live_bench(args.bundle, args.wav, args.iterations, args.tokens, args.speak, args.threads)
    report["command"] = "python -m omni_edge.live.bench " + " ".join(sys.argv[1:] if argv is None else argv)
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
