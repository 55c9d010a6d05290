"""The engine table: for every engine a bundle can hold, the shapes it is measured at and how ours runs them.

A new engine plugs in with one `EngineBench` entry here (its cases, input builder and ONNX Runtime runner)
and one entry under the same name in omni_edge/bench/reference.py (the PyTorch side). An engine in the
table but not in the bundle is reported as "not in bundle"; one in the bundle whose entry has no cases
yet is reported as "no benchmark yet", never silently skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from omni_edge import naming
from omni_edge.bench.inputs import IMAGE_SIZE, picture, thinker_feeds, tone
from omni_edge.bundle import Manifest

PREFILL_LENGTHS = (128, 512, 2048)
DECODE_CONTEXTS = (128, 512, 2048)
AUDIO_BLOCK_SECONDS = 2.0


@dataclass(frozen=True)
class Case:
    engine: str
    label: str  # row key shared by ours and the reference, e.g. "prefill 128 tokens"
    work: float  # units of `unit` done by one run, for throughput
    unit: str
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class EngineBench:
    name: str
    planned: str  # what a row measures, shown when the engine is not in the bundle
    cases: Callable[[Manifest], list[Case]] | None = None  # None: no benchmark written for it yet
    inputs: Callable | None = None  # (BundleEngines, Case) -> dict of numpy arrays, shared with the reference
    ours: Callable | None = None  # (BundleEngines, Case, inputs) -> zero-argument callable running our engine


class BundleEngines:
    """The bundle's engines for benchmarking: the session's Thinker engines, others opened on demand."""

    def __init__(self, session, threads: int):
        from omni_edge.runtime.session import open_engine

        self.session = session
        self.manifest: Manifest = session.manifest
        self._open = lambda name: open_engine(session.bundle_dir, session.manifest, name, threads)
        self._opened: dict = {}

    def engine(self, name: str):
        if name == naming.THINKER_PREFILL:
            return self.session.prefill
        if name == naming.THINKER_DECODE:
            return self.session.decode
        if name not in self._opened:
            self._opened[name] = self._open(name)
        return self._opened[name]

    def close(self) -> None:
        self._opened.clear()


# -- Thinker --------------------------------------------------------------------------------------
def _prefill_cases(manifest: Manifest) -> list[Case]:
    limit = manifest.kv_cache.max_seq_len
    return [Case(naming.THINKER_PREFILL, f"prefill {n} tokens", n, "tokens", {"new": n, "past": 0})
            for n in PREFILL_LENGTHS if n <= limit]


def _decode_cases(manifest: Manifest) -> list[Case]:
    limit = manifest.kv_cache.max_seq_len
    return [Case(naming.THINKER_DECODE, f"decode 1 token at context {n}", 1, "tokens", {"new": 1, "past": n})
            for n in DECODE_CONTEXTS if n < limit]


def _thinker_inputs(ctx: BundleEngines, case: Case) -> dict:
    return thinker_feeds(ctx.session.embeddings, ctx.manifest.kv_cache, case.params["new"], case.params["past"])


def _graph(ctx: BundleEngines, case: Case, inputs: dict):
    """The plain case: the inputs are the engine's feeds."""
    engine = ctx.engine(case.engine)
    return lambda: engine.run(inputs)


# -- encoders -------------------------------------------------------------------------------------
def _audio_cases(manifest: Manifest) -> list[Case]:
    return [Case(naming.AUDIO_ENCODER, "one 2 s block", AUDIO_BLOCK_SECONDS, "audio s")]


def _audio_inputs(ctx: BundleEngines, case: Case) -> dict:
    from omni_edge.runtime.audio_blocks import split_blocks
    from omni_edge.runtime.audio_frontend import log_mel

    blocks, lengths = split_blocks(log_mel(tone(AUDIO_BLOCK_SECONDS)))
    return {"input_features": blocks[:1], "block_lengths": lengths[:1]}


def _vision_cases(manifest: Manifest) -> list[Case]:
    height, width = IMAGE_SIZE
    return [Case(naming.VISION_ENCODER, f"one {height}x{width} image", 1, "images")]


def _vision_inputs(ctx: BundleEngines, case: Case) -> dict:
    from omni_edge.runtime.vision_frontend import preprocess_image

    patches, grid = preprocess_image(picture())
    return {"patches": patches, "grid_thw": grid}


def _vision_ours(ctx: BundleEngines, case: Case, inputs: dict):
    """Host-side window indices are built inside the timed call: transformers builds them in forward too."""
    from omni_edge.runtime.vision_index import vision_indices

    info = ctx.manifest.media
    engine = ctx.engine(naming.VISION_ENCODER)
    grid = [tuple(int(v) for v in row) for row in inputs["grid_thw"]]

    def run():
        idx = vision_indices(grid, info.spatial_merge_size, info.window_size, info.patch_size)
        return engine.run({
            "pixel_patches": inputs["patches"],
            "patch_positions": idx.patch_positions,
            "window_index": idx.window_index,
            "reverse_index": idx.reverse_index,
            "window_segments": idx.window_segments,
            "frame_segments": idx.frame_segments,
        })

    return run


ENGINES = (
    EngineBench(naming.THINKER_PREFILL, "prefill of 128/512/2048 tokens", _prefill_cases, _thinker_inputs, _graph),
    EngineBench(naming.THINKER_DECODE, "one token at contexts 128/512/2048", _decode_cases, _thinker_inputs, _graph),
    EngineBench(naming.AUDIO_ENCODER, "one 2 s audio block", _audio_cases, _audio_inputs, _graph),
    EngineBench(naming.VISION_ENCODER, "one 448x448 image", _vision_cases, _vision_inputs, _vision_ours),
    EngineBench(naming.TALKER_PREFILL, "Talker prefill of a Thinker reply"),
    EngineBench(naming.TALKER_DECODE, "one codec token at several contexts"),
    EngineBench(naming.DIT_WINDOW, "one DiT window"),
    EngineBench(naming.BIGVGAN_WINDOW, "one BigVGAN window"),
)
