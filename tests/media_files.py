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


def write_sound(path, seconds=3, audio_rate=44_100, codec="aac", container=None):
    """An audio-only container (m4a/mp4 with AAC by default): a 440 Hz stereo tone, no video stream."""
    import av

    t = np.arange(seconds * audio_rate) / audio_rate
    tone = (0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
    with av.open(str(path), "w", format=container) as out:
        sound = out.add_stream(codec, rate=audio_rate, layout="stereo")
        for start in range(0, len(tone), 1024):
            chunk = np.repeat(tone[start : start + 1024], 2)[None]
            frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="stereo")
            frame.sample_rate, frame.pts, frame.time_base = audio_rate, start, Fraction(1, audio_rate)
            out.mux(sound.encode(frame))
        out.mux(sound.encode(None))
    return tone


def write_slow_video(path, frames, seconds_per_frame, size=(48, 64)):
    """A long video that is small on disk: `frames` frames, one every `seconds_per_frame` seconds."""
    import av

    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=Fraction(1, seconds_per_frame))
        video.height, video.width = size
        video.pix_fmt = "yuv420p"
        for k in range(frames):
            out.mux(video.encode(av.VideoFrame.from_ndarray(np.full((*size, 3), k % 256, np.uint8), format="rgb24")))
        out.mux(video.encode(None))
