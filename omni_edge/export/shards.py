"""A checkpoint's safetensors files, read lazily: one file (`model.safetensors`) or the released sharded
layout (`model-0000N-of-0000M.safetensors` + `model.safetensors.index.json`).

Opening reads only headers and checks them against the index and the file sizes, so a missing or truncated
shard, or an index naming a tensor no shard has, is one line before any weight is read. Tensors are then
read one at a time with plain reads into their own buffers, so loading one component never touches the bytes
of the others. Not through a memory map: every page read through one stays resident until the map is
dropped, and loading the 3B Thinker (5.8 GiB of bf16) that way held those pages beside their 11.5 GiB fp32
copies, 1.5 GiB over the 16 GiB budget at the export's peak (measured).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from omni_edge.errors import ModelSourceError
from omni_edge.memory_plan import read_safetensors_header

INDEX_FILE = "model.safetensors.index.json"
_FIX = "re-download the checkpoint (or copy it again)"


# safetensors dtype -> (torch dtype name, bytes per element)
_DTYPES = {
    "BF16": ("bfloat16", 2),
    "F16": ("float16", 2),
    "F32": ("float32", 4),
    "F64": ("float64", 8),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
}


@dataclass(frozen=True)
class TensorInfo:
    file: str  # shard file name inside the checkpoint directory
    dtype: str  # safetensors dtype: BF16, F32, ...
    shape: tuple[int, ...]
    start: int = 0  # absolute byte offset of the data in the file
    nbytes: int = 0


class CheckpointShards:
    """name -> tensor over every shard; `get` reads one tensor and nothing else."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.tensors = _index(self.directory)

    def names(self) -> list[str]:
        return list(self.tensors)

    def get(self, name: str):
        """The tensor as stored (bf16 stays bf16), in a buffer of its own: the caller converts, and the stored
        copy is freed with the last reference to it."""
        import torch

        info = self.tensors[name]
        dtype = getattr(torch, _DTYPES[info.dtype][0])
        if info.nbytes == 0:
            return torch.empty(info.shape, dtype=dtype)
        buffer = bytearray(info.nbytes)
        path = self.directory / info.file
        with open(path, "rb") as handle:
            handle.seek(info.start)
            read = handle.readinto(buffer)
        if read != info.nbytes:  # the file shrank after the headers were checked
            raise ModelSourceError(f"{path.name} is truncated at tensor {name}; {_FIX}")
        return torch.frombuffer(buffer, dtype=dtype).reshape(info.shape)


def _index(directory: Path) -> dict[str, TensorInfo]:
    index_path = directory / INDEX_FILE
    if index_path.is_file():
        weight_map = _read_index(index_path)
        files = sorted(set(weight_map.values()))
    else:
        weight_map = None
        files = sorted(p.name for p in directory.glob("*.safetensors"))
        if not files:
            raise ModelSourceError(f"{directory} has no *.safetensors weights; pass a complete checkpoint directory")
    tensors: dict[str, TensorInfo] = {}
    for file in files:
        path = directory / file
        if not path.is_file():
            raise ModelSourceError(f"{index_path.name} lists shard {file}, which is missing from {directory}; {_FIX}")
        header = read_safetensors_header(path)
        data_start = 8 + _header_bytes(path)
        entries = {name: _tensor_info(path, file, name, info, data_start) for name, info in header.items()}
        _check_length(path, max((e.start + e.nbytes for e in entries.values()), default=data_start))
        tensors.update(entries)
    if weight_map is not None:
        for name, file in weight_map.items():
            if tensors.get(name) is None or tensors[name].file != file:
                raise ModelSourceError(
                    f"{index_path.name} says tensor {name} is in {file}, but that shard does not hold it; {_FIX}"
                )
    return tensors


def _read_index(path: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(path.read_bytes().decode("utf-8"))["weight_map"]
    except (ValueError, KeyError, TypeError, OSError):
        raise ModelSourceError(f"{path} is not a safetensors index (JSON with a weight_map); {_FIX}") from None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and "/" not in v and v.endswith(".safetensors")
        for k, v in weight_map.items()
    ):
        raise ModelSourceError(f"{path}: weight_map must map tensor names to shard file names in the same directory")
    return weight_map


def _tensor_info(path: Path, file: str, name: str, info: dict, data_start: int) -> TensorInfo:
    """One header entry, checked: a known dtype, and data offsets that hold exactly its shape."""
    import math

    try:
        dtype, shape = str(info["dtype"]), tuple(int(d) for d in info["shape"])
        begin, end = (int(o) for o in info["data_offsets"])
    except (KeyError, TypeError, ValueError):
        raise ModelSourceError(f"{path.name} has a malformed header entry for tensor {name}; {_FIX}") from None
    if dtype not in _DTYPES:
        raise ModelSourceError(f"{path.name}: tensor {name} has dtype {dtype}, which no Qwen2.5-Omni checkpoint uses")
    if begin < 0 or end - begin != math.prod(shape) * _DTYPES[dtype][1]:
        raise ModelSourceError(
            f"{path.name}: the header gives tensor {name} bytes {begin}..{end}, which do not hold its shape "
            f"{list(shape)} in {dtype}; {_FIX}"
        )
    return TensorInfo(file, dtype, shape, data_start + begin, end - begin)


def _header_bytes(path: Path) -> int:
    with open(path, "rb") as handle:
        return int.from_bytes(handle.read(8), "little")


def _check_length(path: Path, promised: int) -> None:
    """A shard cut short (an interrupted download or copy) still has a whole header: compare the data it
    promises with the bytes on disk."""
    actual = path.stat().st_size
    if actual < promised:
        raise ModelSourceError(
            f"{path.name} is truncated: its header promises {promised:,} bytes, the file has {actual:,}; {_FIX}"
        )
