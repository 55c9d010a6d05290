"""The KV cache of the TensorRT backend, kept in device memory for the life of a session.

TensorRT binds each past tensor as one packed [batch, kv_heads, past, head_dim] block, so the cache stores
each layer's keys (and values) in exactly that layout, with a row pitch of `padded` tokens: the past is
fed by address, with the slots past `length` masked out (kv_cache.attention_mask). A step then only copies
the new tokens' keys/values, device to device, into their slots. When the filled part outgrows the pitch
(or the pitch would break the engine's profile near a full cache) the rows are re-laid out at a new pitch
rounded up to a bucket of tokens, through one scratch block: a copy every `bucket` tokens, not every step.

    cache = DeviceKVCache(geometry)          # what kv_cache.new_kv_cache gives a TensorRT bundle
    outputs = cache.run(prefill, decode, {"inputs_embeds": ..., "position_ids": ...})
"""

from __future__ import annotations

import numpy as np

from omni_edge import naming
from omni_edge.bundle import KVCacheGeometry
from omni_edge.errors import BundleError
from omni_edge.runtime.cuda import CudaError, DeviceResource, DeviceTensor, check, destroy_stream, driver, new_stream
from omni_edge.runtime.kv_cache import KVCacheBase, choose_padded_length

DEVICE_KV_BUCKET = 256  # tokens: the pitch grows in these steps; attention reads < bucket padding slots


class DeviceKVCache(KVCacheBase, DeviceResource):
    def __init__(self, geometry: KVCacheGeometry, bucket: int = DEVICE_KV_BUCKET, batch: int = 1):
        super().__init__(geometry, bucket)
        self._drv, self._check = driver(), check
        self._dtype = np.dtype(geometry.dtype)
        self._rows = batch * geometry.num_kv_heads  # one row per (batch, head): the 2-D copies' height
        self._token_bytes = geometry.head_dim * self._dtype.itemsize
        self._row_shape = (batch, geometry.num_kv_heads)
        block = self._rows * geometry.max_seq_len * self._token_bytes
        self._ptrs: dict[str, int] = {}
        self._scratch = 0
        self._stream = None
        try:
            for name in naming.past_names(geometry.num_layers):
                self._ptrs[name] = int(check(self._drv.cuMemAlloc(block)))
            self._scratch = int(check(self._drv.cuMemAlloc(block)))
            self._stream = new_stream()
            # Padding slots are masked, but a masked NaN still poisons softmax @ V: start from zeros, so every
            # slot holds either zeros or keys/values the model wrote.
            for ptr in [*self._ptrs.values(), self._scratch]:
                check(self._drv.cuMemsetD8Async(ptr, 0, block, self._stream))
            check(self._drv.cuStreamSynchronize(self._stream))
        except CudaError as exc:
            self.close()
            total = (2 * geometry.num_layers + 1) * block  # keys and values per layer, and the scratch block
            raise BundleError(
                f"cannot allocate the KV cache on the GPU: {total / 2**30:.2f} GiB for {geometry.max_seq_len} "
                f"tokens ({exc}); free GPU memory, or re-export with a smaller --max-seq-len"
            ) from None

    def _copy_rows(self, dst: int, dst_tokens: int, src: int, src_tokens: int, tokens: int) -> None:
        """Copy `tokens` tokens of every (batch, head) row between two packed layouts of those pitches."""
        drv = self._drv
        copy = drv.CUDA_MEMCPY2D()
        copy.srcMemoryType = drv.CUmemorytype.CU_MEMORYTYPE_DEVICE
        copy.srcDevice = src
        copy.srcPitch = src_tokens * self._token_bytes
        copy.dstMemoryType = drv.CUmemorytype.CU_MEMORYTYPE_DEVICE
        copy.dstDevice = dst
        copy.dstPitch = dst_tokens * self._token_bytes
        copy.WidthInBytes = tokens * self._token_bytes
        copy.Height = self._rows
        self._check(drv.cuMemcpy2DAsync(copy, self._stream))

    def _set_padded(self, pitch: int) -> None:
        """Re-lay the filled slots out at a new row pitch (scratch first: source and target overlap)."""
        if pitch != self.padded and self.length:
            for ptr in self._ptrs.values():
                self._copy_rows(self._scratch, pitch, ptr, self.padded, self.length)
                self._check(
                    self._drv.cuMemcpyDtoDAsync(
                        ptr, self._scratch, self._rows * pitch * self._token_bytes, self._stream
                    )
                )
            self._check(self._drv.cuStreamSynchronize(self._stream))
        self.padded = pitch

    def append(self, present: dict[str, DeviceTensor], new: int | None = None) -> None:
        """The new tokens' keys/values (the engine's packed outputs) into slots [length, length + new). TensorRT
        graphs are standard-op ones, whose presents are the new tokens alone, so `new` is their width."""
        new = present[naming.present_key(0)].shape[2]
        self.check_room(new)
        self._set_padded(choose_padded_length(self.padded, self.length + new, self.capacity, self.bucket))
        for layer in range(self.geometry.num_layers):
            for past, out in (
                (naming.past_key(layer), naming.present_key(layer)),
                (naming.past_value(layer), naming.present_value(layer)),
            ):
                tensor = present[out]
                if np.dtype(tensor.dtype) != self._dtype or tuple(tensor.shape) != (
                    *self._row_shape,
                    new,
                    self.geometry.head_dim,
                ):
                    raise BundleError(
                        f"{out} is {tensor.dtype}{list(tensor.shape)}, but the manifest's KV cache "
                        f"is {self._dtype} with {self.geometry.num_kv_heads} heads of "
                        f"{self.geometry.head_dim}; re-export the bundle"
                    )
                dst = self._ptrs[past] + self.length * self._token_bytes
                self._copy_rows(dst, self.padded, tensor.ptr, new, new)
        self._check(self._drv.cuStreamSynchronize(self._stream))
        self.length += new

    def past_feeds(self, padded: int) -> dict[str, DeviceTensor]:
        """Every layer's block bound by address; `padded` is the current pitch (bind_past set it)."""
        shape = (*self._row_shape, padded, self.geometry.head_dim)
        return {name: DeviceTensor(ptr, shape, self._dtype) for name, ptr in self._ptrs.items()}

    def _forward(self, engine, feeds: dict) -> dict:
        # The new keys/values stay on the device; append copies them into their slots.
        return engine.run_mixed(feeds, naming.present_names(self.geometry.num_layers))

    def close(self) -> None:
        for ptr in [*self._ptrs.values(), self._scratch]:
            if ptr:
                self._check(self._drv.cuMemFree(ptr))
        self._ptrs, self._scratch = {}, 0
        destroy_stream(self._stream)
        self._stream = None
