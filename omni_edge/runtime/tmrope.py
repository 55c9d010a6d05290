"""TMRoPE position ids for the Thinker: text, audio, image, video and audio inside video, in numpy.

Mirrors transformers' `Qwen2_5OmniPreTrainedModelForConditionalGeneration.get_rope_index` (batch 1, no
padding) id for id, including its quirks, because the Thinker graphs were trained on exactly those ids.
Every block starts at the previous piece's max + 1; text (and each bos/eos token) advances by one;
vision tokens get (start + frame time, start + row, start + col); audio advances one id per 40 ms token.
With `use_audio_in_video` the video frames and the audio tokens of one clip share the clock and are
interleaved in `seconds_per_chunk` chunks. During decode every row is `cache_index + rope_delta`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from omni_edge.errors import InputError
from omni_edge.runtime.audio_blocks import tokens_for_frames
from omni_edge.runtime.positions import text_positions


@dataclass(frozen=True)
class SpecialTokens:
    """Placeholder and bracket token ids; the defaults are the released Qwen2.5-Omni vocabulary."""

    image: int = 151655
    video: int = 151656
    audio: int = 151646
    vision_start: int = 151652
    vision_end: int = 151653
    audio_start: int = 151647
    audio_end: int = 151648


QWEN_TOKENS = SpecialTokens()


def audio_token_count(mel_len: int) -> int:
    """Thinker tokens for `mel_len` mel frames: conv stride 2, then avg-pool 2 (0 for fewer than 3 frames)."""
    return int(tokens_for_frames(mel_len))


def decode_positions(start_index: int, count: int, rope_delta: int) -> np.ndarray:
    """[3, 1, count] ids of tokens at KV-cache indices start_index.. : text ids shifted by the prompt's delta."""
    return text_positions(start_index + rope_delta, count)


def frame_times(grid_t: int, seconds_per_grid: float, position_id_per_seconds: float) -> np.ndarray:
    """Temporal id offset of each merged frame.

    transformers computes `(arange(t) * float32(spg) * pps).long()` in float32 and truncates; doing the
    same keeps parity for frame rates whose product is not exact (fps=3 -> spg=0.666...).
    """
    scaled = np.arange(grid_t, dtype=np.float32) * np.float32(seconds_per_grid) * np.float32(position_id_per_seconds)
    return scaled.astype(np.int64)


def vision_ids(start: int, grid_thw, times: np.ndarray, merge: int) -> np.ndarray:
    """[3, t*h*w/merge^2] ids of one image or video in token order (frame, row, column)."""
    t, h, w = (int(x) for x in grid_thw)
    rows, cols = h // merge, w // merge
    shape = (t, rows, cols)
    temporal = np.broadcast_to(times[:, None, None], shape)
    height = np.broadcast_to(np.arange(rows)[None, :, None], shape)
    width = np.broadcast_to(np.arange(cols)[None, None, :], shape)
    return np.stack([temporal.reshape(-1), height.reshape(-1), width.reshape(-1)]).astype(np.int64) + start


def chunk_bounds(times: np.ndarray, per_chunk: int) -> list[tuple[int, int]]:
    """Literal port of transformers' get_chunked_index on ids relative to the block start.

    Kept literal for parity: the chunk counter advances at most once per token, so a frame step longer
    than one chunk (fps < 1) splits off single-token chunks instead of skipping empty chunks.
    """
    bounds, start, chunk = [], 0, 1
    for i, value in enumerate(times.tolist()):
        if value >= chunk * per_chunk:
            bounds.append((start, i))
            start, chunk = i, chunk + 1
    bounds.append((start, len(times)))
    return bounds


def interleave(video: np.ndarray, audio: np.ndarray, start: int, per_chunk: int) -> list[np.ndarray]:
    """Pieces [3, k] in token order: video chunk j, then audio chunk j, for every j."""
    video_chunks = chunk_bounds(video[0] - start, per_chunk)
    audio_chunks = chunk_bounds(audio[0] - start, per_chunk)
    pieces = []
    for j in range(max(len(video_chunks), len(audio_chunks))):
        for ids, chunks in ((video, video_chunks), (audio, audio_chunks)):
            if j < len(chunks):
                pieces.append(ids[:, chunks[j][0] : chunks[j][1]])
    return pieces


