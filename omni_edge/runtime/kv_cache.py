"""KV-cache manager: preallocated per-layer buffers sized from the manifest, reused across turns.

Graphs return only the new tokens' keys/values; the cache writes them at the current length. The cache
never grows: a request that would pass max_seq_len is refused before any graph runs.

    outputs = cache.run(decoder, {"inputs_embeds": ..., "position_ids": ...})

`run` adds the past (empty for a prefill: one decoder graph serves both) and the attention mask, and
appends the new keys/values. The past may be fed padded to a bucket of slots with the unfilled slots masked out: the
standard-op decoder graphs take any past length with a matching mask, so one bound shape serves many steps. The
device cache of the TensorRT backend (trt_kv_cache.py) relies on exactly that; here `bucket=0` feeds the
exact length, which is cheapest for ONNX Runtime on a CPU.

A GroupQueryAttention decoder graph (the cpu target's, export/gqa.py) returns the whole cache through the new
tokens instead of the new tokens alone. With `shared_buffer` the host cache binds each layer's slice of its
buffer as both that layer's past input and its present output (ONNX Runtime IOBinding): ONNX Runtime sees the
same memory and appends the new keys/values in place, so a step copies no past at all. An engine that is not a
plain OrtEngine (a wrapper that records feeds) is fed numpy views instead, and the new tokens are copied out
of the present; that is slower, never different.
"""

from __future__ import annotations

import numpy as np

from omni_edge import naming
from omni_edge.bundle import KVCacheGeometry
from omni_edge.errors import KVCacheOverflowError


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple if multiple > 0 else value


def choose_padded_length(current: int, lowest: int, highest: int, bucket: int) -> int:
    """The past length to bind: `current` while it lies in [lowest, highest], else `lowest` rounded up to the
    bucket (but never past `highest`). Keeping `current` is what makes a re-layout rare."""
    if lowest > highest:
        raise ValueError(f"no padded length fits between {lowest} and {highest}")
    if lowest <= current <= highest:
        return current
    return min(round_up(lowest, bucket), highest)


def attention_mask(length: int, padded: int, new_tokens: int) -> np.ndarray:
    """[1, padded + new]: the `length` filled past slots and the new tokens attend, padding slots do not."""
    mask = np.zeros((1, padded + new_tokens), dtype=np.int64)
    mask[0, :length] = 1
    mask[0, padded:] = 1
    return mask


def present_split(outputs: dict) -> tuple[dict, dict]:
    """(everything but the new keys/values, the new keys/values)."""
    present = {k: v for k, v in outputs.items() if naming.is_present(k)}
    return {k: v for k, v in outputs.items() if k not in present}, present


class KVCacheBase:
    """What every cache shares: the step (`run`), capacity, room, truncation. A cache's storage provides
    `past_feeds`, `append`, `_forward` (how an engine is called) and may move its slots in `_set_padded`."""

    def __init__(self, geometry: KVCacheGeometry, bucket: int = 0):
        self.geometry = geometry
        self.bucket = bucket
        self.length = 0
        self.padded = 0  # the past length bound at the last decode step (the device cache's row pitch)

    @property
    def capacity(self) -> int:
        return self.geometry.max_seq_len

    def room(self) -> int:
        return self.capacity - self.length

    def check_room(self, new_tokens: int, what: str = "this request", from_empty: bool = False) -> None:
        """Refuse `new_tokens` more that do not fit; `from_empty`: after a reset (a spoken reply's Talker
        cache starts empty), so what is in use now does not count."""
        in_use = 0 if from_empty else self.length
        if new_tokens > self.capacity - in_use:
            raise KVCacheOverflowError(
                f"{what} needs {new_tokens} more tokens but the KV cache holds {self.capacity} "
                f"and {in_use} are in use; shorten the prompt or conversation, lower "
                f"--max-new-tokens, or re-export with a larger --max-seq-len"
            )

    def truncate(self, length: int) -> None:
        """Forget everything after `length` tokens (e.g. a cancelled turn); the memory is reused."""
        self.length = min(self.length, max(0, length))

    def reset(self) -> None:
        self.length = self.padded = 0

    def bind_past(self, new_tokens: int) -> int:
        """The past length to feed with `new_tokens` more (the decode profile allows past + new <= capacity,
        so near a full cache it may shrink); bucket 0 feeds the exact length."""
        if self.bucket <= 0:
            self._set_padded(self.length)
        else:
            self._set_padded(choose_padded_length(self.padded, self.length, self.capacity - new_tokens, self.bucket))
        return self.padded

    def _set_padded(self, padded: int) -> None:
        self.padded = padded

    # -- storage: what a cache keeps where -------------------------------------------------------------
    def past_feeds(self, padded: int) -> dict:
        """The past as graph inputs, `padded` slots per layer."""
        raise NotImplementedError

    def append(self, present: dict, new: int | None = None) -> None:
        """The new tokens' keys/values (the graph's present outputs) into slots [length, length + new)."""
        raise NotImplementedError

    def _forward(self, engine, feeds: dict) -> dict:
        """Run the engine on the feeds (the device cache keeps the new keys/values on the device)."""
        raise NotImplementedError

    def run(self, decoder, feeds: dict) -> dict:
        """One forward of the new tokens in `feeds` after the cached ones; returns the graph's other outputs."""
        new = feeds["inputs_embeds"].shape[1]
        self.check_room(new)
        padded = self.bind_past(new)
        mask = attention_mask(self.length, padded, new)
        outputs = self._forward(decoder, {**feeds, **self.past_feeds(padded), "attention_mask": mask})
        rest, present = present_split(outputs)
        self.append(present, new)
        return rest


