"""Replay a calibration set through the FP32 bundle: keep what each graph was fed, and the answers reduced
bundles are measured against.

The runtime's own pieces do the replay (front ends and encoders, Session with its media splicing, TMRoPE and
KV cache, the Talker and streaming token2wav), so a graph is calibrated on exactly the tensors it will see in
deployment, earlier graphs' outputs included. One replay gives both the feeds and the reference answers.

It runs in three passes, each with only its own graphs open: the media encoders on every request's media, then
the Thinker on every request (from those encoded parts), then the Talker, DiT and BigVGAN on every reply's
Talker track. The full-size 3B in fp32 is 11.5 GiB of Thinker, 4.9 of encoders and 3.2 of speech graphs: one
Session holding them all needs about 23 GiB by the export's plan, the Thinker pass alone 15.4. The answers are the
streaming Session's: a Talker step needs only its own track row, so stepping it after the Thinker has finished
gives the same codes (tested against Session.generate).
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
    paused: bool = False  # while the reference waveforms are vocoded: not a deployment call pattern

    def keep(self, name: str, feed: dict[str, np.ndarray]) -> None:
        """Every n-th call of a graph (the component table's sampling); a decoder's prefills always."""
        if self.paused:
            return
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


@dataclass(frozen=True)
class ReferenceAnswer:
    """The FP32 bundle's greedy answer to one calibration request, and its codes vocoded by the FP32 token2wav."""

    text_token_ids: list[int]
    codec_token_ids: list[int]
    waveform: np.ndarray | None  # None when the bundle does not speak or the Talker said nothing


@dataclass(frozen=True)
class Replay:
    """What the FP32 bundle did on a calibration set: each graph's feeds (thinned), one answer per request."""

    feeds: dict[str, list[dict[str, np.ndarray]]]
    reference: list[ReferenceAnswer]


def replay(
    bundle_dir: Path,
    calib: CalibrationSet,
    bar=None,
    reply_tokens: int = REPLY_TOKENS,
    codec_tokens: int = CODEC_TOKENS,
) -> Replay:
    """Every calibration request, answered greedily in text and (when the bundle speaks) speech."""
    import copy
    import gc

    from omni_edge.bundle import load_manifest
    from omni_edge.runtime.engine import open_engine
    from omni_edge.runtime.media import MediaEncoders
    from omni_edge.runtime.sampling import SamplingConfig
    from omni_edge.runtime.session import Done, Session

    recorded = RecordedFeeds()
    manifest = load_manifest(bundle_dir, verify_files=False)

    def opened(name: str) -> RecordingEngine:
        return RecordingEngine(open_engine(bundle_dir, manifest, name, 0, False), recorded)

    samples = calib.samples
    encoders = MediaEncoders(manifest, opened)
    parts = []
    for i, sample in enumerate(samples):
        _say(bar, f"calibrating: media of request {i + 1}/{len(samples)}")
        parts.append(encoded(encoders, sample, manifest.components))
    del encoders  # released before the Thinker is opened

    _say(bar, "calibrating: Thinker")  # before the session opens: its loading peak belongs to this pass
    session = Session(bundle_dir, verify=False, wrap_engine=lambda engine: RecordingEngine(engine, recorded))
    texts, tracks = [], []
    for i, (sample, media) in enumerate(zip(samples, parts)):
        _say(bar, f"calibrating: Thinker on request {i + 1}/{len(samples)}")
        session.reset()
        turn = session.conversation.user_turn([*media, sample.prompt])
        events = session.generate_from_ids(
            turn.ids, reply_tokens, SamplingConfig(greedy=True), embeds=turn.embeds, positions=turn.positions
        )
        # Read to its end: a generator left at Done would keep the session, and the Thinker's weights, alive
        # through the Talker pass (the 3B replay's Talker pass started at 16.3 GiB that way).
        result = [e.result for e in events if isinstance(e, Done)][0]
        texts.append(result.text_token_ids)
        tracks.append((copy.deepcopy(session.conversation.track), len(turn.ids)))
    embeddings = session.embeddings  # the Talker reads the Thinker's table
    session.close()
    del session
    # A Session sits in reference cycles (its engine openers), so it is freed by the cycle collector, not when
    # the last name goes: without this the 3B Thinker stayed in memory beside the next fp32 session and the
    # export was OOM-killed at 24 GiB.
    gc.collect()

    codes: list[list[int]] = [[] for _ in samples]
    waves: list[np.ndarray | None] = [None for _ in samples]
    if manifest.talker is not None:
        from omni_edge.runtime.speech import SpeechOptions, SpeechPipeline

        _say(bar, "calibrating: Talker and token2wav")
        speech = SpeechPipeline(bundle_dir, manifest, opened, embeddings, None)
        options = SpeechOptions(max_codec_tokens=codec_tokens)
        for i, (track, first_row) in enumerate(tracks):
            _say(bar, f"calibrating: Talker and token2wav on request {i + 1}/{len(samples)}")
            codes[i] = spoken_codes(speech, options, track, first_row)
            if codes[i]:
                recorded.paused = True
                waves[i] = vocode(speech, codes[i])
                recorded.paused = False
    reference = [ReferenceAnswer(t, c, w) for t, c, w in zip(texts, codes, waves)]
    return Replay(recorded.thinned(), reference)


def encoded(encoders, sample: CalibrationSample, components) -> list:
    """The request's media as encoded parts, in Session.media_parts' order (audio, images, videos)."""
    media = request_media(sample, components)
    parts = [encoders.encode_audio(a) for a in media.get("audio", [])]
    parts += [encoders.encode_image(image) for image in media.get("images", [])]
    return parts + [encoders.encode_video(v, False) for v in media.get("videos", [])]


def spoken_codes(speech, options, track, first_row: int) -> list[int]:
    """The Talker's codes for a reply whose Thinker has finished: the steps the streaming Session interleaves
    with the Thinker's, one per text row after `first_row`, then the Talker's own until it stops (none when
    the reply had a single token, as in Session)."""
    speech.check(options, first_row)
    if track.length <= first_row:
        return []
    reply = speech.begin(options, track, first_row)
    for _ in reply.follow():
        pass
    for _ in reply.finish():
        pass
    return reply.codes


def _say(bar, text: str) -> None:
    if bar is not None:
        bar.set_description(text)


def answer(session, sample: CalibrationSample, reply_tokens: int, codec_tokens: int | None):
    """The session's greedy TurnResult for one request, from a fresh conversation; spoken with `codec_tokens`."""
    from omni_edge.runtime.sampling import SamplingConfig
    from omni_edge.runtime.session import Done
    from omni_edge.runtime.speech import SpeechOptions

    session.reset()
    speech = SpeechOptions(max_codec_tokens=codec_tokens) if codec_tokens else None
    media = request_media(sample, session.manifest.components)
    for event in session.generate(sample.prompt, reply_tokens, SamplingConfig(greedy=True), speech=speech, **media):
        if isinstance(event, Done):
            return event.result
    raise AssertionError("generate ended without a Done event")


def vocode(speech, codes: list[int]) -> np.ndarray:
    """`codes` through a SpeechPipeline's DiT and BigVGAN in one pass, with fixed noise: bundles compared on
    the same codes differ only by their token2wav."""
    from omni_edge.runtime.token2wav import full_token2wav

    info = speech.info
    speaker = next(iter(speech.speakers.values()))
    noise = np.random.default_rng(0).standard_normal((len(codes) * info.repeats, info.mel_dim)).astype(np.float32)
    return full_token2wav(speech.dit, speech.bigvgan, codes, speaker, noise, info.num_code_embeddings, info.repeats)


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