@dataclass
class _Media:
    """The per-item lists of one prompt; blocks pop their entries in token order."""

    image_grid_thw: list
    video_grid_thw: list
    audio_mel_lengths: list
    second_per_grid: list


class _Builder:
    """Appends id pieces; like transformers, the next block starts at the LAST piece's max + 1."""

    def __init__(self, ids: np.ndarray):
        self.ids = ids
        self.pieces: list[np.ndarray] = []
        self.cursor = 0  # first token without an id yet

    @property
    def next_id(self) -> int:
        return int(self.pieces[-1].max()) + 1 if self.pieces else 0

    def text_until(self, end: int) -> None:
        if end > self.cursor:
            self.pieces.append(np.broadcast_to(np.arange(end - self.cursor) + self.next_id, (3, end - self.cursor)))
            self.cursor = end

    def shared(self, count: int) -> None:
        """`count` bracket tokens on one id (the bos pair and eos pair around audio-in-video)."""
        self.pieces.append(np.full((3, count), self.next_id, dtype=np.int64))
        self.cursor += count

    def block(self, pieces: list[np.ndarray], counts: dict[int, int]) -> None:
        length = sum(counts.values())
        span = self.ids[self.cursor : self.cursor + length]
        found = {tok: int(np.sum(span == tok)) for tok in counts}
        if len(span) != length or found != counts:
            raise InputError(
                f"tokens {self.cursor}..{self.cursor + length} should hold {counts} placeholders (by token id) "
                f"but hold {found}; build the prompt from the same grids and audio lengths passed here"
            )
        self.pieces.extend(pieces)
        self.cursor += length


def _expect(ids: np.ndarray, index: int, token: int, what: str) -> None:
    if not (0 <= index < len(ids)) or ids[index] != token:
        got = int(ids[index]) if 0 <= index < len(ids) else "the end of the prompt"
        raise InputError(f"expected {what} (id {token}) at token {index} but found {got}; check the prompt layout")


def _next_item(items: list, kind: str):
    if not items:
        raise InputError(f"the prompt has more {kind} placeholder blocks than {kind} inputs; pass one per block")
    return items.pop(0)


def _audio_len(media: _Media) -> int:
    mel = int(_next_item(media.audio_mel_lengths, "audio"))
    count = audio_token_count(mel)
    if count < 1:
        # transformers crashes on an empty block; the encoder needs at least 3 mel frames (30 ms).
        raise InputError(f"an audio input has {mel} mel frames, which gives no tokens; use at least 3 frames")
    return count


@dataclass(frozen=True)
class _Clock:
    merge: int
    position_id_per_seconds: float
    per_chunk: int
    tokens: SpecialTokens


def _audio_block(b: _Builder, at: int, media: _Media, clock: _Clock) -> None:
    tok = clock.tokens
    _expect(b.ids, at - 1, tok.audio_start, "<|audio_bos|>")
    b.text_until(at)
    count = _audio_len(media)
    b.block([np.broadcast_to(np.arange(count) + b.next_id, (3, count))], {tok.audio: count})
    _expect(b.ids, b.cursor, tok.audio_end, "<|audio_eos|>")


def _vision_block(b: _Builder, at: int, media: _Media, clock: _Clock, is_video: bool) -> None:
    tok = clock.tokens
    _expect(b.ids, at - 1, tok.vision_start, "<|vision_bos|>")
    b.text_until(at)
    if is_video:
        grid = _next_item(media.video_grid_thw, "video")
        seconds = media.second_per_grid.pop(0)
    else:
        grid = _next_item(media.image_grid_thw, "image")
        seconds = 1  # an image frame counts as one second, as in transformers
    ids = vision_ids(b.next_id, grid, frame_times(grid[0], seconds, clock.position_id_per_seconds), clock.merge)
    b.block([ids], {tok.video if is_video else tok.image: ids.shape[1]})
    _expect(b.ids, b.cursor, tok.vision_end, "<|vision_eos|>")


