"""`--precision` -> a precision per component and per graph, checked against the target.

auto                       the target's defaults (Orin: Thinker int4-awq, encoders int8, DiT/BigVGAN fp16)
int8                       every component in int8
thinker=int4-awq,dit=fp32  the target's defaults, with these components changed
"""

from __future__ import annotations

from omni_edge import components as table
from omni_edge.components import COMPONENT_NAMES, owner
from omni_edge.errors import TargetError
from omni_edge.targets import PRECISIONS, Target

CALIBRATED = ("int8", "fp8", "int4-awq")  # precisions whose ranges come from calibration data


def component_precisions(target: Target, precision: str) -> dict[str, str]:
    """Precision per component (components.COMPONENTS); raises TargetError for anything the target cannot run."""
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


def needs_calibration(components: dict[str, str]) -> list[str]:
    return [c for c, p in components.items() if p in CALIBRATED]


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
