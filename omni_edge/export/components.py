"""Which graphs a bundle holds: component names (as users write them) -> ComponentSpecs."""

from __future__ import annotations

from omni_edge.errors import OmniEdgeError
from omni_edge.export.decoder_specs import TALKER_GRAPHS, THINKER_GRAPHS, talker_specs, thinker_specs
from omni_edge.export.encoder_specs import audio_encoder_spec, vision_encoder_spec
from omni_edge.export.token2wav_specs import bigvgan_spec, dit_spec

# component -> number of graphs it adds; the Thinker is always exported (every prompt needs it)
EXPORTABLE = {
    "thinker": len(THINKER_GRAPHS),
    "audio_encoder": 1,
    "vision_encoder": 1,
    "talker": len(TALKER_GRAPHS),
    "dit": 1,
    "bigvgan": 1,
}
SPEECH = ("talker", "dit", "bigvgan")  # speech output needs all three


def check_components(components: tuple[str, ...]) -> None:
    unknown = [c for c in components if c not in EXPORTABLE]
    if unknown:
        raise OmniEdgeError(f"unknown component(s) {', '.join(unknown)}; this version exports: {', '.join(EXPORTABLE)}")
    speech = [c for c in SPEECH if c in components]
    if speech and len(speech) != len(SPEECH):
        raise OmniEdgeError(f"speech output needs all of {', '.join(SPEECH)} together; add the missing ones")


def selected(components: tuple[str, ...]) -> list[str]:
    return ["thinker", *[c for c in EXPORTABLE if c != "thinker" and (not components or c in components)]]


def graph_count(components: tuple[str, ...]) -> int:
    return sum(EXPORTABLE[c] for c in selected(components))


_SPECS = {
    "thinker": thinker_specs,
    "audio_encoder": lambda model: [audio_encoder_spec()],
    "vision_encoder": lambda model: [vision_encoder_spec()],
    "talker": talker_specs,
    "dit": lambda model: [dit_spec()],
    "bigvgan": lambda model: [bigvgan_spec()],
}


def component_specs(model, components: tuple[str, ...]) -> list:
    return [spec for name in selected(components) for spec in _SPECS[name](model)]
