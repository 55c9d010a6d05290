"""Errors raised by the kernels package, inside the project's one OmniEdgeError family."""

from omni_edge.errors import OmniEdgeError


class KernelError(OmniEdgeError):
    """A kernel cannot be built, loaded or launched as asked (missing nvcc/CUDA, bad shapes or offsets)."""
