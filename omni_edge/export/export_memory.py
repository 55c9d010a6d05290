"""How much memory the export itself needs, stage by stage, worked out from the checkpoint's headers before
anything is loaded; and how much this machine has.

The export holds one component at a time (lazy_model): its graph weights in fp32 while torch.export traces
them and PyTorch computes the check answers, then, released, ONNX Runtime's copy while the graph is
verified. A reduced-precision export then replays the calibration requests through the whole fp32 bundle
(one Session) and quantizes graph by graph. The factors below are measured (bench/scale-*.json); the
plan is printed before loading and the export is refused when the machine cannot hold its largest stage.
Exporting a component (in a child process, isolated.py) is always the larger of its two steps.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from omni_edge.errors import TargetError
from omni_edge.memory_plan import GIB, ParameterCounts, count_parameters

# Measured on full-3b, cpu fp32 (bench/scale-full-3b.json): the parent holds 0.4-1.7 GiB (interpreter,
# skeleton, ONNX Runtime's arenas after a verification); the child exporting a component holds its own
# interpreter and 1.45x the component's fp32 weights (the ONNX program makes transient copies of some of them:
# the Thinker's 11.5 GiB peaked at 17.0 GiB, the audio encoder's 2.4 at 3.9).
BASE_BYTES = int(1.7 * GIB)
CHILD_BYTES = int(0.6 * GIB)
EXPORT_OVERHEAD = 0.45  # torch.export + the ONNX program over the component's fp32 weights
VERIFY_OVERHEAD = 0.10  # ONNX Runtime's session over the graph's weights (Thinker: 11.5 GiB -> 13.1 GiB peak)
FP32 = 4


@dataclass(frozen=True)
class ExportStage:
    name: str
    peak_bytes: int


@dataclass(frozen=True)
class ExportMemoryPlan:
    stages: tuple[ExportStage, ...]

    @property
    def peak(self) -> ExportStage:
        return max(self.stages, key=lambda s: s.peak_bytes)

    def summary(self) -> str:
        parts = ", ".join(f"{s.name} {_gib(s.peak_bytes)}" for s in self.stages)
        return f"export memory plan: peak {_gib(self.peak.peak_bytes)} ({self.peak.name}); by stage: {parts}"


def plan_export(checkpoint: Path, components: list[str], reduced: bool) -> ExportMemoryPlan:
    counts = count_parameters(checkpoint)
    stages = []
    for component in components:
        weights = counts.graphs.get(component, 0) * FP32
        stages.append(
            ExportStage(f"export {component}", BASE_BYTES + CHILD_BYTES + int(weights * (1 + EXPORT_OVERHEAD)))
        )
        tables = counts.tables.get(component, 0) * FP32
        if tables:
            stages.append(ExportStage(f"{component} tables", BASE_BYTES + tables))
    if reduced:
        stages.append(ExportStage("calibration replay", BASE_BYTES + _bundle_bytes(counts, components)))
    return ExportMemoryPlan(tuple(stages))


def _bundle_bytes(counts: ParameterCounts, components: list[str]) -> int:
    """The fp32 bundle opened as one Session: every selected graph and table."""
    graphs = sum(counts.graphs.get(c, 0) for c in components)
    tables = sum(counts.tables.get(c, 0) for c in components)
    return int((graphs * (1 + VERIFY_OVERHEAD) + tables) * FP32)


def available_bytes() -> int | None:
    """What this process can still use: MemAvailable, capped by a cgroup (container) limit; None off Linux."""
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    available = next(
        (int(line.split()[1]) * 1024 for line in meminfo.splitlines() if line.startswith("MemAvailable:")), None
    )
    if available is None:
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return available


def check_export_fits(plan: ExportMemoryPlan, components: list[str], available: int | None) -> None:
    """Refuse, with the numbers and the fix, when the export's largest stage does not fit in memory now."""
    if available is None or plan.peak.peak_bytes <= available:
        return
    fixes = [f"close other programs or export on a machine with at least {_gib(plan.peak.peak_bytes)} free"]
    largest = plan.peak.name.removeprefix("export ")
    if largest in components and largest != "thinker":  # the Thinker is in every bundle
        fixes.append(f"export without {largest} (--components)")
    if plan.peak.name == "calibration replay":
        fixes.append("keep this export at --precision fp32/fp16 (no calibration replay)")
    raise TargetError(
        f"this export needs about {_gib(plan.peak.peak_bytes)} of memory at its largest stage ({plan.peak.name}) "
        f"and {_gib(available)} is available: " + "; ".join(fixes) + f". Set {MEMORY_ENV}=N (GiB) if the "
        "machine really has more (swap, a cgroup this cannot see)"
    )


MEMORY_ENV = "OMNI_EDGE_EXPORT_MEMORY_GIB"


def machine_bytes() -> int | None:
    """Available memory, or what OMNI_EDGE_EXPORT_MEMORY_GIB says the machine has."""
    told = os.environ.get(MEMORY_ENV)
    if told:
        try:
            return int(float(told) * GIB)
        except ValueError:
            raise TargetError(f"{MEMORY_ENV}={told!r} is not a number of GiB") from None
    return available_bytes()


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"
