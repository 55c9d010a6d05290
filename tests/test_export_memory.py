"""The export's own memory plan: stage by stage from the checkpoint's headers, printed before loading, and a
one-line refusal when the machine cannot hold the largest stage."""

from __future__ import annotations

import os
import subprocess

from helpers import BIN, assert_one_line_error

from omni_edge.export.export_memory import (
    BASE_BYTES,
    CHILD_BYTES,
    EXPORT_OVERHEAD,
    FEEDS_BYTES,
    FP16_CAST_OVERHEAD,
    MEMORY_ENV,
    MODELOPT_CALIBRATION_OVERHEAD,
    SESSION_OVERHEAD,
    TRACE_BYTES,
    VERIFY_OVERHEAD,
    plan_export,
)
from omni_edge.memory_plan import count_parameters, plan_memory
from omni_edge.precision_plan import component_precisions
from omni_edge.targets import get_target

COMPONENTS = ["thinker", "audio_encoder", "vision_encoder", "talker", "dit", "bigvgan"]


def test_the_plan_has_one_stage_per_component_and_table_from_the_headers(tiny_checkpoint):
    plan = plan_export(tiny_checkpoint, COMPONENTS)
    names = [s.name for s in plan.stages]
    assert names == [
        "export thinker",
        "thinker tables",
        "export audio_encoder",
        "export vision_encoder",
        "export talker",
        "talker tables",
        "export dit",
        "export bigvgan",
    ]
    counts = count_parameters(tiny_checkpoint)
    weights = counts.graphs["thinker"] * 4  # fp32, as exported
    trace = min(TRACE_BYTES, weights)  # the activations' allowance, no larger than the weights
    assert plan.stages[0].peak_bytes == BASE_BYTES + CHILD_BYTES + trace + int(weights * (1 + EXPORT_OVERHEAD))
    assert plan.stages[1].peak_bytes == BASE_BYTES + counts.tables["thinker"] * 4


def _bundle_plan(checkpoint, target_name: str, precision: str):
    target = get_target(target_name)
    return plan_memory(
        checkpoint,
        component_precisions(target, precision),
        4096,
        COMPONENTS,
        target.high_precision,
        target.kv_dtype,
        target.weight_only,
        target.quantized_heads,
    )


def test_a_reduced_export_plans_the_replay_by_pass_and_one_graph_at_a_time(tiny_checkpoint):
    counts = count_parameters(tiny_checkpoint)
    fp32 = {c: counts.graphs[c] * 4 for c in COMPONENTS}
    bundle = _bundle_plan(tiny_checkpoint, "cpu", "int4-awq")
    plan = plan_export(tiny_checkpoint, COMPONENTS, bundle, get_target("cpu"))
    stages = {s.name: s.peak_bytes for s in plan.stages}
    assert [s.name for s in plan.stages][8:] == [
        "calibration replay",
        *(f"{p.precision} {p.component}" for p in bundle.parts if p.precision != "fp32"),
        "end-to-end accuracy",
    ]
    # The replay's passes: encoders; Thinker and tables; Talker, DiT, BigVGAN and tables. Its peak is the largest.
    tables = bundle.table_bytes  # what a Session holds of them (read row by row)
    session = {c: int(fp32[c] * (1 + SESSION_OVERHEAD)) for c in COMPONENTS}
    passes = [
        session["audio_encoder"] + session["vision_encoder"],
        session["thinker"] + tables,
        session["talker"] + session["dit"] + session["bigvgan"] + tables,
    ]
    assert stages["calibration replay"] == BASE_BYTES + max(passes) + FEEDS_BYTES
    # Reducing a graph weight by weight holds the fp32 graph in ONNX Runtime, then its reduced twin alone.
    assert stages["int4-awq thinker"] == BASE_BYTES + int(fp32["thinker"] * (1 + SESSION_OVERHEAD)) + FEEDS_BYTES
    # ModelOpt's int8 Q/DQ (GPU targets) holds the fp32 protobuf too; int4 Q/DQ is streamed like MatMulNBits.
    orin = _bundle_plan(tiny_checkpoint, "jetson-orin", "thinker=int4-awq,talker=int8,audio_encoder=int4-awq")
    stages = {
        s.name: s.peak_bytes for s in plan_export(tiny_checkpoint, COMPONENTS, orin, get_target("jetson-orin")).stages
    }
    parts = {p.component: p.weight_bytes for p in orin.parts}
    overhead = 1 + VERIFY_OVERHEAD + MODELOPT_CALIBRATION_OVERHEAD  # its calibration returns every tensor
    assert stages["int8 talker"] == BASE_BYTES + int(fp32["talker"] * overhead) + parts["talker"] + FEEDS_BYTES
    fixes = {s.name: s.fix for s in plan_export(tiny_checkpoint, COMPONENTS, orin, get_target("jetson-orin")).stages}
    assert fixes["int8 talker"].startswith("--precision talker=int4-awq or talker=fp16")
    assert not fixes["int4-awq audio_encoder"] and not fixes["calibration replay"]
    # ... and then ModelOpt's fp16 cast of an fp32 int4 graph, which copies its fp32 initializers over and over
    # (heads: none in the audio encoder).
    cast = parts["audio_encoder"] + int(counts.heads.get("audio_encoder", 0) * 4 * FP16_CAST_OVERHEAD)
    held = max(int(fp32["audio_encoder"] * (1 + SESSION_OVERHEAD)), cast)
    assert stages["int4-awq audio_encoder"] == BASE_BYTES + held + FEEDS_BYTES
    # The Thinker's int4 starts from its fp16 export (half_source.py), which has nothing left to cast. ONNX
    # Runtime on this machine holds that graph once, in fp16, and casts each weight as its MatMul runs: the fp32
    # head is the most alive at once (ort_options.py). Verifying it is a stage of its own.
    held_fp16 = counts.graphs["thinker"] * 2 + counts.heads["thinker"] * 4
    assert stages["int4-awq thinker"] == BASE_BYTES + int(held_fp16 * (1 + SESSION_OVERHEAD)) + FEEDS_BYTES
    assert stages["verify thinker"] == BASE_BYTES + int(held_fp16 * (1 + VERIFY_OVERHEAD))
    assert "verify audio_encoder" not in stages  # exported in fp32: exporting is the larger step
    thinker_pass = int(held_fp16 * (1 + SESSION_OVERHEAD)) + orin.table_bytes
    assert stages["calibration replay"] >= BASE_BYTES + thinker_pass + FEEDS_BYTES


