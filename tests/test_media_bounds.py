"""Bounded media: token counts from headers before anything is decoded, the one-line refusal with the fix,
video decoded as a stream at the model's size, scoped attention in the vision encoder (windows and chunked
full attention, never [N, N]) against transformers, and the sound track of a container through load_audio."""

from __future__ import annotations

import re
import tracemalloc
from fractions import Fraction

import numpy as np
import pytest
import soundfile as sf
import torch
from media_files import write_slow_video, write_sound, write_video
from PIL import Image

import omni_edge.runtime.vision_frontend as vf
from omni_edge.errors import InputError, KVCacheOverflowError
from omni_edge.export import vision_encoder
from omni_edge.runtime.audio_blocks import split_blocks, tokens_for_frames
from omni_edge.runtime.audio_frontend import load_audio, load_container_audio
from omni_edge.runtime.encoder_memory import (
    QWEN_OMNI_7B_VISION,
    VisionDims,
    dense_vision_activation_bytes,
    encoder_activation_plan,
    image_activation_bytes,
    vision_activation_bytes,
)
from omni_edge.runtime.media_budget import (
    audio_tokens,
    check_media_fits,
    check_turn_media,
    image_tokens,
    plan_audio,
    plan_image,
    plan_media_tokens,
    plan_video,
)
from omni_edge.runtime.vision_frontend import (
    decode_video,
    load_video_audio,
    preprocess_image,
    preprocess_video,
    sample_video_frames,
    video_frame_size,
)
from omni_edge.runtime.vision_index import vision_indices


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """The vision graph's chunked attention is torch's scan, which runs through dynamo even in eager mode; its
    compile state must not reach the next test's torch.export (an export after it failed in the same process)."""
    yield
    torch._dynamo.reset()


CAPACITY = 4096


def _tokens(grid) -> int:
    return int(np.prod(grid, axis=1).sum()) // 4


# ------------------------------------------------------------------------------------ the pre-check


@pytest.mark.parametrize("height,width", [(56, 56), (300, 200), (28, 640), (1000, 750), (17, 1500)])
def test_image_tokens_are_what_preprocess_makes(height, width):
    _, grid = preprocess_image(np.zeros((height, width, 3), np.uint8))
    assert image_tokens(height, width)[0] == _tokens(grid)


def test_large_image_is_costed_from_its_header_and_refused(tmp_path, monkeypatch):
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (4000, 3000), (90, 120, 30)).save(path)  # 12 MP, as the README allows

    def no_decode(self, *args):
        raise AssertionError("the pre-check decoded the image")

    monkeypatch.setattr(Image.Image, "load", no_decode)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", no_decode)
    item = plan_image(path)
    assert item.tokens == 107 * 143  # 2996 x 4004 px seen, one token per 28 x 28
    with pytest.raises(KVCacheOverflowError) as err:
        check_media_fits([item], room=CAPACITY - 96, capacity=CAPACITY)
    message = str(err.value)
    assert "\n" not in message
    for fragment in (
        "15303 tokens",
        "4000x3000 px",
        "room for 4000 of 4096",
        "96 in use",
        "--max-seq-len of at least 15399",
    ):
        assert fragment in message
    width, height = map(int, re.search(r"downscale \S+ to (\d+)x(\d+) px", message).groups())
    assert image_tokens(height, width)[0] + 2 <= CAPACITY - 96  # the size it suggests does fit


def test_media_that_fit_pass_and_markers_count():
    items = plan_media_tokens(audio=[np.zeros(32_000, np.float32)], images=[np.zeros((56, 56, 3), np.uint8)])
    assert [i.tokens for i in items] == [50, 4]
    check_media_fits(items, room=58, capacity=CAPACITY)  # 54 tokens + 2 markers for each of the 2 parts
    with pytest.raises(KVCacheOverflowError, match="need 58 tokens"):
        check_media_fits(items, room=57, capacity=CAPACITY)
    # What Session.generate calls before encoding anything.
    with pytest.raises(KVCacheOverflowError, match="room for 57 of 4096"):
        check_turn_media(57, CAPACITY, audio=[np.zeros(32_000, np.float32)], images=[np.zeros((56, 56, 3), np.uint8)])


