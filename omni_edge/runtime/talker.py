"""The Talker: dual-track input assembly, codec sampling, and the streaming hand-off to token2wav.

Input rules follow transformers' Qwen2.5-Omni generate (reference doc section 4.3): the prompt track is
X(p) = H_last(p) + E(p) (E zeroed at media placeholders), then E(speaker bos) + C(pad) and Y_0 + C(bos),
where Y_k = H_last(r_k) + E(r_k) for the generated text. Decode step j reads C(c_{j-1}) + Y_j while text
lasts, then E(text eos) once and E(text pad) from then on. Each step needs only Y_j, so the Talker runs
one step behind the Thinker instead of waiting for the whole reply.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from omni_edge import naming
from omni_edge.bundle import TalkerInfo
from omni_edge.runtime.embedding_table import EmbeddingTable
from omni_edge.runtime.engine import Engine
from omni_edge.runtime.kv_cache import KVCacheBase, new_kv_cache
from omni_edge.runtime.sampling import SamplingConfig, sample_token

# transformers' generate defaults for the Talker (do_sample, top_k 40, top_p 0.8, temperature 0.9, rep 1.05)
DEFAULT_TALKER_SAMPLING = SamplingConfig(temperature=0.9, top_k=40, top_p=0.8, repetition_penalty=1.05)
GREEDY_TALKER_SAMPLING = SamplingConfig(greedy=True, repetition_penalty=1.05)


@dataclass
class TalkerTurn:
    """State of one spoken reply."""

    history: list[int]  # ids seen by the repetition penalty, as in the reference: masks, pad, bos, codes
    codes: list[int]
    max_codec_tokens: int
    text_done: bool = False
    eos_sent: bool = False
    finished: bool = False
    stop_reason: str = ""


class Talker:
    def __init__(
        self,
        info: TalkerInfo,
        decoder: Engine,
        codec_table: EmbeddingTable | np.ndarray,
        thinker_embeddings: EmbeddingTable | np.ndarray,
        cache: KVCacheBase,
    ):
        self.info = info
        self.decoder = decoder
        self.codec_table = codec_table
        self.thinker_embeddings = thinker_embeddings
        self.cache = cache
        self._next_position = 0

    def rows_needed(self, prompt_rows: int, max_codec_tokens: int) -> int:
        """Cache slots a spoken reply takes: its prompt track, the speaker and bos rows, the codec tokens."""
        return prompt_rows + 2 + max_codec_tokens

    def _run(self, embeds: np.ndarray, positions: np.ndarray) -> np.ndarray:
        feeds = {"inputs_embeds": embeds[None].astype(np.float32), "position_ids": positions}
        outputs = self.cache.run(self.decoder, feeds)
        self._next_position = int(positions.max()) + 1
        return outputs["logits"][0, -1]

    def start(
        self,
        prompt_track: np.ndarray,
        prompt_positions: np.ndarray,
        speaker_bos: int,
        first_reply: np.ndarray,
        sampling: SamplingConfig,
        rng,
        max_codec_tokens: int,
    ) -> TalkerTurn:
        """Prefill over the whole conversation prompt plus the two speaker/bos rows; returns c_0."""
        info = self.info
        self.cache.reset()
        rows = np.concatenate(
            [
                prompt_track,
                (self.thinker_embeddings[speaker_bos] + self.codec_table[info.codec_pad_token_id])[None],
                (first_reply + self.codec_table[info.codec_bos_token_id])[None],
            ]
        )
        # The two extra rows are text tokens: ids max+1 and max+2 after the prompt's TMRoPE ids.
        tail = np.broadcast_to(np.arange(1, 3) + prompt_positions.max(), (3, 1, 2))
        positions = np.concatenate([prompt_positions, tail], axis=2)
        self.cache.check_room(
            self.rows_needed(len(prompt_track), max_codec_tokens), "the spoken reply (prompt + codec tokens)"
        )
        turn = TalkerTurn(
            history=[info.codec_mask_token_id] * len(prompt_track) + [info.codec_pad_token_id, info.codec_bos_token_id],
            codes=[],
            max_codec_tokens=max_codec_tokens,
        )
        self._sample(turn, self._run(rows, positions), sampling, rng)
        return turn

    def step(self, turn: TalkerTurn, text_row: np.ndarray | None, sampling: SamplingConfig, rng) -> None:
        """One codec token. `text_row` is Y_j, or None once the Thinker has finished."""
        if turn.finished:
            return
        info = self.info
        if text_row is None:
            token = info.text_pad_token_id if turn.eos_sent else info.text_eos_token_id
            turn.eos_sent = True
            text_row = self.thinker_embeddings[token]
        row = self.codec_table[turn.codes[-1]] + text_row
        positions = np.full((3, 1, 1), self._next_position, dtype=np.int64)
        self._sample(turn, self._run(row[None], positions), sampling, rng)

    def _sample(self, turn: TalkerTurn, logits: np.ndarray, sampling: SamplingConfig, rng) -> None:
        logits = logits.copy()
        logits[self.info.codec_bos_token_id] = -np.inf  # the reference suppresses bos
        token = sample_token(logits, np.asarray(turn.history, dtype=np.int64), sampling, rng)
        turn.history.append(token)
        if token in self.info.stop_token_ids:
            turn.finished, turn.stop_reason = True, "eos"
        elif len(turn.codes) + 1 >= turn.max_codec_tokens:
            turn.codes.append(token)
            turn.finished, turn.stop_reason = True, "max_codec_tokens"
        else:
            turn.codes.append(token)


def open_talker(bundle_dir, manifest, open_engine, thinker_embeddings, files: dict[str, str] | None) -> Talker:
    info = manifest.talker
    codec = EmbeddingTable(bundle_dir, files, info.codec_embedding_file)
    return Talker(
        info,
        open_engine(naming.TALKER_DECODER),
        codec,
        thinker_embeddings,
        new_kv_cache(manifest.backend, info.kv_cache, manifest.components[naming.TALKER_DECODER].shared_kv_buffer),
    )
