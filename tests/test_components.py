"""The component table drives every layer: each enumerates exactly the table's components and graphs."""

from __future__ import annotations

import json

import pytest

from omni_edge import components as table
from omni_edge.components import COMPONENT_NAMES, GRAPH_NAMES, checkpoint_component, owner
from omni_edge.memory_plan import count_parameters, plan_memory, read_safetensors_header
from omni_edge.precision_plan import component_precisions, graph_precisions
from omni_edge.targets import TARGETS


def test_the_table_is_consistent():
    assert len(set(COMPONENT_NAMES)) == len(COMPONENT_NAMES) and len(set(GRAPH_NAMES)) == len(GRAPH_NAMES)
    assert all(c.role in table.ROLES for c in table.COMPONENTS)
    assert [c.name for c in table.COMPONENTS if c.required] == ["thinker"]
    assert all(owner(g).name == c.name for c in table.COMPONENTS for g in c.graph_names)


def test_targets_and_precision_plan_read_the_table():
    for target in TARGETS.values():
        assert tuple(target.default_precision) == COMPONENT_NAMES
        precisions = component_precisions(target, "auto")
        assert tuple(precisions) == COMPONENT_NAMES
        assert tuple(graph_precisions(precisions, GRAPH_NAMES)) == GRAPH_NAMES


def test_memory_plan_reads_the_table(tiny_checkpoint):
    names = [n for path in tiny_checkpoint.glob("*.safetensors") for n in read_safetensors_header(path)]
    counts = count_parameters(tiny_checkpoint)
    assert "other" not in counts.graphs  # every checkpoint tensor belongs to a component of the table
    assert set(counts.graphs) == set(COMPONENT_NAMES)
    assert set(counts.heads) == {c.name for c in table.COMPONENTS if c.head_prefixes}
    assert set(counts.tables) == {c.name for c in table.COMPONENTS if c.table_prefixes}
    assert checkpoint_component("thinker.audio_tower.layers.0.fc1.weight").name == "audio_encoder"
    assert all(checkpoint_component(n) or table.table_component(n) for n in names)
    plan = plan_memory(tiny_checkpoint, {c: "fp32" for c in COMPONENT_NAMES}, 256, COMPONENT_NAMES)
    assert {p.component: p.copies for p in plan.parts} == {c.name: len(c.graphs) for c in table.COMPONENTS}


def test_export_calibration_bench_and_cli_read_the_table(hf_model):
    from omni_edge.bench.engines import ENGINES
    from omni_edge.bench.reference import REFERENCE
    from omni_edge.cli import export_main
    from omni_edge.export.components import component_specs, graph_count, selected

    assert [s.name for s in component_specs(hf_model, ())] == list(GRAPH_NAMES)
    assert selected(()) == list(COMPONENT_NAMES) and graph_count(()) == len(GRAPH_NAMES)
    assert selected(("audio_encoder",)) == ["thinker", "audio_encoder"]
    assert [bench.name for bench in ENGINES] == list(GRAPH_NAMES)
    assert all(bench.cases is not None for bench in ENGINES)  # every graph has a benchmark
    assert set(REFERENCE) == set(GRAPH_NAMES)
    assert all(table.graph(name).calibration_keep_every >= 1 for name in GRAPH_NAMES)
    help_text = next(p.help for p in export_main.params if p.name == "components")
    assert all(name in help_text for name in COMPONENT_NAMES)


def test_a_full_bundle_holds_every_graph_of_the_table(cpu_bundle):
    manifest = json.loads((cpu_bundle / "manifest.json").read_text())
    assert tuple(manifest["components"]) == GRAPH_NAMES


@pytest.mark.parametrize("name", ["dit_window", "bigvgan_window"])
def test_streaming_windows_replay_as_cuda_graphs(name):
    assert table.graph(name).cuda_graph
    assert not any(table.graph(g).cuda_graph for g in GRAPH_NAMES if g not in ("dit_window", "bigvgan_window"))
