"""The streaming session: a bundle loaded once, conversations run turn by turn with the KV cache reused.

    session = Session("build/")
    for event in session.generate("Hello!", max_new_tokens=32):
        if isinstance(event, TextDelta):
            print(event.text, end="", flush=True)
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from omni_edge import naming
from omni_edge.bundle import Manifest, load_manifest
from omni_edge.errors import BundleError, InputError
from omni_edge.runtime.chat import Message, TextStreamer, TextTokenizer, render_chat, render_user_turn
from omni_edge.runtime.engine import Engine, OrtEngine
from omni_edge.runtime.kv_cache import KVCache
from omni_edge.runtime.positions import text_positions
from omni_edge.runtime.sampling import SamplingConfig, sample_token


@dataclass(frozen=True)
class TextDelta:
    text: str
    token_id: int


@dataclass(frozen=True)
class TurnResult:
    text: str
    prompt_token_ids: list[int]  # ids fed to the Thinker for this turn
    text_token_ids: list[int]  # generated ids, eos included when it was produced
    finish_reason: str  # "eos", "length" or "cancelled"
    ttft_ms: float
    total_ms: float
    decode_tokens_per_s: float
    codec_token_ids: list[int] = field(default_factory=list)
    audio_seconds: float = 0.0
    first_audio_ms: float | None = None
    rtf: float | None = None


@dataclass(frozen=True)
class Done:
    result: TurnResult


def open_engine(bundle_dir: Path, manifest: Manifest, name: str, threads: int = 0) -> Engine:
    record = manifest.components.get(name)
    if record is None:
        raise BundleError(f"bundle {bundle_dir} has no {name} component; re-export it with that component")
    if manifest.backend == "onnxruntime":
        return OrtEngine(name, bundle_dir / record.file, threads=threads)
    raise BundleError(
        f"bundle {bundle_dir} is for backend {manifest.backend}, which this runtime cannot load yet; "
        "export a --target cpu bundle for ONNX Runtime"
    )


class Session:
    def __init__(self, bundle_dir: str | Path, threads: int = 0, verify: bool = True):
        from safetensors.numpy import load_file

        self.bundle_dir = Path(bundle_dir)
        self.manifest = load_manifest(self.bundle_dir, verify_files=verify)
        self.prefill = open_engine(self.bundle_dir, self.manifest, naming.THINKER_PREFILL, threads)
        self.decode = open_engine(self.bundle_dir, self.manifest, naming.THINKER_DECODE, threads)
        self.embeddings = load_file(str(self.bundle_dir / self.manifest.thinker.embedding_file))["weight"]
        self.tokenizer = TextTokenizer(self.bundle_dir / self.manifest.tokenizer_file)
        self.eos_ids = frozenset(self.manifest.thinker.eos_token_ids)
        self.cache = KVCache(self.manifest.kv_cache)
        self._cancel = threading.Event()
        self.reset()

    # -- conversation state -------------------------------------------------------------------
    def reset(self) -> None:
        """Start a new conversation; the cache memory is kept."""
        self.cache.reset()
        self._unfed: list[int] = []  # generated ids whose KV is not in the cache yet (the last one)
        self._turn_closed = True
        self._next_position = 0

    def cancel(self) -> None:
        """Stop the running turn after the current step (barge-in). Safe to call from another thread."""
        self._cancel.set()

    def next_turn_ids(self, prompt: str, system: str | None = None) -> list[int]:
        """Token ids to feed for a new user turn, continuing the conversation held in the cache."""
        if self.cache.length == 0 and not self._unfed:
            messages = ([Message("system", system)] if system else []) + [Message("user", prompt)]
            return self.tokenizer.encode(render_chat(messages))
        if system:
            raise InputError("a system prompt can only start a conversation; call reset() first")
        closing = [] if self._turn_closed else [self.tokenizer.im_end_id]
        return self._unfed + closing + self.tokenizer.encode("\n" + render_user_turn(prompt))

    # -- generation ---------------------------------------------------------------------------
    def generate(
        self,
        prompt: str,
        max_new_tokens: int = 128,
        sampling: SamplingConfig = SamplingConfig(),
        seed: int | None = None,
        system: str | None = None,
    ) -> Iterator[TextDelta | Done]:
        if not prompt.strip():
            raise InputError("the prompt is empty; pass some text with --prompt")
        return self.generate_from_ids(self.next_turn_ids(prompt, system), max_new_tokens, sampling, seed)

    def generate_from_ids(
        self,
        prompt_ids: list[int],
        max_new_tokens: int = 128,
        sampling: SamplingConfig = SamplingConfig(),
        seed: int | None = None,
    ) -> Iterator[TextDelta | Done]:
        """Feed `prompt_ids` after what the cache holds and stream the reply."""
        sampling.validate()
        if max_new_tokens < 1:
            raise InputError("--max-new-tokens must be at least 1")
        # The last sampled token is never fed, so a turn needs prompt + max_new_tokens - 1 cache slots.
        self.cache.check_room(len(prompt_ids) + max_new_tokens - 1, "this prompt plus --max-new-tokens")
        return self._stream(list(prompt_ids), max_new_tokens, sampling, np.random.default_rng(seed))

    def _stream(self, prompt_ids, max_new_tokens, sampling, rng) -> Iterator[TextDelta | Done]:
        self._cancel.clear()
        start = time.perf_counter()
        self._unfed = []
        self._turn_closed = False
        history = list(prompt_ids)
        generated: list[int] = []
        streamer = TextStreamer(self.tokenizer)
        feed = prompt_ids
        ttft = None
        finish = "length"
        while len(generated) < max_new_tokens:
            if self._cancel.is_set():
                finish = "cancelled"
                break
            logits = self._forward(feed)
            token = sample_token(logits, np.asarray(history, dtype=np.int64), sampling, rng)
            if ttft is None:
                ttft = time.perf_counter() - start
                first_token_at = time.perf_counter()
            generated.append(token)
            history.append(token)
            self._unfed = [token]
            delta = streamer.push(token)
            if delta:
                yield TextDelta(delta, token)
            if token in self.eos_ids:
                finish = "eos"
                self._turn_closed = True
                break
            feed = [token]
        tail = streamer.flush()
        if tail:
            yield TextDelta(tail, generated[-1])
        total = time.perf_counter() - start
        decode_time = total - (ttft or total)
        decode_tps = (len(generated) - 1) / decode_time if len(generated) > 1 and decode_time > 0 else 0.0
        yield Done(
            TurnResult(
                text=self.tokenizer.decode(generated),
                prompt_token_ids=list(prompt_ids),
                text_token_ids=generated,
                finish_reason=finish,
                ttft_ms=1000 * (ttft or total),
                total_ms=1000 * total,
                decode_tokens_per_s=decode_tps,
            )
        )

    def _forward(self, ids: list[int]) -> np.ndarray:
        """Run the new ids through prefill (empty cache) or decode, append their KV, return last logits."""
        count = len(ids)
        self.cache.check_room(count)
        feeds = {
            "inputs_embeds": self.embeddings[np.asarray(ids)][None],
            "position_ids": text_positions(self._next_position, count),
            "attention_mask": np.ones((1, self.cache.length + count), dtype=np.int64),
        }
        if self.cache.length == 0:
            outputs = self.prefill.run(feeds)
        else:
            outputs = self.decode.run({**feeds, **self.cache.past_feeds()})
        self.cache.append(outputs)
        self._next_position += count
        return outputs["logits"][0, -1]
