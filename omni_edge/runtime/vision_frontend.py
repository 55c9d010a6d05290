"""Vision front end in numpy: images and video -> flattened ViT patches + grid_thw, as Qwen2.5-Omni expects.

Libraries:
* Pillow for decoding images and for every resize. Qwen2.5-Omni's image processor without torchvision is
  transformers' `Qwen2VLImageProcessorPil`, which resizes with Pillow's BICUBIC on uint8; using Pillow the
  same way gives bit-identical pixels (a numpy bicubic would differ by rounding).
* PyAV (`av`) for video. Its wheels bundle ffmpeg (no system install), and the reference reader
  (qwen-omni-utils -> torchvision.io.read_video) is itself PyAV, so frame counts, the average-rate fps and
  the rgb24 conversion are the ones the reference sees. The audio track is converted by ffmpeg's
  resampler to interleaved s16 at its native rate, the format the reference's audioread/ffmpeg pipe hands
  librosa, then downmixed and resampled like load_audio.
  Known difference: qwen-omni-utils resizes video frames with torchvision's antialiased bicubic, we use
  Pillow's (same a=-0.5 cubic kernel) on uint8. Measured against torchvision's resize (torch's antialiased
  bicubic interpolate, rounded back to uint8): normalized patch values differ by at most 0.32 and 5e-4 on
  average on photos and clips (a one-level pixel difference is 0.015), the Thinker's logits by 2-3e-3, no
  greedy token flipped; on the tests' synthetic noisy frames 0.10 and 2.8e-3. tests/test_config_fidelity.py
  holds max 0.35, mean 5e-3.

Transparency (images): TRANSPARENCY_MODES. "qwen-omni-utils" (the default, what Qwen's README pipeline does:
fetch_image's to_rgb runs before transformers' processor sees the image) composites only RGBA onto white;
LA, PA and palette images with a transparent index lose their alpha (Pillow's convert("RGB")).
"transformers" composites every kind of transparency onto white, as transformers' convert_to_rgb does when it
is handed the file's image directly.

Video timing (TMRoPE's seconds per temporal patch): VIDEO_TIMINGS. "processor" (the default) is what users of
Qwen's README pipeline get: process_mm_info(..., use_audio_in_video) without return_video_kwargs hands the
processor no fps, so it assumes the requested 2 fps and a temporal patch (2 frames) is 1.0 s, whatever the
sampler achieved. "sampled" is the other convention (process_mm_info(return_video_kwargs=True) passed on to the
processor): the fps actually sampled, count / frames * video_fps (a 3.6 s clip samples 6 frames: 1.667 fps,
1.2 s per patch). They differ for every clip whose sampling does not land on exactly 2 fps.

Size policy: images larger than max_pixels (12.8 MP) are downscaled by smart_resize, like the reference.
Files that decode to more than MAX_DECODED_PIXELS (100 MP) are refused before decoding, so a hostile or
mistaken file cannot take gigabytes of memory. Video frames are sampled at `fps` (default 2), between
4 and 768 frames; long videos get sparser frames and the fps actually achieved is returned (for the
"sampled" timing above). decode_video (what the session uses) decodes as a stream and
resizes each sampled frame to the model's size as soon as it is decoded, so a long or high-resolution video
never holds more than the sampled frames at the size the model sees; its token cost is known from the
container header before that (omni_edge.runtime.media_budget).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omni_edge.errors import InputError
from omni_edge.runtime.audio_frontend import check_media_file, container_audio, open_container

PATCH = 14
MERGE = 2
TEMPORAL = 2  # temporal_patch_size: an image becomes two identical frames
FACTOR = PATCH * MERGE  # resized sides are multiples of 28
MIN_PIXELS = 4 * 28 * 28  # 3136
MAX_PIXELS = 16384 * 28 * 28  # 12_845_056
VIDEO_MIN_PIXELS = 128 * 28 * 28
VIDEO_MAX_PIXELS = 768 * 28 * 28
VIDEO_TOTAL_PIXELS = int(128000 * 28 * 28 * 0.9)  # qwen-omni-utils' budget shared by all frames
FPS_MIN_FRAMES = 4
FPS_MAX_FRAMES = 768
MAX_RATIO = 200
MAX_DECODED_PIXELS = 100_000_000
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TRANSPARENCY_MODES = ("qwen-omni-utils", "transformers")
VIDEO_TIMINGS = ("processor", "sampled")


def smart_resize(
    height: int, width: int, factor: int = FACTOR, min_pixels: float = MIN_PIXELS, max_pixels: float = MAX_PIXELS
) -> tuple[int, int]:
    """Sides that are multiples of `factor`, area within [min_pixels, max_pixels], aspect kept (Qwen2-VL)."""
    if height <= 0 or width <= 0:
        raise InputError(f"image has zero size ({width}x{height} pixels); pass a non-empty image.")
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise InputError(
            f"image aspect ratio {max(height, width) / min(height, width):.0f}:1 ({width}x{height}) exceeds "
            f"the model's limit of {MAX_RATIO}:1; crop or pad it first."
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


# ---------------------------------------------------------------------------------------------- images


@contextlib.contextmanager
def _opened_image(path: Path, verb: str):
    """The image opened lazily (nothing decoded yet), its pixel count checked; Pillow's errors as one line."""
    from PIL import Image, UnidentifiedImageError

    check_media_file(path, "image")
    try:
        with warnings.catch_warnings():
            # We enforce our own MAX_DECODED_PIXELS below; Pillow's 89 MP warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                _check_pixel_count(img.width, img.height, str(path))
                yield img
    except Image.DecompressionBombError as exc:
        raise InputError(f"image {path} is too large to decode ({exc}); downscale it below 100 MP.") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(
            f"cannot {verb} image {path}: {exc}. The file is corrupt, truncated or not an image format "
            "Pillow reads (PNG, JPEG, WebP, BMP, GIF, TIFF, ...); re-save it as PNG or JPEG."
        ) from exc


