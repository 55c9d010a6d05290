"""omni-chat in a real terminal (a pty): turns keep the KV cache, /reset, Ctrl-C cancels the reply and not the
program, a missing sound library is one line."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from helpers import assert_one_line_error, cli

from omni_edge.runtime.sampling import SamplingConfig
from omni_edge.runtime.session import Done

pexpect = pytest.importorskip("pexpect")
CHAT = str(Path(sys.executable).parent / "omni-chat")


def reply_text(session, prompt: str, tokens: int) -> str:
    events = session.generate(prompt, tokens, SamplingConfig(greedy=True))
    return next(e for e in events if isinstance(e, Done)).result.text


def test_omni_chat_in_a_terminal(cpu_bundle, session):
    first, second = reply_text(session, "Hello there", 12), reply_text(session, "And then?", 12)
    session.reset()
    fresh = reply_text(session, "And then?", 12)
    child = pexpect.spawn(CHAT, [str(cpu_bundle), "--greedy", "--max-new-tokens", "12"], encoding="utf-8", timeout=120)
    try:
        child.expect_exact("you> ")
        for prompt, expected in (("Hello there", first), ("And then?", second)):  # the cache is kept between
            child.sendline(prompt)
            child.expect_exact("omni> ")
            child.expect_exact("you> ")
            assert child.before.strip() == expected.strip()
        child.sendline("/reset")
        child.expect_exact("(conversation reset)")
        child.sendline("And then?")
        child.expect_exact("omni> ")
        child.expect_exact("you> ")
        assert child.before.strip() == fresh.strip()
        child.sendintr()  # at the prompt: clears the line, the program stays
        child.expect_exact("you> ")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_ctrl_c_cancels_the_reply_not_the_program(cpu_bundle):
    args = [str(cpu_bundle), "--greedy", "--max-new-tokens", "1900"]  # seconds of decoding on the tiny model
    child = pexpect.spawn(CHAT, args, encoding="utf-8", timeout=120)
    try:
        child.expect_exact("you> ")
        child.sendline("Tell me a long story")
        child.expect_exact("omni> ")
        child.sendintr()
        child.expect_exact("[cancelled]")
        child.expect_exact("you> ")
        child.sendline("/reset")  # the program is still there and answers
        child.expect_exact("(conversation reset)")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


@pytest.mark.skipif(importlib.util.find_spec("sounddevice") is not None, reason="sounddevice is installed")
def test_mic_without_sounddevice_is_one_line(cpu_bundle):
    assert_one_line_error(cli("omni-chat", str(cpu_bundle), "--mic"), "pip install 'omni-edge[mic]'")


def test_camera_needs_the_microphone(cpu_bundle):
    assert_one_line_error(cli("omni-chat", str(cpu_bundle), "--camera", "/dev/video0"), "--camera needs --mic")


def test_the_camera_reader_feeds_frames_from_a_video_file(tmp_path):
    import threading

    from media_files import write_video

    from omni_edge.live.chat import camera_reader

    class Frames:  # the one method of LiveConversation the reader calls
        def __init__(self):
            self.shapes = []

        def feed_frame(self, frame):
            self.shapes.append((frame.shape, frame.dtype.name))

    clip = tmp_path / "camera.mp4"
    write_video(clip, seconds=1, rate=10, audio=False)
    frames = Frames()
    camera_reader(str(clip), frames, threading.Event(), realtime=False)
    assert frames.shapes == [((48, 64, 3), "uint8")] * 10
