"""Media tokens and encoder memory, known before anything is decoded or encoded.

A turn's media must fit the KV cache, and the vision encoder's activations grow with the patch count, so
both are worked out from what headers say (an image's size via Pillow without decoding, a video's frame
count, rate and size from its container, an audio clip's duration from libsndfile or the container) and the
turn is refused, in one line with the numbers and the fix, before a frame is decoded:

    image     smart_resize(h, w) -> one token per 28x28 pixels (one merged 2x2 group of 14 px patches)
    video     frames sampled at fps (4..768, even) -> each resized within the budget shared by all frames
              -> one token per 28x28 pixels of every second frame (temporal patch 2)
    audio     ceil(seconds x 16 kHz / 160) mel frames -> per 2 s block of 200 frames, 50 tokens
              (a video's sound track too, with use_audio_in_video)

Every part also takes 2 marker tokens (<|vision_bos|>/<|vision_eos|>, <|audio_bos|>/<|audio_eos|>).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omni_edge.errors import InputError, KVCacheOverflowError
from omni_edge.runtime.audio_blocks import BLOCK_FRAMES, TOKENS_PER_BLOCK, tokens_for_frames
from omni_edge.runtime.encoder_memory import VisionDims, vision_activation_bytes

MARKERS_PER_PART = 2
SAMPLE_RATE = 16_000
HOP = 160  # mel frames are 10 ms


@dataclass(frozen=True)
class MediaTokens:
    """One media item's cost in the KV cache, as computed from its header."""

    kind: str  # "audio", "image" or "video"
    source: str
    tokens: int  # placeholder tokens (the part's 2 markers not included)
    detail: str  # how the count came about, for the refusal message
    fix: str = ""  # what makes this kind of item smaller
    shrink: Callable[[int], str] | None = None  # tokens allowed -> how to make this item fit them ("" if none)
    grid: tuple[int, int, int] | None = None  # an image's or video's patch grid (t, h, w) as the encoder sees it


# ------------------------------------------------------------------------------------------ token counts


