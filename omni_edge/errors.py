"""One error family: every failure a user can cause says what was wrong and what to do about it.

The CLI turns an OmniEdgeError into one line on stderr and a non-zero exit; anything else is a bug
and keeps its traceback.
"""


class OmniEdgeError(Exception):
    """Base of all user-facing errors. The message names the problem and the fix."""


class ModelSourceError(OmniEdgeError):
    """The model to export cannot be found, downloaded or read."""


class BundleError(OmniEdgeError):
    """A bundle on disk is missing, incomplete, tampered with, or built for something else."""


class TargetError(OmniEdgeError):
    """An unknown target, or a precision/feature the target cannot run."""


class KVCacheOverflowError(OmniEdgeError):
    """A request would write past the end of the preallocated KV cache."""


class InputError(OmniEdgeError):
    """Bad user input: prompt, media file, sampling option."""


class UnsupportedConfigError(OmniEdgeError):
    """The checkpoint's config has a value the export or the runtime does not support (yet)."""
