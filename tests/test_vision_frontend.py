"""numpy vision front end vs transformers' Qwen2-VL image processor, video sampling on synthetic files, errors.

transformers 5.24 maps qwen2_5_omni to Qwen2VLImageProcessor (torchvision) or Qwen2VLImageProcessorPil; without
torchvision the PIL one is used, and we match it bit for bit (atol 0). The only video processor
(Qwen2VLVideoProcessor) imports torchvision, so video is checked against (a) the image processor (two equal
frames make the same patches as that image) and (b) a hand-derived patch layout on a synthetic pattern.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from media_files import write_video
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

from omni_edge.errors import InputError
from omni_edge.runtime.vision_frontend import (
    CLIP_MEAN,
    CLIP_STD,
    VIDEO_MAX_PIXELS,
    VIDEO_MIN_PIXELS,
    load_image,
    load_video_audio,
    preprocess_image,
    preprocess_video,
    sample_frames_count,
    sample_video_frames,
    smart_resize,
)


@pytest.fixture(scope="module")
def image_processor():
    # Qwen2.5-Omni's preprocessor_config values.
    return Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=12845056)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 6000), st.integers(1, 6000))
def test_smart_resize_matches_transformers(height, width):
    if max(height, width) / min(height, width) > 200:
        with pytest.raises(InputError, match="aspect ratio"):
            smart_resize(height, width)
    else:
        expected = hf_smart_resize(height, width, 28, 3136, 12845056)
        assert smart_resize(height, width, 28, 3136, 12845056) == expected


# 3600x3700 is 13.3 MP > max_pixels 12.8 MP: it must be downscaled.
@pytest.mark.parametrize("height, width", [(1, 1), (30, 40), (224, 224), (333, 517), (1000, 37), (3600, 3700)])
def test_preprocess_image_matches_transformers(image_processor, height, width):
    pixels = np.random.default_rng(height * width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    # PIL in, as qwen-omni-utils hands the processor; numpy (H, W, 3) tiny images are ambiguous to it.
    ref = image_processor(images=[Image.fromarray(pixels)], return_tensors="np")
    patches, grid = preprocess_image(pixels)
    np.testing.assert_array_equal(grid, ref["image_grid_thw"])
    assert patches.dtype == np.float32
    np.testing.assert_array_equal(patches, ref["pixel_values"])


@pytest.mark.parametrize("mode", ["RGBA", "L", "P"])
def test_preprocess_pil_modes_match_transformers(image_processor, mode):
    rng = np.random.default_rng(7)
    image = Image.fromarray(rng.integers(0, 256, (50, 60, 4), dtype=np.uint8), "RGBA")
    image = image if mode == "RGBA" else image.convert(mode)
    ref = image_processor(images=[image], return_tensors="np")
    # The processor handed the image itself: transformers' convert_to_rgb (tests/test_config_fidelity.py has
    # the README pipeline's, the default).
    np.testing.assert_array_equal(preprocess_image(image, transparency="transformers")[0], ref["pixel_values"])


def test_load_image_round_trip(tmp_path, image_processor):
    pixels = np.random.default_rng(3).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), pixels)


def _png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    # Pillow reads chunks up to the first IDAT when opening; an empty one is enough to reach it.
    chunks = [(b"IHDR", ihdr), (b"IDAT", b"")]
    body = b"".join(struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d)) for t, d in chunks)
    return b"\x89PNG\r\n\x1a\n" + body


def test_image_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        load_image(tmp_path / "zero.png")
    (tmp_path / "junk.png").write_bytes(np.random.default_rng(0).bytes(500))
    with pytest.raises(InputError, match="cannot decode image .*junk.png"):
        load_image(tmp_path / "junk.png")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:60])
    with pytest.raises(InputError, match="cut.png"):
        load_image(tmp_path / "cut.png")
    # 12000 x 9000 = 108 MP: refused from the header, before any pixel is decoded.
    (tmp_path / "huge.png").write_bytes(_png_header_only(12000, 9000))
    with pytest.raises(InputError, match="108 MP; the limit is 100 MP"):
        load_image(tmp_path / "huge.png")


def test_preprocess_image_errors():
    with pytest.raises(InputError, match="zero size"):
        preprocess_image(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(InputError, match="zero size"):
        preprocess_image(Image.new("RGB", (0, 5)))
    with pytest.raises(InputError, match="uint8"):
        preprocess_image(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(InputError, match="aspect ratio"):
        preprocess_image(np.zeros((1, 300, 3), np.uint8))


# ------------------------------------------------------------------------------------------------ video


def test_video_of_equal_frames_equals_the_image(image_processor):
    frame = np.random.default_rng(5).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    patches, grid, second_per_grid = preprocess_video(np.stack([frame, frame]), fps=2.0)
    video_proc = Qwen2VLImageProcessorPil(min_pixels=VIDEO_MIN_PIXELS, max_pixels=VIDEO_MAX_PIXELS)
    ref = video_proc(images=[Image.fromarray(frame)], return_tensors="np")
    np.testing.assert_array_equal(grid, ref["image_grid_thw"])
    np.testing.assert_array_equal(patches, ref["pixel_values"])
    assert second_per_grid == 1.0


def test_video_patch_layout_hand_derived():
    # 336 x 308 is a multiple of 28 within [VIDEO_MIN, VIDEO_MAX] pixels: no resize, so every output value
    # can be traced to one input pixel. Patch n = (t, row group, col group, row in group, col in group) in
    # that order; inside it, (channel, frame in pair, y, x) -- Qwen2VLVideoProcessor.patchify's permute.
    rng = np.random.default_rng(11)
    frames = rng.integers(0, 256, (3, 336, 308, 3), dtype=np.uint8)  # odd: last frame repeated
    patches, grid, second_per_grid = preprocess_video(frames, fps=4.0)
    assert grid.tolist() == [[2, 24, 22]] and second_per_grid == 0.5 and patches.shape == (2 * 24 * 22, 1176)
    normed = ((frames.astype(np.float64) / 255 - CLIP_MEAN) / CLIP_STD).astype(np.float32)
    normed = np.concatenate([normed, normed[-1:]])
    n = 0
    for t in range(2):
        for rg in range(12):
            for cg in range(11):
                for mh in range(2):
                    for mw in range(2):
                        y, x = (rg * 2 + mh) * 14, (cg * 2 + mw) * 14
                        block = normed[2 * t : 2 * t + 2, y : y + 14, x : x + 14, :]  # [frame, y, x, c]
                        want = block.transpose(3, 0, 1, 2).reshape(-1)
                        np.testing.assert_allclose(patches[n], want, rtol=0, atol=1e-6)
                        n += 1


@pytest.mark.parametrize(
    "total, video_fps, fps, expected",
    [(30, 10.0, 2.0, 6), (7, 30.0, 2.0, 4), (3, 30.0, 2.0, 2), (2000, 30.0, 2.0, 132), (30000, 30.0, 2.0, 768)],
)
def test_sample_frames_count_follows_qwen_omni_utils(total, video_fps, fps, expected):
    assert sample_frames_count(total, video_fps, fps) == expected


def test_sample_video_frames_at_2fps(tmp_path):
    write_video(tmp_path / "v.mp4")
    frames, fps = sample_video_frames(tmp_path / "v.mp4", fps=2.0)
    # 30 frames at 10 fps -> 6 frames, indices round(linspace(0, 29, 6)) = 0, 6, 12, 17, 23, 29.
    assert frames.shape == (6, 48, 64, 3) and frames.dtype == np.uint8 and fps == pytest.approx(2.0)
    levels = frames.reshape(6, -1).mean(axis=1)
    np.testing.assert_allclose(levels, [20 + 7 * k for k in (0, 6, 12, 17, 23, 29)], atol=3)
    patches, grid, second_per_grid = preprocess_video(frames, fps)
    assert grid[0, 0] == 3 and second_per_grid == pytest.approx(1.0) and patches.shape[0] == grid.prod()


def test_sampling_recovers_when_fewer_frames_decode_than_stored(tmp_path, monkeypatch):
    import omni_edge.runtime.vision_frontend as vf

    write_video(tmp_path / "v.mp4", audio=False)
    expected = sample_video_frames(tmp_path / "v.mp4")
    monkeypatch.setattr(vf, "_probe_video", lambda path: (40, 10.0))  # container claims 40, holds 30
    frames, fps = sample_video_frames(tmp_path / "v.mp4")
    np.testing.assert_array_equal(frames, expected[0])
    assert fps == expected[1]


def test_load_video_audio_aac(tmp_path):
    write_video(tmp_path / "v.mp4")
    audio = load_video_audio(tmp_path / "v.mp4")
    assert audio.dtype == np.float32 and abs(len(audio) - 3 * 16_000) < 0.05 * 16_000
    spectrum = np.abs(np.fft.rfft(audio[4000:-4000]))
    assert np.argmax(spectrum) * 16_000 / len(audio[4000:-4000]) == pytest.approx(440, abs=2)


def test_load_video_audio_lossless_is_exact(tmp_path):
    tone = write_video(tmp_path / "v.mkv", audio_codec="pcm_s16le", audio_rate=16_000)
    np.testing.assert_array_equal(load_video_audio(tmp_path / "v.mkv"), tone.astype(np.float32) / 32768)


def test_video_errors(tmp_path):
    write_video(tmp_path / "silent.mp4", audio=False)
    with pytest.raises(InputError, match="silent.mp4 has no audio track"):
        load_video_audio(tmp_path / "silent.mp4")
    with pytest.raises(InputError, match="not found"):
        sample_video_frames(tmp_path / "missing.mp4")
    (tmp_path / "junk.mp4").write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(InputError, match="junk.mp4"):
        sample_video_frames(tmp_path / "junk.mp4")
    write_video(tmp_path / "one.mp4", seconds=1, rate=1, audio=False)
    with pytest.raises(InputError, match="1 frame"):
        sample_video_frames(tmp_path / "one.mp4")
    with pytest.raises(InputError, match="fps"):
        sample_video_frames(tmp_path / "silent.mp4", fps=0)
    with pytest.raises(InputError, match="uint8"):
        preprocess_video(np.zeros((2, 10, 10, 3), np.float32), 2.0)
