"""A wav file replayed as if from a microphone, with barge-in: the user asks, the robot answers aloud, and the
user speaks over the answer, which stops it; the interruption becomes the next turn.

    python examples/live_loop.py BUNDLE --question tests/data/speech_question.wav \
        --interrupt tests/data/speech_interrupt.wav --barge-after 0.5 [--speed 1] [--camera clip.mp4]

The microphone is simulated in 20 ms chunks: silence, the question, silence until the turn ends, then, while
the reply plays, silence and the interruption `--barge-after` seconds into the reply's audio. Time follows
the loudspeaker: each reply chunk plays for its length (at `--speed`, or at once with --speed 0), and the
microphone advances by as much while it plays. Without speech output (a text-only bundle) the interruption
comes right after the turn ends.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time

import numpy as np

CHUNK = 320  # 20 ms at 16 kHz


def chunks(audio: np.ndarray):
    for start in range(0, len(audio), CHUNK):
        yield audio[start : start + CHUNK]


def silence():
    while True:
        yield np.zeros(CHUNK, np.float32)


def camera_frames(path):
    """(seconds, uint8 [H, W, 3] RGB) for every frame of a video file, looped for ever: a camera."""
    import av

    loop = 0.0
    while True:
        with av.open(str(path)) as container:
            last = 0.0
            for frame in container.decode(video=0):
                last = float(frame.time or 0.0)
                yield loop + last, frame.to_ndarray(format="rgb24")
        loop += last + 0.1


def run(
    bundle, question, interrupt=None, barge_after=0.5, speed=0.0, spoken=True, max_new_tokens=48, out=None, camera=None
):
    """Run the loop; returns a summary: the live events, and per reply its text and how it ended. With
    `camera` (a video file), its frames arrive on the microphone's clock and every user turn sees them."""
    from omni_edge.live import LiveConversation, LiveOptions
    from omni_edge.runtime import AudioChunk, Done, SamplingConfig, Session, SpeechOptions, TextDelta
    from omni_edge.runtime.audio_frontend import load_audio

    out = out or sys.stdout
    session = Session(bundle, threads=1)
    speech = (
        SpeechOptions(solver="euler", max_codec_tokens=600) if spoken and session.manifest.talker is not None else None
    )
    options = LiveOptions(
        max_new_tokens=max_new_tokens, sampling=SamplingConfig(greedy=True), speech=speech, camera=camera is not None
    )
    live = LiveConversation(session, options)
    mic = itertools.chain(chunks(np.zeros(8_000, np.float32)), chunks(load_audio(question)), silence())
    barge = list(chunks(load_audio(interrupt))) if interrupt else None
    events: list[dict] = []
    replies: list[dict] = []

    frames = camera_frames(camera) if camera else None
    next_frame = next(frames) if frames else None

    def hear(chunk):
        nonlocal next_frame
        while next_frame is not None and next_frame[0] <= live.mic_samples / 16_000:
            live.feed_frame(next_frame[1], next_frame[0])
            next_frame = next(frames)
        for event in live.feed_audio(chunk):
            events.append({"event": type(event).__name__, **vars(event)})
        if speed:
            time.sleep(len(chunk) / 16_000 / speed)

    while len(replies) < (2 if interrupt else 1):
        while not live.reply_ready:  # the user speaks until the VAD ends the turn
            hear(next(mic))
        text, played = [], 0
        for event in live.reply():
            if isinstance(event, AudioChunk):
                step = event.sample_rate * CHUNK // 16_000  # reply samples played per microphone chunk
                for start in range(0, len(event.samples), step):
                    played += min(step, len(event.samples) - start)
                    live.played(played)
                    if barge is not None and played >= barge_after * event.sample_rate:
                        mic, barge = itertools.chain(barge, silence()), None  # the user speaks over the reply
                    hear(next(mic))
                    if live.barged:
                        break
            elif isinstance(event, TextDelta):
                text.append(event.text)
                print(event.text, end="", flush=True, file=out)
                if speech is None and barge is not None:  # a text reply: the user speaks over it at once
                    mic, barge = itertools.chain(barge, silence()), None
                    while not live.barged:
                        hear(next(mic))
            elif isinstance(event, Done):
                replies.append({"text": "".join(text), "finish": event.result.finish_reason, "samples": played})
            else:  # BargeIn: the last event of a reply cut short
                replies.append({"text": "".join(text), "finish": "barge-in", "samples": played, **vars(event)})
        print(file=out)
    session.close()
    return {"events": events, "replies": replies}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--question", required=True)
    parser.add_argument("--interrupt")
    parser.add_argument("--barge-after", type=float, default=0.5, help="seconds into the reply's audio")
    parser.add_argument("--speed", type=float, default=1.0, help="1 = real time, 0 = as fast as possible")
    parser.add_argument("--text-only", action="store_true", help="text replies (the barge-in comes at once)")
    parser.add_argument("--camera", help="a video file played as the camera, on the microphone's clock")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--json", action="store_true", help="print a summary object at the end")
    args = parser.parse_args(argv)
    summary = run(
        args.bundle,
        args.question,
        args.interrupt,
        args.barge_after,
        args.speed,
        not args.text_only,
        args.max_new_tokens,
        camera=args.camera,
    )
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
