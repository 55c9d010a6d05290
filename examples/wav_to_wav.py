"""A spoken question in, a spoken answer out, streamed: the text is printed and the 24 kHz audio written as
it is generated (the wav file is valid after every chunk).

    python examples/wav_to_wav.py BUNDLE question.wav answer.wav [--speaker Ethan] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def run(bundle, question, answer, speaker="Chelsie", max_new_tokens=64, max_codec_tokens=600, out=None) -> dict:
    from omni_edge.runtime import AudioChunk, Done, SamplingConfig, Session, SpeechOptions, TextDelta
    from omni_edge.runtime.wav_writer import WavWriter

    out = out or sys.stdout
    speech = SpeechOptions(speaker=speaker, max_codec_tokens=max_codec_tokens, solver="euler")
    with Session(bundle) as session:
        events = session.generate("", max_new_tokens, SamplingConfig(greedy=True), audio=[question], speech=speech)
        with WavWriter(Path(answer), session.manifest.token2wav.sample_rate) as writer:
            for event in events:
                if isinstance(event, TextDelta):
                    print(event.text, end="", flush=True, file=out)
                elif isinstance(event, AudioChunk):
                    writer.write(event.samples)  # on disk now: the file plays up to here
                elif isinstance(event, Done):
                    result = event.result
    print(file=out)
    return {"text": result.text, "audio_seconds": result.audio_seconds, "first_audio_ms": result.first_audio_ms}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("question", help="wav/flac/ogg (any rate) or the sound track of a container")
    parser.add_argument("answer", help="the spoken answer, 24 kHz wav")
    parser.add_argument("--speaker", default="Chelsie")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    summary = run(args.bundle, args.question, args.answer, args.speaker, args.max_new_tokens)
    print(f"{summary['audio_seconds']:.2f} s of audio in {args.answer}", file=sys.stderr)


if __name__ == "__main__":
    main()
