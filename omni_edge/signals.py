"""SIGTERM handled like Ctrl-C: what a service manager or `kill` sends runs the same clean-up as an interrupt
(staging removed, a spoken reply's wav finalized) instead of ending the process mid-write."""

from __future__ import annotations

import contextlib
import signal
import threading


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived; raised where the main thread was, so `finally` and `except BaseException` run."""

    exit_code = 128 + signal.SIGTERM


@contextlib.contextmanager
def terminate_as_interrupt():
    """Within the block, SIGTERM raises Terminated in the main thread (elsewhere signals cannot be handled,
    so the block runs unchanged)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
