"""A spoken conversation from a live microphone: turn-taking, block-wise prefill, barge-in. No transport here:
the terminal (omni-chat), the examples and the ROS 2 node all drive this one object.

    live = LiveConversation(session, LiveOptions(speech=SpeechOptions()))
    for chunk in microphone():                       # 16 kHz float32, any size
        for event in live.feed_audio(chunk):         # SpeechStarted, TurnEnded, BargeIn
            ...
        if live.reply_ready:
            for event in live.reply():               # TextDelta, AudioChunk, Done (runtime.session events)
                play(event)
                live.feed_audio(next(microphone()))  # or from another thread: user speech stops the reply

Barge-in: when the user starts speaking during a reply, the reply yields nothing more (the check runs before
every event, so text and audio stop within one microphone chunk of the VAD's decision), and the conversation
is rewound to what the user heard: the reply keeps its first k tokens, where

    k = tokens shown                                   (a text reply)
    k = min(tokens shown, codec tokens heard)          (a spoken reply)

and a codec token was heard when all of its samples were played (`played()` reports playback; by default
every yielded sample counts as played). The Talker reads one text token per codec step, so a codec token
heard means the Talker had been given that text token: this keeps the tokens whose speech had started,
which is the most the audio can tell without a forced alignment. The KV cache, the Talker's track and the
TMRoPE ids are cut back to those k tokens, the assistant turn is closed by the next user turn's
`<|im_end|>`, and that turn is the one a fresh session replaying the conversation as heard would build.

Echo: the VAD hears the loudspeaker too. Barge-in needs echo cancellation on the microphone (or a headset);
`LiveOptions(barge_in=False)` ignores speech during replies instead.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from omni_edge.errors import InputError
from omni_edge.live.turn import LiveTurn
from omni_edge.live.vad import VoiceActivity
from omni_edge.runtime.sampling import SamplingConfig
from omni_edge.runtime.session import TextDelta
from omni_edge.runtime.speech import AudioChunk, SpeechOptions


@dataclass(frozen=True)
class LiveOptions:
    prompt: str = ""  # text after the audio of every user turn ("" for none)
    system: str | None = None  # the conversation's system prompt
    max_new_tokens: int = 128
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    seed: int | None = None
    speech: SpeechOptions | None = None  # spoken replies
    preroll_ms: int = 300  # audio kept from before the VAD's start decision (it decides after start_ms)
    barge_in: bool = True
    camera: bool = False  # user turns carry camera frames (feed_frame), interleaved with the audio per 2 s


@dataclass(frozen=True)
class SpeechStarted:
    sample: int  # microphone samples fed (since reset) up to the chunk of the VAD's decision
    during_reply: bool  # a barge-in


@dataclass(frozen=True)
class TurnEnded:
    sample: int
    audio_seconds: float
    blocks_prefilled: int  # 2 s blocks already in the KV cache when the turn ended


@dataclass(frozen=True)
class BargeIn:
    kept_tokens: int  # reply tokens the conversation keeps
    generated_tokens: int  # reply tokens sampled before the cut
    heard_samples: int  # reply audio counted as heard


LiveEvent = SpeechStarted | TurnEnded | BargeIn


class LiveConversation:
    def __init__(self, session, options: LiveOptions = LiveOptions(), vad: VoiceActivity | None = None):
        self.session = session
        self.options = options
        self.vad = vad or VoiceActivity()
        self._lock = threading.RLock()
        self._preroll = int(16 * options.preroll_ms)
        info = session.manifest.token2wav
        self._samples_per_code = info.repeats * info.samples_per_frame if info else 0
        self.reset()

    def reset(self) -> None:
        """A new conversation (the session's cache is emptied too)."""
        with self._lock:
            self.session.reset()
            self.vad.reset()
            self.turn: LiveTurn | None = None  # the user turn being heard
            self._ended: LiveTurn | None = None  # a heard turn waiting for reply()
            self._recent: list[np.ndarray] = []  # the last preroll of audio while nobody speaks
            self._replying = False
            self._barged = False
            self._next_audio: list[np.ndarray] = []  # the barging user's audio, fed once the reply stops
            self._next_ended = False  # ...and it ended before the reply had stopped
            self._played: int | None = None
            self.mic_samples = 0
            self._frame: np.ndarray | None = None  # the latest camera frame while no turn is open
            self._turn_start = 0  # microphone sample where the open turn's audio starts

    @property
    def reply_ready(self) -> bool:
        return self._ended is not None and not self._replying

    @property
    def replying(self) -> bool:
        return self._replying

    @property
    def barged(self) -> bool:
        """The user has spoken over the running reply: it yields nothing more."""
        return self._barged

    # -- input -----------------------------------------------------------------------------------------
    def feed_audio(self, chunk: np.ndarray) -> list[LiveEvent]:
        """Microphone samples (16 kHz mono float32, any size). Prefills the user turn's completed blocks,
        ends the turn after the VAD's silence, and stops a running reply when the user speaks over it."""
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        with self._lock:
            events: list[LiveEvent] = []
            self.mic_samples += len(chunk)
            vad_events = self.vad.push(chunk)
            if self._replying or self._ended is not None:
                self._while_replying(chunk, vad_events, events)
                return events
            if self.turn is None:
                self._remember(chunk)
            else:
                self.turn.add_audio(chunk)
            for vad_event in vad_events:
                if vad_event.kind == "start" and self.turn is None:
                    events.append(SpeechStarted(self.mic_samples, False))
                    self.turn = self._open_turn(np.concatenate(self._recent))
                    self._recent = []
                elif vad_event.kind == "end" and self.turn is not None:
                    events.append(self._end_turn())
            return events

    def _while_replying(self, chunk: np.ndarray, vad_events, events: list[LiveEvent]) -> None:
        if self._barged:
            self._next_audio.append(chunk)
            self._next_ended = self._next_ended or any(e.kind == "end" for e in vad_events)
            return
        self._remember(chunk)
        if self.options.barge_in and any(e.kind == "start" for e in vad_events):
            self._barged = True
            self.session.cancel()  # a reply iterated in another thread stops after its current step
            self._next_audio = list(self._recent)
            self._recent = []
            events.append(SpeechStarted(self.mic_samples, True))

    def _remember(self, chunk: np.ndarray) -> None:
        self._recent.append(chunk)
        while len(self._recent) > 1 and sum(len(c) for c in self._recent[1:]) >= self._preroll:
            self._recent.pop(0)

    def _open_turn(self, audio: np.ndarray) -> LiveTurn:
        conversation = self.session.conversation
        first = conversation.length == 0 and not conversation.pending
        o = self.options
        turn = LiveTurn(self.session, o.prompt, o.system if first else None, camera=o.camera)
        self._turn_start = self.mic_samples - len(audio)
        if o.camera and self._frame is not None:
            turn.add_frame(self._frame, 0.0)  # what the camera saw as the user started
        turn.add_audio(audio)
        return turn

    def feed_frame(self, frame: np.ndarray, seconds: float | None = None) -> None:
        """A camera frame (uint8 [H, W, 3] RGB) taken at `seconds` on the microphone's clock (default: now,
        i.e. after the audio fed so far). Needs LiveOptions(camera=True)."""
        if not self.options.camera:
            raise InputError("this live conversation has no camera; pass LiveOptions(camera=True)")
        with self._lock:
            at = self.mic_samples / 16_000 if seconds is None else seconds
            if self.turn is not None and not self._replying:
                self.turn.add_frame(frame, max(0.0, at - self._turn_start / 16_000))
            else:
                self._frame = np.asarray(frame)

    def _end_turn(self) -> TurnEnded:
        assert self.turn is not None
        turn, self.turn = self.turn, None
        self._ended = turn
        self.vad.reset()  # the reply starts a fresh count: barge-in needs start_ms of speech from here
        return TurnEnded(self.mic_samples, turn.mel.samples / 16_000, turn.blocks_prefilled)

    def end_turn(self) -> TurnEnded | None:
        """End the user turn now (push-to-talk, or a caller's own end-of-turn rule)."""
        with self._lock:
            return self._end_turn() if self.turn is not None else None

    def cancel(self) -> None:
        """Stop the running reply as a barge-in would (the conversation keeps what was heard), without a new
        user turn; safe from another thread."""
        with self._lock:
            if self._replying and not self._barged:
                self._barged = True
                self.session.cancel()

    def played(self, samples: int) -> None:
        """Reply samples played so far (the playback device's count); without it, every yielded sample is
        taken as played when a barge-in cuts the reply."""
        self._played = samples

    # -- the reply -------------------------------------------------------------------------------------
    def reply(self) -> Iterator:
        """Stream the reply to the turn that ended (runtime.session events). It stops before its next event
        once the user speaks over it; the conversation is then rewound to what was heard, the last event is
        a BargeIn, and the barging speech is already the next user turn (`live.turn`)."""
        with self._lock:
            if self._ended is None or self._replying:
                raise InputError("no user turn is waiting for a reply; feed audio until a turn ends")
            turn, o = self._ended, self.options
            stream = turn.reply(o.max_new_tokens, o.sampling, o.seed, o.speech)  # a refused request raises here
            self._replying, self._played = True, None
            reply_start = turn.start_length + len(turn.fed_ids)
        shown = yielded = generated = 0
        barge: BargeIn | None = None
        try:
            for event in stream:
                if self._barged:
                    break
                conversation = self.session.conversation
                generated = conversation.length - reply_start + len(conversation.pending)
                if isinstance(event, TextDelta):
                    shown = generated
                elif isinstance(event, AudioChunk):
                    yielded += len(event.samples)
                yield event
        finally:
            stream.close()
            with self._lock:
                if self._barged:
                    barge = self._barge_event(reply_start, shown, yielded, generated)
                self._replying, self._ended, self._barged = False, None, False
                if barge is not None:
                    audio, self._next_audio = self._next_audio, []
                    self.turn = self._open_turn(np.concatenate(audio)) if audio else None
                    if self._next_ended and self.turn is not None:
                        self._end_turn()
                self._next_ended = False
        if barge is not None:
            yield barge

    def _barge_event(self, reply_start: int, shown: int, yielded: int, generated: int) -> BargeIn:
        heard = yielded if self._played is None else min(self._played, yielded)
        keep = shown
        if self.options.speech is not None and self._samples_per_code:
            keep = min(shown, heard // self._samples_per_code)
        rewind(self.session, reply_start, keep)
        return BargeIn(keep, generated, heard)


def rewind(session, reply_start: int, keep: int) -> None:
    """Cut the running conversation back to the first `keep` tokens of the reply that starts at cache index
    `reply_start` (KV cache, Talker track, TMRoPE ids). A token not yet fed (the pending one) is kept as
    pending when it is the k-th. Would sit better on Session (session.truncate)."""
    conversation = session.conversation
    fed = conversation.length - reply_start
    if keep > fed:  # every fed token and the pending one are kept: nothing to cut
        return
    conversation.truncate(reply_start + keep)
    session.thinker.cache.truncate(reply_start + keep)
