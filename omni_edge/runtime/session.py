"""The streaming session: a bundle loaded once, conversations run turn by turn with the KV cache reused.

session = Session("build/")
for event in session.generate("Hello!", max_new_tokens=32):
    if isinstance(event, TextDelta):
        print(event.text, end="", flush=True)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from omni_edge import naming
from omni_edge.bundle import Manifest, load_manifest
from omni_edge.errors import BundleError, InputError
from omni_edge.runtime.chat import Message, TextStreamer, TextTokenizer, render_chat, render_user_turn
from omni_edge.runtime.engine import Engine, OrtEngine
from omni_edge.runtime.kv_cache import cache_for
from omni_edge.runtime.media import MediaEncoders
from omni_edge.runtime.positions import text_positions
from omni_edge.runtime.prompt import ImagePart, Part, VideoPart, audio_sequence, splice_features, user_content
from omni_edge.runtime.sampling import SamplingConfig, sample_token
from omni_edge.runtime.speech import AudioChunk, SpeechOptions, SpeechPipeline
from omni_edge.runtime.tmrope import SpecialTokens, rope_index


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
    ttft_ms: float
    total_ms: float
    decode_tokens_per_s: float
    codec_token_ids: list[int] = field(default_factory=list)
    audio_seconds: float = 0.0
    first_audio_ms: float | None = None
    rtf: float | None = None  # wall time of the turn / seconds of audio produced
    talker_stop_reason: str | None = None  # "eos" or "max_codec_tokens" when speech was produced


@dataclass(frozen=True)
class Done:
    result: TurnResult


FIXED_SHAPE_ENGINES = (naming.DIT_WINDOW, naming.BIGVGAN_WINDOW)


def open_engine(bundle_dir: Path, manifest: Manifest, name: str, threads: int = 0) -> Engine:
    record = manifest.components.get(name)
    if record is None:
        raise BundleError(f"bundle {bundle_dir} has no {name} component; re-export it with that component")
    if manifest.backend == "onnxruntime":
        return OrtEngine(name, bundle_dir / record.file, threads=threads)
    if manifest.backend == "tensorrt":
        from omni_edge.runtime.trt_engine import TrtEngine

        if not record.engine_file:
            raise BundleError(
                f"bundle {bundle_dir} has no TensorRT engines yet (exported with --no-engines); "
                f"build them on this device: omni-build-engines {bundle_dir}"
            )
        # DiT and BigVGAN windows have one fixed shape: their launches replay as a CUDA graph.
        return TrtEngine(
            name,
            bundle_dir / record.engine_file,
            manifest.tensorrt,
            bundle_dir,
            manifest.target,
            cuda_graph=name in FIXED_SHAPE_ENGINES,
        )
    raise BundleError(
        f"bundle {bundle_dir} is for backend {manifest.backend}, which this runtime cannot load yet; "
        "export a --target cpu bundle for ONNX Runtime"
    )


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
    ):
        """`wrap_engine` sees every engine the session opens and may return a stand-in with the same
        interface (the export's calibration records the feeds this way)."""
        from safetensors.numpy import load_file

        self.bundle_dir = Path(bundle_dir)
        self.manifest = load_manifest(self.bundle_dir, verify_files=verify)
        wrap = wrap_engine or (lambda engine: engine)
        self._open = lambda name: wrap(open_engine(self.bundle_dir, self.manifest, name, threads))
        self.prefill = self._open(naming.THINKER_PREFILL)
        self.decode = self._open(naming.THINKER_DECODE)
        self.embeddings = load_file(str(self.bundle_dir / self.manifest.thinker.embedding_file))["weight"]
        self.tokenizer = TextTokenizer(self.bundle_dir / self.manifest.tokenizer_file)
        self.eos_ids = frozenset(self.manifest.thinker.eos_token_ids)
        self.cache = cache_for(self.decode, self.manifest.kv_cache)
        self.media = MediaEncoders(self.manifest, self._open)
        self._speech: SpeechPipeline | None = None
        info = self.manifest.media
        self._placeholders = np.asarray([info.audio_token_id, info.image_token_id, info.video_token_id])
        self._cancel = threading.Event()
        self.reset()

    # -- conversation state -------------------------------------------------------------------
    def reset(self) -> None:
        """Start a new conversation; the cache memory is kept."""
        self.cache.reset()
        self._unfed: list[int] = []  # generated ids whose KV is not in the cache yet (the last one)
        self._turn_closed = True
        self._next_position = 0
        # Per cached token: H_last + E (E zeroed at media placeholders) and its TMRoPE ids: the Talker's prompt.
        self._talker_rows: list[np.ndarray] = []
        self._row_positions: list[np.ndarray] = []

    def speech(self) -> SpeechPipeline:
        """The Talker, DiT and BigVGAN of the bundle, opened on first use."""
        if self._speech is None:
            self._speech = SpeechPipeline(self.bundle_dir, self.manifest, self._open, self.embeddings)
        return self._speech

    def cancel(self) -> None:
        """Stop the running turn after the current step (barge-in). Safe to call from another thread."""
        self._cancel.set()

    def next_turn(self, parts: list[Part], system: str | None = None) -> tuple[list[int], np.ndarray]:
        """Token ids and position ids [3,1,n] to feed for a new user turn, after what the cache holds."""
        content = user_content(parts, self.manifest.media, self.tokenizer.token_text)
        if self.cache.length == 0 and not self._unfed:
            messages = ([Message("system", system)] if system else []) + [Message("user", content)]
            ids = self.tokenizer.encode(render_chat(messages))
        else:
            if system:
                raise InputError("a system prompt can only start a conversation; call reset() first")
            closing = [] if self._turn_closed else [self.tokenizer.im_end_id]
            ids = self._unfed + closing + self.tokenizer.encode("\n" + render_user_turn(content))
        return ids, self._prompt_positions(ids, parts)

    def next_turn_ids(self, prompt: str, system: str | None = None) -> list[int]:
        return self.next_turn([prompt], system)[0]

    def _prompt_positions(self, ids: list[int], parts: list[Part]) -> np.ndarray:
        info = self.manifest.media
        videos = [p for p in parts if isinstance(p, VideoPart)]
        with_audio = [v.audio is not None for v in videos]
        if any(with_audio) and not all(with_audio):
            raise InputError("use_audio_in_video applies to every video of a turn; give all or none an audio track")
        positions, _ = rope_index(
            np.asarray(ids),
            image_grid_thw=[p.grid_thw for p in parts if isinstance(p, ImagePart)],
            video_grid_thw=[v.grid_thw for v in videos],
            audio_mel_lengths=[a.mel_frames for a in audio_sequence(parts)],
            second_per_grid=[v.second_per_grid for v in videos],
            use_audio_in_video=any(with_audio),
            spatial_merge_size=info.spatial_merge_size,
            position_id_per_seconds=info.position_id_per_seconds,
            seconds_per_chunk=info.seconds_per_chunk,
            tokens=SpecialTokens(
                image=info.image_token_id,
                video=info.video_token_id,
                audio=info.audio_token_id,
                vision_start=info.vision_start_token_id,
                vision_end=info.vision_end_token_id,
                audio_start=info.audio_start_token_id,
                audio_end=info.audio_end_token_id,
            ),
        )
        # Ids continue from the conversation so far (max id + 1), as get_rope_index does over the whole text.
        return (positions + self._next_position)[:, None, :]

    def media_parts(self, audio=(), images=(), videos=(), use_audio_in_video: bool = False) -> list[Part]:
        """Encode media (paths or decoded arrays) into parts: audio clips, then images, then videos."""
        parts: list[Part] = [self.media.encode_audio(_waveform(a)) for a in audio]
        parts += [self.media.encode_image(i) for i in images]
        parts += [self.media.encode_video(v, use_audio_in_video) for v in videos]
        return parts

    # -- generation ---------------------------------------------------------------------------
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
    ) -> Iterator[TextDelta | AudioChunk | Done]:
        """Stream the reply to one user turn: media first (audio, images, videos), then the prompt text.

        With `speech`, the reply is also spoken: AudioChunk events arrive while text is still streaming.
        """
        if speech is not None:
            self.speech().check(speech)
        if not prompt.strip() and not (audio or images or videos):
            raise InputError("the prompt is empty; pass some text with --prompt or media with --audio/--image/--video")
        if use_audio_in_video and not videos:
            raise InputError("--audio-in-video needs at least one --video")
        parts = self.media_parts(audio, images, videos, use_audio_in_video) + ([prompt] if prompt else [])
        ids, positions = self.next_turn(parts, system)
        embeds = splice_features(self.embeddings[np.asarray(ids)], np.asarray(ids), parts, self.manifest.media)
        return self.generate_from_ids(
            ids, max_new_tokens, sampling, seed, embeds=embeds, positions=positions, speech=speech
        )

    def generate_from_ids(
        self,
        prompt_ids: list[int],
        max_new_tokens: int = 128,
        sampling: SamplingConfig = SamplingConfig(),
        seed: int | None = None,
        embeds: np.ndarray | None = None,
        positions: np.ndarray | None = None,
        speech: SpeechOptions | None = None,
    ) -> Iterator[TextDelta | AudioChunk | Done]:
        """Feed `prompt_ids` after what the cache holds and stream the reply.

        `embeds` [n, hidden] replaces the token embeddings (media spliced in); `positions` [3, 1, n]
        the text positions (TMRoPE for media).
        """
        sampling.validate()
        if max_new_tokens < 1:
            raise InputError("--max-new-tokens must be at least 1")
        # The last sampled token is never fed, so a turn needs prompt + max_new_tokens - 1 cache slots.
        self.cache.check_room(len(prompt_ids) + max_new_tokens - 1, "this prompt plus --max-new-tokens")
        first = (list(prompt_ids), embeds, positions)
        return self._stream(first, max_new_tokens, sampling, np.random.default_rng(seed), speech)

    def _stream(self, first, max_new_tokens, sampling, rng, speech=None) -> Iterator[TextDelta | AudioChunk | Done]:
        prompt_ids, embeds, positions = first
        self._cancel.clear()
        start = time.perf_counter()
        self._unfed = []
        self._turn_closed = False
        history = list(prompt_ids)
        generated: list[int] = []
        streamer = TextStreamer(self.tokenizer)
        feed = (prompt_ids, embeds, positions)
        ttft = first_audio = None
        finish = "length"
        reply = None
        while len(generated) < max_new_tokens:
            if self._cancel.is_set():
                finish = "cancelled"
                break
            logits = self._forward(*feed)
            if speech is not None and generated:
                # The row just computed is Y_j of generated[-1]: the Talker's next input exists now.
                if reply is None:
                    track = self._track()  # every cached token; the last row is Y_0
                    reply = self.speech().begin(speech, track[:-1], self._track_positions(len(track) - 1))
                for chunk in reply.on_text_row(self._talker_rows[-1][-1]):
                    first_audio = first_audio or time.perf_counter() - start
                    yield chunk
            token = sample_token(logits, np.asarray(history, dtype=np.int64), sampling, rng)
            if ttft is None:
                ttft = time.perf_counter() - start
            generated.append(token)
            history.append(token)
            self._unfed = [token]
            delta = streamer.push(token)
            if delta:
                yield TextDelta(delta, token)
            if token in self.eos_ids:
                finish = "eos"
                self._turn_closed = True
                break
            feed = ([token], None, None)
        tail = streamer.flush()
        if tail:
            yield TextDelta(tail, generated[-1])
        text_done = time.perf_counter() - start
        if reply is not None and finish != "cancelled":
            for chunk in reply.finish():
                if self._cancel.is_set():
                    break
                first_audio = first_audio or time.perf_counter() - start
                yield chunk
        total = time.perf_counter() - start
        decode_time = text_done - (ttft or text_done)
        decode_tps = (len(generated) - 1) / decode_time if len(generated) > 1 and decode_time > 0 else 0.0
        audio_seconds = reply.samples_emitted / reply.sample_rate if reply else 0.0
        yield Done(
            TurnResult(
                text=self.tokenizer.decode(generated),
                prompt_token_ids=list(prompt_ids),
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
        )

    def _track(self) -> np.ndarray:
        return np.concatenate(self._talker_rows)

    def _track_positions(self, count: int) -> np.ndarray:
        return np.concatenate(self._row_positions, axis=2)[:, :, :count]

    def _forward(self, ids: list[int], embeds: np.ndarray | None = None, positions: np.ndarray | None = None):
        """Run new tokens through prefill (empty cache) or decode, append their KV, return last logits."""
        count = len(ids)
        self.cache.check_room(count)
        if positions is None:
            positions = text_positions(self._next_position, count)
        if embeds is None:
            embeds = self.embeddings[np.asarray(ids)]
        outputs = self.cache.run(self.prefill, self.decode, {"inputs_embeds": embeds[None], "position_ids": positions})
        self._next_position = int(positions.max()) + 1
        # The reference feeds the Talker H_last + E with media features zeroed out of E.
        text_embeds = np.where(np.isin(np.asarray(ids), self._placeholders)[:, None], 0, embeds)
        self._talker_rows.append(outputs["last_hidden_state"][0] + text_embeds)
        self._row_positions.append(positions)
        return outputs["logits"][0, -1]
