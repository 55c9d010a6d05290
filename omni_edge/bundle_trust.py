"""The bundle as a trust boundary: a manifest that is well formed, files confined to the bundle directory,
and bytes that are hashed as they are read, so what was checked is what a backend runs.

What this protects against: a bundle file changed, truncated or swapped after export (its sha256 no longer
matches), a manifest entry or a graph's external-data `location` that points outside the bundle (`..`,
absolute paths, symlinks out), a graph file the manifest does not list, a graph replaced by another
component's graph (its inputs and outputs are checked against the manifest), and manifests whose numbers
would make the runtime allocate without bound. What it cannot protect against: someone who can rewrite
manifest.json itself can list hashes of their own files; pin the manifest from the outside for that
(`manifest_sha256`, compared with a hash you keep).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import types
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path

from omni_edge import naming
from omni_edge.errors import BundleError

# Qwen2.5-Omni's rotary tables cover 32k positions; a million KV slots is a generous ceiling that still turns a
# typo (or a hostile 10**12) into an error instead of a terabyte allocation.
MAX_SEQ_LEN = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Fields whose types live in other modules and carry their own from_dict checks.
_UNCHECKED_FIELDS = {"memory_plan", "quantization", "plugins"}
_REFUSE = "re-export the bundle"


def manifest_sha256(bundle_dir: Path) -> str:
    """sha256 of manifest.json: keep it outside the bundle and compare, to trust the manifest itself."""
    return hashlib.sha256((Path(bundle_dir) / naming.MANIFEST_FILE).read_bytes()).hexdigest()


def bundle_file(bundle_dir: Path, rel: object, what: str = "manifest entry") -> Path:
    """The path of a file named by the bundle, once the name stays inside the bundle directory.

    Bundles are flat (every payload file sits next to manifest.json), so a name is a plain file name: no
    directory parts, no `..`, not absolute, and not a symlink that leads out of the bundle."""
    if (
        not isinstance(rel, str)
        or rel in ("", ".", "..")
        or "/" in rel
        or "\\" in rel
        or "\0" in rel
        or os.path.isabs(rel)
    ):
        raise BundleError(
            f"{what} {rel!r} in {bundle_dir} is not a plain file name inside the bundle (directories, '..' and "
            f"absolute paths are refused); {_REFUSE}"
        )
    path = Path(bundle_dir) / rel
    if path.is_symlink() and path.resolve().parent != Path(bundle_dir).resolve():
        raise BundleError(
            f"bundle file {rel} is a symbolic link to {os.readlink(path)}, outside {bundle_dir}; a bundle holds "
            f"its own files: {_REFUSE}"
        )
    return path


def read_verified(bundle_dir: Path, files: dict[str, str] | None, rel: str, what: str = "bundle file") -> bytes:
    """The bytes of a bundle file, hashed as they are read (None: unverified, for a caller that opted out)."""
    path = bundle_file(bundle_dir, rel, what)
    if files is not None and rel not in files:
        raise BundleError(f"{what} {rel} is not among the manifest's hashed files, so it cannot be trusted; {_REFUSE}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"bundle file {rel} is missing from {bundle_dir}; {_REFUSE}") from None
    except (IsADirectoryError, PermissionError, OSError) as exc:
        raise BundleError(f"cannot read bundle file {rel} in {bundle_dir} ({exc.strerror or exc})") from None
    if files is not None and hashlib.sha256(data).hexdigest() != files[rel]:
        raise BundleError(
            f"bundle file {rel} does not match its sha256 in the manifest (modified or corrupted); {_REFUSE}"
        )
    return data


class MappedFile:
    """A bundle file mapped read-only and hashed through the mapping, for the external data of large graphs:
    its pages belong to the page cache, so ONNX Runtime's copy of the weights is the only anonymous copy
    (reading the file into bytes first held a 12 GB Thinker twice while its session was created). The file's
    identity (inode, size, mtime) is taken before hashing and compared after the backend has read it
    (`check_unchanged`), so a file rewritten in between is refused rather than run."""

    def __init__(self, bundle_dir: Path, files: dict[str, str] | None, rel: str, what: str):
        import mmap

        path = bundle_file(bundle_dir, rel, what)
        if files is not None and rel not in files:
            raise BundleError(
                f"{what} {rel} is not among the manifest's hashed files, so it cannot be trusted; {_REFUSE}"
            )
        self.rel, self.what = rel, what
        try:
            with open(path, "rb") as handle:
                self._identity = _identity(os.fstat(handle.fileno()))
                self.data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if self._identity[1] else b""
        except FileNotFoundError:
            raise BundleError(f"bundle file {rel} is missing from {bundle_dir}; {_REFUSE}") from None
        except OSError as exc:
            raise BundleError(f"cannot read bundle file {rel} in {bundle_dir} ({exc.strerror or exc})") from None
        self._path = path
        if files is not None:
            digest = hashlib.sha256()
            view = memoryview(self.data)
            for start in range(0, len(view), 1 << 24):
                digest.update(view[start : start + (1 << 24)])
            view.release()
            if digest.hexdigest() != files[rel]:
                self.close()
                raise BundleError(
                    f"bundle file {rel} does not match its sha256 in the manifest (modified or corrupted); {_REFUSE}"
                )

    def check_unchanged(self) -> None:
        try:
            now = _identity(os.stat(self._path))
        except OSError:
            now = None
        if now != self._identity:
            raise BundleError(f"{self.what} {self.rel} changed while it was being loaded; {_REFUSE}")

    def close(self) -> None:
        if not isinstance(self.data, bytes):
            self.data.close()


class OpenedFile:
    """A bundle file kept open and hashed through its descriptor, then read at offsets for as long as it is
    used (the token-embedding tables: runtime/embedding_table.py). Nothing of it is held in memory: a read
    costs a system call and copies only what was asked for. Before every read the descriptor's file must
    still be the one hashed (inode, size, mtime, as MappedFile checks once): a file rewritten in place is
    refused, and one replaced by another file under its name is never read, since the descriptor keeps
    the original."""

    def __init__(self, bundle_dir: Path, files: dict[str, str] | None, rel: str, what: str):
        path = bundle_file(bundle_dir, rel, what)
        if files is not None and rel not in files:
            raise BundleError(
                f"{what} {rel} is not among the manifest's hashed files, so it cannot be trusted; {_REFUSE}"
            )
        self.rel, self.what, self._fd = rel, what, -1
        try:
            self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise BundleError(f"bundle file {rel} is missing from {bundle_dir}; {_REFUSE}") from None
        except OSError as exc:
            raise BundleError(f"cannot read bundle file {rel} in {bundle_dir} ({exc.strerror or exc})") from None
        self._identity = _identity(os.fstat(self._fd))
        self.size = self._identity[1]
        if files is not None:
            digest = hashlib.sha256()
            for start in range(0, self.size, 1 << 20):
                digest.update(os.pread(self._fd, 1 << 20, start))
            if digest.hexdigest() != files[rel]:
                self.close()
                raise BundleError(
                    f"bundle file {rel} does not match its sha256 in the manifest (modified or corrupted); {_REFUSE}"
                )

    def read(self, size: int, offset: int) -> bytes:
        """`size` bytes at `offset`, from the file that was hashed."""
        return self.read_many(size, [offset])[0]

    def read_many(self, size: int, offsets: list[int]) -> list[bytes]:
        """`size` bytes at each of `offsets`, the file checked once for them all."""
        if _identity(os.fstat(self._fd)) != self._identity:
            raise BundleError(f"{self.what} {self.rel} changed after it was verified; {_REFUSE}")
        chunks = [os.pread(self._fd, size, offset) for offset in offsets]
        if any(len(chunk) != size for chunk in chunks):
            raise BundleError(f"{self.what} {self.rel} is shorter than it was when verified; {_REFUSE}")
        return chunks

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()


def _identity(stat: os.stat_result) -> tuple[int, int, int]:
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def check_external_locations(
    bundle_dir: Path, graph_file: str, model: bytes, allowed: set[str] | dict[str, str] | None
) -> list[str]:
    """The external-data files a graph reads, once each is a plain file of this bundle (and listed in
    `allowed` when given): checked here, before ONNX Runtime or TensorRT's parser sees the graph."""
    from omni_edge.onnx_external import MalformedGraph, external_locations

    try:
        locations = sorted(external_locations(model))
    except MalformedGraph as exc:
        raise BundleError(f"graph {graph_file} is not a valid ONNX file ({exc}); {_REFUSE}") from None
    for location in locations:
        path = bundle_file(bundle_dir, location, f"external-data location of {graph_file}")
        if allowed is not None and location not in allowed:
            raise BundleError(
                f"graph {graph_file} reads external data from {location}, which is not among the bundle's "
                f"hashed files; {_REFUSE}"
            )
        if not path.is_file():
            raise BundleError(f"bundle file {location} (external data of {graph_file}) is missing; {_REFUSE}")
    return locations