def _audio_video_block(b: _Builder, at: int, media: _Media, clock: _Clock) -> None:
    tok = clock.tokens
    if at < 2 or b.ids[at - 2] != tok.vision_start or b.ids[at - 1] != tok.audio_start:
        raise InputError(
            f"the video at token {at} is not opened by <|vision_bos|><|audio_bos|>; with use_audio_in_video every "
            "video must carry its audio (pass use_audio_in_video=False for silent videos)"
        )
    b.text_until(at - 2)
    b.shared(2)  # vision_bos and audio_bos share one id
    start = b.next_id
    grid = _next_item(media.video_grid_thw, "video")
    times = frame_times(grid[0], media.second_per_grid.pop(0), clock.position_id_per_seconds)
    video = vision_ids(start, grid, times, clock.merge)
    count = _audio_len(media)
    audio = np.broadcast_to(np.arange(count) + start, (3, count))
    b.block(interleave(video, audio, start, clock.per_chunk), {tok.video: video.shape[1], tok.audio: count})
    _expect(b.ids, b.cursor, tok.audio_end, "<|audio_eos|>")
    _expect(b.ids, b.cursor + 1, tok.vision_end, "<|vision_eos|>")
    # Parity quirk: the eos pair takes the LAST chunk's max + 1, not the block's; when that chunk is audio and
    # the frame is taller/wider than the audio is long, the eos id falls inside the video's id range.
    b.shared(2)


def _check_all_used(media: _Media) -> None:
    for name, left in (
        ("image_grid_thw", media.image_grid_thw),
        ("video_grid_thw", media.video_grid_thw),
        ("audio_mel_lengths", media.audio_mel_lengths),
    ):
        if left:
            raise InputError(
                f"{len(left)} entries of {name} have no placeholder block in the prompt; pass one per block"
            )


def rope_index(
    input_ids: np.ndarray,
    image_grid_thw=(),
    video_grid_thw=(),
    audio_mel_lengths=(),
    second_per_grid=(),
    use_audio_in_video: bool = False,
    *,
    spatial_merge_size: int = 2,
    position_id_per_seconds: float = 25,
    seconds_per_chunk: float = 2,
    tokens: SpecialTokens = QWEN_TOKENS,
) -> tuple[np.ndarray, int]:
    """([3, L] int64 prefill ids, rope_delta) for one unpadded prompt.

    Grids are (t, h, w) in patches, one per image / video block in prompt order; audio_mel_lengths has one
    entry per audio block in prompt order, the audio of each video included when use_audio_in_video.
    rope_delta = max id + 1 - L, so the token at KV-cache index c has id c + rope_delta on every row.
    """
    ids = np.asarray(input_ids, dtype=np.int64)
    if ids.ndim != 1 or ids.size == 0:
        raise InputError(f"input_ids must be a non-empty 1-D array of token ids, got shape {ids.shape}")
    if len(second_per_grid) != len(video_grid_thw):
        raise InputError(
            f"second_per_grid has {len(second_per_grid)} entries for {len(video_grid_thw)} videos; pass one "
            "per video (temporal_patch_size / fps, 1.0 at the default 2 fps)"
        )
    media = _Media(
        [tuple(int(x) for x in g) for g in np.asarray(image_grid_thw).reshape(-1, 3)],
        [tuple(int(x) for x in g) for g in np.asarray(video_grid_thw).reshape(-1, 3)],
        [int(x) for x in audio_mel_lengths],
        [float(x) for x in second_per_grid],
    )
    per_chunk = int(position_id_per_seconds * seconds_per_chunk)
    clock = _Clock(spatial_merge_size, position_id_per_seconds, per_chunk, tokens)
    b = _Builder(ids)
    hits = np.flatnonzero(np.isin(ids, [tokens.image, tokens.video, tokens.audio]))
    while (k := int(np.searchsorted(hits, b.cursor))) < len(hits):
        at = int(hits[k])
        if ids[at] == tokens.audio:
            _audio_block(b, at, media, clock)
        elif ids[at] == tokens.image:
            _vision_block(b, at, media, clock, is_video=False)
        elif use_audio_in_video:
            _audio_video_block(b, at, media, clock)
        else:
            _vision_block(b, at, media, clock, is_video=True)
    b.text_until(len(ids))
    _check_all_used(media)
    positions = np.concatenate(b.pieces, axis=1).astype(np.int64)
    # The delta uses the global max (not the last piece's), as transformers does.
    return positions, int(positions.max()) + 1 - len(ids)
