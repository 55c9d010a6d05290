"""The ROS-free half of the node: message payloads in, text and audio out through callbacks.

The node (node.py) only turns messages into these calls and these callbacks into messages, so everything
here runs, and is tested, without ROS: tests/test_live_examples.py drives it with real speech on the tiny
bundle.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np


def pcm_s16le(data: bytes) -> np.ndarray:
    """audio_common_msgs/AudioData payload (16 kHz mono signed 16-bit little-endian) -> float32 samples."""
    return np.frombuffer(bytes(data), dtype="<i2").astype(np.float32) / 32768.0


def image_rgb(height: int, width: int, encoding: str, step: int, data: bytes) -> np.ndarray:
    """sensor_msgs/Image payload (rgb8 or bgr8) -> uint8 [H, W, 3] RGB."""
    if encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"image encoding {encoding!r} is not supported; publish rgb8 or bgr8")
    rows = np.frombuffer(bytes(data), dtype=np.uint8).reshape(height, step)[:, : width * 3]
    rgb = rows.reshape(height, width, 3)
    return np.ascontiguousarray(rgb[:, :, ::-1] if encoding == "bgr8" else rgb)


class LiveAdapter:
    """One spoken conversation: audio messages feed the LiveConversation; a reply runs in its own thread so
    that audio keeps arriving (and can barge in) while it streams."""

    def __init__(
        self,
        bundle: str,
        on_text: Callable[[str], None],
        on_audio: Callable[[np.ndarray, int], None],
        speaker: str = "Chelsie",
        max_new_tokens: int = 128,
        speak: bool = True,
        threads: int = 0,
        max_codec_tokens: int = 1024,
        on_error: Callable[[str], None] = print,
        camera: bool = False,
    ):
        from omni_edge.live import LiveConversation, LiveOptions
        from omni_edge.runtime import SamplingConfig, Session, SpeechOptions

        self.session = Session(bundle, threads=threads)
        speech = SpeechOptions(speaker=speaker, max_codec_tokens=max_codec_tokens, solver="euler")
        speech = speech if speak and self.session.manifest.talker else None
        options = LiveOptions(
            max_new_tokens=max_new_tokens, sampling=SamplingConfig(greedy=True), speech=speech, camera=camera
        )
        self.live = LiveConversation(self.session, options)
        self._on_text, self._on_audio, self._on_error = on_text, on_audio, on_error
        self._worker: threading.Thread | None = None
        self.frames: list[tuple[float, np.ndarray]] = []  # the last camera frames received

    def on_audio_message(self, data: bytes) -> None:
        self.live.feed_audio(pcm_s16le(data))
        if self.live.reply_ready and (self._worker is None or not self._worker.is_alive()):
            self._worker = threading.Thread(target=self._reply, daemon=True)
            self._worker.start()

    def on_image_message(self, stamp: float, height: int, width: int, encoding: str, step: int, data: bytes):
        """A camera frame; with `camera`, fed to the user turn on the microphone's clock (its arrival: the
        audio and image topics carry no common clock the adapter could trust)."""
        frame = image_rgb(height, width, encoding, step, data)
        self.frames = [*self.frames[-7:], (stamp, frame)]
        if self.live.options.camera:
            self.live.feed_frame(frame)

    def _reply(self) -> None:
        from omni_edge.errors import OmniEdgeError
        from omni_edge.runtime import AudioChunk, TextDelta

        try:
            for event in self.live.reply():
                if isinstance(event, TextDelta):
                    self._on_text(event.text)
                elif isinstance(event, AudioChunk):
                    self._on_audio(event.samples, event.sample_rate)
        except OmniEdgeError as exc:  # a refused reply (e.g. the KV cache is full): say so, keep listening
            self._on_error(str(exc))

    def wait(self, timeout: float | None = None) -> None:
        """Until the running reply has finished (tests, shutdown)."""
        if self._worker is not None:
            self._worker.join(timeout)

    def cancel(self) -> None:
        self.live.cancel()

    def reset(self) -> None:
        self.cancel()
        self.wait()
        self.live.reset()

    def close(self) -> None:
        self.reset()
        self.session.close()
