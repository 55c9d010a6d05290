"""Token-embedding tables the runtime looks up itself (the Thinker's, the Talker's codec table), read row by
row from the bundle rather than loaded.

At 3B widths the Thinker's table is 151936 x 2048: 1.2 GB in fp32, of which a conversation touches a few
thousand rows. The file stays open and is hashed once through its descriptor (bundle_trust.OpenedFile); a
lookup reads just its rows, after checking the file is still the one hashed. Nothing of the table is resident
in this process: not as an array, and not as a mapping (a mapped table was tried: the kernel maps the 16
cached neighbours of every faulted page, so 100 scattered rows made a 16 MiB table fully resident, measured).

A table is stored in its checkpoint's precision (export/tables.py): bf16 rows (uint16, numpy has no bf16) are
widened to fp32 per lookup, which is exact, so every row is bit-identical to the fp32 table's.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from omni_edge.bundle_trust import OpenedFile
from omni_edge.errors import BundleError

_DTYPES: dict[str, np.dtype] = {"F32": np.dtype("<f4"), "BF16": np.dtype("<u2")}
_MAX_HEADER = 1 << 20  # a table's safetensors header names a few tensors


class EmbeddingTable:
    """A [rows, width] table indexed like the fp32 array it stands for (an int, a list or array of ints, a
    slice): `table[ids]` is a new fp32 array of shape ids.shape + (width,)."""

    def __init__(self, bundle_dir: Path, files: dict[str, str] | None, rel: str, tensor: str = "weight"):
        self._file = OpenedFile(bundle_dir, files, rel, "table")
        self.rel = rel
        try:
            self._stored, self.shape, self._offset = _locate(self._file, tensor)
        except (ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError) as exc:
            self._file.close()
            raise BundleError(f"bundle file {rel} is not a safetensors table ({exc}); re-export the bundle") from None
        self.dtype = np.dtype(np.float32)  # what lookups return
        self.stored = "bfloat16" if self._stored == _DTYPES["BF16"] else "float32"
        self._row_bytes = self.shape[1] * self._stored.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        rows = self.shape[0]
        ids = np.arange(rows)[index] if isinstance(index, slice) else np.asarray(index)
        if ids.size == 0:
            ids = ids.astype(np.int64)  # [] is float64 to numpy
        if ids.dtype.kind not in "iu":
            raise IndexError(f"embedding rows are looked up by integer ids, not {ids.dtype}")
        flat = ids.reshape(-1).astype(np.int64)
        if flat.size and (flat.min() < -rows or flat.max() >= rows):
            raise IndexError(f"token id out of range for a table of {rows} rows")
        flat = np.where(flat < 0, flat + rows, flat)
        offsets = (self._offset + flat * self._row_bytes).tolist()
        data = b"".join(self._file.read_many(self._row_bytes, offsets))
        out = np.frombuffer(data, dtype=self._stored).reshape(flat.size, self.shape[1])
        out = (out.astype(np.uint32) << 16).view(np.float32) if self._stored == _DTYPES["BF16"] else out.copy()
        return out.reshape(ids.shape + (self.shape[1],))

    def close(self) -> None:
        self._file.close()


def _locate(file: OpenedFile, tensor: str) -> tuple[np.dtype, tuple[int, int], int]:
    """(stored dtype, 2-D shape, byte offset of the data) of `tensor` in a safetensors file."""
    (size,) = struct.unpack("<Q", file.read(8, 0)) if file.size >= 8 else (0,)
    if not 2 <= size <= min(_MAX_HEADER, file.size - 8):
        raise ValueError("bad header length")
    header = json.loads(file.read(size, 8))
    entry = header[tensor]
    dtype = _DTYPES.get(entry["dtype"])
    if dtype is None:
        raise ValueError(f"{tensor} is {entry['dtype']}, not F32 or BF16")
    shape = tuple(int(d) for d in entry["shape"])
    begin, end = (int(v) for v in entry["data_offsets"])
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"{tensor} has shape {list(shape)}, not [rows, width]")
    if end - begin != shape[0] * shape[1] * dtype.itemsize or begin < 0 or 8 + size + end > file.size:
        raise ValueError(f"{tensor}'s data offsets do not fit its shape or the file")
    return dtype, (shape[0], shape[1]), 8 + size + begin
