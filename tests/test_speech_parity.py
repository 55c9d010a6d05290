"""Speech: Talker codec tokens equal transformers' greedy Talker; token2wav equals transformers' token2wav;
the streamed waveform equals the same windows computed offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omni_edge.runtime.sampling import SamplingConfig
from omni_edge.runtime.speech import AudioChunk, SpeechOptions
from omni_edge.runtime.token2wav import Token2WavStream, full_token2wav, windowed_token2wav

GREEDY = SamplingConfig(greedy=True)


class _TalkerCaptured(Exception):
    pass


def hf_talker_codes(hf_model, prompt_ids, text_tokens, codec_tokens, speaker, media=None, use_audio_in_video=False):
    """Run transformers' full generate and capture the Talker's greedy codes (token2wav is not reached).

    The prompt gets one masked left-pad token. transformers 5.x drops an all-ones attention mask inside
    generate, and the Talker then skips its own prefill branch: no codec pad/bos embeddings on the last two
    rows and plain positions. That contradicts the model's design (transformers 4.52 and Qwen's code add
    them), so the reference is run on the branch the Talker was written for; the pad is masked out of
    every attention and position, so it changes nothing else.
    """
    captured = {}
    real_generate = hf_model.talker.generate

    def capture(*args, **kwargs):
        out = real_generate(*args, **kwargs)
        captured["codes"] = out[0, kwargs["input_ids"].shape[1] :].tolist()
        raise _TalkerCaptured

    # Pixel inputs are Thinker-only; the top-level generate hands unprefixed kwargs to the Talker too.
    media = {(f"thinker_{k}" if k.startswith("pixel_values") else k): v for k, v in (media or {}).items()}
    hf_model.talker.generate = capture
    try:
        input_ids = torch.tensor([[151643] + list(prompt_ids)])
        mask = torch.ones_like(input_ids)
        mask[0, 0] = 0
        with torch.no_grad(), pytest.raises(_TalkerCaptured):
            hf_model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                speaker=speaker,
                thinker_max_new_tokens=text_tokens,
                thinker_do_sample=False,
                talker_do_sample=False,
                talker_max_new_tokens=codec_tokens,
                use_audio_in_video=use_audio_in_video,
                **media,
            )
    finally:
        hf_model.talker.generate = real_generate
    codes = captured["codes"]
    stops = [i for i, c in enumerate(codes) if c in (8292, 8294)]
    return codes[: stops[0]] if stops else codes


def speak(session, prompt, text_tokens, codec_tokens, speaker="Chelsie", **media):
    session.reset()
    options = SpeechOptions(speaker=speaker, max_codec_tokens=codec_tokens)
    events = list(session.generate(prompt, text_tokens, GREEDY, speech=options, **media))
    return events, events[-1].result


@pytest.mark.parametrize("speaker,prompt", [("Chelsie", "Say something nice."), ("Ethan", "Count to three.")])
def test_talker_codes_match_transformers(session, hf_model, speaker, prompt):
    _events, result = speak(session, prompt, 12, 80, speaker)
    assert len(result.codec_token_ids) > 0
    expected = hf_talker_codes(hf_model, result.prompt_token_ids, 12, 80, speaker)
    assert result.codec_token_ids == expected


def test_talker_codes_match_transformers_with_an_image(session, hf_model):
    from media_cases import CASES, hf_inputs

    media = CASES["image-only"]
    _events, result = speak(session, "Describe it.", 8, 60, **media)
    expected = hf_talker_codes(hf_model, result.prompt_token_ids, 8, 60, "Chelsie", hf_inputs(**media))
    assert result.codec_token_ids == expected


def test_audio_streams_before_the_talker_finishes(session):
    events, result = speak(session, "Tell me a story.", 16, 200)
    kinds = [type(e).__name__ for e in events]
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    assert len(chunks) >= 3 and kinds.index("AudioChunk") < kinds.index("Done")
    # First chunk after 48 codes: 0.52 s of audio (72 kept frames minus the 20 held back), like the reference.
    assert len(chunks[0].samples) == 52 * 240
    total = sum(len(c.samples) for c in chunks)
    assert total == len(result.codec_token_ids) * 2 * 240
    assert result.audio_seconds == pytest.approx(total / 24000)
    assert result.first_audio_ms is not None and result.first_audio_ms < result.total_ms
    assert result.talker_stop_reason in ("eos", "max_codec_tokens")


def _speaker_and_codes(session, count, seed=0):
    speaker = session.speech().speakers["Chelsie"]
    codes = np.random.default_rng(seed).integers(0, 8192, count)
    return speaker, codes


@pytest.mark.parametrize("count", [20, 57])
def test_full_token2wav_matches_transformers(session, hf_model, count):
    speech = session.speech()
    speaker, codes = _speaker_and_codes(session, count)
    torch.manual_seed(123)
    noise = torch.randn([1, count * 2, 80])
    torch.manual_seed(123)
    with torch.no_grad():
        ref = (
            hf_model.token2wav(
                torch.tensor(codes)[None],
                conditioning=torch.tensor(speaker.cond),
                reference_mel=torch.tensor(speaker.reference_mel),
            )
            .reshape(-1)
            .numpy()
        )
    ours = full_token2wav(speech.dit, speech.bigvgan, codes, speaker, noise[0].numpy(), 8193)
    assert ours.shape == ref.shape == (count * 2 * 240,)
    # 36 DiT evaluations and the vocoder in fp32; measured ~1e-5 on the tiny model.
    np.testing.assert_allclose(ours, ref, atol=1e-3)


def test_streamed_audio_equals_offline_windows(session):
    speech = session.speech()
    speaker, codes = _speaker_and_codes(session, 130, seed=3)
    noise = np.random.default_rng(5).standard_normal((400, 80)).astype(np.float32)
    offline = windowed_token2wav(speech.dit, speech.bigvgan, codes, speaker, noise, 8193)
    stream = Token2WavStream(speech.dit, speech.bigvgan, speaker, noise, 8193)
    pieces, first_at = [], None
    for i, code in enumerate(codes):
        got = stream.push([int(code)])
        if got and first_at is None:
            first_at = i + 1
        pieces += got
    pieces += stream.finish()
    streamed = np.concatenate(pieces)
    assert first_at == 48  # (72 + 24) / 2 codes before the first window can run
    assert streamed.shape == offline.shape == (130 * 2 * 240,)
    np.testing.assert_allclose(streamed, offline, atol=1e-6)


def test_euler_solver_runs_fewer_dit_calls(session):
    speech = session.speech()
    speaker, codes = _speaker_and_codes(session, 30)
    noise = np.random.default_rng(1).standard_normal((60, 80)).astype(np.float32)
    calls = {"n": 0}
    real_run = speech.dit.run

    def counting(feeds):
        calls["n"] += 1
        return real_run(feeds)

    speech.dit.run = counting
    try:
        rk4 = full_token2wav(speech.dit, speech.bigvgan, codes, speaker, noise, 8193, solver="rk4")
        rk4_calls, calls["n"] = calls["n"], 0
        euler = full_token2wav(speech.dit, speech.bigvgan, codes, speaker, noise, 8193, solver="euler")
    finally:
        speech.dit.run = real_run
    assert (rk4_calls, calls["n"]) == (36, 9)
    assert euler.shape == rk4.shape and np.isfinite(euler).all()