def test_an_export_the_machine_cannot_hold_is_refused_in_one_line(tiny_checkpoint, tmp_path):
    env = dict(os.environ, **{MEMORY_ENV: "0.5"})
    proc = subprocess.run(
        [
            str(BIN / "omni-export"),
            "--model",
            str(tiny_checkpoint),
            "--precision",
            "fp32",
            "--out",
            str(tmp_path / "b"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert_one_line_error(proc, "this export needs about", "(export thinker)", "0.5 GiB is available", MEMORY_ENV)
    assert not (tmp_path / "b").exists() and list(tmp_path.iterdir()) == []


def test_the_fp32_fix_is_offered_only_when_the_fp32_export_fits():
    import pytest

    from omni_edge.errors import TargetError
    from omni_edge.export.export_memory import GIB, ExportMemoryPlan, ExportStage, check_export_fits

    reduced = ExportMemoryPlan((ExportStage("export thinker", 10 * GIB), ExportStage("calibration replay", 30 * GIB)))
    small = ExportMemoryPlan((ExportStage("export thinker", 12 * GIB),))
    large = ExportMemoryPlan((ExportStage("export thinker", 31 * GIB),))  # the 7B's Thinker in fp32
    with pytest.raises(TargetError, match=r"--precision fp32 .*12\.0 GiB") as offered:
        check_export_fits(reduced, ["thinker"], 20 * GIB, small)
    assert "at least 30.0 GiB" in str(offered.value)
    with pytest.raises(TargetError) as refused:
        check_export_fits(reduced, ["thinker"], 20 * GIB, large)
    assert "fp32" not in str(refused.value)
    check_export_fits(reduced, ["thinker"], 30 * GIB, large)  # fits: no refusal


def test_a_modelopt_calibration_that_does_not_fit_offers_the_precisions_that_need_none():
    import pytest

    from omni_edge.errors import TargetError
    from omni_edge.export.export_memory import GIB, ExportMemoryPlan, ExportStage, check_export_fits

    fix = "--precision audio_encoder=int4-awq or audio_encoder=fp16 (no ModelOpt calibration)"
    plan = ExportMemoryPlan((ExportStage("export thinker", 10 * GIB), ExportStage("int8 audio_encoder", 25 * GIB, fix)))
    with pytest.raises(TargetError) as refused:
        check_export_fits(plan, ["thinker", "audio_encoder"], 20 * GIB)
    assert "(int8 audio_encoder)" in str(refused.value) and fix in str(refused.value)
