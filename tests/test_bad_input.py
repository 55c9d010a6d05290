"""Every bad flag, number, text or checkpoint gets one line and exit 2 before any work, never a traceback."""

from __future__ import annotations

import json
import math
import shutil
import subprocess

import pytest
from helpers import BIN, assert_one_line_error, cli

from omni_edge.errors import InputError, ModelSourceError


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--temperature", "nan"], "--temperature nan"),
        (["--temperature", "inf"], "--temperature inf"),
        (["--repetition-penalty", "nan", "--greedy"], "--repetition-penalty nan"),
        (["--seed", "-1"], "--seed -1"),
        (["--threads", "100000"], "--threads 100000"),
        (["--threads", "-1"], "--threads -1"),
    ],
)
def test_run_flags_out_of_range(cpu_bundle, flags, fragment):
    assert_one_line_error(cli("omni-run", str(cpu_bundle), "--prompt", "hi", *flags), fragment)


def test_prompt_that_is_not_utf8(cpu_bundle):
    proc = subprocess.run(
        [str(BIN / "omni-run"), str(cpu_bundle), "--prompt", b"caf\xe9 \xff"], capture_output=True, text=True
    )
    assert_one_line_error(proc, "--prompt is not valid UTF-8")


def test_max_codec_tokens_beyond_the_talker_cache(cpu_bundle, tmp_path):
    room = json.loads((cpu_bundle / "manifest.json").read_text())["talker"]["kv_cache"]["max_seq_len"]
    proc = cli(
        "omni-run",
        str(cpu_bundle),
        "--prompt",
        "hi",
        "--out-wav",
        str(tmp_path / "r.wav"),
        "--max-codec-tokens",
        "1000000000",
    )
    assert_one_line_error(proc, "--max-codec-tokens 1000000000", f"({room} tokens", "--max-seq-len")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "flags, fragment", [(["--threads", "-3"], "--threads -3"), (["--e2e-iterations", "-1"], "--e2e-iterations")]
)
def test_bench_flags_out_of_range(cpu_bundle, flags, fragment):
    assert_one_line_error(cli("omni-bench", str(cpu_bundle), "--no-reference", *flags), fragment)


def test_sampling_config_refuses_nan_in_the_python_api():
    from omni_edge.runtime.sampling import SamplingConfig

    for config in (SamplingConfig(temperature=math.nan), SamplingConfig(greedy=True, repetition_penalty=math.nan)):
        with pytest.raises(InputError):
            config.validate()


def test_limits_in_the_python_api():
    from omni_edge.runtime.engine import check_threads
    from omni_edge.runtime.limits import check_max_codec_tokens, check_seed, check_text

    for bad in (-1, 2**64, 1.5, True):
        with pytest.raises(InputError):
            check_seed(bad)
    for good in (None, 0, 2**63 - 1):
        check_seed(good)
    with pytest.raises(InputError):
        check_text("ok \udcff")
    with pytest.raises(InputError, match="at most 64"):
        check_max_codec_tokens(65, type("T", (), {"kv_cache": type("K", (), {"max_seq_len": 64})})())
    with pytest.raises(InputError):
        check_threads(10**5)
    assert check_threads(0) == 0


# -- checkpoints -----------------------------------------------------------------------------------


@pytest.fixture()
def checkpoint_copy(tiny_checkpoint, tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, copy)
    return copy


@pytest.mark.parametrize(
    "config, fragment",
    [
        (b"{not json", "is not valid JSON"),
        (b"\xff\xfe\x00\x01", "is not valid JSON"),
        (b"[1, 2]", "no thinker_config object"),
        (b'{"thinker_config": {"audio_config": {}}}', "no thinker_config.text_config object"),
        (b'{"thinker_config": {"text_config": 7}}', "no thinker_config.text_config object"),
    ],
)
def test_invalid_config_json(checkpoint_copy, tmp_path, config, fragment):
    (checkpoint_copy / "config.json").write_bytes(config)
    proc = cli("omni-export", "--model", str(checkpoint_copy), "--out", str(tmp_path / "b"))
    assert_one_line_error(proc, "config.json", fragment)
    assert not (tmp_path / "b").exists()


class _Payload:
    """A pickle that would print when unpickled without weights_only."""

    def __reduce__(self):
        return (print, ("UNPICKLED-PAYLOAD-RAN",))


def test_pickled_speaker_table_is_refused(checkpoint_copy, tmp_path):
    import torch

    torch.save({"Chelsie": _Payload()}, checkpoint_copy / "spk_dict.pt")
    proc = cli("omni-export", "--model", str(checkpoint_copy), "--out", str(tmp_path / "b"))
    assert_one_line_error(proc, "spk_dict.pt", "weights_only")
    assert "UNPICKLED-PAYLOAD-RAN" not in proc.stdout + proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no staging left behind


def test_check_speakers_accepts_the_real_table(tiny_checkpoint):
    from omni_edge.export.checkpoint import check_config, check_speakers

    check_speakers(tiny_checkpoint)
    assert "text_config" in check_config(tiny_checkpoint)["thinker_config"]
    with pytest.raises(ModelSourceError):
        check_speakers(tiny_checkpoint / "missing")


def test_export_max_seq_len_beyond_any_bundle(tmp_path):
    proc = cli("omni-export", "--model", "tiny", "--out", str(tmp_path / "b"), "--max-seq-len", str(10**12))
    assert_one_line_error(proc, "--max-seq-len 1000000000000", "at most 1048576")
    assert not (tmp_path / "b").exists()
