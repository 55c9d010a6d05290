"""omni-chat: a conversation in the terminal, the KV cache kept across turns.

    omni-chat build/tiny                      # type a line, the reply streams; /reset, /quit (or Ctrl-D)
    omni-chat build/tiny --speak --play       # spoken replies, played as they stream (sounddevice)
    omni-chat build/tiny --mic --speak --play # talk instead of typing: VAD turn-taking, barge-in
    omni-chat build/tiny --mic --camera /dev/video0   # and let it see (a V4L2 device, or a video file)

Ctrl-C stops the reply (text and audio) and keeps the conversation as far as it was shown; at the prompt it
clears the line. Microphone and playback need the `mic` extra (sounddevice, PortAudio).
"""

from __future__ import annotations

import argparse
import queue
import signal
import sys
import threading
import time
from typing import Any

import numpy as np

from omni_edge.errors import OmniEdgeError

PROMPT = "you> "
REPLY = "omni> "


def _sounddevice():
    try:
        import sounddevice
    except (ImportError, OSError) as exc:  # OSError: the wheel is there but PortAudio is not
        raise OmniEdgeError(
            f"--mic and --play need sounddevice and PortAudio: pip install 'omni-edge[mic]' ({exc})"
        ) from None
    return sounddevice


class Player:
    """Reply audio to the default output device as it streams (a no-op without --play)."""

    def __init__(self, enabled: bool):
        self._stream: Any = None
        self._sd = _sounddevice() if enabled else None

    def play(self, samples: np.ndarray, rate: int) -> None:
        if self._sd is None:
            return
        if self._stream is None:
            stream = self._sd.OutputStream(samplerate=rate, channels=1, dtype="float32")
            stream.start()
            self._stream = stream
        self._stream.write(samples.reshape(-1, 1))

    def stop(self) -> None:
        if self._stream is not None:
            self._stream.abort()  # drop what is queued: a cancelled reply goes quiet now
            self._stream.close()
            self._stream = None


class Interrupts:
    """Ctrl-C during a reply cancels it; at the prompt it raises KeyboardInterrupt (clears the line)."""

    def __init__(self, session):
        self.session = session
        self.replying = False
        self.cancelled = threading.Event()
        signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum, frame) -> None:
        if not self.replying:
            raise KeyboardInterrupt
        self.cancelled.set()
        self.session.cancel()


def stream_reply(events, interrupts: Interrupts, player: Player, out=sys.stdout) -> None:
    from omni_edge.runtime import AudioChunk, Done, TextDelta

    interrupts.replying, finish = True, None
    interrupts.cancelled.clear()
    out.write(REPLY)
    out.flush()
    try:
        for event in events:
            if interrupts.cancelled.is_set():
                break
            if isinstance(event, TextDelta):
                out.write(event.text)
                out.flush()
            elif isinstance(event, AudioChunk):
                player.play(event.samples, event.sample_rate)
            elif isinstance(event, Done):
                finish = event.result.finish_reason
    finally:
        interrupts.replying = False
        if hasattr(events, "close"):
            events.close()
    if interrupts.cancelled.is_set() or finish == "cancelled":
        player.stop()
        out.write(" [cancelled]")
    out.write("\n")
    out.flush()


def typed_loop(session, args, interrupts: Interrupts, player: Player) -> None:
    from omni_edge.runtime import SamplingConfig, SpeechOptions

    sampling = SamplingConfig(greedy=True) if args.greedy else SamplingConfig()
    speech = SpeechOptions(speaker=args.speaker, max_codec_tokens=args.max_codec_tokens) if args.speak else None
    while True:
        try:
            line = input(PROMPT)
        except KeyboardInterrupt:
            print()
            continue
        except EOFError:
            print()
            return
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return
        if line == "/reset":
            session.reset()
            print("(conversation reset)")
            continue
        try:
            events = session.generate(line, args.max_new_tokens, sampling, args.seed, speech=speech)
        except OmniEdgeError as exc:
            print(f"error: {exc}")
            continue
        stream_reply(events, interrupts, player)


