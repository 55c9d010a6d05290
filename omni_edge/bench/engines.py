"""The engine table: for every engine a bundle can hold, the shapes it is measured at and how ours runs them.

Every graph of the component table (omni_edge.components) is an engine here, in table order; its cases,
input builder and ONNX Runtime runner plug in with one `_BENCHES` entry, and the PyTorch side with one
entry under the same name in omni_edge/bench/reference.py. An engine in the
table but not in the bundle is reported as "not in bundle"; one in the bundle whose entry has no cases
yet is reported as "no benchmark yet", never silently skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from omni_edge import naming
from omni_edge.bench.inputs import IMAGE_SIZE, decoder_feeds, picture, tone
from omni_edge.bundle import Manifest
from omni_edge.components import GRAPHS

PREFILL_LENGTHS = (128, 512, 2048)
DECODE_CONTEXTS = (128, 512, 2048)
TALKER_PREFILL_LENGTHS = (128, 512)  # the Talker's prompt is the conversation so far, one row per token
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
        from omni_edge.runtime.engine import open_engine

        self.session = session
        self.manifest: Manifest = session.manifest
        self._open = lambda name: open_engine(session.bundle_dir, session.manifest, name, threads)
        self._opened: dict = {}

    def engine(self, name: str):
        if name == naming.THINKER_DECODER:
            return self.session.thinker.decoder
        if name not in self._opened:
            self._opened[name] = self._open(name)
        return self._opened[name]

    def close(self) -> None:
        self._opened.clear()


# -- Thinker and Talker ---------------------------------------------------------------------------
def _decoder_cases(graph: str, limit: int, prefills, rows: str, token: str) -> list[Case]:
    """Prefills and decode steps: the same graph, with an empty past or a past of `context` tokens."""
    return [Case(graph, f"prefill {n} {rows}", n, "tokens", {"new": n, "past": 0}) for n in prefills if n <= limit] + [
        Case(graph, f"decode 1 {token} at context {n}", 1, "tokens", {"new": 1, "past": n})
        for n in DECODE_CONTEXTS
        if n < limit
    ]


def _thinker_cases(manifest: Manifest) -> list[Case]:
    return _decoder_cases(naming.THINKER_DECODER, manifest.kv_cache.max_seq_len, PREFILL_LENGTHS, "tokens", "token")


def _thinker_inputs(ctx: BundleEngines, case: Case) -> dict:
    ids = np.random.default_rng(0).integers(0, 1000, case.params["new"])
    return decoder_feeds(ctx.session.embeddings[ids], ctx.manifest.kv_cache, case.params["past"])


def _talker_cases(manifest: Manifest) -> list[Case]:
    limit = manifest.speech[0].kv_cache.max_seq_len
    return _decoder_cases(naming.TALKER_DECODER, limit, TALKER_PREFILL_LENGTHS, "rows", "codec token")


def _talker_inputs(ctx: BundleEngines, case: Case) -> dict:
    """Talker rows are Thinker-width sums (hidden state + embeddings); random rows cost the same."""
    width = ctx.manifest.thinker.hidden_size
    rows = np.random.default_rng(1).standard_normal((case.params["new"], width)).astype(np.float32)
    return decoder_feeds(rows, ctx.manifest.speech[0].kv_cache, case.params["past"])


def _graph(ctx: BundleEngines, case: Case, inputs: dict):
    """The plain case: the inputs are the engine's feeds."""
    engine = ctx.engine(case.engine)
    return lambda: engine.run(inputs)


def _decoder_step(ctx: BundleEngines, case: Case, inputs: dict):
    """A decoder step as a Session runs it under ONNX Runtime: through the runtime's KV cache, holding the same
    random past, so what a cache costs per step (the in-place binding of a GroupQueryAttention graph, or the
    past fed as views of the host buffer) is timed with the graph."""
    if ctx.manifest.backend != "onnxruntime":
        return _graph(ctx, case, inputs)
    from omni_edge.runtime.kv_cache import new_kv_cache

    engine = ctx.engine(case.engine)
    geometry = ctx.manifest.kv_cache if case.engine == naming.THINKER_DECODER else ctx.manifest.speech[0].kv_cache
    cache = new_kv_cache("onnxruntime", geometry, ctx.manifest.components[case.engine].shared_kv_buffer)
    past = case.params["past"]
    if past:
        layers = range(geometry.num_layers)
        cache.append(
            {naming.present_key(i): inputs[naming.past_key(i)] for i in layers}
            | {naming.present_value(i): inputs[naming.past_value(i)] for i in layers}
        )
    feeds = {"inputs_embeds": inputs["inputs_embeds"], "position_ids": inputs["position_ids"]}

    def run():
        cache.truncate(past)
        return cache.run(engine, feeds)

    return run


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
        return engine.run(idx.feeds(inputs["patches"]))

    return run


