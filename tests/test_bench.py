"""omni-bench: report structure, reference rows, roofline and plot on the tiny bundle.

One iteration per row and no speed assertions: numbers come from `omni-bench` runs (bench/), not from tests.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from omni_edge.bench import BenchConfig, run_bench, write_plot
from omni_edge.bench.engines import ENGINES
from omni_edge.bench.run import decode_weight_bytes
from omni_edge.bundle import load_manifest

HAS_TORCH = all(importlib.util.find_spec(name) for name in ("torch", "transformers"))
QUICK = dict(
    iterations=1, warmup=0, e2e_iterations=1, e2e_new_tokens=4, speech_codec_tokens=60, bandwidth_mib=32, threads=1
)
SPEECH_ENGINES = {"talker_decoder", "dit_window", "bigvgan_window"}


@pytest.fixture(scope="module")
def report(cpu_bundle):
    return run_bench(cpu_bundle, BenchConfig(**QUICK))


def test_every_engine_of_the_bundle_has_rows(report):
    shapes = {(row["engine"], row["shape"]) for row in report["engines"]}
    assert {("thinker_decoder", f"prefill {n} tokens") for n in (128, 512, 2048)} <= shapes
    assert {("thinker_decoder", f"decode 1 token at context {n}") for n in (128, 512)} <= shapes
    assert ("audio_encoder", "one 2 s block") in shapes and ("vision_encoder", "one 448x448 image") in shapes
    for row in report["engines"]:
        assert row["iterations"] == 1 and 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["throughput"] > 0 and row["throughput_unit"].endswith("/s") and row["peak_rss_mib"] > 0
    in_bundle = set(load_manifest(report["bundle"], verify_files=False).components)
    measured = {row["engine"] for row in report["engines"]}
    pending = {row["engine"]: row["status"] for row in report["engines_pending"]}
    assert measured == in_bundle & {bench.name for bench in ENGINES}  # in the bundle: measured, never skipped
    assert all(pending[name] == "not in bundle" for name in SPEECH_ENGINES - in_bundle)
    assert report["config"]["threads"] == 1 and report["machine"]["usable_cpus"] >= 1
    json.dumps(report)  # the --json report is plain JSON


def test_end_to_end_prompts_and_speech_status(report):
    rows = {row["kind"]: row for row in report["end_to_end"]}
    assert set(rows) == {"text", "audio", "image"}
    assert rows["audio"]["prompt_tokens"] > rows["text"]["prompt_tokens"]  # the 3 s tone became audio tokens
    assert rows["image"]["prompt_tokens"] > rows["text"]["prompt_tokens"] + 200  # 448x448 -> 256 image tokens
    for row in rows.values():
        assert row["ttft_ms_p50"] > 0 and row["thinker_tokens_per_s_p50"] > 0 and row["new_tokens"] == 4
        assert "_prompt_token_ids" not in row
    speech = report["speech"]
    if speech["status"] == "not in bundle":  # no speech numbers are ever made up
        assert set(speech) == {"status", "missing_engines"}
    else:
        assert speech["status"] == "measured" and speech["codec_tokens"] > 0 and speech["audio_seconds"] > 0
        assert speech["first_audio_ms_p50"] >= speech["ttft_ms_p50"] > 0  # audio needs text first
        assert speech["rtf_p50"] > 0 and speech["codec_tokens_per_s_p50"] > 0 and "_prompt_token_ids" not in speech


@pytest.mark.skipif(not HAS_TORCH, reason="the PyTorch reference needs torch and transformers")
def test_reference_rows_and_ratios(report):
    assert report["reference"]["status"] == "measured" and report["reference"]["checkpoint_sha256_matches"]
    assert report["reference"]["torch_threads"] == 1
    for row in report["engines"]:
        assert row["reference"]["p50_ms"] > 0 and row["reference"]["iterations"] == 1
        assert row["latency_ratio"] == pytest.approx(row["p50_ms"] / row["reference"]["p50_ms"])
    for row in report["end_to_end"]:
        assert row["reference"]["ttft_ms_p50"] > 0 and row["reference"]["new_tokens"] == 4
        assert row["ttft_ratio"] > 0 and row["tokens_per_s_ratio"] > 0
    speech = report["speech"]
    if speech["status"] == "measured":
        assert speech["reference"]["audio_seconds"] > 0 and speech["reference"]["first_audio_ms_p50"] > 0
        assert speech["first_audio_ratio"] > 0 and speech["rtf_ratio"] > 0


def test_roofline_is_sane(report, cpu_bundle):
    roof = report["roofline"]
    assert roof["copy_bandwidth_gb_s"] == max(roof["copy_bandwidth_samples_gb_s"]) > 0
    assert len(roof["copy_bandwidth_samples_gb_s"]) == 2
    weights, files = decode_weight_bytes(cpu_bundle, load_manifest(cpu_bundle, verify_files=False))
    assert roof["decode_weight_bytes"] == weights > 0 and "thinker_decoder.onnx" in files
    assert roof["roofline_tokens_per_s"] == pytest.approx(roof["copy_bandwidth_gb_s"] * 1e9 / weights)
    decode_rows = [r for r in report["engines"] if r["engine"] == "thinker_decoder" and r["params"]["past"]]
    assert len(roof["decode"]) == len(decode_rows) > 0
    for item in roof["decode"]:
        assert 0 < item["roofline_tokens_per_s"] <= roof["roofline_tokens_per_s"] and item["fraction"] > 0


def test_plot_is_a_png(report, tmp_path):
    from PIL import Image

    path = write_plot(report, tmp_path / "plots" / "bench.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 500 and image.size[1] > 200


def test_cli_json_plot_engine_filter_and_no_reference(cpu_bundle, tmp_path):
    from omni_edge.cli import bench_main

    args = [
        str(cpu_bundle),
        "--engine",
        "thinker_decoder",
        "--iterations",
        "1",
        "--warmup",
        "0",
        "--e2e-iterations",
        "1",
        "--new-tokens",
        "2",
        "--speech-codec-tokens",
        "4",
        "--threads",
        "1",
        "--no-reference",
        "--json",
        "--plot",
        str(tmp_path / "b.png"),
    ]
    result = CliRunner().invoke(bench_main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {row["engine"] for row in report["engines"]} == {"thinker_decoder"}
    assert report["reference"]["status"] == "skipped (--no-reference)"
    assert all(row["reference"] is None and row["latency_ratio"] is None for row in report["engines"])
    assert report["command"].startswith("omni-bench ") and (tmp_path / "b.png").stat().st_size > 0


def test_unknown_engine_is_a_one_line_error(cpu_bundle):
    from omni_edge.cli import bench_main

    result = CliRunner().invoke(bench_main, [str(cpu_bundle), "--engine", "warp_drive", "--no-reference"])
    assert result.exit_code == 2 and "warp_drive" in result.stderr and "thinker_decoder" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_medium_preset_has_real_widths_and_tiny_is_unchanged():
    from transformers import Qwen2_5OmniConfig

    from omni_edge.export.tiny import PRESETS, TINY_SEED, checkpoint_key, tiny_checkpoint_key

    # Cached tiny checkpoints and every parity test depend on this key: tiny must not drift.
    assert tiny_checkpoint_key(TINY_SEED) == "bfbae9576b00"
    assert checkpoint_key("medium", TINY_SEED) != tiny_checkpoint_key(TINY_SEED)
    config = Qwen2_5OmniConfig(**PRESETS["medium"]())
    text, audio, vision = (
        config.thinker_config.text_config,
        config.thinker_config.audio_config,
        config.thinker_config.vision_config,
    )
    assert (text.hidden_size, text.num_attention_heads, text.num_key_value_heads) == (2048, 16, 2)
    assert (text.intermediate_size, text.vocab_size, text.num_hidden_layers) == (11008, 151936, 2)
    assert sum(text.rope_parameters["mrope_section"]) * 2 == text.hidden_size // text.num_attention_heads
    assert (audio.d_model, audio.encoder_attention_heads, audio.encoder_ffn_dim) == (1280, 20, 5120)
    assert (vision.hidden_size, vision.num_heads, vision.intermediate_size) == (1280, 16, 3420)
    assert audio.output_dim == vision.out_hidden_size == text.hidden_size
    assert (vision.hidden_size // vision.num_heads) % 4 == 0
    assert config.talker_config.embedding_size == text.hidden_size


def test_live_case_times_the_end_of_speech_against_the_whole_clip(cpu_bundle):
    from omni_edge.cli import bench_main

    wav = Path(__file__).parent / "data" / "speech_question.wav"  # 6.5 s of espeak-ng speech
    args = [str(cpu_bundle), "--engine", "thinker_decoder", "--iterations", "1", "--warmup", "0"]
    args += ["--e2e-iterations", "1", "--new-tokens", "4", "--no-reference", "--json", "--live", str(wav)]
    result = CliRunner().invoke(bench_main, args)
    assert result.exit_code == 0, result.output
    live = json.loads(result.stdout)["live"]
    assert live["blocks_prefilled_while_speaking"] == 3  # three whole 2 s blocks arrive before the end
    assert live["end_of_speech_to_first_text_ms"]["live"] > 0 and live["end_of_speech_to_first_text_ms"]["offline"] > 0
    assert live["block_ms_max"] is not None and live["greedy_tokens"] == 4
