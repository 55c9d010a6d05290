"""`--precision` -> a precision per component and per graph, checked against the target.

auto                       the target's defaults (Orin: Thinker int4-awq, encoders int8, DiT/BigVGAN fp16;
                           cpu: weight-only int8, BigVGAN fp32: targets.CPU_AUTO)
int8                       every component in int8
thinker=int4-awq,dit=fp32  the target's defaults, with these components changed
"""

from __future__ import annotations

from collections.abc import Collection

from omni_edge import components as table
from omni_edge.components import COMPONENT_NAMES, owner
from omni_edge.errors import TargetError
from omni_edge.targets import PRECISIONS, Target

CALIBRATED = ("int8", "fp8", "int4-awq")  # precisions whose ranges come from calibration data
WEIGHT_ONLY = ("int8", "int4-awq")  # as MatMulNBits on a weight-only target (Target.weight_only)


def component_precisions(target: Target, precision: str, exported: Collection[str] = COMPONENT_NAMES) -> dict[str, str]:
    """Precision per component (components.COMPONENTS) of those `exported`; raises TargetError for anything the
    target cannot run. Components left out of the export are not checked: `--precision fp16 --components thinker`
    is fine though the vision encoder cannot be fp16."""
    text = precision.strip()
    if "=" not in text:
        chosen = (
            dict(target.default_precision) if text == "auto" else {c: _checked(target, text) for c in COMPONENT_NAMES}
        )
    else:
        chosen = dict(target.default_precision)
        for item in filter(None, (part.strip() for part in text.split(","))):
            component, _, value = item.partition("=")
            if component.strip() not in COMPONENT_NAMES:
                raise TargetError(
                    f"--precision {item}: unknown component {component.strip()!r}; components: {', '.join(COMPONENT_NAMES)}"
                )
            chosen[component.strip()] = _checked(target, value.strip())
    chosen = {c: p for c, p in chosen.items() if c in exported}
    for name, value in chosen.items():
        if value not in target.precisions:  # a default the target cannot run would be a preset bug
            raise TargetError(f"target {target.name} cannot run {value} for {name}")
        if value in table.component(name).unsupported_precisions:
            others = [p for p in target.precisions if p not in table.component(name).unsupported_precisions]
            pairs = ",".join(f"{c}={v}" for c, v in chosen.items() if c != name) + f",{name}={others[0]}"
            raise TargetError(
                f"{name} cannot be exported at {value} (see omni_edge/components.py); give it one of "
                f"{', '.join(others)}, e.g. --precision {pairs}"
            )
    return chosen


def graph_precisions(components: dict[str, str], graphs) -> dict[str, str]:
    return {graph: components[owner(graph).name] for graph in graphs}


# Reductions that read a graph's weights and no activation ranges (a copy, int4 weight-only Q/DQ): they start as
# well from an fp16 graph. ModelOpt's int8/fp8 Q/DQ calibrates the fp32 graph it is given (not tried on fp16).
HALF_SOURCE_PRECISIONS = ("fp16", "int4-awq")


def source_precision(component: str, precision: str, target: Target) -> str:
    """What the exporter writes `component` in before any reduction: fp16 for a half-source component
    (components.Component.half_source) headed for fp16 or int4-awq on a target that runs fp16, else fp32."""
    half = table.component(component).half_source and target.high_precision == "fp16"
    return "fp16" if half and precision in HALF_SOURCE_PRECISIONS else "fp32"


def needs_calibration(components: dict[str, str], target: Target) -> list[str]:
    """Components whose reduced precision is set from calibration activations: every int8, fp8 and int4-awq one
    except weight-only int8 (round to nearest, calibration/weight_only.py), which needs no data."""
    return [c for c, p in components.items() if p in CALIBRATED and not _round_to_nearest(c, p, target)]


def needs_modelopt(components: dict[str, str], target: Target) -> list[str]:
    """Components whose reduction runs NVIDIA ModelOpt: int8/fp8 Q/DQ (its PTQ) and anything cast to fp16 (its
    autocast), which int4 Q/DQ is under TensorRT. Weight-only MatMulNBits is ONNX Runtime's own quantizer and int4
    Q/DQ this repository's (calibration/int4_qdq.py), so a cpu bundle needs ModelOpt only for BigVGAN in int8."""
    return [c for c, p in components.items() if p != "fp32" and not _without_modelopt(c, p, target)]


def _without_modelopt(component: str, precision: str, target: Target) -> bool:
    weight_only = target.weight_only and precision in WEIGHT_ONLY and table.component(component).matmul_weights
    return weight_only or (precision == "int4-awq" and target.high_precision == "fp32")


def _round_to_nearest(component: str, precision: str, target: Target) -> bool:
    return target.weight_only and precision == "int8" and table.component(component).matmul_weights


def _checked(target: Target, value: str) -> str:
    if value not in PRECISIONS:
        raise TargetError(
            f"unknown precision {value!r}; choose auto, one of {', '.join(PRECISIONS)}, or "
            "component=precision pairs such as thinker=int4-awq,dit=fp16"
        )
    if value not in target.precisions:
        raise TargetError(
            f"target {target.name} cannot run {value} (it supports {', '.join(target.precisions)}); "
            "pick one of those or --precision auto"
        )
    return value
