"""End-to-end CLI runs and the bad-input contract: one clear line, non-zero exit, nothing half-written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import BIN, assert_one_line_error, cli
from no_torch import run_without_torch


@pytest.mark.slow
def test_export_then_run_json(tiny_checkpoint, cache_dir, tmp_path):
    out = tmp_path / "bundle"
    # Thinker only: the full export is covered by the session bundle; this checks the command itself.
    proc = cli(
        "omni-export",
        "--model",
        "tiny",
        "--target",
        "cpu",
        "--out",
        str(out),
        "--max-seq-len",
        "256",
        "--components",
        "thinker",
        cache_dir=cache_dir,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"omni-run {out}" in proc.stderr  # the next command is printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kv_cache"]["max_seq_len"] == 256
    assert set(manifest["components"]) == {"thinker_decoder"}
    assert all(c["measured_max_abs_error"] <= c["atol"] for c in manifest["components"].values())
    # cpu auto: weight-only int8, which needs no --calib; the report says what measured it
    assert manifest["components"]["thinker_decoder"]["precision"] == "int8"
    assert manifest["quantization"]["calibration"]["source"].startswith("synthetic, no --calib given")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind

    run = cli("omni-run", str(out), "--prompt", "Hello", "--greedy", "--max-new-tokens", "12", "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    for key in (
        "text",
        "prompt_token_ids",
        "text_token_ids",
        "codec_token_ids",
        "audio_seconds",
        "ttft_ms",
        "first_audio_ms",
        "rtf",
    ):
        assert key in report
    assert len(report["text_token_ids"]) == 12 and report["text"]
    assert report["prompt_token_ids"][0] == 151644  # <|im_start|>

    streamed = cli("omni-run", str(out), "--prompt", "Hello", "--greedy", "--max-new-tokens", "12")
    assert streamed.returncode == 0 and streamed.stdout.strip() == report["text"].strip()

    no_speech = cli("omni-run", str(out), "--prompt", "Hello", "--out-wav", str(tmp_path / "r.wav"))
    assert_one_line_error(no_speech, "no speech components", "--components")


def test_partial_speech_components_are_refused(tmp_path):
    proc = cli("omni-export", "--model", "tiny", "--components", "thinker,talker", "--out", str(tmp_path / "b"))
    assert_one_line_error(proc, "talker, dit, bigvgan")


def test_help_teaches():
    for name in ("omni-export", "omni-build-engines", "omni-run", "omni-bench"):
        proc = cli(name, "--help")
        assert proc.returncode == 0 and "Example" in proc.stdout


def test_unknown_model_path(tmp_path):
    proc = cli("omni-export", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "b"))
    assert_one_line_error(proc, "nope")
    assert not (tmp_path / "b").exists()


def test_directory_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    proc = cli("omni-export", "--model", str(tmp_path / "ckpt"), "--out", str(tmp_path / "b"))
    assert_one_line_error(proc, "missing", "spk_dict.pt")


def test_offline_hub_id_fails_clearly(tmp_path):
    env_proc = subprocess.run(
        [str(BIN / "omni-export"), "--model", "Qwen/Qwen2.5-Omni-3B", "--out", str(tmp_path / "b")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
    )
    assert_one_line_error(env_proc, "Qwen/Qwen2.5-Omni-3B", "offline")


def test_unknown_target_and_bad_precision(tmp_path):
    proc = cli("omni-export", "--model", "tiny", "--target", "toaster", "--out", str(tmp_path / "b"))
    assert proc.returncode == 2 and "toaster" in proc.stderr and "jetson-orin" in proc.stderr
    proc = cli(
        "omni-export", "--model", "tiny", "--target", "jetson-orin", "--precision", "fp8", "--out", str(tmp_path / "b")
    )
    assert_one_line_error(proc, "jetson-orin cannot run fp8")


def test_existing_output_is_not_clobbered(tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = cli("omni-export", "--model", "tiny", "--out", str(out))
    assert_one_line_error(proc, "--overwrite")
    assert (out / "keep.txt").read_text() == "mine"


def test_interrupted_export_leaves_nothing(tiny_checkpoint, tmp_path):
    from contextlib import contextmanager

    from omni_edge.export.pipeline import ExportRequest, export_bundle

    class Interrupt(Exception):
        pass

    @contextmanager
    def progress_that_dies(total, description):
        class Bar:
            steps = 0

            def update(self, n=1):
                Bar.steps += n
                if Bar.steps == 2:  # after the first graph was written to staging
                    raise Interrupt

            def set_description(self, text):
                pass

        yield Bar()

    out = tmp_path / "b"
    with pytest.raises(Interrupt):
        export_bundle(ExportRequest(str(tiny_checkpoint), "cpu", out), progress_that_dies)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture()
def bundle_copy(cpu_bundle, tmp_path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(cpu_bundle, copy)
    return copy


def test_bundle_missing_a_file(bundle_copy):
    (bundle_copy / "thinker_decoder.onnx.data").unlink()
    assert_one_line_error(cli("omni-run", str(bundle_copy), "--prompt", "hi"), "thinker_decoder.onnx.data", "missing")


def test_bundle_with_a_tampered_file(bundle_copy):
    path = bundle_copy / "thinker_decoder.onnx.data"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert_one_line_error(cli("omni-run", str(bundle_copy), "--prompt", "hi"), "sha256")


def test_directory_without_manifest(tmp_path):
    (tmp_path / "half").mkdir()
    assert_one_line_error(cli("omni-run", str(tmp_path / "half"), "--prompt", "hi"), "manifest.json")


def test_prompt_longer_than_kv_cache(cpu_bundle):
    proc = cli("omni-run", str(cpu_bundle), "--prompt", "word " * 2500, "--max-new-tokens", "4")
    assert_one_line_error(proc, "KV cache holds 2048", "--max-seq-len")


def test_bench_reports_every_thinker_engine(cpu_bundle):
    # The reference and speech rows are covered by tests/test_bench.py; this checks the command quickly.
    proc = cli(
        "omni-bench",
        str(cpu_bundle),
        "--iterations",
        "2",
        "--warmup",
        "1",
        "--json",
        "--no-reference",
        "--e2e-iterations",
        "1",
        "--new-tokens",
        "4",
        "--speech-codec-tokens",
        "8",
        "--threads",
        "1",
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    shapes = {row["shape"] for row in report["engines"]}
    assert "prefill 128 tokens" in shapes and "decode 1 token at context 128" in shapes
    assert all(row["p50_ms"] > 0 and row["p50_ms"] <= row["p99_ms"] for row in report["engines"])
    assert len(report["end_to_end"]) == 3 and all(r["ttft_ms_p50"] > 0 for r in report["end_to_end"])


def test_runtime_runs_without_torch(cpu_bundle):
    run_without_torch(
        "from omni_edge.runtime.session import Session, Done\n"
        "from omni_edge.runtime.sampling import SamplingConfig\n"
        f"s = Session({str(cpu_bundle)!r})\n"
        "r = [e for e in s.generate('hi', 4, SamplingConfig(greedy=True)) if isinstance(e, Done)][0].result\n"
        "assert len(r.text_token_ids) == 4 and 'torch' not in [m for m in sys.modules if sys.modules[m]]\n"
        "print('ok')\n"
    )


def test_run_with_audio_image_and_video_files(cpu_bundle, tmp_path):
    import numpy as np
    import soundfile as sf
    from media_files import write_video
    from PIL import Image

    t = np.arange(int(44_100 * 1.5)) / 44_100
    sf.write(tmp_path / "q.wav", np.stack([np.sin(2 * np.pi * 440 * t)] * 2, axis=1) * 0.3, 44_100)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    write_video(tmp_path / "v.mp4", seconds=3, rate=10, audio=True, size=(56, 84))
    proc = cli(
        "omni-run",
        str(cpu_bundle),
        "--audio",
        str(tmp_path / "q.wav"),
        "--image",
        str(tmp_path / "x.png"),
        "--video",
        str(tmp_path / "v.mp4"),
        "--audio-in-video",
        "--prompt",
        "What is this?",
        "--greedy",
        "--max-new-tokens",
        "6",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    ids = json.loads(proc.stdout)["prompt_token_ids"]
    for placeholder in (151646, 151655, 151656):  # <|AUDIO|>, <|IMAGE|>, <|VIDEO|>
        assert placeholder in ids
    assert len(json.loads(proc.stdout)["text_token_ids"]) == 6


def test_bad_media_gives_one_line(cpu_bundle, tmp_path):
    from media_files import write_video

    (tmp_path / "broken.wav").write_bytes(b"RIFF\x00\x00garbage")
    assert_one_line_error(cli("omni-run", str(cpu_bundle), "--audio", str(tmp_path / "broken.wav")), "broken.wav")
    (tmp_path / "empty.png").write_bytes(b"")
    assert_one_line_error(cli("omni-run", str(cpu_bundle), "--image", str(tmp_path / "empty.png")), "empty.png")
    write_video(tmp_path / "silent.mp4", seconds=2, rate=10, audio=False, size=(56, 84))
    proc = cli("omni-run", str(cpu_bundle), "--video", str(tmp_path / "silent.mp4"), "--audio-in-video")
    assert_one_line_error(proc, "silent.mp4", "audio")
    assert_one_line_error(cli("omni-run", str(cpu_bundle), "--audio", str(tmp_path / "nope.wav")), "nope.wav")


def test_run_speaks_into_a_wav_file(cpu_bundle, tmp_path):
    import soundfile as sf

    wav = tmp_path / "reply.wav"
    proc = cli(
        "omni-run",
        str(cpu_bundle),
        "--prompt",
        "Say hi",
        "--greedy",
        "--max-new-tokens",
        "8",
        "--out-wav",
        str(wav),
        "--speaker",
        "Ethan",
        "--max-codec-tokens",
        "100",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    audio, rate = sf.read(wav)
    assert rate == 24000 and len(audio) == round(report["audio_seconds"] * 24000)
    assert 0 < len(report["codec_token_ids"]) <= 100 and len(audio) == len(report["codec_token_ids"]) * 480
    # A random Talker rarely says eos: the bound stops it and the report says so.
    assert report["talker_stop_reason"] in ("eos", "max_codec_tokens")
    assert report["first_audio_ms"] > 0 and report["rtf"] > 0


def test_speech_input_errors_come_before_generation(cpu_bundle, tmp_path):
    proc = cli("omni-run", str(cpu_bundle), "--prompt", "hi", "--out-wav", str(tmp_path / "r.wav"), "--speaker", "Bob")
    assert_one_line_error(proc, "unknown speaker 'Bob'", "Chelsie", "Ethan")
    proc = cli("omni-run", str(cpu_bundle), "--prompt", "hi", "--out-wav", str(tmp_path / "missing" / "r.wav"))
    assert_one_line_error(proc, "cannot write --out-wav")
    assert not list(tmp_path.iterdir())
