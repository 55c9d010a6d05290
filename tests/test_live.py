"""Live input (omni_edge.live): block-wise prefill against the whole-clip path, the causal log-mel rule,
the VAD's turn-taking, and barge-in against a fresh replay of the conversation as it was heard.

The speech is real (tests/data: espeak-ng, see tests/data/README.md), fed in 20 ms chunks; the model is the
tiny bundle, through the real encoders and decoder graphs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from omni_edge.live import CausalLogMel, LiveConversation, LiveOptions, LiveTurn, VoiceActivity
from omni_edge.live.loop import BargeIn, SpeechStarted, TurnEnded
from omni_edge.runtime.audio_frontend import clip_frames, load_audio, log_mel, log_mel_span
from omni_edge.runtime.conversation import Turn
from omni_edge.runtime.sampling import SamplingConfig
from omni_edge.runtime.session import Done, Session, TextDelta
from omni_edge.runtime.speech import AudioChunk, SpeechOptions

DATA = Path(__file__).parent / "data"
GREEDY = SamplingConfig(greedy=True)
CHUNK = 320  # 20 ms


@pytest.fixture(scope="module")
def question() -> np.ndarray:
    return load_audio(DATA / "speech_question.wav")


@pytest.fixture(scope="module")
def interrupt() -> np.ndarray:
    return load_audio(DATA / "speech_interrupt.wav")


def result(events) -> Done:
    return next(e for e in events if isinstance(e, Done))


def feed(turn: LiveTurn, audio: np.ndarray) -> None:
    for start in range(0, len(audio), CHUNK):
        turn.add_audio(audio[start : start + CHUNK])


def peak(audio: np.ndarray) -> float:
    return float(log_mel_span(audio, 0, clip_frames(len(audio))[1]).max())


# -- the causal log-mel ----------------------------------------------------------------------------------
@pytest.mark.parametrize("samples", [32_039, 32_040, 64_000, 103_668])
def test_causal_mel_frames_are_exact_and_only_the_floor_moves(question, samples):
    audio = question[:samples]
    mel = CausalLogMel(200)
    blocks = [b for start in range(0, len(audio), CHUNK) for b in mel.add(audio[start : start + CHUNK])]
    live = np.concatenate([*blocks, mel.finish()], axis=1)
    reference = log_mel(audio)
    assert live.shape == reference.shape
    floor = (max(peak(audio), -10.0) - 8.0 + 4.0) / 4.0  # the reference's floor, normalised
    # Running max: a block's floor is at most the clip's, so values above the clip's floor are exact.
    above = reference > floor
    np.testing.assert_array_equal(live[above], reference[above])
    assert np.all(live[~above] <= reference[~above])  # below it, a lower floor lets quieter values through
    last = mel.blocks * 200
    np.testing.assert_array_equal(live[:, last:], reference[:, last:])  # the last block has the final floor
    # With the clip's peak known up front (an oracle) every value is the reference's.
    oracle = CausalLogMel(200)
    oracle.peak = peak(audio)
    blocks = [b for start in range(0, len(audio), CHUNK) for b in oracle.add(audio[start : start + CHUNK])]
    np.testing.assert_array_equal(np.concatenate([*blocks, oracle.finish()], axis=1), reference)


# -- block-wise prefill against the whole clip ------------------------------------------------------------
def test_live_turn_has_the_whole_clip_ids_and_tmrope_positions(session, question):
    first = result(session.generate("Hi", 3, GREEDY))
    assert first.result.text_token_ids
    offline = session.conversation.user_turn(session.media_parts(audio=[question]) + ["Answer briefly."])
    turn = LiveTurn(session, "Answer briefly.")
    feed(turn, question)
    assert turn.blocks_prefilled == 3  # 6.5 s: three 2 s blocks while the user spoke, the rest at the end
    stream = turn.reply(2, GREEDY)
    live = Turn(
        turn.fed_ids,
        np.concatenate([p.embeds for p in turn.fed]),
        np.concatenate([p.positions for p in turn.fed], axis=2),
    )
    assert live.ids == offline.ids  # pending token, <|im_end|>, template, placeholders: one tokenization
    np.testing.assert_array_equal(live.positions, offline.positions)
    assert offline.ids[0] == first.result.text_token_ids[-1]  # the previous reply's last token comes first
    result(stream)


def test_live_reply_equals_the_whole_clip_reply_with_the_clip_peak(session, question, interrupt):
    """The block-wise pipeline is exact: with the reference's floor it gives the whole-clip greedy reply
    token for token. The running-max rule's own effect is measured in bench (live agreement)."""
    for audio in (question, interrupt):
        session.reset()
        offline = result(session.generate("", 24, GREEDY, audio=[audio])).result
        session.reset()
        turn = LiveTurn(session)
        turn.mel.peak = peak(audio)
        feed(turn, audio)
        live = result(turn.reply(24, GREEDY)).result
        assert turn.fed_ids == offline.prompt_token_ids
        assert live.text_token_ids == offline.text_token_ids


