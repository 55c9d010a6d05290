"""Where an export works before its bundle is moved into place, and what it needs from the disk there.

Staging directories are named `.<out>.<kind>-<pid>@<host>-<random>`: the pid and host of the export that owns
one are in its name, so a later export can tell a live one (left alone) from the leftovers of a process that
was killed (removed, and said so). The disk space an export needs is estimated from the memory plan before
anything is written, and a disk that fills up anyway ends in one line with the numbers.
"""

from __future__ import annotations

import errno
import glob
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

from omni_edge.errors import BundleError
from omni_edge.naming import MANIFEST_FILE

KINDS = ("partial", "fp32", "old")  # the new bundle, the FP32 twin of a reduced one, an old bundle being replaced
GIB = 1 << 30
_OWNER = re.compile(r"^(?P<pid>\d+)@(?P<host>[A-Za-z0-9.-]*)-")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:64]


def make_staging(out: Path, kind: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.{kind}-{os.getpid()}@{_host()}-", dir=out.parent))


def check_overwrite(out: Path, overwrite: bool) -> None:
    """--out must be new, empty, or (with --overwrite) a bundle: never a directory of someone's other files."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not overwrite:
        raise BundleError(f"{out} already exists and is not empty; pass --overwrite or choose another --out")
    if not out.is_dir():
        raise BundleError(f"{out} is a file, not a bundle; --overwrite only replaces a bundle: choose another --out")
    if not (out / MANIFEST_FILE).is_file():
        raise BundleError(
            f"{out} is not empty and holds no bundle (no {MANIFEST_FILE}); --overwrite only replaces a bundle and "
            "never deletes other files: choose another --out, or empty the directory yourself"
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_staging(out: Path, say: Callable[[str], None]) -> list[Path]:
    """Remove the staging directories next to `out` left by exports on this host that are no longer running."""
    removed: list[Path] = []
    if not out.parent.is_dir():
        return removed
    host = _host()
    for kind in KINDS:
        prefix = f".{out.name}.{kind}-"
        for path in sorted(out.parent.glob(f"{glob.escape(prefix)}*")):
            if not path.is_dir() or path.is_symlink():
                continue
            owner = _OWNER.match(path.name[len(prefix) :])
            if owner is None:
                say(f"note: {path} looks like the staging of an older omni-export; remove it if no export is running")
                continue
            pid = int(owner["pid"])
            if owner["host"] != host or pid == os.getpid() or _alive(pid):
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            say(f"removed {path}: staging of an export (pid {pid}) that is no longer running")
    return removed


def export_disk_bytes(plan, reduced: bool, engines: bool) -> int:
    """Bytes the export writes next to --out: the FP32 graphs and tables (always written and verified first),
    the reduced bundle beside them, and TensorRT engines, each about as large as the weights they hold."""
    fp32 = sum(p.parameters * 4 * p.copies for p in plan.parts) + plan.table_file_bytes
    target = plan.weight_bytes + plan.table_file_bytes
    return fp32 + (target if reduced else 0) + (plan.weight_bytes if engines else 0)


def free_bytes(directory: Path) -> int:
    return shutil.disk_usage(directory).free


def check_disk_space(directory: Path, needed: int) -> None:
    free = free_bytes(directory)
    if free < needed:
        raise BundleError(
            f"not enough disk space for the export in {directory}: it needs about {_gib(needed)} and "
            f"{_gib(free)} is free; free some space or choose an --out on another disk"
        )


def disk_full(exc: BaseException | None) -> bool:
    """Whether an exception is (or was caused by) a full disk or quota."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def disk_full_error(directory: Path, needed: int) -> BundleError:
    return BundleError(
        f"the disk filled up while the export was writing in {directory} (staging removed): the export needs "
        f"about {_gib(needed)} there and {_gib(free_bytes(directory))} is free; free some space or choose an "
        "--out on another disk"
    )


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB // 100 else f"{n / (1 << 20):.1f} MiB"
