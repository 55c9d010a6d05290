"""numpy audio front end vs transformers' WhisperFeatureExtractor, and the errors a user can cause.

Tolerances (log-mel values lie in about [-1.5, 1.5]):
* vs the extractor's numpy path (float64 STFT, what we reimplement): atol 1e-6, measured <= 1.2e-7.
* vs the extractor's __call__ (torch installed -> float32 torch.stft): atol 2e-5 for clips up to 7 s,
  measured <= 9.5e-6 (sine) / 6.7e-6 (noise); float32 STFT noise grows with length, 3.9e-5 at 300 s.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
import soundfile as sf
from no_torch import run_without_torch
from transformers import WhisperFeatureExtractor

from omni_edge.errors import InputError
from omni_edge.runtime.audio_frontend import MAX_AUDIO_SECONDS, load_audio, log_mel, mel_filters

SR = 16_000
CALL_ATOL = 2e-5
NUMPY_ATOL = 1e-6


@pytest.fixture(scope="module")
def extractor():
    return WhisperFeatureExtractor(feature_size=128, sampling_rate=SR, hop_length=160, n_fft=400, chunk_length=300)


def _reference(extractor, wave):
    # Exactly what Qwen2.5-Omni's processor does, then the model's feature_attention_mask selection.
    out = extractor(wave, sampling_rate=SR, padding="max_length", return_attention_mask=True, return_tensors="np")
    return out["input_features"][0][:, out["attention_mask"][0].astype(bool)]


def _wave(kind: str, seconds: float) -> np.ndarray:
    n = int(seconds * SR)
    if kind == "noise":
        return (np.random.default_rng(int(seconds * 10)).standard_normal(n) * 0.1).astype(np.float32)
    return (0.5 * np.sin(2 * np.pi * 440.0 * np.arange(n) / SR)).astype(np.float32)


def test_mel_filters_equal_transformers(extractor):
    np.testing.assert_allclose(mel_filters(), extractor.mel_filters, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seconds", [1.0, 2.5, 7.0])
@pytest.mark.parametrize("kind", ["noise", "sine"])
def test_log_mel_matches_whisper_extractor(extractor, kind, seconds):
    wave = _wave(kind, seconds)
    ours, ref = log_mel(wave), _reference(extractor, wave)
    assert ours.dtype == np.float32 and ours.shape == ref.shape == (128, int(np.ceil(len(wave) / 160)))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=CALL_ATOL)


def test_log_mel_matches_numpy_path_exactly(extractor):
    wave = _wave("sine", 2.5)
    padded = np.zeros((1, extractor.n_samples), np.float32)
    padded[0, : len(wave)] = wave
    ref = extractor._np_extract_fbank_features(padded, "cpu")[0][:, :250]
    np.testing.assert_allclose(log_mel(wave), ref, rtol=0, atol=NUMPY_ATOL)


@pytest.mark.parametrize("samples", [1, 37, 161, 16_001])
def test_log_mel_odd_lengths_and_tail_transient(extractor, samples):
    # A loud click in the last samples: the frame after the last valid one sees it too, and the
    # reference's max(x) - 8 floor is taken over all frames, valid or not.
    wave = (np.random.default_rng(samples).standard_normal(samples) * 1e-4).astype(np.float32)
    wave[-min(30, samples) :] = 1.0
    np.testing.assert_allclose(log_mel(wave), _reference(extractor, wave), rtol=0, atol=CALL_ATOL)


def test_log_mel_of_silence_is_the_floor(extractor):
    wave = np.zeros(SR, np.float32)
    np.testing.assert_array_equal(log_mel(wave), _reference(extractor, wave))


@pytest.mark.parametrize(
    "wave, words",
    [
        (np.zeros(0, np.float32), "0 samples"),
        (np.zeros((2, 100), np.float32), "1-D"),
        (np.zeros(MAX_AUDIO_SECONDS * SR + 1, np.float32), f"{MAX_AUDIO_SECONDS} s"),
        (np.full(100, np.nan, np.float32), "NaN"),
    ],
)
def test_log_mel_rejects_bad_waveforms(wave, words):
    with pytest.raises(InputError, match=words):
        log_mel(wave)


def test_load_16k_mono_is_passthrough(tmp_path):
    wave = _wave("noise", 1.0)
    sf.write(tmp_path / "a.wav", wave, SR, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(tmp_path / "a.wav"), wave)


def test_load_resamples_and_downmixes(tmp_path):
    rate, seconds = 44_100, 1.0
    t = np.arange(int(rate * seconds)) / rate
    stereo = np.stack([0.6 * np.sin(2 * np.pi * 1000 * t), 0.2 * np.sin(2 * np.pi * 1000 * t)], axis=1)
    sf.write(tmp_path / "s.flac", stereo, rate, subtype="PCM_24")
    out = load_audio(tmp_path / "s.flac")
    assert out.dtype == np.float32 and out.shape == (int(np.ceil(len(t) * SR / rate)),)
    # librosa's recipe: mean of channels, then soxr HQ. Away from the edges it is the 16 kHz sine.
    expected = 0.4 * np.sin(2 * np.pi * 1000 * np.arange(len(out)) / SR)
    np.testing.assert_allclose(out[200:-200], expected[200:-200], atol=2e-3)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_audio(tmp_path / "nope.wav")


def test_zero_byte_file(tmp_path):
    (tmp_path / "z.wav").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        load_audio(tmp_path / "z.wav")


def test_wav_with_no_samples(tmp_path):
    sf.write(tmp_path / "e.wav", np.zeros(0, np.float32), SR)
    with pytest.raises(InputError, match="no audio samples"):
        load_audio(tmp_path / "e.wav")


def test_corrupt_file(tmp_path):
    (tmp_path / "c.wav").write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(InputError, match="cannot decode audio file .*c.wav.*ffmpeg"):
        load_audio(tmp_path / "c.wav")


def test_unsupported_sample_format(tmp_path):
    # A well-formed RIFF/WAVE header for 64-bit integer PCM, a sample format libsndfile does not implement.
    data = b"\x00" * 800
    fmt = struct.pack("<HHIIHH", 1, 1, SR, SR * 8, 8, 64)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    (tmp_path / "u.wav").write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    with pytest.raises(InputError, match="u.wav.*unimplemented format.*ffmpeg"):
        load_audio(tmp_path / "u.wav")


def test_too_long(tmp_path):
    # 301 s at 1 kHz keeps the file small; the limit is on duration.
    sf.write(tmp_path / "long.wav", np.zeros(301_000, np.int16), 1000)
    with pytest.raises(InputError, match=f"limit is {MAX_AUDIO_SECONDS} s"):
        load_audio(tmp_path / "long.wav")


def test_broken_container_is_refused_in_one_line(tmp_path):
    # A container goes to PyAV for its sound track (tests/test_media_bounds.py); garbage is named, not traced.
    (tmp_path / "v.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(InputError, match="cannot open audio .*v.mp4"):
        load_audio(tmp_path / "v.mp4")


def test_front_ends_run_without_torch(tmp_path):
    sf.write(tmp_path / "a.wav", _wave("sine", 0.5), SR)
    run_without_torch(
        "import numpy as np\n"
        "from omni_edge.runtime.audio_frontend import load_audio, log_mel\n"
        "from omni_edge.runtime.vision_frontend import preprocess_image, preprocess_video\n"
        f"assert log_mel(load_audio({str(tmp_path / 'a.wav')!r})).shape == (128, 50)\n"
        "assert preprocess_image(np.zeros((56, 56, 3), np.uint8))[0].shape == (16, 1176)\n"
        "assert preprocess_video(np.zeros((2, 40, 40, 3), np.uint8), 2.0)[2] == 1.0\n"
        "print('ok')\n",
        timeout=120,
    )
