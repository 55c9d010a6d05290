"""How much memory the export itself needs, stage by stage, worked out from the checkpoint's headers before
anything is loaded; and how much this machine has.

The export holds one component at a time (lazy_model): its graph weights in fp32 (fp16 for a GPU target's
Thinker headed for fp16 or int4-awq: half_source.py) while torch.export traces them and PyTorch computes the
check answers, then, released, ONNX Runtime's copy while the graph is verified. A reduced-precision export then replays the calibration requests through the fp32 bundle in three
passes (encoders, Thinker, speech), reduces graph by graph (one graph open at a time), and answers the
requests again with the reduced bundle (calibration/stage.py). The factors
below are measured (bench/scale-*.json) unless said otherwise; the plan is printed before loading and the
export is refused when the machine cannot hold its largest stage. Exporting a component (in a child process,
isolated.py) is always the larger of its two steps.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from omni_edge.components import component as component_record
from omni_edge.errors import TargetError
from omni_edge.memory_plan import GIB, MemoryPlan, PartPlan, count_parameters
from omni_edge.precision_plan import source_precision
from omni_edge.targets import Target, get_target

# Measured on full-3b, cpu fp32 (bench/scale-full-3b.json): the parent holds 0.4-1.7 GiB (interpreter,
# skeleton, ONNX Runtime's arenas after a verification); the child exporting a component holds its own
# interpreter, its fp32 weights and what tracing adds: little in proportion to the weights (the Thinker's
# 11.5 GiB peaked at 12.3 in the child), plus the check inputs' activations (the vision encoder's 2.5 GiB of
# weights peaked at 4.7: its 448x448 attention).
BASE_BYTES = int(1.7 * GIB)
CHILD_BYTES = int(0.6 * GIB)
EXPORT_OVERHEAD = 0.05  # torch.export + the ONNX program over the component's fp32 weights
TRACE_BYTES = int(1.5 * GIB)  # the largest component's activations while tracing and computing check answers
VERIFY_OVERHEAD = 0.10  # ONNX Runtime's session over the graph's weights (Thinker: 11.5 GiB -> 13.1 GiB peak)
# A session answering requests holds more than one verifying a few cases (prefill activations, ORT's arenas): the
# full-3b int4-awq run held 15.0 GiB over the base for the 11.5 GiB fp32 Thinker while it opened for the replay,
# 14.1 while its clip statistics ran (bench/scale-full-3b.json). Used for the replay and the reductions' source.
SESSION_OVERHEAD = 0.32
FEEDS_BYTES = 1 * GIB  # the replay's recorded feeds (decode feeds carry the KV cache), thinned to 48 per graph
# ModelOpt's fp16 cast holds the whole fp32 graph as a protobuf beside ONNX Runtime's session (not measured at
# full size). Its int8/fp8 Q/DQ holds many more copies: it writes and loads a named, an extended (every tensor
# an output: twice the weights) and a reconciled graph, and calibrates through a session of the extended one.
# Measured at full size, as a lower bound, on the full-3b audio encoder (2.4 GiB of fp32 weights): the export
# grew from 4.0 to 22.9 GiB in 80 s and was killed (bench/scale-full-3b.json, jetson-orin); ModelOpt alone on
# that graph passed 17.1 GiB (7.5x the weights) with 8 feeds, with 1 feed, and with calibrate_per_node=True, so
# it is the weights, not the feeds. int4-awq, MatMulNBits or Q/DQ, streams the weights one at a time
# (calibration/weight_only.py, int4_qdq.py) and adds nothing.
MODELOPT_OVERHEAD = 1.0
MODELOPT_CALIBRATION_OVERHEAD = 8.0
# ModelOpt's fp16 cast of a streamed int4 graph copies its fp32 initializers (the kept head) about 8 times over:
# the medium int4 Thinker (a 1.24 GB fp32 lm_head) peaked at 11.0 GiB while cast (its INT4 weights set aside).
FP16_CAST_OVERHEAD = 8.0
FP32 = 4
FP16 = 2


# ONNX Runtime's CPU kernels have no fp16 MatMul. Every check the export runs on this machine (verification,
# replay, clip statistics, end-to-end answers) holds an fp16 graph's weights once, mapped from its file, and casts
# each to fp32 just before its MatMul (ort_options.py): the largest weight, the output head, is the most that is
# alive in fp32 at once (measured on the medium fp16 Thinker: 0.87 GiB of weights and a 1.16 GiB fp32 head,
# 2.38 GiB at the peak of a 128-token prefill).
def _held_half(weights: int, head_parameters: int) -> int:
    return weights + head_parameters * FP32


@dataclass(frozen=True)
class ExportStage:
    name: str
    peak_bytes: int
    fix: str = ""  # a way around this stage, offered when it is the one that does not fit


@dataclass(frozen=True)
class ExportMemoryPlan:
    stages: tuple[ExportStage, ...]

    @property
    def peak(self) -> ExportStage:
        return max(self.stages, key=lambda s: s.peak_bytes)

    def summary(self) -> str:
        parts = ", ".join(f"{s.name} {_gib(s.peak_bytes)}" for s in self.stages)
        return f"export memory plan: peak {_gib(self.peak.peak_bytes)} ({self.peak.name}); by stage: {parts}"


def plan_export(
    checkpoint: Path, components: list[str], reduced: MemoryPlan | None = None, target: Target | None = None
) -> ExportMemoryPlan:
    """`reduced`: the reduced bundle's memory plan when the export quantizes or casts (None: fp32 only);
    `target` (default cpu) decides what each component is exported in (precision_plan.source_precision) and how
    a graph is reduced (Target.weight_only)."""
    target = target or get_target("cpu")
    counts = count_parameters(checkpoint)
    stages = []
    precisions = {p.component: p.precision for p in reduced.parts} if reduced is not None else {}
    sources = {c: source_precision(c, precisions.get(c, "fp32"), target) for c in components}
    # What each component's graphs weigh as exported: fp32, or fp16 for a half-source one.
    exported = {c: counts.graphs.get(c, 0) * (FP32 if sources[c] == "fp32" else FP16) for c in components}
    held = {
        c: exported[c] if sources[c] == "fp32" else _held_half(exported[c], counts.heads.get(c, 0)) for c in components
    }
    tables = {c: counts.tables.get(c, 0) * FP32 for c in components}
    for component in components:
        weights = exported[component]
        stages.append(
            ExportStage(
                f"export {component}",
                BASE_BYTES + CHILD_BYTES + _trace_bytes(weights) + int(weights * (1 + EXPORT_OVERHEAD)),
            )
        )
        if held[component] > exported[component]:  # else exporting is the larger of the two steps
            stages.append(ExportStage(f"verify {component}", BASE_BYTES + int(held[component] * (1 + VERIFY_OVERHEAD))))
        if tables[component]:
            stages.append(ExportStage(f"{component} tables", BASE_BYTES + tables[component]))
    if reduced is None:
        return ExportMemoryPlan(tuple(stages))
    # The tables are read row by row at run time: the bundle plan prices what a Session holds of them.
    replay = _replay_bytes({c: int(w * (1 + SESSION_OVERHEAD)) for c, w in held.items()}, reduced.table_bytes)
    stages.append(ExportStage("calibration replay", BASE_BYTES + replay + FEEDS_BYTES))
    for part in reduced.parts:
        fix = ""
        if part.component in exported and part.precision != sources[part.component]:
            # The exported graph in ONNX Runtime (clip statistics, then the reference answers of the comparison,
            # which wait on disk while the reduced twin runs); ModelOpt also holds the fp32 protobuf and its output.
            source = int(held[part.component] * (1 + SESSION_OVERHEAD))
            if target.weight_only:
                reducing = source
            elif part.precision == "int4-awq" and sources[part.component] == "fp32":
                # then ModelOpt's fp16 cast of the int4 graph and its fp32 head
                cast = part.weight_bytes + int(counts.heads.get(part.component, 0) * FP32 * FP16_CAST_OVERHEAD)
                reducing = max(source, cast)
            elif part.precision == "int4-awq":  # from an fp16 graph: nothing left to cast
                reducing = source
            elif part.precision == "fp16":  # ModelOpt's cast, no calibration
                reducing = int(held[part.component] * (1 + VERIFY_OVERHEAD + MODELOPT_OVERHEAD)) + part.weight_bytes
            else:  # int8 / fp8 Q/DQ: ModelOpt's calibration
                overhead = 1 + VERIFY_OVERHEAD + MODELOPT_CALIBRATION_OVERHEAD
                reducing = int(held[part.component] * overhead) + part.weight_bytes
                fix = f"--precision {part.component}=int4-awq or {part.component}=fp16 (no ModelOpt calibration)"
            peak = BASE_BYTES + reducing + FEEDS_BYTES
            stages.append(ExportStage(f"{part.precision} {part.component}", peak, fix))
    answers = int(sum(_held_reduced(p) for p in reduced.parts if p.component in exported) * (1 + VERIFY_OVERHEAD))
    answers += reduced.table_bytes
    stages.append(ExportStage("end-to-end accuracy", BASE_BYTES + answers + FEEDS_BYTES))
    return ExportMemoryPlan(tuple(stages))


def _held_reduced(part: PartPlan) -> int:
    """A reduced graph in ONNX Runtime on this machine: its weights as they are, and the fp32 cast of its head
    when that is fp16 (an fp16 graph's, or a quantized one's kept head); packed int4/int8 blocks stay packed."""
    if "fp16" in (part.precision, part.head_precision):
        return _held_half(part.weight_bytes, part.head_parameters)
    return part.weight_bytes


def _trace_bytes(weights: int) -> int:
    """Activations while tracing: they grow with the widths, as the weights do (a tiny model needs none)."""
    return min(TRACE_BYTES, weights)


def _replay_bytes(in_session: dict[str, int], tables: int) -> int:
    """The replay's largest pass (calibration/record.py): the media encoders; the Thinker with the tables; the
    Talker, DiT and BigVGAN with the tables (the Talker reads the Thinker's)."""
    by_role: dict[str, int] = {}
    for component, weights in in_session.items():
        role = component_record(component).role
        key = "speech" if role in ("talker", "token2wav") else role
        by_role[key] = by_role.get(key, 0) + weights
    return max(by_role.get("encoder", 0), by_role.get("thinker", 0) + tables, by_role.get("speech", 0) + tables)


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


def check_export_fits(
    plan: ExportMemoryPlan, components: list[str], available: int | None, unreduced: ExportMemoryPlan | None = None
) -> None:
    """Refuse, with the numbers and the fix, when the export's largest stage does not fit in memory now.
    `unreduced`: the same export's plan at --precision fp32, offered as the fix when it fits."""
    if available is None or plan.peak.peak_bytes <= available:
        return
    fixes = [f"close other programs or export on a machine with at least {_gib(plan.peak.peak_bytes)} free"]
    largest = plan.peak.name.removeprefix("export ")
    if largest in components and largest != "thinker":  # the Thinker is in every bundle
        fixes.append(f"export without {largest} (--components)")
    if plan.peak.fix:
        fixes.append(plan.peak.fix)
    if unreduced is not None and unreduced.peak.peak_bytes <= available:
        fixes.append(
            f"keep this export at --precision fp32 (no calibration replay, no reduced graphs: "
            f"{_gib(unreduced.peak.peak_bytes)})"
        )
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