def camera_reader(source: str, live, stop: threading.Event, realtime: bool = True) -> None:
    """Frames of a camera (a V4L2 device such as /dev/video0) or of a video file (played at its own pace)
    into `live.feed_frame`, until `stop` is set or the source ends."""
    import av

    device = source.startswith("/dev/video")
    try:
        container = av.open(source, format="v4l2") if device else av.open(source)
    except av.error.FFmpegError as exc:
        raise OmniEdgeError(f"cannot open the camera {source}: {exc}") from None
    started = time.perf_counter()
    with container:
        for frame in container.decode(video=0):
            if stop.is_set():
                return
            if realtime and not device and frame.time is not None:
                time.sleep(max(0.0, float(frame.time) - (time.perf_counter() - started)))
            live.feed_frame(frame.to_ndarray(format="rgb24"))


def _camera_thread(source: str, live, stop: threading.Event) -> None:
    try:
        camera_reader(source, live, stop)
    except OmniEdgeError as exc:  # the conversation goes on without pictures
        print(f"error: {exc}; continuing without the camera", file=sys.stderr, flush=True)


def mic_loop(session, args, interrupts: Interrupts, player: Player) -> None:
    from omni_edge.live import BargeIn, LiveConversation, LiveOptions, SpeechStarted, TurnEnded
    from omni_edge.runtime import AudioChunk, SamplingConfig, SpeechOptions, TextDelta

    sd = _sounddevice()
    sampling = SamplingConfig(greedy=True) if args.greedy else SamplingConfig()
    speech = SpeechOptions(speaker=args.speaker, max_codec_tokens=args.max_codec_tokens) if args.speak else None
    options = LiveOptions(
        max_new_tokens=args.max_new_tokens, sampling=sampling, seed=args.seed, speech=speech, camera=bool(args.camera)
    )
    live = LiveConversation(session, options)
    stop = threading.Event()
    if args.camera:
        threading.Thread(target=_camera_thread, args=(args.camera, live, stop), daemon=True).start()
    chunks: queue.Queue[np.ndarray] = queue.Queue()
    stream = sd.InputStream(
        samplerate=16_000, channels=1, dtype="float32", blocksize=320, callback=lambda d, *_: chunks.put(d[:, 0].copy())
    )

    def hear(block: bool) -> None:
        while True:
            try:
                chunk = chunks.get(timeout=0.1) if block else chunks.get_nowait()
            except queue.Empty:
                return
            for event in live.feed_audio(chunk):
                if isinstance(event, SpeechStarted):
                    print("(listening)" if not event.during_reply else "\n(interrupted)", flush=True)
                elif isinstance(event, TurnEnded):
                    print(f"(heard {event.audio_seconds:.1f} s)", flush=True)
            if live.reply_ready or not block:
                return

    print("speak (Ctrl-C stops a reply; Ctrl-C while listening quits)", flush=True)
    with stream:
        while True:
            try:
                hear(block=True)
            except KeyboardInterrupt:
                stop.set()
                return
            if not live.reply_ready:
                continue
            interrupts.replying = True
            print(REPLY, end="", flush=True)
            try:
                for event in live.reply():
                    if interrupts.cancelled.is_set():
                        break
                    if isinstance(event, TextDelta):
                        print(event.text, end="", flush=True)
                    elif isinstance(event, AudioChunk):
                        player.play(event.samples, event.sample_rate)
                    elif isinstance(event, BargeIn):
                        player.stop()
                    hear(block=False)
            finally:
                interrupts.replying = False
                interrupts.cancelled.clear()
            print(flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="omni-chat", description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--greedy", action="store_true")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--speak", action="store_true", help="spoken replies (bundles with talker, dit, bigvgan)")
    parser.add_argument("--speaker", default="Chelsie")
    parser.add_argument("--max-codec-tokens", type=int, default=1024)
    parser.add_argument("--play", action="store_true", help="play the spoken reply as it streams (sounddevice)")
    parser.add_argument("--mic", action="store_true", help="talk instead of typing (sounddevice, webrtcvad)")
    parser.add_argument("--camera", help="with --mic: a camera (/dev/video0) or video file each spoken turn sees")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        from omni_edge.runtime import Session

        if args.camera and not args.mic:
            raise OmniEdgeError("--camera needs --mic: camera frames go with spoken turns")
        player = Player(args.play)
        if args.mic:
            from omni_edge.live.vad import load_webrtcvad

            load_webrtcvad()
            _sounddevice()
        with Session(args.bundle, threads=args.threads) as session:
            interrupts = Interrupts(session)
            (mic_loop if args.mic else typed_loop)(session, args, interrupts, player)
    except OmniEdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
