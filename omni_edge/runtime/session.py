"""The streaming session: a bundle loaded once, conversations run turn by turn with the KV cache reused.

    with Session("build/") as session:
        for event in session.generate("Hello!", max_new_tokens=32):
            if isinstance(event, TextDelta):
                print(event.text, end="", flush=True)

A turn follows the paper's pipeline top to bottom: media through the encoders, the user turn built
(ids, embeddings, TMRoPE ids), the Thinker streaming text, and, for a spoken reply, the Talker one step
behind it with token2wav (DiT, then BigVGAN) streaming PCM behind the Talker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from omni_edge import naming
from omni_edge.bundle import load_manifest
from omni_edge.bundle_trust import read_verified
from omni_edge.errors import InputError
from omni_edge.runtime.chat import TextStreamer, TextTokenizer
from omni_edge.runtime.conversation import Conversation, Turn
from omni_edge.runtime.embedding_table import EmbeddingTable
from omni_edge.runtime.engine import Engine, open_engine
from omni_edge.runtime.kv_cache import new_kv_cache
from omni_edge.runtime.limits import check_seed, check_text
from omni_edge.runtime.media import MediaEncoders
from omni_edge.runtime.media_budget import check_turn_media
from omni_edge.runtime.positions import text_positions
from omni_edge.runtime.prompt import Part
from omni_edge.runtime.sampling import SamplingConfig, sample_token
from omni_edge.runtime.speech import AudioChunk, SpeechOptions, SpeechPipeline, SpokenReply
from omni_edge.runtime.thinker import Thinker


@dataclass(frozen=True)
class TextDelta:
    text: str
    token_id: int


@dataclass(frozen=True)
class TurnResult:
    text: str
    prompt_token_ids: list[int]  # ids fed to the Thinker for this turn
    text_token_ids: list[int]  # generated ids, eos included when it was produced
    finish_reason: str  # "eos", "length" or "cancelled"
    ttft_ms: float  # from the hand-over of the turn (generate called: front ends and encoders included)
    total_ms: float  # from the hand-over to the end of the turn
    decode_tokens_per_s: float
    codec_token_ids: list[int] = field(default_factory=list)
    audio_seconds: float = 0.0
    first_audio_ms: float | None = None
    rtf: float | None = None  # wall time of the turn / seconds of audio produced
    talker_stop_reason: str | None = None  # "eos" or "max_codec_tokens" when speech was produced


@dataclass(frozen=True)
class Done:
    result: TurnResult


Event = TextDelta | AudioChunk | Done


def _waveform(audio) -> np.ndarray:
    """A path is read and resampled to 16 kHz mono; an array is taken as 16 kHz mono already."""
    from omni_edge.runtime.audio_frontend import load_audio

    return load_audio(audio) if isinstance(audio, (str, Path)) else np.asarray(audio, dtype=np.float32)


class Session:
    def __init__(
        self,
        bundle_dir: str | Path,
        threads: int = 0,
        verify: bool = True,
        wrap_engine: Callable[[Engine], Engine] | None = None,
        manifest_sha256: str | None = None,
    ):
        """`verify=False` skips the hashes (the export's own staging bundles). `wrap_engine` sees every engine
        the session opens and may return a stand-in with the same interface (calibration records feeds).
        `manifest_sha256` pins manifest.json to a hash kept apart from the bundle (bundle_trust.manifest_sha256).
        Every file is opened from the bytes that were hashed, so a file changed after load is refused."""
        self.bundle_dir = Path(bundle_dir)
        self.manifest = load_manifest(self.bundle_dir, verify_files=verify, manifest_sha256=manifest_sha256)
        self._files = files = self.manifest.files if verify else None
        wrap = wrap_engine or (lambda engine: engine)
        self._engines: list[Engine] = []
        self._open = lambda name: self._opened(wrap(open_engine(self.bundle_dir, self.manifest, name, threads, verify)))
        self.embeddings = EmbeddingTable(self.bundle_dir, files, self.manifest.thinker.embedding_file)
        self.tokenizer = TextTokenizer(read_verified(self.bundle_dir, files, self.manifest.tokenizer_file, "tokenizer"))
        self.eos_ids = frozenset(self.manifest.thinker.eos_token_ids)
        self.media = MediaEncoders(self.manifest, self._open)
        decoder = self._open(naming.THINKER_DECODER)  # first: it says so when this machine cannot run the bundle
        shared = self.manifest.components[naming.THINKER_DECODER].shared_kv_buffer
        self.thinker = Thinker(decoder, new_kv_cache(self.manifest.backend, self.manifest.kv_cache, shared))
        self.conversation = Conversation(
            self.tokenizer, self.embeddings, self.manifest.media, speech=self.manifest.talker is not None
        )
        self._speech: SpeechPipeline | None = None
        self._cancel = threading.Event()
        self._one_turn = threading.Lock()

    def _opened(self, engine: Engine) -> Engine:
        self._engines.append(engine)
        return engine

    @property
    def cache(self):
        return self.thinker.cache

    # -- conversation state -------------------------------------------------------------------
    def reset(self) -> None:
        """Start a new conversation; the cache memory is kept."""
        self.thinker.cache.reset()
        self.conversation.reset()

    def speech(self) -> SpeechPipeline:
        """The Talker, DiT and BigVGAN of the bundle, opened on first use."""
        if self._speech is None:
            self._speech = SpeechPipeline(self.bundle_dir, self.manifest, self._open, self.embeddings, self._files)
        return self._speech

    def cancel(self) -> None:
        """Stop the turn handed over last, after its current step (barge-in); safe from another thread, and
        before its first event too."""
        self._cancel.set()

    def close(self) -> None:
        """Free what the engines and caches hold (device memory and streams under TensorRT)."""
        caches = [self.thinker.cache] + ([self._speech.talker.cache] if self._speech else [])
        for resource in [*self._engines, *caches]:
            close = getattr(resource, "close", None)  # host-memory engines and caches own nothing to free
            if close:
                close()
        self._engines.clear()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def next_turn_ids(self, prompt: str, system: str | None = None) -> list[int]:
        """The ids a text prompt would feed after what the conversation holds."""
        return self.conversation.user_turn([prompt], system).ids

    def media_parts(self, audio=(), images=(), videos=(), use_audio_in_video: bool = False) -> list[Part]:
        """Encode media (paths or decoded arrays) into parts: audio clips, then images, then videos."""
        parts: list[Part] = [self.media.encode_audio(_waveform(a)) for a in audio]
        parts += [self.media.encode_image(i) for i in images]
        parts += [self.media.encode_video(v, use_audio_in_video) for v in videos]
        return parts

    # -- a turn -------------------------------------------------------------------------------
    def generate(
        self,
        prompt: str,
        max_new_tokens: int = 128,
        sampling: SamplingConfig = SamplingConfig(),
        seed: int | None = None,
        system: str | None = None,
        *,
        audio=(),
        images=(),
        videos=(),
        use_audio_in_video: bool = False,
        speech: SpeechOptions | None = None,
        allow_special_tokens: bool = False,
    ) -> Iterator[Event]:
        """Stream the reply to one user turn: media first (audio, images, videos), then the prompt text.

        With `speech`, the reply is also spoken: AudioChunk events arrive while text is still streaming.
        Special tokens typed in `prompt` stay text unless `allow_special_tokens`. Everything that can be
        wrong with the request is refused here, before any event."""
        handed_over = time.perf_counter()
        self._cancel.clear()
        check_text(prompt, "prompt")
        check_text(system, "system")
        if not prompt.strip() and not (audio or images or videos):
            raise InputError("the prompt is empty; pass some text with --prompt or media with --audio/--image/--video")
        if use_audio_in_video and not videos:
            raise InputError("--audio-in-video needs at least one --video")
        # Media are costed from their headers and refused before anything is decoded or encoded.
        cache = self.thinker.cache
        room = cache.room() - len(self.conversation.pending)
        check_turn_media(room, cache.capacity, self.manifest.media, audio, images, videos, use_audio_in_video)
        parts = self.media_parts(audio, images, videos, use_audio_in_video) + ([prompt] if prompt else [])
        turn = self.conversation.user_turn(parts, system, allow_special_tokens)
        return self._handed_over(turn, max_new_tokens, sampling, seed, speech, handed_over)

    def generate_from_ids(
        self,
        prompt_ids: list[int],
        max_new_tokens: int = 128,
        sampling: SamplingConfig = SamplingConfig(),
        seed: int | None = None,
        embeds: np.ndarray | None = None,
        positions: np.ndarray | None = None,
        speech: SpeechOptions | None = None,
    ) -> Iterator[Event]:
        """Feed `prompt_ids` after what the cache holds and stream the reply.

        `embeds` [n, hidden] replaces the token embeddings (media spliced in); `positions` [3, 1, n]
        the text positions (TMRoPE for media)."""
        handed_over = time.perf_counter()
        self._cancel.clear()
        ids = list(prompt_ids)
        turn = Turn(
            ids,
            self.embeddings[np.asarray(ids)] if embeds is None else embeds,
            text_positions(self.conversation.next_position, len(ids)) if positions is None else positions,
        )
        return self._handed_over(turn, max_new_tokens, sampling, seed, speech, handed_over)

    def prefill(self, turn: Turn) -> None:
        """Feed part of a user turn now, ahead of its reply (live input: each audio block as it arrives); the
        reply is then generated from the rest with generate_from_ids. Refused while a turn is running."""
        self.thinker.cache.check_room(len(turn.ids), "this input")
        if not self._one_turn.acquire(blocking=False):
            raise InputError("a turn is running on this session; feed input between turns")
        try:
            _, hidden = self.thinker.forward(turn)
            self.conversation.fed(turn, hidden)
        finally:
            self._one_turn.release()

    def _handed_over(self, turn: Turn, max_new_tokens, sampling, seed, speech, started) -> Iterator[Event]:
        """Check the whole request once, then return its stream (which runs as it is read)."""
        sampling.validate()
        check_seed(seed)
        if max_new_tokens < 1:
            raise InputError("--max-new-tokens must be at least 1")
        # The last sampled token is never fed, so a turn needs prompt + max_new_tokens - 1 cache slots.
        self.thinker.cache.check_room(len(turn.ids) + max_new_tokens - 1, "this prompt plus --max-new-tokens")
        if speech is not None:
            # The Talker's prompt: every token fed before the reply's first, i.e. the conversation + this turn.
            self.speech().check(speech, self.conversation.length + len(turn.ids))
        state = (self.conversation.length, self.conversation.pending)
        return self._stream(turn, max_new_tokens, sampling, np.random.default_rng(seed), speech, started, state)

    def _stream(self, turn, max_new_tokens, sampling, rng, speech, started, state) -> Iterator[Event]:
        if not self._one_turn.acquire(blocking=False):
            raise InputError(
                "another turn is running on this session; a session runs one turn at a time (use one "
                "Session per thread, or finish or close the running turn first)"
            )
        try:
            if (self.conversation.length, self.conversation.pending) != state:
                raise InputError(
                    "the conversation moved on since this turn was built (another turn ran in between); call "
                    "generate() again"
                )
            yield from self._turn(turn, max_new_tokens, sampling, rng, speech, started)
        finally:
            self._one_turn.release()

    def _turn(self, turn, max_new_tokens, sampling, rng, speech, started) -> Iterator[Event]:
        conversation = self.conversation
        prompt_ids = list(turn.ids)
        history = list(prompt_ids)  # what the repetition penalty sees
        generated: list[int] = []
        streamer = TextStreamer(self.tokenizer)
        reply: SpokenReply | None = None
        ttft = first_audio = None
        finish = "length"
        feed = turn
        while len(generated) < max_new_tokens:
            if self._cancel.is_set():
                finish = "cancelled"
                break
            # The Thinker: feed the turn (then each sampled token), record it in the conversation at once.
            logits, hidden = self.thinker.forward(feed)
            conversation.fed(feed, hidden)
            # The Talker, one step behind: the row just fed is Y_j of the reply's j-th token.
            if speech is not None and generated:
                if reply is None:
                    assert conversation.track is not None  # speech bundles keep it (speech() refused others)
                    reply = self.speech().begin(speech, conversation.track, conversation.length - 1)
                for chunk in reply.follow():
                    first_audio = first_audio or time.perf_counter() - started
                    yield chunk
            token = sample_token(logits, np.asarray(history, dtype=np.int64), sampling, rng)
            ttft = ttft or time.perf_counter() - started
            generated.append(token)
            history.append(token)
            conversation.sampled(token)
            delta = streamer.push(token)
            if delta:
                yield TextDelta(delta, token)
            if token in self.eos_ids:
                finish = "eos"
                conversation.closed()
                break
            feed = conversation.token_turn(token)
        tail = streamer.flush()
        if tail:
            yield TextDelta(tail, generated[-1])
        text_done = time.perf_counter() - started
        if reply is not None and finish != "cancelled":
            for chunk in reply.finish():
                if self._cancel.is_set():
                    break
                first_audio = first_audio or time.perf_counter() - started
                yield chunk
        yield Done(self._result(prompt_ids, generated, finish, started, ttft, text_done, first_audio, reply))

    def _result(self, prompt_ids, generated, finish, started, ttft, text_done, first_audio, reply) -> TurnResult:
        total = time.perf_counter() - started
        decode_time = text_done - (ttft or text_done)
        decode_tps = (len(generated) - 1) / decode_time if len(generated) > 1 and decode_time > 0 else 0.0
        audio_seconds = reply.samples_emitted / reply.sample_rate if reply else 0.0
        return TurnResult(
            text=self.tokenizer.decode(generated),
            prompt_token_ids=prompt_ids,
            text_token_ids=generated,
            finish_reason=finish,
            ttft_ms=1000 * (ttft or total),
            total_ms=1000 * total,
            decode_tokens_per_s=decode_tps,
            codec_token_ids=list(reply.codes) if reply else [],
            audio_seconds=audio_seconds,
            first_audio_ms=1000 * first_audio if first_audio else None,
            rtf=total / audio_seconds if audio_seconds else None,
            talker_stop_reason=reply.turn.stop_reason if reply and reply.turn else None,
        )
