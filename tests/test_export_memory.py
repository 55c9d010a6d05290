"""The export's own memory plan: stage by stage from the checkpoint's headers, printed before loading, and a
one-line refusal when the machine cannot hold the largest stage."""

from __future__ import annotations

import os
import subprocess

from helpers import BIN, assert_one_line_error

from omni_edge.export.export_memory import BASE_BYTES, CHILD_BYTES, EXPORT_OVERHEAD, MEMORY_ENV, plan_export
from omni_edge.memory_plan import count_parameters

COMPONENTS = ["thinker", "audio_encoder", "vision_encoder", "talker", "dit", "bigvgan"]


def test_the_plan_has_one_stage_per_component_and_table_from_the_headers(tiny_checkpoint):
    plan = plan_export(tiny_checkpoint, COMPONENTS, reduced=False)
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
    assert plan.stages[0].peak_bytes == BASE_BYTES + CHILD_BYTES + int(weights * (1 + EXPORT_OVERHEAD))
    assert plan.stages[1].peak_bytes == BASE_BYTES + counts.tables["thinker"] * 4
    reduced = plan_export(tiny_checkpoint, COMPONENTS, reduced=True)
    assert reduced.stages[-1].name == "calibration replay"
    bundle = sum(counts.graphs[c] for c in COMPONENTS) * 1.1 + sum(counts.tables.values())  # one fp32 Session
    assert reduced.stages[-1].peak_bytes == BASE_BYTES + int(bundle * 4)


def test_an_export_the_machine_cannot_hold_is_refused_in_one_line(tiny_checkpoint, tmp_path):
    env = dict(os.environ, **{MEMORY_ENV: "0.5"})
    proc = subprocess.run(
        [str(BIN / "omni-export"), "--model", str(tiny_checkpoint), "--out", str(tmp_path / "b")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert_one_line_error(proc, "this export needs about", "(export thinker)", "0.5 GiB is available", MEMORY_ENV)
    assert not (tmp_path / "b").exists() and list(tmp_path.iterdir()) == []
