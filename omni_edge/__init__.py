"""omni-edge: compiled edge deployment of Qwen2.5-Omni (ONNX Runtime and TensorRT)."""

__version__ = "0.1.0"


def export(*args, **kwargs):
    """Export a checkpoint to a bundle; see omni_edge.export.pipeline.export. Needs the `export` extra."""
    from omni_edge.export.pipeline import export as _export

    return _export(*args, **kwargs)
