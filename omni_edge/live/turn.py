"""One user turn fed as it arrives: each completed audio block is encoded and prefilled at once.

    turn = LiveTurn(session, prompt="Answer briefly.")
    for chunk in microphone():            # 16 kHz float32, any size (20 ms is typical)
        turn.add_audio(chunk)             # a completed 2 s block: log-mel, audio_encoder, Thinker prefill
    for event in turn.reply(max_new_tokens=64):   # the last partial block, the closing tokens, the reply
        ...

The turn has the layout of the whole-clip path (`Session.generate(prompt, audio=[clip])`): the template and
`<|audio_bos|>` first, the audio tokens, then `<|audio_eos|>`, the prompt text and the assistant header; the
pieces are cut only at special tokens, so their ids are the whole turn's ids, and the audio tokens take one
TMRoPE id each, continuing from the header as rope_index numbers them.

Causal log-mel. The reference floors every frame at `max(clip) - 8` (then (x + 4) / 4), and the clip's
maximum is unknown while it is still arriving. A block is normalised with the running maximum: the peak of
every frame up to the end of that block. The block's frames themselves are exact (a frame needs 25 ms of
audio, so a block waits 2.5 ms past its end); only values below the final floor can differ, and only in
blocks that came before the loudest frame. The last block sees the whole clip, so its floor is the
reference's, and a clip whose loudest frame lies in its first block gives the reference's features exactly.
"""

from __future__ import annotations

import numpy as np

from omni_edge import naming
from omni_edge.errors import InputError
from omni_edge.runtime.audio_blocks import tokens_for_frames
from omni_edge.runtime.audio_frontend import HOP, MAX_SAMPLES, N_FFT, clip_frames, log_mel_span, normalise_log_mel
from omni_edge.runtime.chat import Segment
from omni_edge.runtime.conversation import Turn
from omni_edge.runtime.sampling import SamplingConfig
from omni_edge.runtime.speech import SpeechOptions
from omni_edge.runtime.tmrope import chunk_bounds, frame_times, vision_ids
from omni_edge.runtime.vision_frontend import _resize, preprocess_video, video_frame_size

# The live turn's audio may not reach log_mel's 300 s window, whose last frame the reference drops.
MAX_LIVE_SAMPLES = MAX_SAMPLES - N_FFT - HOP


class CausalLogMel:
    """Audio in, normalised log-mel blocks out as soon as each block's frames are known."""

    def __init__(self, block_frames: int):
        self.block_frames = block_frames
        self._buffer = np.zeros(16_000 * 8, dtype=np.float32)
        self.samples = 0
        self.blocks = 0  # full blocks handed out
        self.peak = -np.inf  # running maximum of the unnormalised frames

    @property
    def waveform(self) -> np.ndarray:
        return self._buffer[: self.samples]

    def add(self, chunk: np.ndarray) -> list[np.ndarray]:
        """Append 16 kHz samples; returns the [128, block_frames] blocks completed by them."""
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        if self.samples + len(chunk) > MAX_LIVE_SAMPLES:
            raise InputError("a live turn is limited to 300 s of audio; end the turn earlier")
        if not np.all(np.isfinite(chunk)):
            raise InputError("the audio chunk contains NaN or infinite samples; check the audio source")
        if self.samples + len(chunk) > len(self._buffer):
            grown = np.zeros(max(2 * len(self._buffer), self.samples + len(chunk)), dtype=np.float32)
            grown[: self.samples] = self.waveform
            self._buffer = grown
        self._buffer[self.samples : self.samples + len(chunk)] = chunk
        self.samples += len(chunk)
        out = []
        # Block b is known once its last frame's window, centred on frame * HOP, has all its samples.
        while self.samples >= ((self.blocks + 1) * self.block_frames - 1) * HOP + N_FFT // 2:
            start = self.blocks * self.block_frames
            raw = log_mel_span(self.waveform, start, start + self.block_frames)
            self.peak = max(self.peak, float(raw.max()))
            out.append(normalise_log_mel(raw, self.peak))
            self.blocks += 1
        return out

    def finish(self) -> np.ndarray:
        """The clip has ended: the last block's frames [128, valid] (possibly none), with the final peak,
        taken over the frames the reference takes it over."""
        valid, total = clip_frames(self.samples)
        start = self.blocks * self.block_frames
        raw = log_mel_span(self.waveform, start, max(total, start + 1))
        self.peak = max(self.peak, float(raw.max()))
        return normalise_log_mel(raw[:, : max(valid - start, 0)], self.peak)