# -- token2wav --------------------------------------------------------------------------------------
def _windows(manifest: Manifest):
    """The bundle's streaming windows (a middle chunk), from its DiT block size."""
    from omni_edge.runtime.speech import stream_windows

    return stream_windows(manifest.speech[1])


def _kept_seconds(manifest: Manifest) -> float:
    return _windows(manifest).chunk / 100  # audio one window adds to the stream (mel runs at 100 frames/s)


def _dit_cases(manifest: Manifest) -> list[Case]:
    windows = _windows(manifest)
    frames = windows.past + windows.chunk + windows.future
    return [
        Case(naming.DIT_WINDOW, f"{frames}-frame window, 1 evaluation", 1, "evaluations", {"frames": frames}),
        Case(
            naming.DIT_WINDOW,
            f"{frames}-frame window, RK4 solve (36 evals)",
            _kept_seconds(manifest),
            "audio s",
            {"frames": frames, "solve": "rk4"},
        ),
    ]


def _speaker(ctx: BundleEngines):
    from omni_edge.runtime.speech import load_speakers

    return next(iter(load_speakers(ctx.session.bundle_dir, ctx.manifest, ctx.manifest.files).values()))


def _dit_inputs(ctx: BundleEngines, case: Case) -> dict:
    info, speaker = ctx.manifest.speech[1], _speaker(ctx)
    frames = case.params["frames"]
    rng = np.random.default_rng(2)
    return {
        "noisy_mel": rng.standard_normal((1, frames, info.mel_dim)).astype(np.float32),
        "codes": rng.integers(0, info.num_code_embeddings - 1, (1, frames // info.repeats)),
        "speaker_cond": speaker.cond.astype(np.float32),
        "reference_mel": speaker.reference_mel.astype(np.float32),
        "time": np.asarray([0.5], dtype=np.float32),
    }


def _dit_ours(ctx: BundleEngines, case: Case, inputs: dict):
    if case.params.get("solve") != "rk4":
        return _graph(ctx, case, inputs)
    from omni_edge.runtime.token2wav import Speaker, solve_mel

    engine = ctx.engine(naming.DIT_WINDOW)
    speaker = Speaker("bench", 0, inputs["speaker_cond"], inputs["reference_mel"])
    return lambda: solve_mel(engine, inputs["noisy_mel"][0], inputs["codes"][0], speaker, "rk4")


def _bigvgan_cases(manifest: Manifest) -> list[Case]:
    windows = _windows(manifest)
    frames = windows.vocoder_context + windows.chunk
    label = f"{frames}-frame window ({windows.chunk} kept)"
    return [Case(naming.BIGVGAN_WINDOW, label, _kept_seconds(manifest), "audio s", {"frames": frames})]


def _bigvgan_inputs(ctx: BundleEngines, case: Case) -> dict:
    shape = (1, ctx.manifest.speech[1].mel_dim, case.params["frames"])
    return {"mel": (np.random.default_rng(3).standard_normal(shape) - 5.0).astype(np.float32)}  # log-amplitude


# graph -> (cases, inputs, ours); a graph of the component table without an entry is "no benchmark yet".
_BENCHES: dict[str, tuple[Callable, Callable, Callable]] = {
    naming.THINKER_DECODER: (_thinker_cases, _thinker_inputs, _decoder_step),
    naming.AUDIO_ENCODER: (_audio_cases, _audio_inputs, _graph),
    naming.VISION_ENCODER: (_vision_cases, _vision_inputs, _vision_ours),
    naming.TALKER_DECODER: (_talker_cases, _talker_inputs, _decoder_step),
    naming.DIT_WINDOW: (_dit_cases, _dit_inputs, _dit_ours),
    naming.BIGVGAN_WINDOW: (_bigvgan_cases, _bigvgan_inputs, _graph),
}
ENGINES = tuple(EngineBench(g.name, g.bench, *_BENCHES.get(g.name, (None, None, None))) for g in GRAPHS)
