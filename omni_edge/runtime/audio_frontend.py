"""Audio front end in numpy: file -> 16 kHz mono float32 -> Whisper log-mel [128, frames].

Reading: `soundfile` (libsndfile; WAV, FLAC, OGG, MP3 and friends, already a project dependency); the sound
track of a container (mp4, m4a, mkv, webm, ...: AAC or Opus inside) through PyAV, as for videos.
Resampling: `soxr` at quality "HQ". The reference pipeline (qwen-omni-utils) loads audio with
`librosa.load(path, sr=16000)`, whose default resampler is soxr_hq followed by `fix_length` to
ceil(n * 16000 / sr) samples; calling soxr the same way gives the same samples without pulling in
librosa (and its numba/scipy stack). soxr ships manylinux/macOS/Windows wheels that need only numpy.

Limits: at most 300 s of audio (`MAX_AUDIO_SECONDS`). WhisperFeatureExtractor pads or *silently truncates*
every clip to chunk_length=300 s, so anything longer would lose its tail without a word; we refuse it
instead and tell the user to split the file.

log_mel mirrors WhisperFeatureExtractor(feature_size=128, hop_length=160, n_fft=400, chunk_length=300)
as Qwen2.5-Omni's processor calls it (padding="max_length", return_attention_mask=True), then keeps only
the frames whose mask is 1, which is what the model does with `feature_attention_mask`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from omni_edge.errors import InputError

SAMPLE_RATE = 16_000
N_FFT = 400  # 25 ms Hann window
HOP = 160  # 10 ms -> 100 frames/s
N_MELS = 128
MAX_AUDIO_SECONDS = 300  # WhisperFeatureExtractor chunk_length for Qwen2.5-Omni
MAX_SAMPLES = MAX_AUDIO_SECONDS * SAMPLE_RATE  # 4_800_000 = the reference's n_samples
LOG_FLOOR = -10.0  # log10 of the 1e-10 clamp: what a frame of pure padding comes out as

# Containers libsndfile cannot read; their sound track is decoded with PyAV (ffmpeg).
CONTAINER_SUFFIXES = {".mp4", ".m4a", ".m4b", ".aac", ".mkv", ".mka", ".mov", ".webm", ".avi", ".m4v", ".3gp"}


def load_audio(path: str | Path) -> np.ndarray:
    """Read an audio file (WAV, FLAC, OGG, ... via libsndfile; the sound track of an mp4, m4a, mkv, webm, ...
    via PyAV) as 16 kHz mono float32."""
    import soundfile as sf

    path = Path(path)
    check_media_file(path, "audio")
    if path.suffix.lower() in CONTAINER_SUFFIXES:
        return load_container_audio(path)
    try:
        info = sf.info(str(path))
        if info.frames > 0 and info.frames / info.samplerate > MAX_AUDIO_SECONDS:
            raise too_long_error(path, info.frames / info.samplerate)
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except RuntimeError as exc:  # soundfile.LibsndfileError
        # libsndfile says "Format not recognised" for both garbage and codecs it lacks; pass its reason on.
        reason = str(exc).rstrip(".")
        raise InputError(
            f"cannot decode audio file {path}: {reason}. The file is corrupt or uses an encoding libsndfile "
            f"cannot read; convert it with: ffmpeg -i '{path}' -ac 1 -ar 16000 -c:a pcm_s16le out.wav"
        ) from exc
    return to_mono_16k(data.T, rate, source=str(path))


def audio_seconds(path: str | Path) -> float:
    """Duration of an audio file from its header (libsndfile info, or the container's): nothing decoded."""
    import soundfile as sf

    path = Path(path)
    check_media_file(path, "audio")
    if path.suffix.lower() in CONTAINER_SUFFIXES:
        with open_container(path, "audio") as container:
            if not container.streams.audio:
                raise InputError(f"{path} has no audio track; pass a file with sound (a video goes to --video).")
            stream = container.streams.audio[0]
            if stream.duration and stream.time_base:
                return float(stream.duration * stream.time_base)
            return float(container.duration or 0) / 1_000_000  # AV_TIME_BASE
    try:
        info = sf.info(str(path))
    except RuntimeError as exc:  # soundfile.LibsndfileError
        raise InputError(
            f"cannot decode audio file {path}: {str(exc).rstrip('.')}. The file is corrupt or uses an encoding "
            f"libsndfile cannot read; convert it with: ffmpeg -i '{path}' -ac 1 -ar 16000 -c:a pcm_s16le out.wav"
        ) from exc
    return info.frames / info.samplerate if info.samplerate else 0.0


def open_container(path: Path, kind: str):
    """An opened PyAV container (use it as a context manager); a file ffmpeg cannot open is an InputError."""
    import av

    check_media_file(path, kind)
    try:
        return av.open(str(path))
    except av.error.FFmpegError as exc:
        raise InputError(
            f"cannot open {kind} {path}: {exc}. The file is corrupt or not a container ffmpeg reads; "
            "re-encode it (ffmpeg -i in out.mp4)."
        ) from exc


def load_container_audio(path: str | Path) -> np.ndarray:
    """The first sound track of a container (audio-only m4a/mp4 or a video) as 16 kHz mono float32."""
    path = Path(path)
    with open_container(path, "audio") as container:
        if not container.streams.audio:
            raise InputError(f"{path} has no audio track; pass a file with sound (a video goes to --video).")
        return container_audio(container, path)


def container_audio(container, path: Path) -> np.ndarray:
    """Decode the first audio stream of an open container, stopping as soon as it passes the length limit."""
    import av

    # Interleaved s16 at the native rate and layout: what `ffmpeg -f s16le -` gives audioread, which
    # librosa.load falls back to for video files in the reference.
    resampler = av.AudioResampler(format="s16")
    chunks, rate, total = [], 0, 0
    try:
        for frame in container.decode(container.streams.audio[0]):
            for out in resampler.resample(frame):
                rate = out.sample_rate
                chunks.append(out.to_ndarray().reshape(-1, len(out.layout.channels)))
                total += chunks[-1].shape[0]
            if rate and total > MAX_AUDIO_SECONDS * rate:  # stop before a long track fills memory
                raise too_long_error(f"audio track of {path}", total / rate)
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1, len(out.layout.channels)))
    except av.error.FFmpegError as exc:
        raise InputError(f"cannot decode the audio track of {path}: {exc}; re-encode the file.") from exc
    if not chunks:
        raise InputError(f"the audio track of {path} contains no samples; re-encode the file.")
    samples = np.concatenate(chunks).T.astype(np.float32) * np.float32(1 / 32768)
    return to_mono_16k(samples, rate, source=f"audio track of {path}")