def check_engine_io(
    record, input_names: list[str], output_names: list[str], shapes: dict[str, list] | None = None, exact: bool = True
) -> None:
    """A graph or engine has the inputs and outputs its manifest record says, with the same fixed sizes: one
    component's graph put in place of another's (with its hash fixed) is refused here, not deep inside a run.
    The Thinker's and the Talker's graphs share every name, so the sizes (vocabulary, widths) tell them apart.
    exact=False allows an engine fewer inputs than its graph (TensorRT drops inputs a network never reads)."""
    want_in, want_out = [t.name for t in record.inputs], [t.name for t in record.outputs]
    inputs_ok = set(input_names) == set(want_in) if exact else set(input_names) <= set(want_in)
    if not inputs_ok or set(output_names) != set(want_out):
        raise BundleError(
            f"{record.file} does not have the inputs and outputs the manifest gives {record.name} (it has "
            f"{_names(input_names)} -> {_names(output_names)}, the manifest {_names(want_in)} -> "
            f"{_names(want_out)}): the file is another graph; {_REFUSE}"
        )
    for tensor in [*record.inputs, *record.outputs]:
        have = (shapes or {}).get(tensor.name)
        if have is None:
            continue
        fixed_differs = any(isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(have, tensor.shape))
        if len(have) != len(tensor.shape) or fixed_differs:
            raise BundleError(
                f"{record.file} has {tensor.name} of shape {have}, but the manifest gives {record.name} "
                f"{tensor.shape}: the file is another graph; {_REFUSE}"
            )


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:4])
    return f"[{shown}{', ...' if len(names) > 4 else ''}]"


