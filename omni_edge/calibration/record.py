"""Replay a calibration set through the FP32 bundle and keep what each graph was fed.

The runtime's own Session does the replay (front ends, media splicing, TMRoPE, KV cache, Talker, streaming
token2wav), so a graph is calibrated on exactly the tensors it will see in deployment, earlier graphs'
outputs included.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from omni_edge import naming
from omni_edge.calibration.calib_set import CalibrationSample, CalibrationSet
from omni_edge.components import graph

MAX_FEEDS_PER_GRAPH = 48  # enough for stable ranges; decode feeds carry the KV cache, so memory adds up
# How often each graph is sampled (every n-th call, at most n feeds) is in the component table.
REPLY_TOKENS = 16  # per calibration request: enough decode steps to reach the Talker and the DiT windows
CODEC_TOKENS = 96  # two streaming windows of the DiT/BigVGAN


@dataclass
class RecordedFeeds:
    """graph name -> feeds, in the order the runtime ran them."""

    feeds: dict[str, list[dict[str, np.ndarray]]] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def keep(self, name: str, feed: dict[str, np.ndarray]) -> None:
        """Every n-th call of a graph (the component table's sampling); a decoder's prefills always."""
        call = self.calls.get(name, 0)
        self.calls[name] = call + 1
        if is_prefill(feed) or call % graph(name).calibration_keep_every == 0:
            self.feeds.setdefault(name, []).append({k: np.array(v, copy=True) for k, v in feed.items()})

    def thinned(self, limit: int = MAX_FEEDS_PER_GRAPH) -> dict[str, list[dict[str, np.ndarray]]]:
        """At most `limit` feeds per graph, spread evenly over the run; a decoder's prefills (every prompt
        token's activations, the ranges that matter most) are kept first."""
        out = {}
        for name, feeds in self.feeds.items():
            count = min(limit, graph(name).calibration_feed_limit or limit, len(feeds))
            prefills = [i for i, feed in enumerate(feeds) if is_prefill(feed)][:count]
            kept = set(prefills)
            rest = [i for i in range(len(feeds)) if i not in kept]
            picked = np.linspace(0, len(rest) - 1, count - len(prefills)).round().astype(int) if rest else []
            index = sorted({*prefills, *(rest[i] for i in picked)})
            out[name] = [feeds[i] for i in index]
        return out


def is_prefill(feed: dict[str, np.ndarray]) -> bool:
    """A decoder graph's feed with an empty past: a prompt, not a decode step."""
    past = feed.get(naming.past_key(0))
    return past is not None and past.shape[2] == 0


class RecordingEngine:
    """Runs the wrapped engine and keeps a copy of each feed."""

    def __init__(self, engine, recorded: RecordedFeeds):
        self._engine, self._recorded = engine, recorded
        self.name, self.input_names, self.output_names = engine.name, engine.input_names, engine.output_names

    def run(self, feeds):
        self._recorded.keep(self.name, feeds)
        return self._engine.run(feeds)


def record_feeds(
    bundle_dir: Path,
    calib: CalibrationSet,
    bar=None,
    reply_tokens: int = REPLY_TOKENS,
    codec_tokens: int = CODEC_TOKENS,
) -> dict[str, list[dict[str, np.ndarray]]]:
    """Every calibration request, answered in text and (when the bundle speaks) speech, greedily."""
    from omni_edge.runtime.sampling import SamplingConfig
    from omni_edge.runtime.session import Session
    from omni_edge.runtime.speech import SpeechOptions

    recorded = RecordedFeeds()
    session = Session(bundle_dir, verify=False, wrap_engine=lambda engine: RecordingEngine(engine, recorded))
    components = session.manifest.components
    speech = SpeechOptions(max_codec_tokens=codec_tokens) if naming.TALKER_DECODER in components else None
    for i, sample in enumerate(calib.samples):
        if bar is not None:
            bar.set_description(f"calibrating: request {i + 1}/{len(calib.samples)}")
        session.reset()
        media = request_media(sample, components)
        for _ in session.generate(sample.prompt, reply_tokens, SamplingConfig(greedy=True), speech=speech, **media):
            pass
    return recorded.thinned()


def request_media(sample: CalibrationSample, components) -> dict:
    """Session.generate's media arguments for a sample; media a bundle has no encoder for are left out, so a
    text-only bundle still calibrates its Thinker on the request's prompt."""
    media: dict[str, list] = {}
    if sample.audio is not None and naming.AUDIO_ENCODER in components:
        media["audio"] = [sample.audio]
    if sample.image is not None and naming.VISION_ENCODER in components:
        media["images"] = [sample.image]
    if sample.video is not None and naming.VISION_ENCODER in components:
        media["videos"] = [sample.video]
    return media


def split_feeds(feeds: list[dict[str, np.ndarray]], every: int = 4) -> tuple[list, list]:
    """(calibration, held-out evaluation): every `every`-th feed is held out; a single feed serves both."""
    if len(feeds) < 2:
        return feeds, feeds
    held = feeds[every - 1 :: every] or feeds[-1:]
    calib = [f for f in feeds if not any(f is h for h in held)]
    return calib, held