def test_minute_of_video_is_refused_before_decoding(tmp_path, monkeypatch):
    # 60 s at 10 fps: 120 frames sampled, 60 x 140 tokens; the old path decoded it all first (6 GB at 720p).
    write_slow_video(tmp_path / "minute.mp4", frames=600, seconds_per_frame=Fraction(1, 10))
    monkeypatch.setattr(vf, "_decode_frames", lambda *a: pytest.fail("decoded before the pre-check"))
    with pytest.raises(KVCacheOverflowError, match="need 8402 tokens .*60.0 s of 64x48, 120 frames"):
        check_turn_media(2048, 2048, videos=[tmp_path / "minute.mp4"])


def test_video_tokens_are_what_decode_and_preprocess_make(tmp_path):
    write_video(tmp_path / "v.mp4", seconds=3, rate=10)
    video, track = plan_video(tmp_path / "v.mp4", use_audio_in_video=True)
    _, grid, _ = preprocess_video(*decode_video(tmp_path / "v.mp4"))
    assert video.tokens == _tokens(grid) and "3.0 s of 64x48" in video.detail
    # The header's duration against the decoded track: AAC's priming may move the count by a token.
    assert abs(track.tokens - audio_tokens(len(load_video_audio(tmp_path / "v.mp4")))) <= 1


def test_decoded_inputs_are_costed_like_the_encoders_see_them():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (6, 84, 112, 3), dtype=np.uint8)
    items = plan_media_tokens(
        audio=[np.zeros(16_000 * 3 + 7, np.float32)],
        images=[Image.new("RGB", (200, 300))],
        videos=[(frames, 2.0, np.zeros(16_000 * 4, np.float32))],
        use_audio_in_video=True,
    )
    _, image_grid = preprocess_image(np.zeros((300, 200, 3), np.uint8))
    _, video_grid, _ = preprocess_video(frames, 2.0)
    assert [i.tokens for i in items] == [75, _tokens(image_grid), _tokens(video_grid), 100]


def test_two_hour_video_is_refused_from_its_header(tmp_path, monkeypatch):
    path = tmp_path / "film.mp4"
    write_slow_video(path, frames=120, seconds_per_frame=60)  # 2 hours, one frame a minute

    def no_decode(*args, **kwargs):
        raise AssertionError("the pre-check read the video's packets")

    monkeypatch.setattr(vf, "_decode_frames", no_decode)
    monkeypatch.setattr(vf, "_probe_video", no_decode)
    items = plan_media_tokens(videos=[path])
    with pytest.raises(KVCacheOverflowError) as err:
        check_media_fits(items, room=CAPACITY - 10, capacity=CAPACITY)
    message = str(err.value)
    assert "\n" not in message and "7200.0 s" in message and "trim" in message and "film.mp4" in message


