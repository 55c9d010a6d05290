"""Run a snippet in a fresh interpreter where torch and transformers cannot be imported."""

from __future__ import annotations

import subprocess
import sys

BLOCK = "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"


def run_without_torch(body: str, timeout: int = 300) -> None:
    """`body` must print 'ok' when every check in it passed."""
    proc = subprocess.run([sys.executable, "-c", BLOCK + body], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
