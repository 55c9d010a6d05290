"""The runtime: load a bundle and stream replies (numpy, no torch).

    from omni_edge.runtime import Session, TextDelta, AudioChunk, SpeechOptions

Names are imported on first use, so `import omni_edge.runtime.cuda` (or any other submodule) does not load
the whole session stack.
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "Session": "omni_edge.runtime.session",
    "TextDelta": "omni_edge.runtime.session",
    "Done": "omni_edge.runtime.session",
    "TurnResult": "omni_edge.runtime.session",
    "AudioChunk": "omni_edge.runtime.speech",
    "SpeechOptions": "omni_edge.runtime.speech",
    "SamplingConfig": "omni_edge.runtime.sampling",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
