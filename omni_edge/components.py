"""The components of a bundle, written once. Every layer reads this table: target defaults and
`--precision` (precision_plan), `--components` and the export loop (export/components), the memory plan
(checkpoint prefixes, heads, host tables, graph copies), calibration sampling, the runtime (which engines
replay as CUDA graphs) and omni-bench. Adding a component is one entry here plus the code it names.

The table imports neither torch nor the exporter: spec builders are named as "module:function" and
imported only when an export runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from omni_edge import naming

# What a target's default precision is chosen by (targets.Target.defaults): components with the same role
# run at the same precision by default.
ROLES = ("thinker", "talker", "encoder", "token2wav")


@dataclass(frozen=True)
class GraphInfo:
    name: str  # graph file stem, manifest key and engine name
    bench: str  # what omni-bench measures for it
    # The streaming runtime feeds it the same shapes window after window (its axes stay dynamic for the first
    # and last windows), so TensorRT captures its launches once per binding and replays them as a CUDA graph.
    cuda_graph: bool = False
    # Calibration keeps every n-th call of graphs that run many times per request (neighbouring decode steps
    # and ODE stages are nearly alike; a decoder's prefills are always kept) and at most
    # `calibration_feed_limit` feeds when each feed is costly.
    calibration_keep_every: int = 1
    calibration_feed_limit: int | None = None


@dataclass(frozen=True)
class Component:
    name: str  # as users write it in --components and --precision
    role: str  # one of ROLES
    graphs: tuple[GraphInfo, ...]  # each graph holds its own copy of the component's weights: keep one
    checkpoint_prefixes: tuple[str, ...]  # hub layout and transformers 5's in-memory layout
    specs: str  # "module:function", (model, target) -> list[ComponentSpec] in the order of `graphs`
    head_prefixes: tuple[str, ...] = ()  # output head: quantization leaves it at high precision
    table_prefixes: tuple[str, ...] = ()  # embedding tables the runtime keeps on the host, not in a graph
    required: bool = False  # in every bundle (every prompt needs it)
    unsupported_precisions: tuple[str, ...] = ()  # refused before the export, whatever the target allows
    speech: bool = False  # speech output needs every speech component together
    # False: convolutions only (BigVGAN). Weight-only MatMulNBits has nothing to quantize there, so its int8 is
    # ModelOpt's calibrated Q/DQ on every target.
    matmul_weights: bool = True
    # Exported straight in fp16 from the checkpoint on a target whose high precision is fp16, when its precision
    # there only reads weights (precision_plan.source_precision): the 7B Thinker's 7.1 B graph weights are 28 GB in
    # fp32, more than the export, the calibration replay or the int4 clip statistics can hold on a 24 GiB machine.
    half_source: bool = False

    @property
    def graph_names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.graphs)


COMPONENTS: tuple[Component, ...] = (
    Component(
        "thinker",
        "thinker",
        (
            GraphInfo(
                naming.THINKER_DECODER,
                "prefill of 128/512/2048 tokens; one token at contexts 128/512/2048",
                calibration_keep_every=4,
            ),
        ),
        ("thinker.",),
        "omni_edge.export.decoder_specs:thinker_specs",
        head_prefixes=("thinker.lm_head.",),
        table_prefixes=("thinker.model.embed_tokens.", "thinker.model.language_model.embed_tokens."),
        required=True,
        half_source=True,
    ),
    Component(
        "audio_encoder",
        "encoder",
        (GraphInfo(naming.AUDIO_ENCODER, "one 2 s audio block"),),
        ("thinker.audio_tower.", "thinker.model.audio_tower."),
        "omni_edge.export.encoder_specs:audio_encoder_specs",
    ),
    Component(
        "vision_encoder",
        "encoder",
        (GraphInfo(naming.VISION_ENCODER, "one 448x448 image"),),
        ("thinker.visual.", "thinker.model.visual."),
        "omni_edge.export.encoder_specs:vision_encoder_specs",
        # Its chunked attention is an ONNX Scan, which ModelOpt 0.47's fp16 conversion cannot cast.
        unsupported_precisions=("fp16",),
    ),
    Component(
        "talker",
        "talker",
        (
            GraphInfo(
                naming.TALKER_DECODER,
                "prefill of 128/512 rows; one codec token at contexts 128/512/2048",
                calibration_keep_every=8,
            ),
        ),
        ("talker.",),
        "omni_edge.export.decoder_specs:talker_specs",
        head_prefixes=("talker.codec_head.",),
        table_prefixes=("talker.model.embed_tokens.",),
        speech=True,
    ),
    Component(
        "dit",
        "token2wav",
        # rk4 with the 3/8 rule: 4 evaluations per step, 9 steps per window; keep one per window
        (GraphInfo(naming.DIT_WINDOW, "one streaming DiT window", cuda_graph=True, calibration_keep_every=9),),
        ("token2wav.code2wav_dit_model.",),
        "omni_edge.export.token2wav_specs:dit_specs",
        speech=True,
    ),
    Component(
        "bigvgan",
        "token2wav",
        # Calibration runs every tensor of a deep convolution stack per feed (73 s for 9 feeds, tiny model).
        (GraphInfo(naming.BIGVGAN_WINDOW, "one streaming BigVGAN window", cuda_graph=True, calibration_feed_limit=6),),
        ("token2wav.code2wav_bigvgan_model.",),
        "omni_edge.export.token2wav_specs:bigvgan_specs",
        speech=True,
        matmul_weights=False,
    ),
)

COMPONENT_NAMES: tuple[str, ...] = tuple(c.name for c in COMPONENTS)
SPEECH_COMPONENTS: tuple[str, ...] = tuple(c.name for c in COMPONENTS if c.speech)
GRAPHS: tuple[GraphInfo, ...] = tuple(g for c in COMPONENTS for g in c.graphs)
GRAPH_NAMES: tuple[str, ...] = tuple(g.name for g in GRAPHS)
_BY_NAME = {c.name: c for c in COMPONENTS}
_OWNER = {g.name: c for c in COMPONENTS for g in c.graphs}
_GRAPH = {g.name: g for g in GRAPHS}


def component(name: str) -> Component:
    return _BY_NAME[name]


def graph(name: str) -> GraphInfo:
    return _GRAPH[name]


def owner(graph_name: str) -> Component:
    """The component a graph belongs to."""
    return _OWNER[graph_name]


def checkpoint_component(tensor_name: str) -> Component | None:
    """The component whose graphs hold a checkpoint tensor: the longest matching prefix wins, so the
    encoders (thinker.audio_tower.) are told apart from the rest of the Thinker (thinker.)."""
    matches = [(len(p), c) for c in COMPONENTS for p in c.checkpoint_prefixes if tensor_name.startswith(p)]
    return max(matches, key=lambda m: m[0])[1] if matches else None


def table_component(tensor_name: str) -> Component | None:
    """The component whose host-side embedding table a checkpoint tensor is, if any."""
    return next((c for c in COMPONENTS if c.table_prefixes and tensor_name.startswith(c.table_prefixes)), None)