# -- turn-taking -------------------------------------------------------------------------------------------
def test_vad_opens_one_turn_and_ends_it_after_the_silence(question):
    vad = VoiceActivity(end_ms=600)
    audio = np.concatenate([np.zeros(8_000, np.float32), question, np.zeros(24_000, np.float32)])
    events = [e for start in range(0, len(audio), CHUNK) for e in vad.push(audio[start : start + CHUNK])]
    assert [e.kind for e in events] == ["start", "end"]
    assert 8_000 <= events[0].sample <= 8_000 + 16_000 // 2
    assert events[1].sample - vad.last_voiced == 600 * 16
    assert vad.last_voiced <= 8_000 + len(question)


def test_live_conversation_prefills_while_the_user_speaks(session, question):
    live = LiveConversation(session, LiveOptions(max_new_tokens=4, sampling=GREEDY))
    audio = np.concatenate([np.zeros(8_000, np.float32), question, np.zeros(16_000, np.float32)])
    events = []
    for start in range(0, len(audio), CHUNK):
        events += live.feed_audio(audio[start : start + CHUNK])
        if live.reply_ready:
            break
    started, ended = events
    assert isinstance(started, SpeechStarted) and isinstance(ended, TurnEnded)
    assert ended.blocks_prefilled == 3 and session.conversation.length > 150  # in the cache before the reply
    reply = list(live.reply())
    assert isinstance(reply[-1], Done) and reply[-1].result.finish_reason in ("eos", "length")


# -- barge-in ---------------------------------------------------------------------------------------------
def spy(session: Session) -> list[Turn]:
    """Every Turn the session's Thinker is fed (the real forward runs)."""
    fed: list[Turn] = []
    forward = session.thinker.forward

    def recording(turn):
        fed.append(turn)
        return forward(turn)

    session.thinker.forward = recording  # type: ignore[method-assign]
    return fed


def concat(turns: list[Turn]) -> Turn:
    return Turn(
        [i for t in turns for i in t.ids],
        np.concatenate([t.embeds for t in turns]),
        np.concatenate([t.positions for t in turns], axis=2),
    )


@pytest.mark.parametrize("spoken", [True, False])
def test_barge_in_stops_within_one_chunk_and_the_next_turn_is_a_replay_of_what_was_heard(
    cpu_bundle, session, question, interrupt, spoken
):
    speech = SpeechOptions(solver="euler", max_codec_tokens=160) if spoken else None
    live_session = Session(cpu_bundle, threads=1)
    fed = spy(live_session)
    live = LiveConversation(live_session, LiveOptions(max_new_tokens=40, sampling=GREEDY, speech=speech))
    mic = iter([question[i : i + CHUNK] for i in range(0, len(question), CHUNK)] + [np.zeros(CHUNK, np.float32)] * 50)
    while not live.reply_ready:
        live.feed_audio(next(mic))
    barging = iter([interrupt[i : i + CHUNK] for i in range(0, len(interrupt), CHUNK)])
    after_barge, played, shown, cut_short = [], 0, 0, False
    second_turn = None
    for event in live.reply():
        if cut_short:
            after_barge.append(event)
            second_turn = live.turn  # the interruption, already the next user turn
            continue
        if isinstance(event, TextDelta):
            shown += 1
        if isinstance(event, AudioChunk) or (not spoken and shown == 8):
            played += len(event.samples) if isinstance(event, AudioChunk) else 0
            while not live.barged:  # the user speaks over this chunk
                live.feed_audio(next(barging))
            cut_short = True
    assert len(after_barge) == 1 and isinstance(after_barge[0], BargeIn)  # nothing after the VAD's decision
    barge = after_barge[0]
    if not spoken:  # a text reply keeps what was shown: every token sampled (the 8th stays pending)
        assert barge.kept_tokens == barge.generated_tokens == 8
    else:  # a spoken one what was heard
        assert barge.kept_tokens < barge.generated_tokens
        info = live_session.manifest.token2wav
        assert barge.heard_samples == played and barge.kept_tokens <= played // (info.repeats * info.samples_per_frame)
    cut = live_session.conversation.length
    assert live_session.cache.length == cut
    # The second turn: the rest of the interruption, then silence until the VAD ends it.
    for chunk in [*barging, *[np.zeros(CHUNK, np.float32)] * 60]:
        live.feed_audio(chunk)
        if live.reply_ready:
            break
    assert second_turn is not None and live.reply_ready
    live_reply = result(live.reply()).result
    # A fresh session fed the conversation as heard, in one piece, then the same second turn.
    ends = np.cumsum([len(t.ids) for t in fed])
    heard = concat(fed[: int(np.searchsorted(ends, cut, side="right"))])
    assert len(heard.ids) == cut
    session.prefill(heard)
    assert session.conversation.user_turn_ids((), None)[:1] == [session.tokenizer.im_end_id]
    second = second_turn.fed
    for piece in second[:-1]:
        session.prefill(piece)
    tail = second[-1]
    replay = session.generate_from_ids(
        tail.ids, 40, GREEDY, embeds=tail.embeds, positions=tail.positions, speech=speech
    )
    replay = result(replay).result
    assert replay.text_token_ids == live_reply.text_token_ids
    assert replay.codec_token_ids == live_reply.codec_token_ids
    live_session.close()


