"""examples/ run on the tiny bundle: wav_to_wav, live_loop (barge-in included) and the ROS 2 adapter (its
ROS-free half: rclpy is not installable here, so node.py itself is not run)."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples"
DATA = Path(__file__).parent / "data"


def test_wav_to_wav(cpu_bundle, tmp_path):
    out = tmp_path / "answer.wav"
    cmd = [sys.executable, str(EXAMPLES / "wav_to_wav.py"), str(cpu_bundle), str(DATA / "speech_question.wav")]
    proc = subprocess.run([*cmd, str(out), "--max-new-tokens", "8"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    audio, rate = sf.read(out)
    assert rate == 24_000 and len(audio) > 0 and proc.stdout.strip()


@pytest.fixture(scope="module")
def live_loop():
    sys.path.insert(0, str(EXAMPLES))
    try:
        import live_loop

        yield live_loop
    finally:
        sys.path.remove(str(EXAMPLES))


@pytest.mark.parametrize("spoken", [True, False])
def test_live_loop_with_barge_in(cpu_bundle, live_loop, spoken):
    question, interrupt = DATA / "speech_question.wav", DATA / "speech_interrupt.wav"
    summary = live_loop.run(cpu_bundle, question, interrupt, 0.3, 0.0, spoken, 24, io.StringIO())
    kinds = [(e["event"], e.get("during_reply")) for e in summary["events"]]
    assert kinds == [("SpeechStarted", False), ("TurnEnded", None), ("SpeechStarted", True), ("TurnEnded", None)]
    cut, answer = summary["replies"]
    assert cut["finish"] == "barge-in" and answer["finish"] in ("eos", "length")
    assert cut["kept_tokens"] <= cut["generated_tokens"]
    if spoken:
        assert 0.3 * 24_000 <= cut["samples"] < 24_000  # stopped right after the interruption began


def test_live_loop_with_a_camera_clip(cpu_bundle, live_loop, tmp_path):
    from media_files import write_video

    camera = tmp_path / "camera.mp4"
    write_video(camera, seconds=3, rate=10, audio=False)  # looped: the camera keeps running
    summary = live_loop.run(
        cpu_bundle, DATA / "speech_question.wav", None, spoken=False, out=io.StringIO(), camera=camera
    )
    (turn,) = [e for e in summary["events"] if e["event"] == "TurnEnded"]
    assert turn["blocks_prefilled"] >= 3  # audio and frames prefilled together while the user spoke
    assert summary["replies"][0]["finish"] in ("eos", "length")


def test_the_ros2_adapter_speaks_and_is_cancelled(cpu_bundle):
    sys.path.insert(0, str(EXAMPLES / "ros2" / "omni_edge_ros"))
    try:
        from omni_edge_ros.adapter import LiveAdapter, image_rgb
    finally:
        sys.path.pop(0)
    from omni_edge.runtime.audio_frontend import load_audio

    texts, audio, first_audio = [], [], threading.Event()

    def on_audio(samples, rate):
        audio.append((len(samples), rate))
        first_audio.set()

    errors: list[str] = []
    adapter = LiveAdapter(
        str(cpu_bundle),
        texts.append,
        on_audio,
        max_new_tokens=24,
        threads=1,
        max_codec_tokens=300,
        on_error=errors.append,
        camera=True,
    )
    speech = np.concatenate([load_audio(DATA / "speech_question.wav"), np.zeros(16_000, np.float32)])
    pcm = (np.clip(speech, -1, 1) * 32767).astype("<i2").tobytes()
    bgr = np.zeros((4, 6, 3), np.uint8)
    bgr[..., 0] = 255  # blue in BGR
    adapter.on_image_message(0.0, 4, 6, "bgr8", 18, bgr.tobytes())
    assert adapter.frames[0][1][0, 0].tolist() == [0, 0, 255]
    for start in range(0, len(pcm), 640):  # 20 ms messages, a camera frame every 100 ms
        adapter.on_audio_message(pcm[start : start + 640])
        if start % 3200 == 0:
            adapter.on_image_message(start / 32_000, 4, 6, "bgr8", 18, bgr.tobytes())
    adapter.wait(600)
    assert not errors
    assert "".join(texts).strip() and audio and all(rate == 24_000 for _, rate in audio)
    assert adapter.session.conversation.length > 150
    assert adapter.live.options.camera and len(adapter.frames) == 8
    adapter.reset()
    assert adapter.session.conversation.length == 0
    np.testing.assert_array_equal(image_rgb(1, 2, "rgb8", 8, bytes(range(8))), [[[0, 1, 2], [3, 4, 5]]])
    adapter.close()
