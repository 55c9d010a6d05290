"""Multimodal user turns: prompt text with expanded placeholders, and encoder features spliced in.

Mirrors the Qwen2.5-Omni processor: audio -> <|audio_bos|> n x <|AUDIO|> <|audio_eos|>; image/video ->
<|vision_bos|> n x <|IMAGE|>/<|VIDEO|> <|vision_eos|>; a video with its own audio track
(use_audio_in_video) -> <|vision_bos|><|audio_bos|> video and audio tokens interleaved per 2-second chunk
<|audio_eos|><|vision_eos|>. Features then fill the placeholder positions of their kind in order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from omni_edge.bundle import MediaInfo
from omni_edge.errors import InputError
from omni_edge.runtime.chat import Segment
from omni_edge.runtime.tmrope import chunk_bounds


@dataclass(frozen=True)
class AudioPart:
    embeds: np.ndarray  # [tokens, hidden] from audio_encoder
    mel_frames: int


@dataclass(frozen=True)
class ImagePart:
    embeds: np.ndarray  # [t*h*w/merge^2, hidden] from vision_encoder
    grid_thw: tuple[int, int, int]


@dataclass(frozen=True)
class VideoPart:
    embeds: np.ndarray
    grid_thw: tuple[int, int, int]
    second_per_grid: float
    audio: AudioPart | None = None  # the video's own audio track, interleaved when present


Part = str | AudioPart | ImagePart | VideoPart


def _video_with_audio_text(part: VideoPart, info: MediaInfo, token) -> str:
    assert part.audio is not None  # only videos with their sound track interleave
    t, h, w = part.grid_thw
    merge = info.spatial_merge_size
    frame_ids = np.repeat(np.arange(t), (h // merge) * (w // merge))
    # The processor keeps these times as floats (the model truncates them); they agree whenever
    # second_per_grid * 25 is an integer, which the 2 fps default guarantees.
    video_times = frame_ids * part.second_per_grid * info.position_id_per_seconds
    per_chunk = int(info.position_id_per_seconds * info.seconds_per_chunk)
    video_chunks = chunk_bounds(video_times, per_chunk)
    audio_chunks = chunk_bounds(np.arange(len(part.audio.embeds)), per_chunk)
    text = token(info.vision_start_token_id) + token(info.audio_start_token_id)
    for j in range(max(len(video_chunks), len(audio_chunks))):
        if j < len(video_chunks):
            text += token(info.video_token_id) * (video_chunks[j][1] - video_chunks[j][0])
        if j < len(audio_chunks):
            text += token(info.audio_token_id) * (audio_chunks[j][1] - audio_chunks[j][0])
    return text + token(info.audio_end_token_id) + token(info.vision_end_token_id)


def part_text(part: Part, info: MediaInfo, token) -> str:
    """The part as prompt text, placeholders expanded; `token(id)` gives a special token's text."""
    if isinstance(part, str):
        return part
    if isinstance(part, AudioPart):
        return (
            token(info.audio_start_token_id)
            + token(info.audio_token_id) * len(part.embeds)
            + token(info.audio_end_token_id)
        )
    if isinstance(part, VideoPart) and part.audio is not None:
        return _video_with_audio_text(part, info, token)
    placeholder = info.image_token_id if isinstance(part, ImagePart) else info.video_token_id
    return token(info.vision_start_token_id) + token(placeholder) * len(part.embeds) + token(info.vision_end_token_id)


def user_segments(parts: list[Part], info: MediaInfo, token, trusted: bool = False) -> tuple[Segment, ...]:
    """The user content as segments: media placeholders are trusted, the user's text only if `trusted`.
    Tokenized as one text where it can be (chat.TextTokenizer.encode_segments), as the reference processor
    does, so the ids around media placeholders are exactly the ones transformers would produce."""
    return tuple(Segment(part_text(p, info, token), trusted or not isinstance(p, str)) for p in parts)


def audio_sequence(parts: list[Part]) -> list[AudioPart]:
    """Audio in the order its tokens appear: standalone clips and video tracks alike."""
    out = []
    for part in parts:
        if isinstance(part, AudioPart):
            out.append(part)
        elif isinstance(part, VideoPart) and part.audio is not None:
            out.append(part.audio)
    return out


def splice_features(embeds: np.ndarray, ids: np.ndarray, parts: list[Part], info: MediaInfo) -> np.ndarray:
    """Write encoder features over the placeholder embeddings, kind by kind, in order."""
    by_kind = {
        info.audio_token_id: [p.embeds for p in audio_sequence(parts)],
        info.image_token_id: [p.embeds for p in parts if isinstance(p, ImagePart)],
        info.video_token_id: [p.embeds for p in parts if isinstance(p, VideoPart)],
    }
    embeds = embeds.copy()
    for token_id, features in by_kind.items():
        positions = np.flatnonzero(ids == token_id)
        stacked = np.concatenate(features) if features else np.zeros((0, embeds.shape[1]), embeds.dtype)
        if len(stacked) != len(positions):
            raise InputError(
                f"the prompt has {len(positions)} placeholder tokens {token_id} but the media produced "
                f"{len(stacked)} features; do not type media placeholder tokens into the prompt text"
            )
        embeds[positions] = stacked
    return embeds