# -- camera ------------------------------------------------------------------------------------------------
def camera_clip(seconds: float, fps: float = 30.0) -> list[tuple[float, np.ndarray]]:
    """A 64x48 camera at `fps`: a bright square moving across a gradient (timestamps in seconds)."""
    frames = []
    for k in range(int(seconds * fps) + 1):
        frame = np.tile(np.linspace(0, 200, 64, dtype=np.uint8)[None, :, None], (48, 1, 3))
        x = int(k * 50 / (seconds * fps))
        frame[10:30, x : x + 14] = [255, 40, 40]
        frames.append((k / fps, frame))
    return frames


def test_live_camera_turn_is_the_whole_clip_with_its_sound_track(session, question):
    """Camera and microphone together: per 2 s chunk its frames' tokens, then its audio tokens, with the ids
    of rope_index for a video with its own audio (use_audio_in_video), and the same greedy reply."""
    if "vision_encoder" not in session.manifest.components:
        pytest.skip("the bundle has no vision_encoder")
    camera = camera_clip(len(question) / 16_000)
    turn = LiveTurn(session, "What do you see?", camera=True)
    turn.mel.peak = peak(question)  # the reference's floor: this test checks the layout, not the mel rule
    shown = 0
    for start in range(0, len(question), CHUNK):
        turn.add_audio(question[start : start + CHUNK])
        now = (start + CHUNK) / 16_000
        while shown < len(camera) and camera[shown][0] <= now:
            turn.add_frame(camera[shown][1], camera[shown][0])
            shown += 1
    assert turn.blocks_prefilled == 3
    live = result(turn.reply(16, GREEDY)).result
    frames = np.stack(turn.frames[: int(np.ceil(len(question) / 16_000 * 2))])
    assert len(frames) == 13  # 2 fps over 6.5 s; the odd one is repeated by the processor, live and offline
    session.reset()
    video = (frames, 2.0, question)
    parts = session.media_parts(videos=[video], use_audio_in_video=True) + ["What do you see?"]
    offline_turn = session.conversation.user_turn(parts)
    fed = concat(turn.fed)
    assert fed.ids == offline_turn.ids
    np.testing.assert_array_equal(fed.positions, offline_turn.positions)
    np.testing.assert_allclose(fed.embeds, offline_turn.embeds, rtol=1e-5, atol=1e-5)
    offline = result(session.generate("What do you see?", 16, GREEDY, videos=[video], use_audio_in_video=True))
    assert live.text_token_ids == offline.result.text_token_ids


def test_truncate_is_refused_inside_a_fed_turn(session):
    from omni_edge.errors import InputError

    result(session.generate("Hello there", 4, GREEDY))
    prompt = session.conversation._marks[0][0]  # the first user turn, fed in one piece
    with pytest.raises(InputError, match="not the end of a fed turn"):
        session.conversation.truncate(prompt - 1)
    session.conversation.truncate(prompt)
    assert session.conversation.length == prompt and session.conversation.turn_open


def test_live_bench_and_soak_run(cpu_bundle):
    from omni_edge.live.bench import live_bench
    from omni_edge.live.soak import soak

    report = live_bench(cpu_bundle, DATA / "speech_question.wav", 1, 4, False, 1)
    assert report["end_of_speech_to_first_text_ms"]["live"] > 0 and report["blocks_prefilled_while_speaking"] == 3
    assert 0 < report["mel_values_changed"] < 0.5
    curve = soak(cpu_bundle, 0.4, DATA / "speech_question.wav", DATA / "speech_interrupt.wav", 1, 1500)["curve"]
    assert {"done", "barge-in"} <= {row["ended_by"] for row in curve}
