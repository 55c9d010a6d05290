"""End of turn and barge-in from the microphone: WebRTC's voice activity detector on 30 ms frames.

Why WebRTC's VAD (`webrtcvad-wheels`, imported as `webrtcvad`): a maintained fork of the Python binding of
the detector inside every WebRTC stack, shipped as binary wheels (no compiler, no torch, ~60 KB), deciding a
30 ms frame in microseconds on one core, which keeps it off the Thinker's budget on a Jetson. Silero's VAD
is more robust in noise, but its package depends on torch; its ONNX model would need loading out of that
wheel by hand. The `live` extra installs webrtcvad-wheels.

    vad = VoiceActivity()
    for event in vad.push(chunk):      # "start" when speech begins, "end" after `end_ms` of silence
        ...

Speech starts after `start_ms` of voiced frames in a row (a click or a cough is shorter) and ends after
`end_ms` without voice (a pause inside a sentence is shorter): the end of turn is `end_ms` after the last
voiced frame, and barge-in `start_ms` after the first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from omni_edge.errors import InputError

SAMPLE_RATE = 16_000
FRAME_MS = 30  # webrtcvad takes 10, 20 or 30 ms frames at 8/16/32/48 kHz


@dataclass(frozen=True)
class VadEvent:
    kind: str  # "start" or "end"
    sample: int  # sample index (in the audio pushed so far) where the decision was made


def load_webrtcvad():
    try:
        import webrtcvad
    except ImportError:
        raise InputError(
            "live turn-taking needs WebRTC's VAD: pip install 'omni-edge[live]' (webrtcvad-wheels)"
        ) from None
    return webrtcvad


class VoiceActivity:
    def __init__(self, aggressiveness: int = 2, start_ms: int = 90, end_ms: int = 600):
        if not 0 <= aggressiveness <= 3:
            raise InputError(f"VAD aggressiveness must be 0..3, got {aggressiveness}")
        self._vad = load_webrtcvad().Vad(aggressiveness)
        self.frame = SAMPLE_RATE * FRAME_MS // 1000
        self.start_frames = max(1, start_ms // FRAME_MS)
        self.end_frames = max(1, end_ms // FRAME_MS)
        self.reset()

    def reset(self) -> None:
        self.speaking = False
        self._pending = np.zeros(0, dtype=np.int16)
        self._run = 0  # frames in a row that argue for a change of state
        self.samples = 0  # samples decided so far
        self.last_voiced = 0  # sample index just past the last voiced frame

    def push(self, chunk: np.ndarray) -> list[VadEvent]:
        """16 kHz float32 samples in; the state changes they caused, in order."""
        pcm = (np.clip(np.asarray(chunk, dtype=np.float32).reshape(-1), -1.0, 1.0) * 32767).astype(np.int16)
        pcm = np.concatenate([self._pending, pcm])
        events = []
        whole = len(pcm) // self.frame * self.frame
        for start in range(0, whole, self.frame):
            voiced = self._vad.is_speech(pcm[start : start + self.frame].tobytes(), SAMPLE_RATE)
            self.samples += self.frame
            if voiced:
                self.last_voiced = self.samples
            self._run = self._run + 1 if voiced != self.speaking else 0
            if not self.speaking and self._run >= self.start_frames:
                self.speaking, self._run = True, 0
                events.append(VadEvent("start", self.samples))
            elif self.speaking and self._run >= self.end_frames:
                self.speaking, self._run = False, 0
                events.append(VadEvent("end", self.samples))
        self._pending = pcm[whole:]
        return events
