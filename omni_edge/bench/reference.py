"""The PyTorch (transformers) reference: the same rows, same inputs, same checkpoint, same run.

The checkpoint is the bundle's `source_model`, resolved like `omni-export` does (`tiny`/`medium` regenerate
from the cache) and checked against the bundle's `source_sha256`, so a ratio always compares one model.
Each engine's reference runs the transformers module the graph was exported from; entries are keyed by
the engine names of omni_edge/bench/engines.py. torch is imported only here, and only when asked for.
"""

from __future__ import annotations

import importlib.metadata as md
import time

import numpy as np

from omni_edge import naming
from omni_edge.bench.engines import Case
from omni_edge.bench.inputs import Prompt
from omni_edge.bench.measure import Policy
from omni_edge.bundle import Manifest
from omni_edge.errors import BundleError


def unavailable_reason() -> str | None:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not importable; pip install 'omni-edge[export]' to measure the PyTorch reference"
    return None


def load_reference(manifest: Manifest, threads: int):
    """(model, description) for the bundle's source checkpoint, with torch limited to `threads` threads."""
    import torch

    from omni_edge.export.checkpoint import checkpoint_sha256, load_omni_model, resolve_model_source

    torch.set_num_threads(threads)
    source = resolve_model_source(manifest.source_model)
    if checkpoint_sha256(source.path) != manifest.source_sha256:
        raise BundleError(
            f"the bundle's source model {manifest.source_model} ({source.path}) no longer matches the "
            "checkpoint the bundle was exported from; re-export the bundle, or pass --no-reference"
        )
    model = load_omni_model(source.path)
    info = {
        "model_path": str(source.path),
        "checkpoint_sha256_matches": True,
        "dtype": "float32",
        "torch": md.version("torch"),
        "transformers": md.version("transformers"),
        "torch_threads": torch.get_num_threads(),
    }
    return model, info


def _tensors(inputs: dict) -> dict:
    import torch

    return {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in inputs.items()}


def _decoder(parts_of):
    """A decoder (Thinker or Talker) over all new positions, head on the last one, as the graphs compute it
    (and as transformers' generate does, with logits_to_keep=1)."""

    def build(model, case: Case, inputs: dict):
        import torch
        from transformers.cache_utils import DynamicCache

        parts = parts_of(model)
        config = parts.text_model.config
        t = _tensors(inputs)

        def setup():  # a fresh cache per run: DynamicCache grows in place
            cache = DynamicCache(config=config)
            if case.params["past"]:
                for layer in range(config.num_hidden_layers):
                    cache.update(t[naming.past_key(layer)], t[naming.past_value(layer)], layer)
            return cache

        def run(cache):
            with torch.inference_mode():
                embeds = t["inputs_embeds"] if parts.input_proj is None else parts.input_proj(t["inputs_embeds"])
                out = parts.text_model(
                    inputs_embeds=embeds,
                    position_ids=t["position_ids"],
                    attention_mask=t["attention_mask"],
                    cache=cache,
                    use_cache=True,
                )
                return parts.head(out.last_hidden_state[:, -1:])

        return run, setup

    return build


def _audio(model, case: Case, inputs: dict):
    import torch

    tower = model.thinker.model.audio_tower
    length = int(inputs["block_lengths"][0])
    mel = torch.from_numpy(np.ascontiguousarray(inputs["input_features"][0, :, :length]))
    lengths = torch.tensor([length])

    def run():
        with torch.inference_mode():
            return tower(input_features=mel, feature_lens=lengths)

    return run, None


def _vision(model, case: Case, inputs: dict):
    import torch

    visual = model.thinker.model.visual
    t = _tensors(inputs)

    def run():
        with torch.inference_mode():
            return visual(t["patches"], grid_thw=t["grid_thw"])

    return run, None


def _dit(model, case: Case, inputs: dict):
    """One CFG evaluation (the graph), or transformers' own RK4 sampler over the window (36 evaluations)."""
    import torch

    dit = model.token2wav.code2wav_dit_model
    t = _tensors(inputs)
    frames = t["noisy_mel"].shape[1]

    def evaluate():
        with torch.inference_mode():
            return dit(
                hidden_states=t["noisy_mel"],
                condition_vector=t["reference_mel"],
                speaker_embedding=t["speaker_cond"].unsqueeze(1).expand(1, frames, -1),
                quantized_code=t["codes"],
                time_step=t["time"],
                apply_cfg=True,
            )

    def solve():
        with torch.inference_mode():
            return dit.sample(
                t["speaker_cond"],
                t["reference_mel"],
                t["codes"],
                num_steps=10,
                guidance_scale=0.5,
                sway_coefficient=-1.0,
            )

    return (solve if case.params.get("solve") == "rk4" else evaluate), None


def _bigvgan(model, case: Case, inputs: dict):
    import torch

    vocoder = model.token2wav.code2wav_bigvgan_model
    mel = torch.from_numpy(inputs["mel"])

    def run():
        with torch.inference_mode():
            return vocoder(mel)

    return run, None


def _thinker_parts(model):
    from omni_edge.export.decoder import thinker_parts

    return thinker_parts(model)


def _talker_parts(model):
    from omni_edge.export.decoder import talker_parts

    return talker_parts(model)


REFERENCE = {
    naming.THINKER_DECODER: _decoder(_thinker_parts),
    naming.AUDIO_ENCODER: _audio,
    naming.VISION_ENCODER: _vision,
    naming.TALKER_DECODER: _decoder(_talker_parts),
    naming.DIT_WINDOW: _dit,
    naming.BIGVGAN_WINDOW: _bigvgan,
}


