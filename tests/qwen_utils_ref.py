"""qwen-omni-utils' vision pipeline (fetch_image, fetch_video, process_vision_info), as Qwen's README runs it.

qwen-omni-utils imports torchvision at the top of its vision module, and the torchvision wheels that match this
environment's CPU-only torch are CUDA builds that do not load. Where torchvision is missing, a stand-in is put
in its place for that import only, made of what qwen-omni-utils calls: `io.read_video` (PyAV, which is what
torchvision's reader is: every frame decoded to rgb24, the stream's average rate as video_fps) and
`transforms.functional.resize` (torchvision's tensor resize: torch's antialiased bicubic interpolate in float,
clamped and rounded back to uint8). A real torchvision is used when it imports.

The package's audio module needs librosa, which the tests do not install; `process_mm_info` is its vision half
(`process_vision_info`) plus that audio half, so the vision half is loaded on its own, from its file.
"""

from __future__ import annotations

import enum
import importlib.util
import sys
import types

import numpy as np
import pytest


def _torchvision_stand_in() -> types.ModuleType:
    import torch

    class InterpolationMode(enum.Enum):
        NEAREST = "nearest"
        BILINEAR = "bilinear"
        BICUBIC = "bicubic"

    def resize(video, size, interpolation=InterpolationMode.BILINEAR, antialias=True):
        dtype = video.dtype
        out = torch.nn.functional.interpolate(
            video.float(), size=list(size), mode=interpolation.value, align_corners=False, antialias=antialias
        )
        if dtype == torch.uint8:
            out = out.clamp(0, 255).round().to(torch.uint8)
        return out

    def read_video(path, start_pts=0.0, end_pts=None, pts_unit="sec", output_format="TCHW"):
        import av

        assert start_pts == 0.0 and end_pts is None, "the stand-in reads whole files only"
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate)
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        video = torch.from_numpy(np.stack(frames))  # THWC
        if output_format == "TCHW":
            video = video.permute(0, 3, 1, 2)
        return video, torch.zeros(1, 0), {"video_fps": fps}

    tv = types.ModuleType("torchvision")
    tv.__version__ = "0.23.0"  # >= 0.19: file paths are passed through as they are
    tv.io = types.ModuleType("torchvision.io")
    tv.io.read_video = read_video
    tv.transforms = types.ModuleType("torchvision.transforms")
    tv.transforms.InterpolationMode = InterpolationMode
    tv.transforms.functional = types.SimpleNamespace(resize=resize)
    return tv


def load_vision_process():
    """qwen_omni_utils.v2_5.vision_process, or skip the test with the reason."""
    spec = importlib.util.find_spec("qwen_omni_utils")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("qwen-omni-utils is not installed (pip install -e '.[dev]')")
    if "qwen_utils_vision_process" in sys.modules:
        return sys.modules["qwen_utils_vision_process"]
    path = f"{spec.submodule_search_locations[0]}/v2_5/vision_process.py"
    saved = {name: sys.modules.get(name) for name in ("torchvision", "torchvision.io", "torchvision.transforms")}
    try:
        import torchvision  # noqa: F401
    except Exception:  # missing, or a CUDA build that cannot load
        tv = _torchvision_stand_in()
        sys.modules.update({"torchvision": tv, "torchvision.io": tv.io, "torchvision.transforms": tv.transforms})
    try:
        module_spec = importlib.util.spec_from_file_location("qwen_utils_vision_process", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    finally:
        for name, previous in saved.items():  # transformers must keep seeing no torchvision
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
    sys.modules["qwen_utils_vision_process"] = module
    return module


def readme_vision_info(vision_process, content: list[dict], return_video_kwargs: bool = False):
    """process_mm_info's vision half on one user message, as Qwen's README calls it."""
    conversation = [{"role": "user", "content": content}]
    return vision_process.process_vision_info(conversation, return_video_kwargs=return_video_kwargs)
