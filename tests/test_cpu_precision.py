"""cpu `auto`: weight-only int8 where it measured faster at cosine >= 0.9995, with no calibration data and no
ModelOpt needed; explicit precisions keep their meaning."""

from __future__ import annotations

import json

import pytest
from helpers import cli

from omni_edge import naming
from omni_edge.bundle import load_manifest
from omni_edge.components import COMPONENT_NAMES
from omni_edge.precision_plan import component_precisions, needs_calibration, needs_modelopt
from omni_edge.targets import TARGETS

CPU = TARGETS["cpu"]
CPU_AUTO = {
    "thinker": "int8",
    "audio_encoder": "int8",
    "vision_encoder": "int8",
    "talker": "int8",
    "dit": "int8",
    "bigvgan": "fp32",
}


def test_cpu_auto_is_weight_only_int8_with_bigvgan_in_fp32():
    assert component_precisions(CPU, "auto") == CPU_AUTO
    assert component_precisions(CPU, "fp32") == dict.fromkeys(COMPONENT_NAMES, "fp32")
    assert component_precisions(CPU, "thinker=fp32") == {**CPU_AUTO, "thinker": "fp32"}


def test_cpu_auto_needs_neither_calibration_data_nor_modelopt():
    auto = component_precisions(CPU, "auto")
    assert needs_calibration(auto, CPU) == [] and needs_modelopt(auto, CPU) == []


@pytest.mark.parametrize(
    "target,precision,calibrated,modelopt",
    [
        # BigVGAN has convolutions only: its int8 is ModelOpt's calibrated Q/DQ on the cpu target too
        ("cpu", "int8", ["bigvgan"], ["bigvgan"]),
        # int4-awq clips every weight on calibration activations; BigVGAN's is int4 Q/DQ, written here too
        ("cpu", "int4-awq", list(COMPONENT_NAMES), []),
        ("cpu", "fp32", [], []),
        # under TensorRT every reduced graph is cast to fp16 by ModelOpt's autocast, and int8 is calibrated
        ("rtx-ada", "auto", list(COMPONENT_NAMES[:-2]), list(COMPONENT_NAMES)),
        ("jetson-orin", "int8", list(COMPONENT_NAMES), list(COMPONENT_NAMES)),
    ],
)
def test_what_needs_calibration_and_modelopt(target, precision, calibrated, modelopt):
    chosen = component_precisions(TARGETS[target], precision)
    assert needs_calibration(chosen, TARGETS[target]) == calibrated
    assert needs_modelopt(chosen, TARGETS[target]) == modelopt


@pytest.mark.slow
def test_cpu_auto_exports_without_calib_and_says_what_measured_it(tiny_checkpoint, cache_dir, tmp_path):
    out = tmp_path / "auto"
    proc = cli(
        "omni-export",
        "--model",
        "tiny",
        "--target",
        "cpu",
        "--components",
        "thinker,audio_encoder",
        "--max-seq-len",
        "256",
        "--out",
        str(out),
        cache_dir=cache_dir,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr
    assert "accuracy vs the unreduced graphs" in proc.stderr and "no --calib given" in proc.stderr
    manifest = load_manifest(out)
    assert {r.precision for r in manifest.components.values()} == {"int8"}
    report = manifest.quantization
    assert report is not None and report.calibration.source.startswith("synthetic, no --calib given")
    assert set(report.graphs) == {naming.THINKER_DECODER, naming.AUDIO_ENCODER}
    assert report.graphs[naming.THINKER_DECODER].feeds > 0 and report.graphs[naming.AUDIO_ENCODER].feeds > 0
    graph = (out / manifest.components[naming.THINKER_DECODER].file).read_bytes()
    assert b"MatMulNBits" in graph

    run = cli("omni-run", str(out), "--prompt", "Hello", "--greedy", "--max-new-tokens", "4", "--json")
    assert run.returncode == 0, run.stderr
    assert len(json.loads(run.stdout)["text_token_ids"]) >= 1


def test_explicit_fp32_is_unquantized(cpu_bundle):
    manifest = load_manifest(cpu_bundle)  # the session bundle: ExportRequest(precision="fp32")
    assert manifest.quantization is None
    assert {r.precision for r in manifest.components.values()} == {"fp32"}
    graphs = [(cpu_bundle / r.file).read_bytes() for r in manifest.components.values()]
    assert not any(b"MatMulNBits" in g or b"DequantizeLinear" in g for g in graphs)
