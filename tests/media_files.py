"""Media files written by tests: videos with a known frame pattern and an optional sound track."""

from __future__ import annotations

from fractions import Fraction

import numpy as np


def write_video(path, seconds=3, rate=10, audio=True, size=(48, 64), audio_codec="aac", audio_rate=44_100):
    """Frame k is a flat gray of level 20 + 7k, so decoded frames tell which source frame they were."""
    import av

    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=rate)
        video.height, video.width = size
        video.pix_fmt = "yuv420p"
        video.options = {"crf": "0"}  # lossless in YUV: only the rgb<->yuv rounding remains
        if audio:
            sound = out.add_stream(audio_codec, rate=audio_rate, layout="stereo")
        for k in range(seconds * rate):
            frame = av.VideoFrame.from_ndarray(np.full((*size, 3), 20 + 7 * k, np.uint8), format="rgb24")
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if audio:
            t = np.arange(seconds * audio_rate) / audio_rate
            tone = (0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
            for start in range(0, len(tone), 1024):
                chunk = np.repeat(tone[start : start + 1024], 2)[None]  # interleaved stereo
                frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="stereo")
                frame.sample_rate, frame.pts, frame.time_base = audio_rate, start, Fraction(1, audio_rate)
                out.mux(sound.encode(frame))
            out.mux(sound.encode(None))
    return tone if audio else None
