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
from omni_edge.runtime.positions import text_positions
from omni_edge.runtime.sampling import SamplingConfig
from omni_edge.runtime.speech import SpeechOptions

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
    """A user turn whose audio is prefilled block by block while the user is still speaking."""

    def __init__(self, session, prompt: str = "", system: str | None = None):
        self.session = session
        info = session.manifest.media
        self.block_frames = int(getattr(info, "audio_block_frames", 200))
        self.mel = CausalLogMel(self.block_frames)
        conversation = session.conversation
        token = session.tokenizer.token_text
        brackets = Segment(token(info.audio_start_token_id) + token(info.audio_end_token_id), True)
        content = (brackets, Segment(prompt)) if prompt else (brackets,)
        ids = conversation.user_turn_ids(content, system)
        cut = ids.index(info.audio_start_token_id) + 1
        self.header, self.closing = ids[:cut], ids[cut:]
        self.start_length = conversation.length  # where this turn starts in the cache (barge-in rewinds here)
        self.fed: list[Turn] = []  # the pieces fed so far (the last one is the tail, fed by the reply)
        self._next_position = conversation.next_position
        self.blocks_prefilled = 0
        self.finished = False

    @property
    def waveform(self) -> np.ndarray:
        return self.mel.waveform

    @property
    def fed_ids(self) -> list[int]:
        return [i for piece in self.fed for i in piece.ids]

    def add_audio(self, chunk: np.ndarray) -> int:
        """Feed 16 kHz float32 samples; each block they complete is encoded and prefilled now. Returns the
        number of blocks prefilled by this call."""
        if self.finished:
            raise InputError("this live turn has ended; start a new one")
        blocks = self.mel.add(chunk)
        for block in blocks:
            tokens = self._encode(block[None], np.array([self.block_frames], dtype=np.int64))
            self._prefill(tokens, [] if self.blocks_prefilled else self.header)
            self.blocks_prefilled += 1
        return len(blocks)

    def reply(
        self,
        max_new_tokens: int = 128,
        sampling: SamplingConfig = SamplingConfig(),
        seed: int | None = None,
        speech: SpeechOptions | None = None,
    ):
        """End the turn: the last partial block, the closing tokens and the reply, streamed (Session events)."""
        if self.finished:
            raise InputError("this live turn has ended already")
        last = self.mel.finish()
        tokens = self._encode(self._padded(last), np.array([last.shape[1]], dtype=np.int64))
        if self.blocks_prefilled == 0 and len(tokens) == 0:
            raise InputError("the live turn has too little audio for a single token (under 30 ms)")
        self.finished = True
        ids, embeds, positions = self._piece(tokens, [] if self.blocks_prefilled else self.header, self.closing)
        self.fed.append(Turn(ids, embeds, positions))
        return self.session.generate_from_ids(
            ids, max_new_tokens, sampling, seed, embeds=embeds, positions=positions, speech=speech
        )

    # -- pieces ----------------------------------------------------------------------------------------
    def _padded(self, mel: np.ndarray) -> np.ndarray:
        block = np.zeros((1, mel.shape[0], self.block_frames), dtype=np.float32)
        block[0, :, : mel.shape[1]] = mel
        return block

    def _encode(self, blocks: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        if int(tokens_for_frames(lengths[0])) <= 0:
            return np.zeros((0, self.session.embeddings.shape[1]), dtype=np.float32)
        # MediaEncoders runs one batch of blocks; a live block is a batch of one.
        encoder = self.session.media._engine(naming.AUDIO_ENCODER, "live audio")
        encoded = encoder.run({"input_features": blocks, "block_lengths": lengths})["audio_embeds"]
        return encoded[0, : int(tokens_for_frames(lengths[0]))]

    def _piece(self, tokens: np.ndarray, before: list[int], after: list[int]):
        """(ids, embeddings, positions) of text `before`, the audio tokens, text `after`: one id per token."""
        audio_id = self.session.manifest.media.audio_token_id
        ids = before + [audio_id] * len(tokens) + after
        embeds = self.session.embeddings[np.asarray(ids, dtype=np.int64)].copy()
        embeds[len(before) : len(before) + len(tokens)] = tokens
        positions = text_positions(self._next_position, len(ids))
        self._next_position += len(ids)
        return ids, embeds, positions

    def _prefill(self, tokens: np.ndarray, before: list[int]) -> None:
        piece = Turn(*self._piece(tokens, before, []))
        self.session.prefill(piece)
        self.fed.append(piece)
