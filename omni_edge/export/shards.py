"""A checkpoint's safetensors files, read lazily: one file (`model.safetensors`) or the released sharded
layout (`model-0000N-of-0000M.safetensors` + `model.safetensors.index.json`).

Opening reads only headers and checks them against the index and the file sizes, so a missing or truncated
shard, or an index naming a tensor no shard has, is one line before any weight is read. Tensors are then
read one at a time from memory-mapped files (safetensors' safe_open), so loading one component never
touches the bytes of the others.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from omni_edge.errors import ModelSourceError
from omni_edge.memory_plan import read_safetensors_header

INDEX_FILE = "model.safetensors.index.json"
_FIX = "re-download the checkpoint (or copy it again)"


@dataclass(frozen=True)
class TensorInfo:
    file: str  # shard file name inside the checkpoint directory
    dtype: str  # safetensors dtype: BF16, F32, ...
    shape: tuple[int, ...]


class CheckpointShards:
    """name -> tensor over every shard; `get` reads one tensor and nothing else."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.tensors = _index(self.directory)
        self._handles: dict[str, object] = {}

    def names(self) -> list[str]:
        return list(self.tensors)

    def get(self, name: str):
        """The tensor as stored (bf16 stays bf16): the caller converts, so only one converted copy exists."""
        from safetensors import safe_open

        info = self.tensors[name]
        handle = self._handles.get(info.file)
        if handle is None:
            handle = safe_open(str(self.directory / info.file), framework="pt")
            self._handles[info.file] = handle
        return handle.get_tensor(name)  # type: ignore[attr-defined]

    def close(self) -> None:
        self._handles.clear()  # drops the maps; safe_open has no explicit close


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
        _check_length(path, header)
        for name, info in header.items():
            tensors[name] = TensorInfo(file, info["dtype"], tuple(int(d) for d in info["shape"]))
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


def _check_length(path: Path, header: dict[str, dict]) -> None:
    """A shard cut short (an interrupted download or copy) still has a whole header: compare the data it
    promises with the bytes on disk."""
    with open(path, "rb") as handle:
        header_bytes = int.from_bytes(handle.read(8), "little")
    promised = 8 + header_bytes + max((int(info["data_offsets"][1]) for info in header.values()), default=0)
    actual = path.stat().st_size
    if actual < promised:
        raise ModelSourceError(
            f"{path.name} is truncated: its header promises {promised:,} bytes, the file has {actual:,}; {_FIX}"
        )