def measure_case(model, case: Case, inputs: dict, policy: Policy) -> dict | None:
    from omni_edge.bench.measure import measure

    build = REFERENCE.get(case.engine)
    if build is None:
        return None
    run, setup = build(model, case, inputs)
    return measure(run, policy, setup)


# -- end to end ------------------------------------------------------------------------------------
def _media_kwargs(media: dict) -> dict:
    """Our numpy front ends, in the form transformers' Thinker takes them (the same features as ours)."""
    import torch

    from omni_edge.runtime.audio_frontend import log_mel
    from omni_edge.runtime.vision_frontend import preprocess_image

    kwargs: dict = {}
    if media.get("audio"):
        mels = [log_mel(w) for w in media["audio"]]
        longest = max(m.shape[1] for m in mels)
        features = np.zeros((len(mels), mels[0].shape[0], longest), np.float32)
        mask = np.zeros((len(mels), longest), np.int64)
        for i, mel in enumerate(mels):
            features[i, :, : mel.shape[1]], mask[i, : mel.shape[1]] = mel, 1
        kwargs.update(input_features=torch.from_numpy(features), feature_attention_mask=torch.from_numpy(mask))
    if media.get("images"):
        done = [preprocess_image(image) for image in media["images"]]
        kwargs.update(
            pixel_values=torch.from_numpy(np.concatenate([p for p, _ in done])),
            image_grid_thw=torch.from_numpy(np.concatenate([g for _, g in done])),
        )
    return kwargs


def end_to_end(model, prompt: Prompt, prompt_ids: list[int], new_tokens: int, policy: Policy, repeats: int) -> dict:
    """Greedy `thinker.generate` on our prompt ids; TTFT from the call (front ends included) to token one."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    class FirstToken(BaseStreamer):
        def __init__(self):
            self.calls, self.at = 0, None

        def put(self, value):  # first call: the prompt; second: the first new token
            self.calls += 1
            if self.calls == 2:
                self.at = time.perf_counter()

        def end(self):
            pass

    from transformers.utils import logging as hf_logging

    media = prompt.media()
    ids = torch.tensor([prompt_ids])
    ttft, tps, generated = [], [], 0
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # generation-config notes about sampling flags, on every call
    try:
        for i in range(policy.warmup + repeats):
            streamer = FirstToken()
            start = time.perf_counter()
            with torch.inference_mode():
                out = model.thinker.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=new_tokens,
                    do_sample=False,
                    streamer=streamer,
                    **_media_kwargs(media),
                )
            end = time.perf_counter()
            generated = out.shape[1] - ids.shape[1]
            if i >= policy.warmup:
                ttft.append(1000 * (streamer.at - start))
                tps.append((generated - 1) / (end - streamer.at) if generated > 1 else 0.0)
    finally:
        hf_logging.set_verbosity(verbosity)
    return {
        "new_tokens": int(generated),
        "iterations": repeats,
        "ttft_ms_p50": float(np.median(ttft)),
        "ttft_ms_p90": float(np.percentile(ttft, 90)),
        "thinker_tokens_per_s_p50": float(np.median(tps)),
    }


def _known_codes_only(manifest: Manifest):
    """A random-weight Talker emits codec ids the DiT has no embedding for, and transformers' token2wav then
    fails on them (our runtime maps them to 0, as Qwen's code does). Masking them keeps the reference
    running; a trained Talker does not emit them, so this changes nothing there."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    first_unknown = manifest.speech[1].num_code_embeddings
    keep = torch.tensor(manifest.speech[0].stop_token_ids)

    class KnownCodes(LogitsProcessor):
        def __call__(self, input_ids, scores):
            stops = scores[:, keep].clone()
            scores[:, first_unknown:] = -float("inf")
            scores[:, keep] = stops
            return scores

    return LogitsProcessorList([KnownCodes()])


def speech_end_to_end(
    model,
    manifest: Manifest,
    prompt_ids: list[int],
    new_tokens: int,
    codec_tokens: int,
    speaker: str,
    policy: Policy,
    repeats: int,
) -> dict:
    """transformers' full generate with audio: Thinker, then Talker, then token2wav over the whole utterance.

    The reference does not stream, so its first audio arrives with the last: first_audio_ms is the whole call.
    """
    import torch
    from transformers.utils import logging as hf_logging

    sample_rate = manifest.speech[1].sample_rate
    known_codes = _known_codes_only(manifest)
    ids = torch.tensor([prompt_ids])
    walls, seconds = [], 0.0
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        for i in range(policy.warmup + repeats):
            start = time.perf_counter()
            with torch.inference_mode():
                _, wav = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    speaker=speaker,
                    thinker_max_new_tokens=new_tokens,
                    thinker_do_sample=False,
                    talker_do_sample=False,
                    talker_max_new_tokens=codec_tokens,
                    talker_logits_processor=known_codes,
                )
            wall = time.perf_counter() - start
            seconds = wav.numel() / sample_rate
            if i >= policy.warmup:
                walls.append(wall)
    finally:
        hf_logging.set_verbosity(verbosity)
    wall = float(np.median(walls))
    codes = round(seconds * sample_rate / (manifest.speech[1].samples_per_frame * manifest.speech[1].repeats))
    return {
        "codec_tokens": codes,
        "audio_seconds": seconds,
        "iterations": repeats,
        "first_audio_ms_p50": 1000 * wall,
        "rtf_p50": wall / seconds if seconds else None,
    }