def load_image(path: str | Path, transparency: str = "qwen-omni-utils") -> np.ndarray:
    """Decode an image file to HxWx3 uint8 RGB, transparency handled as `transparency` says (module doc)."""
    with _opened_image(Path(path), "decode") as img:
        img.load()
        return _rgb_array(img, str(path), transparency)


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file from its header: nothing is decoded (Pillow opens lazily)."""
    with _opened_image(Path(path), "read") as img:
        return img.height, img.width


def preprocess_image(
    image, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS, transparency: str = "qwen-omni-utils"
):
    """HxWx3 uint8 array (or PIL image) -> (patches [N, 1176] float32, grid_thw int64 [[1, h, w]]).

    Matches Qwen2VLImageProcessorPil with Qwen2.5-Omni's preprocessor_config: bicubic resize to
    smart_resize's size, x/255, CLIP mean/std, and the patch order with each 2x2 merge group contiguous.
    """
    rgb = _rgb_array(image, "image", transparency)
    height, width = smart_resize(rgb.shape[0], rgb.shape[1], FACTOR, min_pixels, max_pixels)
    pixels = _normalize(_resize(rgb, height, width))  # [3, H, W]
    # The reference broadcasts the single frame over temporal_patch_size; two equal frames are the same.
    patches, grid = _patchify(np.stack([pixels] * TEMPORAL))
    return patches, np.array([grid], dtype=np.int64)


def _rgb_array(image, source: str, transparency: str = "qwen-omni-utils") -> np.ndarray:
    from PIL import Image

    if transparency not in TRANSPARENCY_MODES:
        raise InputError(f"unknown transparency mode {transparency!r}; use one of {', '.join(TRANSPARENCY_MODES)}")
    if isinstance(image, Image.Image):
        _check_pixel_count(image.width, image.height, source)
        if transparency == "qwen-omni-utils" and image.mode == "RGBA":
            # qwen-omni-utils' to_rgb: paste with the alpha band as the mask (its rounding, not alpha_composite's).
            white = Image.new("RGB", image.size, (255, 255, 255))
            white.paste(image, mask=image.split()[3])
            return np.asarray(white)
        if transparency == "transformers" and ("A" in image.getbands() or image.info.get("transparency") is not None):
            # transformers' convert_to_rgb: every kind of transparency composited onto white.
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise InputError(
            f"{source} must be an HxWx3 uint8 RGB array or a PIL image, got shape {array.shape} dtype "
            f"{array.dtype}; convert with np.asarray(PIL.Image.open(p).convert('RGB'))."
        )
    _check_pixel_count(array.shape[1], array.shape[0], source)
    return array


def _check_pixel_count(width: int, height: int, source: str) -> None:
    if width <= 0 or height <= 0:
        raise InputError(f"{source} has zero size ({width}x{height} pixels); pass a non-empty image.")
    if width * height > MAX_DECODED_PIXELS:
        raise InputError(
            f"{source} is {width}x{height} = {width * height / 1e6:.0f} MP; the limit is "
            f"{MAX_DECODED_PIXELS // 1_000_000} MP (the model sees at most {MAX_PIXELS / 1e6:.1f} MP anyway). "
            "Downscale it first."
        )


def _resize(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize((width, height), resample=Image.Resampling.BICUBIC))


def _normalize(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 -> [3, H, W] float32, in the reference's order and dtypes (x*1/255 in float64, then f32)."""
    scaled = (rgb.astype(np.float64) * (1 / 255)).astype(np.float32)
    normed = (scaled - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    return np.ascontiguousarray(normed.transpose(2, 0, 1))


def _patchify(frames: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
    """[T, 3, H, W] (T a multiple of 2) -> [T/2 * H/14 * W/14, 1176], merge groups contiguous."""
    t, c, h, w = frames.shape
    gt, gh, gw = t // TEMPORAL, h // PATCH, w // PATCH
    x = frames.reshape(gt, TEMPORAL, c, gh // MERGE, MERGE, PATCH, gw // MERGE, MERGE, PATCH)
    # -> (t, row group, col group, row in group, col in group, channel, frame, patch row, patch col)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return np.ascontiguousarray(x.reshape(gt * gh * gw, c * TEMPORAL * PATCH * PATCH)), (gt, gh, gw)


# ----------------------------------------------------------------------------------------------- video


def sample_frames_count(total_frames: int, video_fps: float, fps: float) -> int:
    """Frames to sample (qwen-omni-utils smart_nframes): fps-based, clamped to [4, 768], even."""
    max_frames = (min(FPS_MAX_FRAMES, total_frames) // TEMPORAL) * TEMPORAL
    wanted = total_frames / video_fps * fps
    count = min(max(wanted, FPS_MIN_FRAMES), max_frames, total_frames)
    return int(math.floor(count / TEMPORAL) * TEMPORAL)


def sample_video_frames(path: str | Path, fps: float = 2.0) -> tuple[np.ndarray, float]:
    """Decode `path` and sample frames at ~`fps` -> (uint8 [T, H, W, 3] RGB at the file's size, fps sampled)."""
    return _sample(path, fps, resize=False)


def decode_video(path: str | Path, fps: float = 2.0) -> tuple[np.ndarray, float]:
    """Like sample_video_frames, but each frame is resized to the model's size as soon as it is decoded.

    Frames are decoded as a stream and only the sampled ones are kept, already at the size preprocess_video
    would resize them to (so its result is unchanged): memory is the model's input, whatever the video's
    length or resolution.
    """
    return _sample(path, fps, resize=True)


def video_frame_size(count: int, height: int, width: int) -> tuple[int, int]:
    """(height, width) each of `count` sampled frames is resized to (qwen-omni-utils fetch_video)."""
    max_pixels = max(min(VIDEO_MAX_PIXELS, VIDEO_TOTAL_PIXELS / count * TEMPORAL), int(VIDEO_MIN_PIXELS * 1.05))
    return smart_resize(height, width, FACTOR, VIDEO_MIN_PIXELS, max_pixels)


def _sample(path, fps, resize: bool) -> tuple[np.ndarray, float]:
    fps = _check_fps(fps)
    path = Path(path)
    total, video_fps = _probe_video(path)
    for _ in range(2):
        if video_fps <= 0 or total < TEMPORAL:
            raise InputError(
                f"video {path} has {total} frame(s) at {video_fps:g} fps; at least {TEMPORAL} frames are "
                "needed. Pass a single frame as an image instead."
            )
        count = sample_frames_count(total, video_fps, fps)
        # torch.linspace(...).round() in the reference; numpy's round is also half-to-even.
        wanted = np.round(np.linspace(0, total - 1, count)).astype(np.int64)
        frames, decoded = _decode_frames(path, wanted, resize)
        if frames is not None:
            return frames, count / total * video_fps
        # Fewer frames decode than packets were stored (edit list, damaged tail): sample what is there,
        # as the reference, which counts decoded frames, would.
        total = decoded
    raise InputError(f"video {path} decodes inconsistently; re-encode it (ffmpeg -i in.mp4 out.mp4).")


def _probe_video(path: Path) -> tuple[int, float]:
    """(frame count, average fps) of the first video stream, without decoding a frame."""
    with _open_media(path) as container:
        stream = _video_stream(container, path)
        # torchvision.io.read_video (the reference) reports the stream's average rate as the video fps.
        video_fps = float(stream.average_rate or stream.guessed_rate or 0)
        # One stored packet is one frame; counting them is a demux, far cheaper than decoding.
        return sum(1 for packet in container.demux(stream) if packet.size > 0), video_fps


@dataclass(frozen=True)
class VideoHeader:
    """What a container's header says about its first video stream (and sound track), nothing decoded."""

    frames: int
    fps: float
    height: int
    width: int
    audio_seconds: float | None  # None: no sound track

    @property
    def seconds(self) -> float:
        return self.frames / self.fps if self.fps > 0 else 0.0


def probe_video_header(path: str | Path) -> VideoHeader:
    """Frame count, rate and size from the container header: no packet is read, so a 2-hour file costs as
    little as a 2-second one. The count is the header's (or duration x rate); decoding may find a few less."""
    path = Path(path)
    with _open_media(path) as container:
        stream = _video_stream(container, path)
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        frames = int(stream.frames or 0)
        if frames <= 0:
            frames = round(_seconds(stream, container) * fps)
        audio = container.streams.audio[0] if container.streams.audio else None
        audio_seconds = _seconds(audio, container) if audio is not None else None
        return VideoHeader(frames, fps, int(stream.height), int(stream.width), audio_seconds)


def _seconds(stream, container) -> float:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return float(container.duration or 0) / 1_000_000  # AV_TIME_BASE


def _video_stream(container, path: Path):
    if not container.streams.video:
        raise InputError(f"{path} has no video stream; pass it with --audio to hear its sound track.")
    stream = container.streams.video[0]
    if stream.width * stream.height > MAX_DECODED_PIXELS:
        raise InputError(f"video {path} frames are {stream.width}x{stream.height}; the limit is 100 MP.")
    return stream


def _decode_frames(path: Path, wanted: np.ndarray, resize: bool) -> tuple[np.ndarray | None, int]:
    """Frames at indices `wanted` (sorted) -> (uint8 [T, H, W, 3], frames decoded); None if it ran short.

    A stream: each frame is dropped as soon as it is decoded unless it is sampled, and a sampled one goes
    straight into the output (resized first with `resize`), so one decoded frame is alive at a time.
    """
    import av

    slot = {int(index): k for k, index in enumerate(wanted.tolist())}
    last, decoded, filled, out = int(wanted[-1]), 0, 0, None
    with _open_media(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for decoded, frame in enumerate(container.decode(stream), start=1):
                if decoded - 1 in slot:
                    rgb = _frame_rgb(frame)
                    if out is None:
                        height, width = rgb.shape[:2]
                        if resize:
                            height, width = video_frame_size(len(wanted), height, width)
                        out = np.empty((len(wanted), height, width, 3), np.uint8)
                    out[slot[decoded - 1]] = _resize(rgb, *out.shape[1:3]) if resize else rgb
                    filled += 1
                if decoded > last:
                    break
        except av.error.FFmpegError as exc:
            raise InputError(f"cannot decode video {path}: {exc}; re-encode it (ffmpeg -i in out.mp4).") from exc
    if filled < len(wanted):
        return None, decoded
    return out, decoded


def video_timing_fps(requested: float, sampled: float, timing: str = "processor") -> float:
    """The fps TMRoPE's seconds per temporal patch (temporal_patch_size / fps) is computed from, for a video
    file sampled at `requested` fps that achieved `sampled` fps: the requested rate under "processor" (what
    transformers' processor assumes when Qwen's README pipeline passes it no fps), the achieved one under
    "sampled". See the module docstring."""
    if timing not in VIDEO_TIMINGS:
        raise InputError(f"unknown video timing {timing!r}; use one of {', '.join(VIDEO_TIMINGS)}")
    return _check_fps(requested) if timing == "processor" else sampled


def _frame_rgb(frame) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


def preprocess_video(frames: np.ndarray, fps: float):
    """uint8 [T, H, W, 3] frames sampled at `fps` -> (patches [N, 1176] f32, grid_thw [[t, h, w]], s/grid).

    Sizes follow qwen-omni-utils fetch_video (VIDEO_MIN/MAX_PIXELS and the total-pixel budget shared
    by all frames); an odd frame count repeats the last frame, as Qwen2VLVideoProcessor does.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] == 0:
        raise InputError(
            f"video frames must be a non-empty uint8 [T, H, W, 3] array, got shape {frames.shape} dtype "
            f"{frames.dtype}; use sample_video_frames to read a file."
        )
    fps = _check_fps(fps)
    count, height, width = frames.shape[:3]
    if count > FPS_MAX_FRAMES:
        raise InputError(
            f"got {count} video frames; the limit is {FPS_MAX_FRAMES} (the reference's FPS_MAX_FRAMES). "
            "Sample fewer, e.g. with sample_video_frames, which stays within it."
        )
    _check_pixel_count(width, height, "video frame")
    new_h, new_w = video_frame_size(count, height, width)
    pixels = [_normalize(_resize(frame, new_h, new_w)) for frame in frames]
    pixels += [pixels[-1]] * (-count % TEMPORAL)
    patches, grid = _patchify(np.stack(pixels))
    return patches, np.array([grid], dtype=np.int64), TEMPORAL / fps


def load_video_audio(path: str | Path) -> np.ndarray:
    """The sound track of a video file as 16 kHz mono float32 (for use_audio_in_video)."""
    path = Path(path)
    with _open_media(path) as container:
        if not container.streams.audio:
            raise InputError(
                f"video {path} has no audio track; turn off use_audio_in_video for it, or add a track "
                "(ffmpeg -i video.mp4 -i audio.wav -c:v copy -shortest out.mp4)."
            )
        return container_audio(container, path)


def _check_fps(fps) -> float:
    try:
        value = float(fps)
    except (TypeError, ValueError):
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"video fps must be a positive number, got {fps!r}; the model default is 2.0.")
    return value


def _open_media(path: Path):
    return open_container(path, "video")