def test_audio_tokens_are_what_the_blocks_give():
    for samples in (1, 159, 160, 161, 320, 31_999, 32_000, 32_001, 48_017, 16_000 * 300):
        _, lengths = split_blocks(np.zeros((128, -(-samples // 160)), np.float32))
        assert audio_tokens(samples) == int(tokens_for_frames(lengths).sum()), samples


def test_audio_is_costed_from_its_header(tmp_path):
    sf.write(tmp_path / "a.wav", np.zeros(10 * 8000, np.int16), 8000)
    assert plan_audio(tmp_path / "a.wav").tokens == 250
    write_sound(tmp_path / "a.m4a", seconds=4, container="mp4")
    assert abs(plan_audio(tmp_path / "a.m4a").tokens - 100) <= 1
    sf.write(tmp_path / "long.wav", np.zeros(301_000, np.int16), 1000)
    with pytest.raises(InputError, match="limit is 300 s"):
        plan_audio(tmp_path / "long.wav")


# ------------------------------------------------------------------------------ streaming video decode


def test_decode_video_keeps_only_sampled_frames_at_the_model_size(tmp_path):
    path = tmp_path / "hd.mp4"
    write_video(path, seconds=2, rate=10, audio=False, size=(720, 1280))
    source_frame = 720 * 1280 * 3
    tracemalloc.start()
    try:
        frames, fps = decode_video(path, fps=10.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    count = 20
    assert frames.shape == (count, *video_frame_size(count, 720, 1280), 3) and fps == pytest.approx(10.0)
    # Holding the sampled frames at the file's size (what the old decoder did before stacking them) is more.
    assert peak < count * source_frame
    assert frames.nbytes < 0.7 * count * source_frame
    # Resizing at decode time changes nothing the model sees.
    np.testing.assert_array_equal(
        preprocess_video(frames, fps)[0], preprocess_video(*sample_video_frames(path, fps=10.0))[0]
    )


# ---------------------------------------------------------------------- scoped attention in the encoder


@pytest.mark.parametrize(
    "grid,chunk",
    [
        ([(1, 32, 32)], None),  # 448 x 448: 16 windows, one full-attention chunk of 256 ... times 4
        ([(1, 22, 14)], 64),  # windows cut by the edge; full attention over 5 chunks of 64
        ([(2, 16, 24)], 48),  # a video: full attention stays within each frame
        ([(1, 20, 34), (4, 6, 8)], 128),  # two items of different frame sizes in one call
    ],
)
def test_scoped_attention_matches_transformers(hf_model, grid, chunk):
    visual = hf_model.thinker.model.visual
    inputs = vision_encoder.dummy_inputs(visual, grid, seed=3, chunk=chunk)
    windows = inputs[vision_encoder.INPUT_NAMES.index("window_slots")]
    assert windows.shape[0] > 1
    with torch.no_grad():
        ours = vision_encoder.VisionEncoderGraph(visual).eval()(*inputs)
        ref = visual(inputs[0], grid_thw=torch.tensor(grid)).pooler_output
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_encoder_never_holds_a_patch_by_patch_tensor(hf_model):
    from torch._higher_order_ops.scan import generic_scan
    from torch._ops import HigherOrderOperator
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        """The largest tensor any op makes, inside the Scan's body too."""

        supports_higher_order_operators = True
        numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if isinstance(func, HigherOrderOperator):  # run the scan's steps op by op, still watched
                with self:
                    combine_fn, init, xs, extra = args
                    return generic_scan(combine_fn, init, xs, additional_inputs=extra)
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    Largest.numel = max(Largest.numel, t.numel())
            return out

    visual = hf_model.thinker.model.visual
    patches = 64 * 64
    inputs = vision_encoder.dummy_inputs(visual, [(1, 64, 64)])
    with torch.no_grad(), Largest():
        vision_encoder.VisionEncoderGraph(visual).eval()(*inputs)
    # The dense graph held [heads, N, N] = 2 N^2; now the largest are the patches in ([N, 1176] through the patch
    # embedding) and one full-attention chunk of scores ([1, heads, 256, N] = N^2 / 8).
    assert 0 < Largest.numel <= max(patches * 1176, patches * patches // 8)


def test_scope_tables_follow_transformers_windows_and_frames():
    from transformers.vision_utils import get_vision_window_index

    for grid in ([(1, 32, 32)], [(1, 22, 14)], [(3, 10, 18)], [(1, 20, 34), (4, 6, 8)]):
        idx = vision_indices(grid, chunk=64)
        _, cu = get_vision_window_index(torch.tensor(grid), spatial_merge_size=2, window_size=112, patch_size=14)
        lengths = torch.unique_consecutive(cu).diff().numpy()
        np.testing.assert_array_equal((idx.window_slots >= 0).sum(axis=1), lengths)
        frames = [h * w for t, h, w in grid for _ in range(t)]
        np.testing.assert_array_equal((idx.frame_slots >= 0).sum(axis=(1, 2)), frames)
        patches = sum(frames)
        for slots, rows in ((idx.window_slots, idx.window_rows), (idx.frame_slots, idx.frame_rows)):
            np.testing.assert_array_equal(slots.reshape(-1)[rows], np.arange(patches))


def test_vision_activations_grow_linearly_and_are_in_the_plan():
    tiny = VisionDims(heads=2, hidden=32, intermediate=64, out_hidden=64)
    for dims in (tiny, QWEN_OMNI_7B_VISION):
        small, large = image_activation_bytes(448, 448, dims), image_activation_bytes(1344, 1344, dims)
        assert large < 12 * small  # 9x the patches
        dense = dense_vision_activation_bytes([(1, 96, 96)], dims)
        assert dense > 20 * vision_activation_bytes([(1, 96, 96)], dims)
    from omni_edge.export.tiny import medium_config_dict

    plan = encoder_activation_plan(medium_config_dict(), 4096)
    assert plan["vision_encoder 1344x1344"] == image_activation_bytes(1344, 1344, QWEN_OMNI_7B_VISION)
    assert "vision_encoder largest image (4096 tokens)" in plan and any(k.startswith("audio_encoder") for k in plan)
    # The pre-check prices an image's encoding too, when it is given the widths and a limit.
    image = np.zeros((1344, 1344, 3), np.uint8)
    need = image_activation_bytes(1344, 1344, QWEN_OMNI_7B_VISION)
    check_turn_media(4096, 4096, images=[image], vision=QWEN_OMNI_7B_VISION, activation_limit_bytes=need)
    with pytest.raises(InputError, match=f"needs {need / 2**20:.0f} MiB of vision-encoder activations"):
        check_turn_media(4096, 4096, images=[image], vision=QWEN_OMNI_7B_VISION, activation_limit_bytes=need - 1)


@pytest.mark.slow
def test_exported_scoped_graph_matches_transformers(hf_model, cpu_bundle):
    """The ONNX graph (Scan over full-attention chunks) at sizes it was not exported with. The bundle's own graph:
    omni-export verified it against the wrapper and transformers' vision tower; a second torch export of the
    Scan in the same process trips a torch graph break, so it is not exported again here."""
    import onnxruntime as ort

    visual = hf_model.thinker.model.visual
    session = ort.InferenceSession(str(cpu_bundle / "vision_encoder.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    for shape in ((448, 448), (300, 200)):
        patches, grid = preprocess_image(rng.integers(0, 256, (*shape, 3), dtype=np.uint8))
        ours = session.run(None, vision_indices(grid).feeds(patches))[0]
        with torch.no_grad():
            ref = visual(torch.tensor(patches), grid_thw=torch.tensor(grid)).pooler_output.numpy()
        np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- sound tracks of containers


@pytest.mark.parametrize("name", ["voice.m4a", "voice.mp4"])
def test_load_audio_reads_an_audio_only_container(tmp_path, name):
    write_sound(tmp_path / name, seconds=3, container="mp4")
    audio = load_audio(tmp_path / name)
    assert audio.dtype == np.float32 and abs(len(audio) - 3 * 16_000) < 0.05 * 16_000
    spectrum = np.abs(np.fft.rfft(audio[4000:-4000]))
    assert np.argmax(spectrum) * 16_000 / len(audio[4000:-4000]) == pytest.approx(440, abs=2)


def test_load_audio_reads_the_sound_track_of_a_video(tmp_path):
    write_video(tmp_path / "v.mp4")
    np.testing.assert_array_equal(load_audio(tmp_path / "v.mp4"), load_video_audio(tmp_path / "v.mp4"))


def test_container_errors_name_the_route(tmp_path):
    write_video(tmp_path / "silent.mp4", audio=False)
    with pytest.raises(InputError, match="silent.mp4 has no audio track"):
        load_audio(tmp_path / "silent.mp4")
    write_sound(tmp_path / "voice.mp4", container="mp4")
    with pytest.raises(InputError, match="no video stream; pass it with --audio"):
        sample_video_frames(tmp_path / "voice.mp4")
    with pytest.raises(InputError, match="no audio track"):
        load_container_audio(tmp_path / "silent.mp4")


@pytest.mark.slow
def test_cli_takes_an_m4a_through_audio(cpu_bundle, tmp_path):
    from helpers import cli

    write_sound(tmp_path / "voice.m4a", seconds=2, container="mp4")
    proc = cli("omni-run", str(cpu_bundle), "--audio", str(tmp_path / "voice.m4a"), "--max-new-tokens", "2", "--json")
    assert proc.returncode == 0, proc.stderr
