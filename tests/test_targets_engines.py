"""Targets: memory plans from checkpoint headers, refusals before any long work, TensorRT engines.

Engine builds need TensorRT-RTX (`pip install 'omni-edge[trt]'`; it builds on a CPU-only machine) and skip
without it; running engines needs an NVIDIA GPU and skips without one.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_one_line_error, cli

from omni_edge import naming, trt_compat
from omni_edge.bench.inputs import decoder_feeds
from omni_edge.bundle import Manifest, load_manifest, sha256_file, write_manifest
from omni_edge.components import COMPONENT_NAMES
from omni_edge.errors import BundleError, TargetError
from omni_edge.memory_plan import BYTES_PER_PARAMETER, GIB, check_fits, plan_memory, read_safetensors_header
from omni_edge.runtime.encoder_memory import encoder_activation_plan
from omni_edge.targets import TARGETS

ALL_FP32 = {c: "fp32" for c in COMPONENT_NAMES}


def _rtx():
    if not trt_compat.is_installed("tensorrt-rtx"):
        pytest.skip("tensorrt-rtx is not installed (pip install 'omni-edge[trt]')")
    return trt_compat.import_flavour("tensorrt-rtx")


def _gpu() -> str:
    from omni_edge.runtime.cuda import cuda_device_status

    ok, why = cuda_device_status()
    if not ok:
        pytest.skip(f"needs an NVIDIA GPU: {why}")
    return why


# ------------------------------------------------------------------------------------------------ memory plan


def _data_bytes(path: Path) -> int:
    with open(path, "rb") as handle:
        header_len = struct.unpack("<Q", handle.read(8))[0]
    return path.stat().st_size - 8 - header_len


def test_memory_plan_counts_every_checkpoint_byte(tiny_checkpoint):
    plan = plan_memory(tiny_checkpoint, ALL_FP32, 1024, list(COMPONENT_NAMES))
    stored = sum(_data_bytes(p) for p in tiny_checkpoint.glob("*.safetensors"))  # the tiny checkpoint is fp32
    assert sum(p.parameters + p.table_parameters for p in plan.parts) * 4 == stored
    by_name = {p.component: p for p in plan.parts}
    assert set(by_name) == set(COMPONENT_NAMES)
    assert by_name["thinker"].copies == 1 and by_name["audio_encoder"].copies == 1  # one decoder graph
    assert all(p.weight_bytes == p.parameters * 4 * p.copies for p in plan.parts)
    # The Thinker's graphs hold lm_head, not the embedding table (the runtime reads that one itself).
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    text = config["thinker_config"]["text_config"]
    assert by_name["thinker"].table_parameters == text["vocab_size"] * text["hidden_size"]
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    assert plan.kv_bytes["thinker"] == 2 * text["num_hidden_layers"] * text["num_key_value_heads"] * head_dim * 1024 * 4
    scores, mlp = text["num_attention_heads"] * 1024 * 1024 * 4, 2 * 1024 * text["intermediate_size"] * 4
    prefill = max(scores, mlp) + 2 * 1024 * text["hidden_size"] * 4
    # The encoders run before the prefill: the larger of their peaks (at the largest media) is the bundle's.
    encoders = encoder_activation_plan(config["thinker_config"], 1024)
    assert set(plan.encoder_configs) == {"audio_config", "vision_config"}
    assert plan.activation_bytes == max(prefill, *encoders.values())
    text_only = plan_memory(tiny_checkpoint, ALL_FP32, 1024, ["thinker"])
    assert text_only.activation_bytes == prefill and not text_only.encoder_configs
    assert "logits" not in plan.activation_basis  # the graphs' head runs on the last position only
    assert (
        plan.total_bytes == plan.weight_bytes + plan.table_bytes + sum(plan.kv_bytes.values()) + plan.activation_bytes
    )
    check_fits(plan, TARGETS["cpu"])  # the tiny model fits the soft 16 GiB default


def test_memory_plan_scales_with_precision_and_components(tiny_checkpoint):
    fp32 = plan_memory(tiny_checkpoint, ALL_FP32, 512, ["thinker"])
    int4 = plan_memory(tiny_checkpoint, {**ALL_FP32, "thinker": "int4-awq"}, 512, ["thinker"])
    assert [p.component for p in fp32.parts] == ["thinker"] and "talker" not in fp32.kv_bytes
    params = fp32.parts[0].parameters
    config = json.loads((tiny_checkpoint / "config.json").read_text())["thinker_config"]["text_config"]
    head = config["vocab_size"] * config["hidden_size"]  # lm_head stays fp16 (the default high precision)
    assert int4.parts[0].head_parameters == head and int4.parts[0].head_precision == "fp16"
    assert int4.parts[0].weight_bytes == math.ceil((params - head) * BYTES_PER_PARAMETER["int4-awq"]) + head * 2
    cpu = TARGETS["cpu"]
    on_cpu = plan_memory(
        tiny_checkpoint,
        {**ALL_FP32, "thinker": "int8"},
        512,
        ["thinker"],
        cpu.high_precision,
        cpu.kv_dtype,
        cpu.weight_only,
        cpu.quantized_heads,
    )
    # weight-only MatMulNBits, head included: 8-bit blocks of 128 with an fp32 scale each
    assert on_cpu.parts[0].weight_bytes == math.ceil((params - head) * 1.03125) + math.ceil(head * 1.03125)
    assert on_cpu.parts[0].head_precision == ""
    assert fp32.parts[0].head_precision == ""  # an unquantized head is priced with the rest
    assert int4.kv_bytes["thinker"] == fp32.kv_bytes["thinker"]  # quantized graphs keep fp32 KV inputs
    assert fp32.at_seq_len(256).kv_bytes["thinker"] * 2 == fp32.kv_bytes["thinker"]


def _write_header_only(path: Path, tensors: dict[str, list[int]]) -> None:
    """A safetensors file whose header claims the tensors; no data follows (the planner never reads it)."""
    header, offset = {}, 0
    for name, shape in tensors.items():
        size = math.prod(shape) * 2
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob)


def _seven_b_checkpoint(tiny_checkpoint: Path, out: Path) -> Path:
    """A checkpoint directory with real-7B Thinker geometry and a header claiming ~7.7B Thinker graph parameters."""
    out.mkdir()
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    config["thinker_config"]["text_config"].update(
        hidden_size=3584,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        head_dim=128,
        intermediate_size=18944,
        vocab_size=152064,
    )
    (out / "config.json").write_text(json.dumps(config))
    for name in ("spk_dict.pt", "tokenizer.json"):
        shutil.copyfile(tiny_checkpoint / name, out / name)
    layer = 4 * 3584 * 3584 + 3 * 3584 * 18944  # attention + MLP weights of one layer
    tensors = {f"thinker.model.layers.{i}.weights": [layer] for i in range(28)}
    tensors |= {"thinker.lm_head.weight": [152064, 3584], "thinker.model.embed_tokens.weight": [152064, 3584]}
    _write_header_only(out / "model-00001-of-00002.safetensors", tensors)
    _write_header_only(out / "model-00002-of-00002.safetensors", {"thinker.audio_tower.proj.weight": [1280, 3584]})
    return out


def test_seven_b_thinker_is_refused_for_orin_nano_with_numbers(tiny_checkpoint, tmp_path):
    ckpt = _seven_b_checkpoint(tiny_checkpoint, tmp_path / "fake7b")
    assert read_safetensors_header(ckpt / "model-00001-of-00002.safetensors")["thinker.lm_head.weight"]["shape"] == [
        152064,
        3584,
    ]
    plan = plan_memory(ckpt, {**ALL_FP32, "thinker": "int4-awq"}, 4096, ["thinker"])
    thinker = plan.parts[0]
    assert 7.6e9 < thinker.parameters < 7.8e9
    with pytest.raises(TargetError) as refused:
        check_fits(plan, TARGETS["jetson-orin-nano"])
    message = str(refused.value)
    for fragment in (
        "does not fit jetson-orin-nano",
        "and the target has 6 GiB",
        "7.69B params",
        "int4-awq, head 545.00M fp16)",
        "KV cache",
        "at --max-seq-len 4096",
        "attention scores [28, 4096, 4096]",
        "Try:",
        "a bigger target",
    ):
        assert fragment in message, message
    assert f"needs {plan.total_bytes / GIB:.2f} GiB" in message
    check_fits(plan, TARGETS["jetson-orin"])  # 28 GiB: the same plan fits the bigger Orin


def test_export_refuses_an_oversized_model_before_loading_it(tiny_checkpoint, tmp_path):
    ckpt = _seven_b_checkpoint(tiny_checkpoint, tmp_path / "fake7b")
    started = time.perf_counter()
    proc = cli(
        "omni-export",
        "--model",
        str(ckpt),
        "--target",
        "cpu",
        "--precision",
        "fp32",  # cpu auto's weight-only int8 7B Thinker would fit the 16 GiB
        "--components",
        "thinker",
        "--out",
        str(tmp_path / "b"),
    )
    assert_one_line_error(proc, "does not fit cpu", "16 GiB", "--memory-gib", "--max-seq-len")
    assert time.perf_counter() - started < 60  # headers only: loading 7B weights would take far longer
    assert not (tmp_path / "b").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cpu_bundle_records_its_memory_plan(cpu_bundle):
    manifest = load_manifest(cpu_bundle, verify_files=False)
    plan = manifest.memory_plan
    assert plan is not None and plan.max_seq_len == 2048 and set(plan.kv_bytes) == {"thinker", "talker"}
    assert manifest.tensorrt is None and manifest.components[naming.THINKER_DECODER].engine_file is None
    assert manifest.components[naming.THINKER_DECODER].profile == {
        "seq": [1, 1, 2048],
        "past": [0, 1024, 2047],
        "total": [1, 1025, 2048],
    }


def test_manifest_without_new_fields_still_loads(cpu_bundle):
    data = json.loads((cpu_bundle / naming.MANIFEST_FILE).read_text())
    data.pop("memory_plan"), data.pop("tensorrt")
    for record in data["components"].values():
        for key in ("profile", "engine_file", "engine_sha256"):
            record.pop(key)
    old = Manifest.from_dict(data)
    assert old.memory_plan is None and old.tensorrt is None
    assert old.components[naming.THINKER_DECODER].profile is None


# ------------------------------------------------------------------------------------- refusals before work


def _request(target: str, precision: str = "auto", tmp: Path | None = None):
    from omni_edge.export.pipeline import ExportRequest

    return ExportRequest(model="tiny", target=target, out=(tmp or Path("/nonexistent")) / "b", precision=precision)


@pytest.mark.parametrize(
    "target,precision,fragment",
    [
        ("jetson-orin", "fp8", "jetson-orin cannot run fp8"),  # Orin has no FP8 tensor cores
        ("jetson-orin-nano", "fp8", "jetson-orin-nano cannot run fp8"),
        ("cpu", "fp16", "cpu cannot run fp16"),
        ("cpu", "thinker=fp8", "cpu cannot run fp8"),
        ("rtx-ada", "thinker=int3", "unknown precision 'int3'"),
        ("rtx-ada", "tinker=int8", "unknown component 'tinker'"),
    ],
)
def test_precisions_the_target_cannot_run(target, precision, fragment):
    from omni_edge.export.pipeline import check_request

    with pytest.raises(TargetError, match=fragment):
        check_request(_request(target, precision))


@pytest.mark.parametrize("target,precision", [("rtx-ada", "auto"), ("cpu", "int8"), ("cpu", "thinker=int4-awq")])
def test_calibrated_precisions_need_a_calibration_set(target, precision):
    from omni_edge.errors import InputError
    from omni_edge.export.pipeline import check_request

    started = time.perf_counter()
    with pytest.raises(InputError, match="needs calibration data: pass --calib DIR") as refused:
        check_request(_request(target, precision))
    assert "--calib synthetic" in str(refused.value)
    assert time.perf_counter() - started < 5  # before any model is loaded


def test_precision_spec_overrides_target_defaults():
    from omni_edge.precision_plan import component_precisions

    orin = TARGETS["jetson-orin"]
    assert component_precisions(orin, "auto") == orin.default_precision
    assert component_precisions(orin, "auto")["thinker"] == "int4-awq"
    with pytest.raises(TargetError, match="vision_encoder=fp32") as refused:  # its Scan cannot be cast to fp16
        component_precisions(orin, "fp16")
    fix = str(refused.value).split("--precision ")[1]
    assert set(component_precisions(orin, fix).values()) == {"fp16", "fp32"}
    mixed = component_precisions(orin, "thinker=int8, dit=fp32")
    assert mixed == {**orin.default_precision, "thinker": "int8", "dit": "fp32"}


@pytest.mark.parametrize("target", ["jetson-orin", "jetson-orin-nano", "jetson-thor", "hopper"])
def test_full_tensorrt_targets_need_tensorrt_or_their_gpu(target):
    from omni_edge.export.pipeline import check_request

    started = time.perf_counter()
    with pytest.raises(TargetError) as refused:
        check_request(_request(target))
    message = str(refused.value)
    if not trt_compat.is_installed("tensorrt"):
        assert "full TensorRT, which is not installed here" in message and "JetPack" in message
    else:  # full TensorRT is here: the refusal is about this machine's GPU
        assert TARGETS[target].compute_capability in message
    assert time.perf_counter() - started < 5


def test_rtx_target_without_tensorrt_rtx_is_refused(monkeypatch):
    from omni_edge.export import engine_build

    monkeypatch.setattr(engine_build.trt_compat, "is_installed", lambda flavour: False)
    with pytest.raises(TargetError, match=r"tensorrt-rtx is not installed: pip install 'omni-edge\[trt\]'"):
        engine_build.check_can_build(TARGETS["rtx-ada"])


def test_profile_shapes_follow_recorded_axes(cpu_bundle):
    from omni_edge.export.engine_build import EngineBuildError, profile_shapes

    manifest = load_manifest(cpu_bundle, verify_files=False)
    decode = profile_shapes(manifest.components[naming.THINKER_DECODER])
    hidden = manifest.thinker.hidden_size
    assert decode["inputs_embeds"] == ([1, 1, hidden], [1, 1, hidden], [1, 2048, hidden])
    assert decode["attention_mask"] == ([1, 1], [1, 1025], [1, 2048])
    assert decode["past.0.key"][0][2] == 0 and decode["past.0.key"][2][2] == 2047  # a prefill has no past
    dit = profile_shapes(manifest.components[naming.DIT_WINDOW])
    assert dit["noisy_mel"][2][1] == 2 * dit["codes"][2][1]  # the "2*codes" axis scales with codes
    assert "speaker_cond" not in dit  # fully static inputs need no profile entry
    with pytest.raises(EngineBuildError, match="no profile range"):
        profile_shapes(replace(manifest.components[naming.DIT_WINDOW], profile={"codes": [1, 2, 3]}))


# ------------------------------------------------------------------------------------ TensorRT-RTX engines


@pytest.fixture(scope="module")
def rtx_bundle(tiny_checkpoint, tmp_path_factory) -> Path:
    """A real rtx-ada bundle (Thinker graphs + engines) exported through the CLI on this CPU machine; the tests
    that use it are marked slow."""
    _rtx()
    out = tmp_path_factory.mktemp("rtx") / "bundle"
    # fp32: these engines are compared with ONNX Runtime on a GPU; reduced rtx bundles: test_quantization
    proc = cli(
        "omni-export",
        "--model",
        str(tiny_checkpoint),
        "--target",
        "rtx-ada",
        "--components",
        "thinker",
        "--precision",
        "fp32",
        "--max-seq-len",
        "256",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert "memory plan:" in proc.stderr
    return out


@pytest.mark.slow
def test_rtx_export_records_engines_and_tensorrt(rtx_bundle):
    trt = _rtx()
    manifest = load_manifest(rtx_bundle)  # every file, engines included, matches its sha256
    assert manifest.backend == "tensorrt" and manifest.target == "rtx-ada"
    info = manifest.tensorrt
    assert (info.flavour, info.version, info.compute_capability, info.built_on) == (
        "tensorrt-rtx",
        trt.__version__,
        "8.9",
        "cpu",
    )
    assert info.timing_cache is None and not (rtx_bundle / naming.TIMING_CACHE_FILE).exists()  # no-op in RTX
    assert manifest.tools["tensorrt-rtx"] == trt.__version__
    for name in (naming.THINKER_DECODER,):
        record = manifest.components[name]
        assert record.engine_file == f"{name}.engine" and (rtx_bundle / record.engine_file).stat().st_size > 0
        assert (
            record.engine_sha256 == manifest.files[record.engine_file] == sha256_file(rtx_bundle / record.engine_file)
        )
        assert record.file in manifest.files  # the verified graph stays, so the engine can be rebuilt on a device
    assert manifest.components[naming.THINKER_DECODER].profile == {
        "seq": [1, 1, 256],
        "past": [0, 128, 255],
        "total": [1, 129, 256],
    }
    assert manifest.memory_plan.max_seq_len == 256 and manifest.kv_cache.max_seq_len == 256


def test_rtx_engines_for_every_other_graph(cpu_bundle, hf_model, tmp_path):
    """The encoders, Talker, DiT and BigVGAN graphs of the full tiny bundle parse and build as well (the Talker
    with the standard-op attention the GPU targets export: the cpu bundle's uses GroupQueryAttention)."""
    _rtx()
    from omni_edge.export.decoder_specs import decoder_spec
    from omni_edge.export.engine_build import build_engines
    from omni_edge.export.verify_loop import export_and_verify

    manifest = load_manifest(cpu_bundle, verify_files=False)
    names = [n for n in manifest.components if not n.startswith("thinker_")]
    assert set(names) == {
        naming.AUDIO_ENCODER,
        naming.VISION_ENCODER,
        naming.TALKER_DECODER,
        naming.DIT_WINDOW,
        naming.BIGVGAN_WINDOW,
    }
    for name in (n for n in names if n != naming.TALKER_DECODER):
        for file in (
            cpu_bundle / manifest.components[name].file,
            cpu_bundle / (manifest.components[name].file + ".data"),
        ):
            if file.exists():
                shutil.copyfile(file, tmp_path / file.name)
    graphs = {n: manifest.components[n] for n in names}
    graphs[naming.TALKER_DECODER] = export_and_verify(decoder_spec("talker", hf_model), hf_model, tmp_path)
    records, info = build_engines(tmp_path, graphs, TARGETS["rtx-ada"])
    assert all((tmp_path / r.engine_file).stat().st_size > 0 for r in records.values())
    assert info.compute_capability == "8.9"
    # Blackwell RTX (sm_120) from the same graph, so both rtx presets are known to build.
    _, info = build_engines(
        tmp_path, {naming.AUDIO_ENCODER: manifest.components[naming.AUDIO_ENCODER]}, TARGETS["rtx-blackwell"]
    )
    assert info.compute_capability == "12.0"


@pytest.fixture()
def rtx_copy(rtx_bundle, tmp_path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(rtx_bundle, copy)
    return copy


@pytest.mark.slow
def test_tampered_engine_is_refused_at_load(rtx_copy):
    path = rtx_copy / f"{naming.THINKER_DECODER}.engine"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert_one_line_error(cli("omni-run", str(rtx_copy), "--prompt", "hi"), "thinker_decoder.engine", "sha256")


@pytest.mark.slow
def test_engines_from_another_tensorrt_version_are_refused(rtx_copy):
    installed = _rtx().__version__
    path = rtx_copy / naming.MANIFEST_FILE
    data = json.loads(path.read_text())
    data["tensorrt"]["version"] = "1.0.0.21"
    path.write_text(json.dumps(data))  # the manifest is not hashed; the engines still match theirs
    proc = cli("omni-run", str(rtx_copy), "--prompt", "hi")
    assert_one_line_error(
        proc,
        "TensorRT-RTX 1.0.0.21",
        f"TensorRT-RTX {installed} is installed",
        "pip install tensorrt-rtx==1.0.0.21",
        "--target rtx-ada",
    )


@pytest.mark.slow
def test_engines_for_another_gpu_are_refused(rtx_bundle, monkeypatch):
    from omni_edge.runtime import trt_engine

    monkeypatch.setattr(trt_engine, "cuda_device_status", lambda: (True, "NVIDIA H100 80GB HBM3"))
    monkeypatch.setattr(trt_engine, "compute_capability", lambda: (9, 0))
    info = load_manifest(rtx_bundle, verify_files=False).tensorrt
    with pytest.raises(BundleError) as refused:
        trt_engine.check_gpu(info, rtx_bundle)
    message = str(refused.value)
    assert "compute capability 8.9" in message and "NVIDIA H100 80GB HBM3) is 9.0" in message
    assert "--target hopper" in message


@pytest.mark.slow
def test_rtx_bundle_without_a_gpu_says_so(rtx_bundle):
    from omni_edge.runtime.cuda import cuda_device_status

    if cuda_device_status()[0]:
        pytest.skip("this machine has a GPU; the GPU tests below cover loading")
    assert_one_line_error(cli("omni-run", str(rtx_bundle), "--prompt", "hi"), "NVIDIA GPU", "compute capability 8.9")


# ------------------------------------------------------------------------------------------- on a GPU


def _target_for_this_gpu():
    """A target whose engines this machine can build and run: TensorRT-RTX on RTX GPUs, else full TensorRT."""
    from omni_edge.runtime.cuda import compute_capability

    here = ".".join(map(str, compute_capability()))
    for target in TARGETS.values():
        if target.compute_capability == here and target.tensorrt and trt_compat.is_installed(target.tensorrt):
            return target
    pytest.skip(f"no installed TensorRT flavour builds for this GPU (compute capability {here})")


@pytest.fixture(scope="module")
def gpu_bundle(cpu_bundle, hf_model, tmp_path_factory) -> Path:
    """The tiny cpu bundle with Thinker engines built for this GPU, written as a TensorRT bundle. The Thinker
    graph is re-exported with the standard-op attention the GPU targets get (Target.group_query_attention) and
    the cpu bundle's fp32 KV cache."""
    _gpu()
    from omni_edge.export.decoder_specs import decoder_spec
    from omni_edge.export.engine_build import build_engines
    from omni_edge.export.verify_loop import export_and_verify

    target = _target_for_this_gpu()
    out = tmp_path_factory.mktemp("gpu") / "bundle"
    shutil.copytree(cpu_bundle, out)
    manifest = load_manifest(out)
    standard = export_and_verify(
        decoder_spec("thinker", hf_model), hf_model, out, max_seq_len=manifest.kv_cache.max_seq_len
    )
    records, info = build_engines(out, {standard.name: standard}, target)
    files = {p.name: sha256_file(p) for p in sorted(out.iterdir()) if p.is_file() and p.name != naming.MANIFEST_FILE}
    write_manifest(
        out,
        replace(
            manifest,
            target=target.name,
            backend="tensorrt",
            tensorrt=info,
            files=files,
            components={**manifest.components, **records},
        ),
    )
    return out


def test_trt_engine_matches_onnxruntime(gpu_bundle):
    from omni_edge.runtime.engine import OrtEngine, open_engine

    manifest = load_manifest(gpu_bundle)
    rows = np.random.default_rng(0).standard_normal((5, manifest.thinker.hidden_size))
    feeds = decoder_feeds(rows, manifest.kv_cache, past=7)
    engine = open_engine(gpu_bundle, manifest, naming.THINKER_DECODER)
    reference = OrtEngine("ref", gpu_bundle / manifest.components[naming.THINKER_DECODER].file)
    got, want = engine.run(feeds), reference.run(feeds)
    record = manifest.components[naming.THINKER_DECODER]
    for name in reference.output_names:  # fp32 engines are built with TF32 off, so they meet the graph's tolerance
        np.testing.assert_allclose(got[name], want[name], atol=record.atol * 10, rtol=record.rtol * 10)


def test_session_on_gpu_generates_the_cpu_tokens(gpu_bundle, session):
    from omni_edge.runtime.sampling import SamplingConfig
    from omni_edge.runtime.session import Done, Session

    def tokens(s):
        s.reset()
        return [e for e in s.generate("Hello there", 16, SamplingConfig(greedy=True)) if isinstance(e, Done)][0].result

    assert tokens(Session(gpu_bundle)).text_token_ids == tokens(session).text_token_ids


def _thinker_decoder(bundle: Path):
    from omni_edge.runtime.trt_engine import TrtEngine

    manifest = load_manifest(bundle)
    record = manifest.components[naming.THINKER_DECODER]
    return manifest, TrtEngine(record.name, bundle / record.engine_file, manifest.tensorrt, bundle, manifest.target)


def test_device_kv_cache_matches_the_host_cache(gpu_bundle, cpu_bundle):
    """Past fed by address at a bucketed pitch, re-laid out as it grows and after a truncation, against the
    host cache on ONNX Runtime over the same steps."""
    from omni_edge.runtime.engine import OrtEngine
    from omni_edge.runtime.kv_cache import KVCache
    from omni_edge.runtime.positions import text_positions
    from omni_edge.runtime.trt_kv_cache import DeviceKVCache

    manifest, decoder = _thinker_decoder(gpu_bundle)
    host = KVCache(manifest.kv_cache)
    device = DeviceKVCache(manifest.kv_cache, bucket=4)
    ort = OrtEngine(naming.THINKER_DECODER, cpu_bundle / manifest.components[naming.THINKER_DECODER].file)
    record, position, pitches = manifest.components[naming.THINKER_DECODER], 0, set()
    for count in (6, 1, 1, 1, 3, -5, 1, 2, 1, 1, 1):
        if count < 0:
            host.truncate(host.length + count)
            device.truncate(device.length + count)
            position += count
            continue
        embeds = np.random.default_rng(position).standard_normal((1, count, manifest.thinker.hidden_size))
        feeds = {"inputs_embeds": embeds.astype(np.float32), "position_ids": text_positions(position, count)}
        got, want = device.run(decoder, feeds), host.run(ort, feeds)
        pitches.add(device.padded)
        for name in ("logits", "last_hidden_state"):
            np.testing.assert_allclose(got[name], want[name], atol=record.atol * 10, rtol=record.rtol * 10)
        position += count
    assert len(pitches) > 1  # the steps crossed bucket boundaries, so re-layouts were exercised
    assert device.length == host.length


def test_cuda_graph_replays_with_fresh_inputs(gpu_bundle):
    """A repeated binding is captured once and replayed; each replay must read that run's inputs."""
    from omni_edge.runtime.trt_engine import TrtEngine

    manifest = load_manifest(gpu_bundle)
    record = manifest.components[naming.THINKER_DECODER]
    path = gpu_bundle / record.engine_file
    plain = TrtEngine("plain", path, manifest.tensorrt, gpu_bundle, manifest.target)
    graphed = TrtEngine("graphed", path, manifest.tensorrt, gpu_bundle, manifest.target, cuda_graph=True)
    for seed in range(4):  # run 1 plain, run 2 captures, runs 3-4 replay
        rows = np.random.default_rng(seed).standard_normal((5, manifest.thinker.hidden_size))
        feeds = decoder_feeds(rows, manifest.kv_cache, past=0)  # a prefill: the decoder with an empty past
        got, want = graphed.run(feeds), plain.run(feeds)
        for name in want:  # same engine, same kernels: only a non-deterministic tactic could differ at all
            np.testing.assert_allclose(got[name], want[name], atol=1e-6, rtol=1e-6)
    if graphed.graphs is not None:  # full TensorRT: this runtime captured the graph itself
        assert graphed.graphs.disabled_because == "" and len(graphed.graphs._graphs) == 1
    else:
        assert graphed.graph_mode == "tensorrt-rtx whole-graph capture"
