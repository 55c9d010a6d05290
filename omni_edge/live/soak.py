"""A long live session on one Session: resident memory after every reply, so a leak shows as a slope.

    python -m omni_edge.live.soak BUNDLE --minutes 10 --out bench/live-soak-tiny.json

The microphone is simulated, accelerated (as fast as the session runs): a spoken question, silence, the
spoken reply playing while the microphone keeps running, and on every other turn the user speaks over the
reply (barge-in), which becomes the next turn. It runs until `--minutes` of microphone audio have been fed;
the conversation is reset whenever the KV cache has less than `--reset-room` tokens left, so what grows is
what the live layer or the session keeps by mistake, not the conversation. (The room is large because
SpeechPipeline.check counts the previous reply's Talker rows as in use, though each reply restarts the
Talker's cache: a spoken reply is refused once conversation + previous reply pass the capacity.)
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from omni_edge.bench.machine import describe_machine
from omni_edge.bench.soak import _rss_mib

CHUNK = 320


def _chunks(audio: np.ndarray) -> list[np.ndarray]:
    return [audio[i : i + CHUNK] for i in range(0, len(audio), CHUNK)]


def soak(bundle: Path, minutes: float, question: Path, interrupt: Path, threads: int, reset_room: int) -> dict:
    from omni_edge.live import BargeIn, LiveConversation, LiveOptions
    from omni_edge.runtime import AudioChunk, SamplingConfig, Session, SpeechOptions
    from omni_edge.runtime.audio_frontend import load_audio

    silence = [np.zeros(CHUNK, np.float32)]
    asking = _chunks(np.zeros(8_000, np.float32)) + _chunks(load_audio(question))
    barging = _chunks(load_audio(interrupt))
    speech = SpeechOptions(solver="euler", max_codec_tokens=100)
    curve = []
    with Session(bundle, threads=threads) as session:
        live = LiveConversation(
            session, LiveOptions(max_new_tokens=16, sampling=SamplingConfig(greedy=True), speech=speech)
        )
        mic: Iterator[np.ndarray] = itertools.chain(asking, itertools.repeat(silence[0]))
        limit = int(minutes * 60 * 16_000)
        earlier = 0  # microphone samples fed before the last reset (reset() restarts live.mic_samples)
        started, replies, barge_ins, resets = time.perf_counter(), 0, 0, 0
        while earlier + live.mic_samples < limit:
            while not live.reply_ready and earlier + live.mic_samples < limit:
                live.feed_audio(next(mic))
            if not live.reply_ready:
                break
            barge = replies % 2 == 1
            mic = itertools.repeat(silence[0])
            outcome = "done"
            for event in live.reply():
                if isinstance(event, AudioChunk):
                    for _ in range(0, len(event.samples), event.sample_rate * CHUNK // 16_000):
                        live.feed_audio(next(mic))
                    if barge:  # the user speaks over the reply from its first chunk on
                        mic, barge = itertools.chain(barging, itertools.repeat(silence[0])), False
                elif isinstance(event, BargeIn):
                    outcome, barge_ins = "barge-in", barge_ins + 1
            replies += 1
            if outcome == "done":  # the next question after the reply
                mic = itertools.chain(asking, itertools.repeat(silence[0]))
            if session.cache.room() < reset_room and live.turn is None:
                earlier += live.mic_samples
                live.reset()
                resets += 1
            curve.append(
                {
                    "reply": replies,
                    "mic_seconds": round((earlier + live.mic_samples) / 16_000, 1),
                    "wall_seconds": round(time.perf_counter() - started, 1),
                    "rss_mib": round(_rss_mib(), 1),
                    "cache_tokens": session.cache.length,
                    "ended_by": outcome,
                }
            )
            print(json.dumps(curve[-1]), file=sys.stderr, flush=True)
        seconds = time.perf_counter() - started
    first, last = curve[min(19, len(curve) - 1)]["rss_mib"], curve[-1]["rss_mib"]  # ORT arenas settle by then
    return {
        "bundle": str(bundle),
        "mic_minutes": round(curve[-1]["mic_seconds"] / 60, 2),
        "wall_seconds": round(seconds, 1),
        "replies": replies,
        "barge_ins": barge_ins,
        "resets": resets,
        "rss_mib_after_reply_20": first,
        "rss_mib_at_end": last,
        "growth_mib_after_warmup": round(last - first, 1),
        "machine": describe_machine(threads),
        "curve": curve,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--minutes", type=float, default=10.0, help="microphone minutes (accelerated)")
    parser.add_argument("--question", type=Path, default=Path("tests/data/speech_question.wav"))
    parser.add_argument("--interrupt", type=Path, default=Path("tests/data/speech_interrupt.wav"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reset-room", type=int, default=1500, help="reset when fewer cache tokens are left")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    report = soak(args.bundle, args.minutes, args.question, args.interrupt, args.threads, args.reset_room)
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(json.dumps({k: v for k, v in report.items() if k not in ("curve", "machine")}))


if __name__ == "__main__":
    main()
