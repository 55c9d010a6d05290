"""Media in, Thinker-ready parts out: front ends (numpy) then the encoder graphs of the bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from omni_edge import naming
from omni_edge.bundle import Manifest
from omni_edge.errors import BundleError, InputError
from omni_edge.runtime.audio_blocks import gather_tokens, split_blocks
from omni_edge.runtime.engine import Engine
from omni_edge.runtime.prompt import AudioPart, ImagePart, VideoPart
from omni_edge.runtime.vision_index import vision_indices


class MediaEncoders:
    """The bundle's audio and vision encoders, opened lazily so text-only sessions never load them.

    `video_timing` and `transparency` pick the reference convention (vision_frontend's module docstring); the
    defaults are what Qwen's README pipeline (qwen-omni-utils, then transformers' processor) gives."""

    def __init__(
        self, manifest: Manifest, open_engine, video_timing: str = "processor", transparency: str = "qwen-omni-utils"
    ):
        self.video_timing, self.transparency = video_timing, transparency
        self._manifest = manifest
        self._open_engine = open_engine  # name -> Engine
        self._engines: dict[str, Engine] = {}

    def _engine(self, name: str, flag: str) -> Engine:
        if name not in self._manifest.components:
            raise BundleError(
                f"this bundle has no {name}, so it cannot take {flag}; re-export it without --components "
                f"or with --components {name}"
            )
        if name not in self._engines:
            self._engines[name] = self._open_engine(name)
        return self._engines[name]

    def encode_audio(self, waveform_16k: np.ndarray) -> AudioPart:
        from omni_edge.runtime.audio_frontend import log_mel

        mel = log_mel(waveform_16k)
        blocks, lengths = split_blocks(mel, self._manifest.media.audio_block_frames)
        encoded = self._engine(naming.AUDIO_ENCODER, "--audio").run(
            {"input_features": blocks, "block_lengths": lengths}
        )["audio_embeds"]
        tokens = gather_tokens(encoded, lengths)
        if len(tokens) == 0:
            raise InputError("the audio is too short to give a single token (under 30 ms); pass a longer clip")
        return AudioPart(tokens, int(mel.shape[1]))

    def _encode_patches(self, patches: np.ndarray, grid_thw: tuple[int, int, int], flag: str) -> np.ndarray:
        info = self._manifest.media
        idx = vision_indices([grid_thw], info.spatial_merge_size, info.window_size, info.patch_size)
        return self._engine(naming.VISION_ENCODER, flag).run(idx.feeds(patches))["image_embeds"]

    def encode_image(self, image) -> ImagePart:
        from omni_edge.runtime.vision_frontend import load_image, preprocess_image

        pixels = load_image(image, self.transparency) if isinstance(image, (str, Path)) else image
        patches, grid = preprocess_image(pixels, transparency=self.transparency)
        t, h, w = (int(v) for v in grid[0])
        grid_thw = (t, h, w)
        return ImagePart(self._encode_patches(patches, grid_thw, "--image"), grid_thw)

    def encode_video(self, video, use_audio_in_video: bool, fps: float = 2.0) -> VideoPart:
        """`video`: a path, sampled at `fps` and timed by self.video_timing, or (frames uint8 [T,H,W,3], fps[,
        waveform_16k]) already decoded, timed by the fps given with it."""
        from omni_edge.runtime.vision_frontend import decode_video, load_video_audio, preprocess_video, video_timing_fps

        waveform = None
        if isinstance(video, (str, Path)):
            frames, sampled = decode_video(video, fps)
            fps = video_timing_fps(fps, sampled, self.video_timing)
            if use_audio_in_video:
                waveform = load_video_audio(video)
        else:
            frames, fps, *rest = video
            waveform = rest[0] if rest else None
            if use_audio_in_video and waveform is None:
                raise InputError("use_audio_in_video needs the video's audio track; pass (frames, fps, waveform)")
        patches, grid, second_per_grid = preprocess_video(frames, fps)
        t, h, w = (int(v) for v in grid[0])
        grid_thw = (t, h, w)
        embeds = self._encode_patches(patches, grid_thw, "--video")
        audio = self.encode_audio(waveform) if use_audio_in_video and waveform is not None else None
        return VideoPart(embeds, grid_thw, float(second_per_grid), audio)
