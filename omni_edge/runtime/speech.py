"""Speech for one reply: Talker steps driven by the Thinker's text rows, token2wav streamed behind them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from omni_edge import naming
from omni_edge.bundle import Token2WavInfo
from omni_edge.bundle_trust import read_table
from omni_edge.errors import BundleError, InputError
from omni_edge.runtime.conversation import TalkerTrack
from omni_edge.runtime.sampling import SamplingConfig
from omni_edge.runtime.talker import GREEDY_TALKER_SAMPLING, Talker, TalkerTurn, open_talker
from omni_edge.runtime.token2wav import Speaker, StreamWindows, Token2WavStream

DEFAULT_MAX_CODEC_TOKENS = 2048  # ~41 s of speech at 50 codes/s


@dataclass(frozen=True)
class SpeechOptions:
    speaker: str = "Chelsie"
    sampling: SamplingConfig = GREEDY_TALKER_SAMPLING
    max_codec_tokens: int = DEFAULT_MAX_CODEC_TOKENS
    solver: str = "rk4"  # or "euler": 9 DiT evaluations per window instead of 36
    noise_seed: int = 0


@dataclass(frozen=True)
class AudioChunk:
    samples: np.ndarray  # float32 mono
    sample_rate: int
    index: int


def stream_windows(info: Token2WavInfo) -> StreamWindows:
    """Whole DiT blocks of the checkpoint's own block_size, as recorded in the manifest at export."""
    return StreamWindows.for_dit(info.block_size, info.look_back_blocks, info.look_ahead_blocks, info.repeats)


def load_speakers(bundle_dir, manifest, files: dict[str, str] | None) -> dict[str, Speaker]:
    """`files`: the manifest's hashes to check the table against (None: the export's own staging bundle)."""
    tables = read_table(bundle_dir, files, manifest.talker.speakers_file)
    return {
        name: Speaker(name, bos, tables[f"{name}.cond"], tables[f"{name}.ref_mel"])
        for name, bos in manifest.talker.speakers.items()
    }


class SpeechPipeline:
    """The Talker, DiT and BigVGAN of a bundle, opened once per session; `begin` starts one spoken reply."""

    def __init__(self, bundle_dir, manifest, open_engine, thinker_embeddings, files: dict[str, str] | None):
        if manifest.talker is None or manifest.token2wav is None:
            raise BundleError(
                f"bundle {bundle_dir} has no speech components (talker, dit, bigvgan); re-export it without "
                "--components, or with --components talker,dit,bigvgan"
            )
        self.info = manifest.token2wav
        self.speakers = load_speakers(bundle_dir, manifest, files)
        self.talker = open_talker(bundle_dir, manifest, open_engine, thinker_embeddings, files)
        self.dit = open_engine(naming.DIT_WINDOW)
        self.bigvgan = open_engine(naming.BIGVGAN_WINDOW)

    def check(self, options: SpeechOptions, prompt_rows: int) -> None:
        """Everything about the options that can be wrong, before any generation starts; `prompt_rows` is the
        Talker prompt the reply will have (every token the Thinker will have fed before the reply's first)."""
        if options.speaker not in self.speakers:
            raise InputError(f"unknown speaker {options.speaker!r}; available: {', '.join(sorted(self.speakers))}")
        if options.max_codec_tokens < 1:
            raise InputError("--max-codec-tokens must be at least 1")
        if options.solver not in ("rk4", "euler"):
            raise InputError(f"unknown ODE solver {options.solver!r}; use rk4 or euler")
        options.sampling.validate()
        # Checked here, not when the Talker starts: by then the reply's text is already streaming. The Talker's
        # cache is reset for every reply, so the previous reply's rows do not count.
        self.talker.cache.check_room(
            self.talker.rows_needed(prompt_rows, options.max_codec_tokens),
            f"a spoken reply of up to {options.max_codec_tokens} codec tokens (--max-codec-tokens) after this "
            f"conversation's {prompt_rows} tokens",
            from_empty=True,
        )

    def begin(self, options: SpeechOptions, track: TalkerTrack, first_row: int) -> SpokenReply:
        """A spoken reply whose Talker prompt is the track's rows before `first_row`, the row of the reply's
        first text token (options were checked when the turn was handed over)."""
        frames = options.max_codec_tokens * self.info.repeats
        # One noise draw for the whole utterance, sliced per window, as the reference does.
        noise = np.random.default_rng(options.noise_seed).standard_normal((frames, self.info.mel_dim))
        speaker = self.speakers[options.speaker]
        stream = Token2WavStream(
            self.dit,
            self.bigvgan,
            speaker,
            noise.astype(np.float32),
            self.info.num_code_embeddings,
            self.info.repeats,
            self.info.samples_per_frame,
            options.solver,
            windows=stream_windows(self.info),
        )
        return SpokenReply(self.talker, stream, speaker, options, track, first_row, self.info.sample_rate)


class SpokenReply:
    """The Talker one step behind the Thinker, token2wav streamed behind the Talker.

    Talker step j needs Y_j, the track row of the reply's j-th text token, which exists once the Thinker has
    fed that token: so after every Thinker forward, `follow` runs one Talker step per new row."""

    def __init__(
        self,
        talker: Talker,
        stream: Token2WavStream,
        speaker: Speaker,
        options: SpeechOptions,
        track: TalkerTrack,
        first_row: int,
        sample_rate: int,
    ):
        self.talker, self.stream, self.speaker, self.options = talker, stream, speaker, options
        self.track = track
        self.first_row = first_row  # track index of Y_0
        self.sample_rate = sample_rate
        self.turn: TalkerTurn | None = None
        self.chunks_emitted = 0
        self.samples_emitted = 0
        self._rows_read = first_row
        self._rng = np.random.default_rng(options.noise_seed + 1)

    @property
    def codes(self) -> list[int]:
        return self.turn.codes if self.turn else []

    def follow(self) -> Iterator[AudioChunk]:
        """One Talker step per text row the Thinker has added since the last call."""
        while self._rows_read < self.track.length:
            row = self.track.row(self._rows_read)
            self._rows_read += 1
            yield from self._on_text_row(row)

    def _on_text_row(self, row: np.ndarray) -> list[AudioChunk]:
        """Y_j of the reply's j-th text token (j = 0, 1, ...): one Talker step."""
        before = len(self.codes)
        if self.turn is None:
            self.turn = self.talker.start(
                self.track.rows(0, self.first_row),
                self.track.positions(self.first_row),
                self.speaker.bos_token_id,
                row,
                self.options.sampling,
                self._rng,
                self.options.max_codec_tokens,
            )
        else:
            self.talker.step(self.turn, row, self.options.sampling, self._rng)
        return self._audio(self.stream.push(self.codes[before:]))

    def finish(self) -> Iterator[AudioChunk]:
        """The Thinker is done: the Talker reads text eos, then pads, until it stops; flush the stream."""
        if self.turn is None:
            return  # the reply had a single token: the reference has no Talker input either
        while not self.turn.finished:
            before = len(self.codes)
            self.talker.step(self.turn, None, self.options.sampling, self._rng)
            yield from self._audio(self.stream.push(self.codes[before:]))
        yield from self._audio(self.stream.finish())

    def _audio(self, pieces: list[np.ndarray]) -> list[AudioChunk]:
        out = []
        for samples in pieces:
            out.append(AudioChunk(samples, self.sample_rate, self.chunks_emitted))
            self.chunks_emitted += 1
            self.samples_emitted += len(samples)
        return out