def audio_tokens(samples_16k: int) -> int:
    """Audio tokens of a clip of `samples_16k` samples at 16 kHz; the same for any encoder block length
    (omni_edge.runtime.audio_blocks), so the 2 s blocks of released checkpoints stand for all."""
    frames = -(-int(samples_16k) // HOP)
    full, tail = divmod(frames, BLOCK_FRAMES)
    return full * TOKENS_PER_BLOCK + (int(tokens_for_frames(tail)) if tail else 0)


def image_tokens(height: int, width: int, merge: int = 2, patch: int = 14) -> tuple[int, tuple[int, int]]:
    """(tokens, resized (height, width)) of an image, as preprocess_image will size it."""
    from omni_edge.runtime.vision_frontend import smart_resize

    factor = merge * patch
    new_h, new_w = smart_resize(height, width, factor)
    return (new_h // factor) * (new_w // factor), (new_h, new_w)


def video_tokens(
    total_frames: int, video_fps: float, height: int, width: int, fps: float = 2.0, merge: int = 2, patch: int = 14
) -> tuple[int, int, tuple[int, int]]:
    """(tokens, frames sampled, resized (height, width)) of a video, as decode_video + preprocess_video do."""
    from omni_edge.runtime.vision_frontend import TEMPORAL, sample_frames_count, video_frame_size

    if video_fps <= 0 or total_frames < TEMPORAL:
        raise InputError(
            f"the video has {total_frames} frame(s) at {video_fps:g} fps; at least {TEMPORAL} frames are needed. "
            "Pass a single frame as an image instead."
        )
    count = sample_frames_count(total_frames, video_fps, fps)
    new_h, new_w = video_frame_size(count, height, width)
    factor = merge * patch
    return -(-count // TEMPORAL) * (new_h // factor) * (new_w // factor), count, (new_h, new_w)


# ----------------------------------------------------------------------------------------- per item plans


def plan_audio(audio) -> MediaTokens:
    """A path (its header) or a 16 kHz waveform (its length)."""
    from omni_edge.runtime.audio_frontend import MAX_AUDIO_SECONDS, audio_seconds, too_long_error

    if isinstance(audio, (str, Path)):
        source, seconds = str(audio), audio_seconds(audio)
    else:
        source, seconds = "the audio array", np.shape(audio)[-1] / SAMPLE_RATE if np.ndim(audio) else 0.0
    if seconds > MAX_AUDIO_SECONDS:
        raise too_long_error(source, seconds)
    tokens = audio_tokens(math.ceil(seconds * SAMPLE_RATE))
    return MediaTokens("audio", source, tokens, f"{seconds:.1f} s = {tokens} tokens", "a shorter clip")


def plan_image(image, merge: int = 2, patch: int = 14) -> MediaTokens:
    """A path (its header: nothing decoded), a PIL image or an HxWx3 array."""
    from omni_edge.runtime.vision_frontend import read_image_size

    if isinstance(image, (str, Path)):
        source, (height, width) = str(image), read_image_size(image)
    elif hasattr(image, "getbands"):  # PIL.Image
        source, (width, height) = "the PIL image", image.size
    else:
        source, (height, width) = "the image array", np.shape(image)[:2]
    tokens, (new_h, new_w) = image_tokens(height, width, merge, patch)
    return MediaTokens(
        "image",
        source,
        tokens,
        f"{width}x{height} px, seen at {new_w}x{new_h} = {tokens} tokens (one per {merge * patch}x{merge * patch} px)",
        "a lower resolution",
        lambda allowed: _image_fit(source, height, width, allowed, merge, patch),
        (1, new_h // patch, new_w // patch),
    )


def _image_fit(source: str, height: int, width: int, allowed: int, merge: int, patch: int) -> str:
    """The largest size, in steps of 1%, at which the image takes at most `allowed` tokens."""
    for percent in range(99, 0, -1):
        h, w = max(1, height * percent // 100), max(1, width * percent // 100)
        if image_tokens(h, w, merge, patch)[0] <= allowed:
            return f"downscale {source} to {w}x{h} px or less"
    return ""


def plan_video(video, use_audio_in_video: bool = False, fps: float = 2.0, merge: int = 2, patch: int = 14):
    """A path (its container header) or (frames [T,H,W,3], fps[, waveform]) -> [video item, its sound track?]."""
    from omni_edge.runtime.audio_frontend import MAX_AUDIO_SECONDS, too_long_error
    from omni_edge.runtime.vision_frontend import TEMPORAL, probe_video_header, video_frame_size

    track_seconds = None
    if isinstance(video, (str, Path)):
        source, header = str(video), probe_video_header(video)
        total, video_fps, height, width = header.frames, header.fps, header.height, header.width
        seconds, track_seconds = header.seconds, header.audio_seconds
        tokens, count, (new_h, new_w) = video_tokens(total, video_fps, height, width, fps, merge, patch)

        def shrink(allowed: int) -> str:
            def cost(frames):
                return video_tokens(frames, video_fps, height, width, fps, merge, patch)[0]

            frames = _largest_fitting(TEMPORAL, total, cost, allowed)
            return f"trim {source} to {frames / video_fps:.0f} s or less" if frames else ""
    else:
        frames, sampled_fps, *rest = video
        source, (count, height, width) = "the video frames", np.shape(frames)[:3]
        seconds = count / float(sampled_fps)
        if rest and rest[0] is not None:
            track_seconds = np.shape(rest[0])[-1] / SAMPLE_RATE
        # Frames given are all used, resized within the budget they share.
        new_h, new_w = video_frame_size(count, height, width)
        factor = merge * patch

        def cost(frames):
            h, w = video_frame_size(frames, height, width)
            return -(-frames // TEMPORAL) * (h // factor) * (w // factor)

        tokens = cost(count)

        def shrink(allowed: int) -> str:
            frames = _largest_fitting(1, count, cost, allowed)
            return f"pass at most {frames} frames" if frames else ""

    groups = -(-count // TEMPORAL)
    per_group = tokens // max(groups, 1)
    items = [
        MediaTokens(
            "video",
            source,
            tokens,
            f"{seconds:.1f} s of {width}x{height}, {count} frames seen at {new_w}x{new_h} = "
            f"{groups} x {per_group} tokens",
            "a shorter clip or a lower resolution",
            shrink,
            (groups, new_h // patch, new_w // patch),
        )
    ]
    if use_audio_in_video and track_seconds is not None:
        if track_seconds > MAX_AUDIO_SECONDS:
            raise too_long_error(f"audio track of {source}", track_seconds)
        audio = audio_tokens(math.ceil(track_seconds * SAMPLE_RATE))
        items.append(MediaTokens("audio", f"sound track of {source}", audio, f"{track_seconds:.1f} s = {audio} tokens"))
    return items


def _largest_fitting(low: int, high: int, cost: Callable[[int], int], allowed: int) -> int:
    """The largest n in [low, high] with cost(n) <= allowed (cost grows with n), or 0 when none is."""
    if cost(low) > allowed:
        return 0
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if cost(mid) <= allowed else (low, mid - 1)
    return low


def plan_media_tokens(
    audio=(), images=(), videos=(), use_audio_in_video: bool = False, fps: float = 2.0, merge: int = 2, patch: int = 14
) -> list[MediaTokens]:
    """Every media item of a turn (Session.generate's arguments), costed from headers: nothing decoded."""
    items = [plan_audio(a) for a in audio]
    items += [plan_image(i, merge, patch) for i in images]
    for video in videos:
        items += plan_video(video, use_audio_in_video, fps, merge, patch)
    return items


def media_prompt_tokens(items: list[MediaTokens]) -> int:
    """Cache slots the items take in the prompt: their tokens plus each part's markers."""
    # A video heard with its sound track has 4 markers (vision and audio bos/eos): 2 per item still holds.
    return sum(item.tokens for item in items) + MARKERS_PER_PART * len(items)


def _label(item: MediaTokens) -> str:
    return item.source if item.source.startswith(("the ", "sound track")) else f"{item.kind} {item.source}"


def check_media_fits(items: list[MediaTokens], room: int, capacity: int) -> None:
    """Refuse, in one line with the numbers and the fix, media that cannot fit the KV cache's free `room`."""
    need = media_prompt_tokens(items)
    if need <= room:
        return
    used = capacity - room
    listed = "; ".join(f"{_label(item)}: {item.detail}" for item in items)
    fixes = sorted({item.fix for item in items if item.fix and item.tokens > 0})
    hints = []
    for item in items:
        allowed = room - (need - item.tokens)  # what this item may take when the others stay as they are
        if item.shrink is not None and allowed > 0:
            hints.append(item.shrink(allowed))
    hints = [h for h in hints if h]
    fix = ", ".join(fixes) or "fewer media"
    if hints:
        fix += " (" + "; or ".join(hints) + ")"
    raise KVCacheOverflowError(
        f"this turn's media need {need} tokens ({listed}) but the KV cache has room for {room} of {capacity} "
        f"({used} in use); use {fix}, fewer items, or re-export with --max-seq-len of at least "
        f"{used + need} plus the prompt and reply"
    )


def check_encoder_memory(items: list[MediaTokens], vision: VisionDims, limit_bytes: int) -> None:
    """Refuse an image or video whose vision-encoder activations alone pass `limit_bytes`."""
    for item in items:
        if item.grid is None:
            continue
        need = vision_activation_bytes([item.grid], vision)
        if need > limit_bytes:
            raise InputError(
                f"encoding {_label(item)} ({item.detail}) needs {need / 2**20:.0f} MiB of vision-encoder "
                f"activations and {limit_bytes / 2**20:.0f} MiB are allowed; use {item.fix}"
            )


def check_turn_media(
    room: int,
    capacity: int,
    info=None,
    audio=(),
    images=(),
    videos=(),
    use_audio_in_video: bool = False,
    vision: VisionDims | None = None,
    activation_limit_bytes: int | None = None,
) -> list[MediaTokens]:
    """Session.generate's pre-check in one call: cost the turn's media from headers and refuse what cannot fit
    the cache (`room` free of `capacity`) or, given the encoder's widths and a limit, its activation memory.
    `info` is the manifest's MediaInfo (patch and merge sizes)."""
    merge, patch = (info.spatial_merge_size, info.patch_size) if info is not None else (2, 14)
    items = plan_media_tokens(audio, images, videos, use_audio_in_video, merge=merge, patch=patch)
    check_media_fits(items, room, capacity)
    if vision is not None and activation_limit_bytes is not None:
        check_encoder_memory(items, vision, activation_limit_bytes)
    return items