class LiveTurn:
    """A user turn whose audio (and camera frames) are prefilled block by block while the user is speaking."""

    def __init__(self, session, prompt: str = "", system: str | None = None, camera: bool = False):
        self.session = session
        info = session.manifest.media
        self.info = info
        self.block_frames = int(getattr(info, "audio_block_frames", 200))
        self.mel = CausalLogMel(self.block_frames)
        self.camera = camera
        self.per_chunk = int(info.position_id_per_seconds * info.seconds_per_chunk)  # TMRoPE ids per chunk
        if camera and int(tokens_for_frames(self.block_frames)) != self.per_chunk:
            raise InputError(
                f"live camera input interleaves {info.seconds_per_chunk} s chunks, but this bundle's audio blocks "
                f"are {self.block_frames} mel frames; use audio-only live input with it"
            )
        conversation = session.conversation
        token = session.tokenizer.token_text
        if camera:  # the layout of a video with its sound track (use_audio_in_video)
            opening = token(info.vision_start_token_id) + token(info.audio_start_token_id)
            brackets = opening + token(info.audio_end_token_id) + token(info.vision_end_token_id)
        else:
            brackets = token(info.audio_start_token_id) + token(info.audio_end_token_id)
        content = (Segment(brackets, True), Segment(prompt)) if prompt else (Segment(brackets, True),)
        ids = conversation.user_turn_ids(content, system)
        cut = ids.index(info.audio_start_token_id) + 1
        self.header, self.closing = ids[:cut], ids[cut:]
        self.start_length = conversation.length  # where this turn starts in the cache (barge-in rewinds here)
        self.fed: list[Turn] = []  # the pieces fed so far (the last one is the tail, fed by the reply)
        shared = 2 if camera else 0  # <|vision_bos|><|audio_bos|> share one id, as rope_index numbers them
        start = conversation.next_position
        self._header_positions = (
            np.concatenate([np.arange(len(self.header) - shared), np.full(shared, len(self.header) - shared)]).astype(
                np.int64
            )
            + start
        )
        self.media_start = int(self._header_positions.max()) + 1
        self._last_max = self.media_start - 1  # max id of the last piece: where the closing tokens continue
        self.audio_tokens = 0  # audio tokens placed so far
        self.frames: list[np.ndarray] = []  # camera frames sampled at 2 fps: frame k at k / 2 s into the turn
        self._frame_size: tuple[int, int] | None = None
        self._grids = 0  # video grids (2 frames each) placed so far
        self._waiting: list[np.ndarray] = []  # encoded audio blocks waiting for their frames
        self.blocks_prefilled = 0
        self.finished = False

    @property
    def waveform(self) -> np.ndarray:
        return self.mel.waveform

    @property
    def fed_ids(self) -> list[int]:
        return [i for piece in self.fed for i in piece.ids]

    def add_audio(self, chunk: np.ndarray) -> int:
        """Feed 16 kHz float32 samples; each block they complete is encoded and prefilled now (with a camera,
        once its frames are there too). Returns the number of blocks prefilled by this call."""
        if self.finished:
            raise InputError("this live turn has ended; start a new one")
        for block in self.mel.add(chunk):
            self._waiting.append(self._encode(block[None], np.array([self.block_frames], dtype=np.int64)))
        return self._prefill_ready()

    def add_frame(self, frame: np.ndarray, seconds: float) -> int:
        """A camera frame (uint8 [H, W, 3] RGB) taken `seconds` after the turn's first sample. Frames are
        sampled at 2 fps: sample k is the first frame at or after k / 2 s (repeated if the camera skips)."""
        if not self.camera:
            raise InputError("this live turn was opened without a camera; pass camera=True")
        if self.finished:
            raise InputError("this live turn has ended; start a new one")
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise InputError(f"a camera frame must be uint8 [H, W, 3] RGB, got {frame.dtype} {frame.shape}")
        if self._frame_size is None:
            # The size a 2 s clip's frames get (qwen-omni-utils' budget): the whole-clip size for clips < 150 s.
            self._frame_size = video_frame_size(4, frame.shape[0], frame.shape[1])
        if len(self.frames) * 0.5 <= seconds:
            resized = _resize(frame, *self._frame_size)
            while len(self.frames) * 0.5 <= seconds:
                self.frames.append(resized)
        return self._prefill_ready()

    def reply(
        self,
        max_new_tokens: int = 128,
        sampling: SamplingConfig = SamplingConfig(),
        seed: int | None = None,
        speech: SpeechOptions | None = None,
    ):
        """End the turn: the last partial block (and the frames not yet fed), the closing tokens and the reply,
        streamed (Session events)."""
        if self.finished:
            raise InputError("this live turn has ended already")
        last = self.mel.finish()
        self._waiting.append(self._encode(self._padded(last), np.array([last.shape[1]], dtype=np.int64)))
        audio = np.concatenate(self._waiting)
        if self.audio_tokens + len(audio) == 0:
            raise InputError("the live turn has too little audio for a single token (under 30 ms)")
        if self.camera and not self.frames:
            raise InputError("the live turn has no camera frame; feed at least one with add_frame")
        self.finished = True
        seconds = self.mel.samples / 16_000
        frames = self.frames[2 * self._grids : max(2 * self._grids, int(np.ceil(seconds * 2)))]
        turn = self._piece(audio, frames, closing=True)
        self.fed.append(turn)
        return self.session.generate_from_ids(
            turn.ids, max_new_tokens, sampling, seed, embeds=turn.embeds, positions=turn.positions, speech=speech
        )

    # -- pieces ----------------------------------------------------------------------------------------
    def _prefill_ready(self) -> int:
        done = 0
        while self._waiting and (not self.camera or len(self.frames) >= 2 * self._grids + 4):
            frames = self.frames[2 * self._grids : 2 * self._grids + 4] if self.camera else []
            piece = self._piece(self._waiting.pop(0), frames, closing=False)
            self.session.prefill(piece)
            self.fed.append(piece)
            self.blocks_prefilled += 1
            done += 1
        return done

    def _padded(self, mel: np.ndarray) -> np.ndarray:
        block = np.zeros((1, mel.shape[0], self.block_frames), dtype=np.float32)
        block[0, :, : mel.shape[1]] = mel
        return block

    def _encode(self, blocks: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        if int(tokens_for_frames(lengths[0])) <= 0:
            return np.zeros((0, self.session.embeddings.shape[1]), dtype=np.float32)
        # MediaEncoders encodes whole clips; a live block is a batch of one through the same graph.
        encoder = self.session.media._engine(naming.AUDIO_ENCODER, "live audio")
        encoded = encoder.run({"input_features": blocks, "block_lengths": lengths})["audio_embeds"]
        return encoded[0, : int(tokens_for_frames(lengths[0]))]

    def _video(self, frames: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings and TMRoPE ids of frames (an odd count repeats the last one, as the processor does)."""
        patches, grid, _ = preprocess_video(np.stack(frames), 2.0)
        t, h, w = (int(v) for v in grid[0])
        embeds = self.session.media._encode_patches(patches, (t, h, w), "live camera")
        times = frame_times(self._grids + t, 1.0, self.info.position_id_per_seconds)[self._grids :]
        ids = vision_ids(self.media_start, (t, h, w), times, self.info.spatial_merge_size)
        self._grids += t
        return embeds, ids

    def _piece(self, audio: np.ndarray, frames: list[np.ndarray], closing: bool) -> Turn:
        """The next piece of the turn: the header first, then per 2 s chunk its video tokens and its audio
        tokens (rope_index's interleaving of a video with its sound track), and with `closing` the tokens
        after the media, numbered from the last chunk's max id + 1 as rope_index does."""
        info, table = self.info, self.session.embeddings
        ids: list[int] = []
        embeds: list[np.ndarray] = []
        positions: list[np.ndarray] = []

        def add(piece_ids: list[int], piece_embeds: np.ndarray, piece_positions: np.ndarray) -> None:
            ids.extend(piece_ids)
            embeds.append(piece_embeds)
            positions.append(piece_positions)

        if not self.fed:
            add(self.header, table[self.header], np.broadcast_to(self._header_positions, (3, len(self.header))))
        base = self.media_start + self.per_chunk * self.blocks_prefilled  # the first chunk of this piece
        audio_ids = np.broadcast_to(self.media_start + self.audio_tokens + np.arange(len(audio)), (3, len(audio)))
        self.audio_tokens += len(audio)
        video_embeds, video_ids = self._video(frames) if frames else (audio[:0], audio_ids[:, :0])
        video_chunks = chunk_bounds(video_ids[0] - base, self.per_chunk) if frames else []
        audio_chunks = chunk_bounds(audio_ids[0] - base, self.per_chunk)
        for j in range(max(len(video_chunks), len(audio_chunks))):
            for kind, rows, at, chunks in (
                (info.video_token_id, video_embeds, video_ids, video_chunks),
                (info.audio_token_id, audio, audio_ids, audio_chunks),
            ):
                if j < len(chunks) and chunks[j][1] > chunks[j][0]:
                    a, b = chunks[j]
                    add([kind] * (b - a), rows[a:b], at[:, a:b])
                    self._last_max = int(at[:, a:b].max())
        if closing:
            brackets = 2 if self.camera else 1  # <|audio_eos|>(<|vision_eos|>) on one id
            rest = len(self.closing) - brackets
            after = np.concatenate([np.full(brackets, self._last_max + 1), self._last_max + 2 + np.arange(rest)])
            add(self.closing, table[self.closing], np.broadcast_to(after, (3, len(self.closing))))
        stacked = np.concatenate(positions, axis=1).astype(np.int64)[:, None, :]
        return Turn(ids, np.concatenate(embeds).astype(table.dtype, copy=False), stacked)
