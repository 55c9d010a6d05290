"""Run one step of the export in a child process, so everything it allocated is returned to the system
when it ends.

The ONNX exporter keeps the last graph it rewrote alive in module-level rule objects, with initializers that
alias the traced weights: after exporting the 3B Thinker its 12 GB stayed resident, and the ONNX Runtime
session that verifies the graph pushed the export past 24 GiB. A child that exports one component and exits
bounds the export's memory by the largest component, whatever the libraries keep. The child is spawned, not
forked: torch's OpenMP pool hangs in a forked child once the parent has used it. Spawning costs a fresh
interpreter (~10 s of imports), so the exporter isolates only components whose weights are large
(`isolate_above_bytes`). The result or the exception comes back through a pipe.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from omni_edge.errors import OmniEdgeError


class ExportProcessDied(OmniEdgeError):
    """The child was killed (by the kernel's out-of-memory handler, most often) before it answered."""


ISOLATE_ENV = "OMNI_EDGE_EXPORT_ISOLATE_MIB"
ISOLATE_ABOVE_MIB = 512  # below this the weights are not worth a fresh interpreter


def isolate_above_bytes() -> int:
    """Components with more fp32 weight bytes than this are exported in a child process."""
    told = os.environ.get(ISOLATE_ENV)
    return int(float(told) * (1 << 20)) if told else ISOLATE_ABOVE_MIB << 20


def run_isolated(function: Callable[..., Any], *args: Any, what: str) -> Any:
    """function(*args) in a spawned child process (function importable by name, args picklable); its return
    value, or its exception raised here."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(function, args, send), daemon=True)
    sys.stdout.flush()
    sys.stderr.flush()
    child.start()
    send.close()
    try:
        try:
            outcome, value = receive.recv()
        except EOFError:
            child.join()
            code = child.exitcode
            reason = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
            if code == -signal.SIGKILL:
                reason += ", most likely out of memory: see the export memory plan printed above and free memory"
            raise ExportProcessDied(f"{what} ended without a result ({reason})") from None
        child.join()
    finally:
        if child.is_alive():  # we are unwinding (Ctrl-C, SIGTERM): the child goes too
            child.kill()
            child.join()
        receive.close()
    if outcome == "error":
        raise value
    return value


def _child(function: Callable[..., Any], args: tuple, send) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent turns SIGTERM into cleanup; the child just ends
    try:
        result = ("ok", function(*args))
    except BaseException as exc:
        result = ("error", _portable(exc))
    try:
        send.send(result)
    finally:
        send.close()


def _portable(exc: BaseException) -> BaseException:
    """The exception itself when it pickles (OmniEdgeError, OSError with its errno), else its text."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return OmniEdgeError(f"{type(exc).__name__}: {exc}")