# -- the manifest's schema ----------------------------------------------------------------------------


def check_manifest(manifest, verify_files: bool) -> None:
    """Types, ranges and cross-references of a parsed manifest; every refusal is one BundleError."""
    _check_types(manifest, "manifest")
    if manifest.backend not in ("onnxruntime", "tensorrt"):
        raise BundleError(f"manifest backend {manifest.backend!r} is not onnxruntime or tensorrt; {_REFUSE}")
    _check_geometry(manifest.kv_cache, "kv_cache")
    if manifest.talker is not None:
        _check_geometry(manifest.talker.kv_cache, "talker.kv_cache")
    if not manifest.components:
        raise BundleError(f"the manifest lists no components; {_REFUSE}")
    for required in (naming.THINKER_DECODER,):
        if required not in manifest.components:
            raise BundleError(f"the manifest has no {required} component, which every bundle needs; {_REFUSE}")
    for name, record in manifest.components.items():
        if record.name != name:
            raise BundleError(f"manifest component {name} describes {record.name!r}; {_REFUSE}")
        if not record.inputs or not record.outputs:
            raise BundleError(f"manifest component {name} lists no inputs or no outputs; {_REFUSE}")
    if verify_files:
        _check_files(manifest)


def _check_files(manifest) -> None:
    files = manifest.files
    if not files:
        raise BundleError(f"the manifest lists no hashed files, so nothing in the bundle can be verified; {_REFUSE}")
    for rel, digest in files.items():
        if not _SHA256.match(digest):
            raise BundleError(f"manifest entry {rel!r} has no sha256 (got {digest[:80]!r}); {_REFUSE}")
    named = [(f"{n} graph", r.file, r.sha256) for n, r in manifest.components.items()]
    named += [(f"{n} engine", r.engine_file, r.engine_sha256) for n, r in manifest.components.items() if r.engine_file]
    named += [("tokenizer", manifest.tokenizer_file, None), ("embedding table", manifest.thinker.embedding_file, None)]
    if manifest.talker is not None:
        named += [("codec table", manifest.talker.codec_embedding_file, None)]
        named += [("speaker table", manifest.talker.speakers_file, None)]
    if manifest.tensorrt is not None and manifest.tensorrt.timing_cache:
        named += [("timing cache", manifest.tensorrt.timing_cache, None)]
    for what, rel, digest in named:
        if rel not in files:
            raise BundleError(f"the {what} {rel!r} is not among the manifest's hashed files; {_REFUSE}")
        if digest is not None and digest != files[rel]:
            raise BundleError(f"the {what} {rel} has two different sha256 values in the manifest; {_REFUSE}")