def to_mono_16k(channels: np.ndarray, rate: int, source: str = "audio") -> np.ndarray:
    """[channels, samples] float at `rate` Hz -> [samples] float32 at 16 kHz (librosa.load's recipe)."""
    if channels.shape[-1] == 0:
        raise InputError(f"{source} contains no audio samples (0 frames); record or export it again.")
    if channels.shape[-1] / rate > MAX_AUDIO_SECONDS:
        raise too_long_error(source, channels.shape[-1] / rate)
    # librosa.to_mono: plain mean of the channels, in float32.
    mono = np.ascontiguousarray(np.mean(channels.astype(np.float32, copy=False), axis=0))
    if rate == SAMPLE_RATE:
        out = mono
    else:
        import soxr

        out = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)
        # librosa's fix_length: exactly ceil(n * ratio) samples, zero-padded or trimmed.
        want = math.ceil(mono.shape[0] * SAMPLE_RATE / rate)
        out = out[:want] if out.shape[0] >= want else np.pad(out, (0, want - out.shape[0]))
    if not np.all(np.isfinite(out)):
        raise InputError(f"{source} contains NaN or infinite samples; re-export it as PCM wav.")
    return out


def log_mel(waveform_16k: np.ndarray) -> np.ndarray:
    """16 kHz mono waveform -> [128, ceil(samples / 160)] float32 log-mel, as the model receives it."""
    wave = np.asarray(waveform_16k)
    if wave.ndim != 1:
        raise InputError(f"log_mel needs a 1-D mono waveform, got shape {wave.shape}; downmix it first.")
    if wave.shape[0] == 0:
        raise InputError("log_mel got an empty waveform (0 samples); pass at least one sample of audio.")
    if wave.shape[0] > MAX_SAMPLES:
        raise too_long_error("waveform", wave.shape[0] / SAMPLE_RATE)
    # The reference casts to float32 before the STFT; do the same so both see identical samples.
    wave = wave.astype(np.float32).astype(np.float64)
    if not np.all(np.isfinite(wave)):
        raise InputError("log_mel got NaN or infinite samples; check the audio source.")

    # The reference pads to 300 s of zeros. Frames lying wholly in that padding are log10(1e-10) = -10,
    # so we only need the signal plus enough zeros that the reflect pad at our end reflects zeros too.
    padded_len = min(MAX_SAMPLES, wave.shape[0] + N_FFT + HOP)
    padded = np.zeros(padded_len, dtype=np.float64)
    padded[: wave.shape[0]] = wave
    log_spec = _log_mel_frames(padded)
    if padded_len == MAX_SAMPLES:
        log_spec = log_spec[:, :-1]  # Whisper drops the STFT's last frame
    # max over the whole padded clip (including -10 padding frames), exactly as the reference does.
    floor = max(log_spec.max(), LOG_FLOOR) - 8.0
    valid = -(-wave.shape[0] // HOP)  # feature_attention_mask.sum() = ceil(samples / hop)
    out = (np.maximum(log_spec[:, :valid], floor) + 4.0) / 4.0
    return out.astype(np.float32)


def _log_mel_frames(padded: np.ndarray, block: int = 4096) -> np.ndarray:
    """torch.stft(center=True, reflect) power spectrum -> Slaney mel -> log10, [128, len // HOP + 1]."""
    signal = np.pad(padded, N_FFT // 2, mode="reflect")
    return _log_mel_windows(np.lib.stride_tricks.sliding_window_view(signal, N_FFT)[::HOP], block)


def _log_mel_windows(frames: np.ndarray, block: int = 4096) -> np.ndarray:
    """[frames, N_FFT] sample windows -> [128, frames] log10 mel."""
    window, filters = _hann_window(), mel_filters()
    out = np.empty((N_MELS, frames.shape[0]), dtype=np.float64)
    for start in range(0, frames.shape[0], block):  # blocks keep a 300 s clip under ~20 MB of temporaries
        spec = np.fft.rfft(frames[start : start + block] * window, axis=-1)
        power = spec.real**2 + spec.imag**2
        out[:, start : start + block] = np.log10(np.maximum(power @ filters, 1e-10)).T
    return out


# -- causal pieces for live input: the same frames, the normalisation's peak chosen by the caller ---------------


def log_mel_span(wave: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Unnormalised log10 mel frames [128, stop - start] of a clip of which `wave` holds the first samples,
    exactly as log_mel computes them. A frame needs the samples up to `frame * HOP + N_FFT // 2`; any window
    reaching past `wave` sees zeros there, which is what log_mel sees past the end of a finished clip."""
    lo, hi = start * HOP - N_FFT // 2, (stop - 1) * HOP + N_FFT // 2
    samples = np.zeros(hi - lo, dtype=np.float64)
    have = np.asarray(wave[max(lo, 0) : hi], dtype=np.float32).astype(np.float64)
    samples[max(lo, 0) - lo : max(lo, 0) - lo + len(have)] = have
    if lo < 0:  # torch.stft's reflect padding at the clip's start: sample -k is sample k
        samples[:-lo] = np.asarray(wave[1 : 1 - lo], dtype=np.float32).astype(np.float64)[::-1]
    return _log_mel_windows(np.lib.stride_tricks.sliding_window_view(samples, N_FFT)[::HOP])


def clip_frames(samples: int) -> tuple[int, int]:
    """(frames the model receives, frames log_mel's peak is taken over) for a finished clip of `samples`."""
    return -(-samples // HOP), (samples + N_FFT + HOP) // HOP + 1


def normalise_log_mel(log_spec: np.ndarray, peak: float) -> np.ndarray:
    """log_mel's normalisation with a given peak: the floor `max(peak, -10) - 8`, then (x + 4) / 4."""
    floor = max(peak, LOG_FLOOR) - 8.0
    return ((np.maximum(log_spec, floor) + 4.0) / 4.0).astype(np.float32)


def _hann_window() -> np.ndarray:
    # Periodic Hann (torch.hann_window default / transformers window_function(periodic=True)).
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)


_MEL_FILTERS: np.ndarray | None = None


def mel_filters() -> np.ndarray:
    """[201, 128] Slaney-scale, Slaney-normalised triangular filters over 0..8 kHz (librosa/Whisper)."""
    global _MEL_FILTERS
    if _MEL_FILTERS is None:
        fft_freqs = np.linspace(0, SAMPLE_RATE // 2, 1 + N_FFT // 2)
        mels = np.linspace(_hz_to_mel(0.0), _hz_to_mel(8000.0), N_MELS + 2)
        edges = _mel_to_hz(mels)
        rise = (fft_freqs[:, None] - edges[None, :-2]) / np.diff(edges)[None, :-1]
        fall = (edges[None, 2:] - fft_freqs[:, None]) / np.diff(edges)[None, 1:]
        tri = np.maximum(0.0, np.minimum(rise, fall))
        # Slaney norm: each filter has unit area so bands carry roughly constant energy.
        _MEL_FILTERS = tri * (2.0 / (edges[2:] - edges[:-2]))[None, :]
    return _MEL_FILTERS


def _hz_to_mel(hz):
    # Slaney: linear below 1 kHz (3 mels per 200 Hz), logarithmic above.
    hz = np.asarray(hz, dtype=np.float64)
    linear = 3.0 * hz / 200.0
    log = 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) * (27.0 / np.log(6.4))
    return np.where(hz >= 1000.0, log, linear)


def _mel_to_hz(mel):
    mel = np.asarray(mel, dtype=np.float64)
    linear = 200.0 * mel / 3.0
    log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
    return np.where(mel >= 15.0, log, linear)


def check_media_file(path: Path, kind: str) -> None:
    if not path.exists():
        raise InputError(f"{kind} file not found: {path}; check the path.")
    if not path.is_file():
        raise InputError(f"{kind} path is not a regular file: {path}; pass a file, not a directory.")
    if path.stat().st_size == 0:
        raise InputError(f"{kind} file is empty (0 bytes): {path}; record or export it again.")


def too_long_error(source, seconds: float) -> InputError:
    return InputError(
        f"{source} is {seconds:.1f} s long; the audio limit is {MAX_AUDIO_SECONDS} s (the model's feature "
        f"extractor would silently cut the rest). Split it into pieces of at most {MAX_AUDIO_SECONDS} s."
    )