class KVCache(KVCacheBase):
    """The cache in host memory, for engines that take numpy feeds (ONNX Runtime). `shared_buffer`: the decoder
    graph's presents are the whole cache (GroupQueryAttention), so an OrtEngine runs it in place."""

    def __init__(self, geometry: KVCacheGeometry, batch: int = 1, bucket: int = 0, shared_buffer: bool = False):
        super().__init__(geometry, bucket)
        shape = (geometry.num_layers, 2, batch, geometry.num_kv_heads, geometry.max_seq_len, geometry.head_dim)
        self._buffer = np.zeros(shape, dtype=np.dtype(geometry.dtype))
        if shared_buffer and bucket > 0:
            raise ValueError("a shared KV buffer is fed its filled length; it takes no bucket")
        self.shared_buffer = shared_buffer
        self._bound: InPlaceBinding | None = None

    def past_feeds(self, padded: int | None = None) -> dict[str, np.ndarray]:
        """Views of the first `padded` slots (default: the filled ones) as graph inputs; ORT copies
        non-contiguous views itself."""
        padded = self.length if padded is None else padded
        feeds = {}
        for layer in range(self.geometry.num_layers):
            feeds[naming.past_key(layer)] = self._buffer[layer, 0, :, :, :padded]
            feeds[naming.past_value(layer)] = self._buffer[layer, 1, :, :, :padded]
        return feeds

    def append(self, outputs: dict[str, np.ndarray], new: int | None = None) -> None:
        """The presents hold the new tokens alone (standard-op graphs) or the cache through them (a
        GroupQueryAttention graph, which writes them at [length, length + new)); both are `new` slots wide when the
        cache was empty."""
        width = outputs[naming.present_key(0)].shape[2]
        new = width if new is None else new
        self.check_room(new)
        start = 0 if width == new else self.length
        end = self.length + new
        for layer in range(self.geometry.num_layers):
            self._buffer[layer, 0, :, :, self.length : end] = outputs[naming.present_key(layer)][
                :, :, start : start + new
            ]
            self._buffer[layer, 1, :, :, self.length : end] = outputs[naming.present_value(layer)][
                :, :, start : start + new
            ]
        self.length = end

    def _forward(self, engine, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return engine.run(feeds)

    def run(self, decoder, feeds: dict) -> dict:
        session = _ort_session(decoder) if self.shared_buffer else None
        if session is None:
            return super().run(decoder, feeds)
        new = feeds["inputs_embeds"].shape[1]
        self.check_room(new)
        self._set_padded(self.length)
        if self._bound is None or self._bound.session is not session:
            self._bound = InPlaceBinding(session, self._buffer)
        outputs = self._bound.run({**feeds, "attention_mask": attention_mask(self.length, self.length, new)})
        self.length += new
        return outputs


def _ort_session(engine):
    """The InferenceSession of a plain OrtEngine, None for any other engine (a wrapper sees numpy feeds only)."""
    from omni_edge.runtime.engine import OrtEngine

    return engine.session if isinstance(engine, OrtEngine) else None


class InPlaceBinding:
    """One decoder session's IOBinding with every layer's past and present bound to that layer's slice of the
    host buffer [layers, 2, batch, kv_heads, max_seq_len, head_dim]; the other outputs come back as numpy."""

    def __init__(self, session, buffer: np.ndarray):
        import onnxruntime as ort

        self.session = session
        self._binding = session.io_binding()
        present = {naming.present_key(i): (i, 0) for i in range(buffer.shape[0])}
        present |= {naming.present_value(i): (i, 1) for i in range(buffer.shape[0])}
        names = [o.name for o in session.get_outputs()]
        self._outputs = [name for name in names if name not in present]
        # The bound outputs come back in the order they were first bound: the others first, then the cache.
        for name in self._outputs:
            self._binding.bind_output(name)
        for name, (layer, kv) in present.items():
            # A view of the numpy buffer, not a copy: ONNX Runtime reads the past from and writes into it.
            value = ort.OrtValue.ortvalue_from_numpy(buffer[layer, kv])
            past = naming.past_key(layer) if kv == 0 else naming.past_value(layer)
            self._binding.bind_ortvalue_input(past, value)
            self._binding.bind_ortvalue_output(name, value)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, value in feeds.items():
            self._binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self._outputs:  # rebound each step: their shapes change with the new tokens
            self._binding.bind_output(name)
        self.session.run_with_iobinding(self._binding)
        values = self._binding.get_outputs()
        return {name: values[i].numpy() for i, name in enumerate(self._outputs)}


def new_kv_cache(backend: str, geometry: KVCacheGeometry, shared_buffer: bool = False) -> KVCacheBase:
    """The cache where the bundle's backend computes: device memory under TensorRT (its engines read the past
    by address), host memory under ONNX Runtime. `shared_buffer`: the decoder's manifest record says its graph
    appends to the cache in place (ComponentRecord.shared_kv_buffer)."""
    if backend == "tensorrt":
        from omni_edge.runtime.trt_kv_cache import DeviceKVCache

        return DeviceKVCache(geometry)
    return KVCache(geometry, shared_buffer=shared_buffer)
