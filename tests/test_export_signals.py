"""Signals and files: nothing half-written, nothing left behind, nothing of the user's deleted, and a full disk
said in one line with the numbers."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import BIN, assert_one_line_error, cli

from omni_edge.errors import BundleError
from omni_edge.export import staging
from omni_edge.export.pipeline import ExportRequest, _no_progress, export_bundle


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _dot_dirs(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def _wait_for(predicate, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# -- --overwrite never deletes what is not a bundle --------------------------------------------------


def test_overwrite_refuses_a_directory_that_is_not_a_bundle(tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"mine")
    proc = cli("omni-export", "--model", "tiny", "--out", str(out), "--overwrite")
    assert_one_line_error(proc, "holds no bundle", "never deletes other files")
    assert (out / "holiday.jpg").read_bytes() == b"mine"


def test_overwrite_refuses_a_file(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    proc = cli("omni-export", "--model", "tiny", "--out", str(tmp_path / "notes.txt"), "--overwrite")
    assert_one_line_error(proc, "is a file")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_overwrite_accepts_a_bundle_or_an_empty_directory(tmp_path):
    for name, files in (("empty", {}), ("bundle", {"manifest.json": "{}"})):
        out = tmp_path / name
        out.mkdir()
        for rel, text in files.items():
            (out / rel).write_text(text)
        staging.check_overwrite(out, overwrite=True)


# -- stale staging of dead exports -------------------------------------------------------------------


def test_stale_staging_of_a_dead_export_is_removed_and_said(tmp_path):
    out = tmp_path / "b"
    host = staging._host()
    dead = tmp_path / f".b.partial-{_dead_pid()}@{host}-x1"
    dead_fp32 = tmp_path / f".b.fp32-{_dead_pid()}@{host}-x2"
    live = tmp_path / f".b.partial-{os.getpid()}@{host}-x3"
    elsewhere = tmp_path / f".b.partial-{_dead_pid()}@other-host-x4"
    legacy = tmp_path / ".b.partial-abc123"
    other_bundle = tmp_path / f".c.partial-{_dead_pid()}@{host}-x5"
    for path in (dead, dead_fp32, live, elsewhere, legacy, other_bundle):
        path.mkdir()
        (path / "thinker_decoder.onnx").write_bytes(b"x")
    said: list[str] = []
    removed = staging.remove_stale_staging(out, said.append)
    assert sorted(removed) == sorted([dead, dead_fp32])
    assert not dead.exists() and not dead_fp32.exists()
    assert live.exists() and elsewhere.exists() and legacy.exists() and other_bundle.exists()
    assert any(str(dead) in line and "no longer running" in line for line in said)
    assert any(str(legacy) in line for line in said)  # mentioned, not removed


def test_staging_names_its_owner(tmp_path):
    path = staging.make_staging(tmp_path / "b", "partial")
    assert path.name.startswith(f".b.partial-{os.getpid()}@")


@pytest.mark.slow
def test_sigterm_during_export_removes_staging(tmp_path, cache_dir, tiny_checkpoint):
    out = tmp_path / "b"
    env = {**os.environ, "OMNI_EDGE_CACHE": str(cache_dir)}
    proc = subprocess.Popen(
        [str(BIN / "omni-export"), "--model", "tiny", "--out", str(out), "--components", "thinker"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    _wait_for(lambda: any(".partial-" in n for n in _dot_dirs(tmp_path)) or proc.poll() is not None)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "terminated" in stderr and "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_staging_left_by_sigkill_is_removed_by_the_next_export(tmp_path, cache_dir, tiny_checkpoint, monkeypatch):
    out = tmp_path / "b"
    env = {**os.environ, "OMNI_EDGE_CACHE": str(cache_dir)}
    proc = subprocess.Popen(
        [str(BIN / "omni-export"), "--model", "tiny", "--out", str(out), "--components", "thinker"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    _wait_for(lambda: any(".partial-" in n for n in _dot_dirs(tmp_path)) or proc.poll() is not None)
    proc.kill()
    proc.wait()
    left = _dot_dirs(tmp_path)
    # cpu auto reduces the bundle, so an fp32 twin may be staged beside the partial bundle: both are left
    assert left and all(".partial-" in n or ".fp32-" in n for n in left)
    # The next export removes it (and says so) before anything else; a full disk stops it right after.
    monkeypatch.setattr(staging, "free_bytes", lambda directory: 0)
    said: list[str] = []
    with pytest.raises(BundleError, match="not enough disk space"):
        export_bundle(
            ExportRequest(str(tiny_checkpoint), "cpu", out, components=("thinker",)), _no_progress, said.append
        )
    assert _dot_dirs(tmp_path) == []
    assert any("no longer running" in line and f"pid {proc.pid}" in line for line in said)


# -- a full disk -----------------------------------------------------------------------------------


def test_export_that_cannot_fit_the_disk_is_refused_before_starting(tmp_path, tiny_checkpoint, monkeypatch):
    monkeypatch.setattr(staging, "free_bytes", lambda directory: 1 << 20)
    out = tmp_path / "b"
    with pytest.raises(BundleError) as info:
        export_bundle(ExportRequest(str(tiny_checkpoint), "cpu", out), _no_progress)
    message = str(info.value)
    assert "needs about" in message and "1.0 MiB is free" in message
    assert list(tmp_path.iterdir()) == []


def test_disk_full_during_export_says_needed_and_free(tmp_path, tiny_checkpoint, monkeypatch):
    from omni_edge.export import verify_loop

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(verify_loop, "export_with_expectations", disk_full)
    with pytest.raises(BundleError) as info:
        export_bundle(ExportRequest(str(tiny_checkpoint), "cpu", tmp_path / "b"), _no_progress)
    message = str(info.value)
    assert "disk filled up" in message and "needs about" in message and "is free" in message
    assert list(tmp_path.iterdir()) == []


def test_disk_full_is_found_through_exception_chains():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("onnx save failed") from inner
    except RuntimeError as outer:
        assert staging.disk_full(outer)
    assert not staging.disk_full(OSError(errno.EACCES, "denied"))


# -- the spoken reply's wav stays playable -----------------------------------------------------------


def test_wav_header_is_valid_after_every_chunk(tmp_path):
    import soundfile as sf

    from omni_edge.runtime.wav_writer import WavWriter

    chunks = [np.sin(np.arange(n) / 7).astype(np.float32) * 0.5 for n in (480, 960, 37)]
    with WavWriter(tmp_path / "reply.wav", 24000) as wav:
        temp = next(tmp_path.glob(".reply.wav.*"))
        assert sf.info(str(temp)).frames == 0
        for i, chunk in enumerate(chunks):
            wav.write(chunk)
            data, rate = sf.read(str(temp), dtype="float32")  # what a player sees mid-reply
            assert rate == 24000 and len(data) == sum(len(c) for c in chunks[: i + 1])
    assert sf.info(str(tmp_path / "reply.wav")).frames == sum(len(c) for c in chunks)
    assert [p.name for p in tmp_path.iterdir()] == ["reply.wav"]


def test_interrupted_wav_keeps_what_was_spoken_and_errors_discard(tmp_path):
    import soundfile as sf

    from omni_edge.runtime.wav_writer import WavWriter
    from omni_edge.signals import Terminated

    with pytest.raises(Terminated), WavWriter(tmp_path / "a.wav", 24000) as wav:
        wav.write(np.zeros(480, np.float32))
        raise Terminated()
    assert sf.info(str(tmp_path / "a.wav")).frames == 480
    with pytest.raises(ValueError), WavWriter(tmp_path / "b.wav", 24000) as wav:
        wav.write(np.zeros(480, np.float32))
        raise ValueError("a bug")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]


def test_wav_samples_are_what_soundfile_wrote(tmp_path):
    import soundfile as sf

    from omni_edge.runtime.wav_writer import WavWriter

    x = np.random.default_rng(0).uniform(-1.3, 1.3, 5000).astype(np.float32)
    sf.write(tmp_path / "ref.wav", x, 24000, subtype="PCM_16")
    with WavWriter(tmp_path / "new.wav", 24000) as wav:
        wav.write(x)
    ref, _ = sf.read(tmp_path / "ref.wav", dtype="int16")
    new, _ = sf.read(tmp_path / "new.wav", dtype="int16")
    assert np.array_equal(ref, new)


@pytest.mark.slow
def test_sigterm_during_spoken_reply_leaves_a_playable_wav(cpu_bundle, tmp_path):
    import soundfile as sf

    wav = tmp_path / "reply.wav"
    # ~30 s of speech from the tiny bundle (its Talker rarely says eos), ~20 s of work: time to interrupt it
    args = ["--prompt", "Tell me a long story", "--max-new-tokens", "300", "--max-codec-tokens", "1500"]
    proc = subprocess.Popen(
        [str(BIN / "omni-run"), str(cpu_bundle), *args, "--out-wav", str(wav), "--greedy"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def some_audio() -> bool:
        temps = list(tmp_path.glob(".reply.wav.*"))
        return proc.poll() is not None or any(t.stat().st_size > 44 + 2 * 24000 // 10 for t in temps)

    _wait_for(some_audio)
    temps = list(tmp_path.glob(".reply.wav.*"))
    assert proc.poll() is None, f"the reply ended before any audio could be interrupted: {proc.stderr.read()}"
    assert sf.info(str(temps[0])).frames > 0  # playable while it is being written
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr
    assert sf.info(str(wav)).frames > 0 and not list(tmp_path.glob(".reply.wav.*"))
