"""Which graphs a bundle holds: the component names users pass to --components -> ComponentSpecs, read
from the component table (omni_edge.components)."""

from __future__ import annotations

import importlib

from omni_edge.components import COMPONENTS, SPEECH_COMPONENTS, Component
from omni_edge.errors import OmniEdgeError
from omni_edge.targets import Target, get_target


def check_components(components: tuple[str, ...]) -> None:
    known = [c.name for c in COMPONENTS]
    unknown = [c for c in components if c not in known]
    if unknown:
        raise OmniEdgeError(f"unknown component(s) {', '.join(unknown)}; this version exports: {', '.join(known)}")
    speech = [c for c in SPEECH_COMPONENTS if c in components]
    if speech and len(speech) != len(SPEECH_COMPONENTS):
        raise OmniEdgeError(f"speech output needs all of {', '.join(SPEECH_COMPONENTS)} together; add the missing ones")


def selected(components: tuple[str, ...]) -> list[str]:
    """Component names to export, in table order: the required ones and those asked for (all when none)."""
    return [c.name for c in _selected(components)]


def _selected(components: tuple[str, ...]) -> list[Component]:
    return [c for c in COMPONENTS if c.required or not components or c.name in components]


def graph_count(components: tuple[str, ...]) -> int:
    return sum(len(c.graphs) for c in _selected(components))


def spec_builder(component: Component):
    """The component's (model, target) -> [ComponentSpec] function, imported on use (it needs torch)."""
    module, _, function = component.specs.partition(":")
    return getattr(importlib.import_module(module), function)


def selected_components(components: tuple[str, ...]) -> list[Component]:
    """The selected components' table entries, in table order."""
    return _selected(components)


def specs_for(component: Component, model, target: Target) -> list:
    """One component's specs for `target`: some graphs depend on it (the KV dtype)."""
    built = spec_builder(component)(model, target)
    if [s.name for s in built] != list(component.graph_names):  # the table and the builder must agree
        raise OmniEdgeError(
            f"{component.name}: spec builder made {[s.name for s in built]}, the table lists "
            f"{list(component.graph_names)}"
        )
    return built


def component_specs(model, components: tuple[str, ...], target: Target | None = None) -> list:
    """The selected components' specs for `target` (cpu when None)."""
    target = target or get_target("cpu")
    return [spec for component in _selected(components) for spec in specs_for(component, model, target)]