def _check_geometry(geo, where: str) -> None:
    for name in ("num_layers", "num_kv_heads", "head_dim"):
        if getattr(geo, name) < 1:
            raise BundleError(f"manifest {where}.{name} is {getattr(geo, name)}, not a positive size; {_REFUSE}")
    if not 16 <= geo.max_seq_len <= MAX_SEQ_LEN:
        raise BundleError(
            f"manifest {where}.max_seq_len is {geo.max_seq_len}; a bundle's KV cache holds 16 to {MAX_SEQ_LEN} "
            f"tokens; {_REFUSE}"
        )
    if geo.dtype not in ("float32", "float16", "bfloat16", "float8", "int8"):
        raise BundleError(f"manifest {where}.dtype {geo.dtype!r} is not a KV-cache type; {_REFUSE}")


def _check_types(obj, where: str) -> None:
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        if where == "manifest" and f.name in _UNCHECKED_FIELDS:
            continue
        _check_value(getattr(obj, f.name), hints[f.name], f"{where}.{f.name}")


def _check_value(value, hint, where: str) -> None:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                _check_value(value, option, where)
                return
            except BundleError:
                continue
        raise _wrong_type(where, value, hint)
    if hint is type(None):
        if value is not None:
            raise _wrong_type(where, value, hint)
    elif is_dataclass(hint):
        if not isinstance(value, typing.cast(type, hint)):
            raise _wrong_type(where, value, hint)
        _check_types(value, where)
    elif hint is int or hint is float:
        ok = isinstance(value, int) if hint is int else isinstance(value, (int, float))
        if not ok or isinstance(value, bool) or (isinstance(value, float) and not math.isfinite(value)):
            raise _wrong_type(where, value, hint)
    elif hint in (str, bool):
        if not isinstance(value, hint):
            raise _wrong_type(where, value, hint)
    elif (origin or hint) is list:
        if not isinstance(value, list):
            raise _wrong_type(where, value, hint)
        for i, item in enumerate(value):
            if args:
                _check_value(item, args[0], f"{where}[{i}]")
    elif (origin or hint) is dict:
        if not isinstance(value, dict):
            raise _wrong_type(where, value, hint)
        for key, item in value.items():
            if not isinstance(key, str):
                raise _wrong_type(f"{where} key", key, str)
            if args:
                _check_value(item, args[1], f"{where}[{key!r}]")


def _wrong_type(where: str, value, hint) -> BundleError:
    name = getattr(hint, "__name__", str(hint))
    return BundleError(
        f"manifest field {where} should be {name}, got {type(value).__name__} {str(value)[:60]!r}; {_REFUSE}"
    )


def read_table(bundle_dir: Path, files: dict[str, str] | None, rel: str) -> dict:
    """A safetensors table of the bundle (embeddings, speakers), parsed from the bytes that were hashed."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    data = read_verified(bundle_dir, files, rel, "table")
    try:
        return load(data)
    except (SafetensorError, ValueError) as exc:
        raise BundleError(f"bundle file {rel} is not a safetensors table ({exc}); {_REFUSE}") from None
