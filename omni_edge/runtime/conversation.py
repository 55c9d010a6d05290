"""What a conversation has fed the Thinker so far, and how the next user turn continues it.

    turn = conversation.user_turn(parts, system)   # ids, embeddings (media spliced in), TMRoPE ids
    ... the Thinker feeds it, then each sampled token ...
    conversation.fed(turn, hidden)                 # after every forward: cache, positions, Talker track
    conversation.sampled(token) / .closed()        # the reply's last token waits to be fed by the next turn

The state changes only in `fed`, `sampled` and `closed`, each right after the step it records, so a caller
that stops reading a reply at any event leaves a conversation the next turn continues correctly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from omni_edge.bundle import MediaInfo
from omni_edge.errors import InputError
from omni_edge.runtime.chat import Message, Segment, TextTokenizer, chat_segments, user_turn_segments
from omni_edge.runtime.embedding_table import EmbeddingTable
from omni_edge.runtime.positions import text_positions
from omni_edge.runtime.prompt import ImagePart, Part, VideoPart, audio_sequence, splice_features, user_segments
from omni_edge.runtime.tmrope import SpecialTokens, rope_index


@dataclass(frozen=True)
class Turn:
    """Tokens to feed the Thinker in one forward: a user turn, or one sampled token."""

    ids: list[int]
    embeds: np.ndarray  # [n, hidden]: token embeddings, media features spliced in at their placeholders
    positions: np.ndarray  # [3, 1, n] TMRoPE ids


class TalkerTrack:
    """Per token the Thinker has fed: H_last + E (E zeroed at media placeholders, as the reference feeds the
    Talker) and its TMRoPE ids. A spoken reply's Talker prompt is the whole conversation, so text-only turns
    add rows too; bundles without speech keep none."""

    def __init__(self, placeholder_ids: np.ndarray):
        self._placeholders = placeholder_ids
        self._rows: list[np.ndarray] = []
        self._positions: list[np.ndarray] = []
        self.length = 0

    def append(self, turn: Turn, hidden: np.ndarray) -> None:
        text_embeds = np.where(np.isin(np.asarray(turn.ids), self._placeholders)[:, None], 0, turn.embeds)
        self._rows.append(hidden + text_embeds)
        self._positions.append(turn.positions)
        self.length += len(turn.ids)

    def rows(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        return np.concatenate(self._rows)[start:stop]

    def row(self, index: int) -> np.ndarray:
        """One row without joining the track: found from the end, where a reply reads."""
        end = self.length
        for chunk in reversed(self._rows):
            if index >= end - len(chunk):
                return chunk[index - end + len(chunk)]
            end -= len(chunk)
        raise IndexError(index)

    def positions(self, stop: int) -> np.ndarray:
        return np.concatenate(self._positions, axis=2)[:, :, :stop]

    def truncate(self, length: int) -> None:
        """Keep the first `length` rows (a reply cut short by barge-in)."""
        rows, positions, kept = [], [], 0
        for chunk, ids in zip(self._rows, self._positions):
            if kept >= length:
                break
            take = min(len(chunk), length - kept)
            rows.append(chunk[:take])
            positions.append(ids[:, :, :take])
            kept += take
        self._rows, self._positions, self.length = rows, positions, kept

    def clear(self) -> None:
        self._rows, self._positions, self.length = [], [], 0


class Conversation:
    def __init__(
        self, tokenizer: TextTokenizer, embeddings: EmbeddingTable | np.ndarray, media: MediaInfo, speech: bool
    ):
        self.tokenizer = tokenizer
        self.embeddings = embeddings  # [vocab, hidden] Thinker token embeddings
        self.media = media
        placeholders = np.asarray([media.audio_token_id, media.image_token_id, media.video_token_id])
        self.track = TalkerTrack(placeholders) if speech else None
        self.reset()

    def reset(self) -> None:
        self.length = 0  # tokens fed (the KV cache holds exactly these)
        self.next_position = 0  # TMRoPE id of the next fed token
        self.pending: list[int] = []  # the reply's last sampled token: never fed, the next turn feeds it
        self.turn_open = False  # the last assistant turn ended without <|im_end|>
        self._marks: list[tuple[int, int]] = []  # (length, next_position) after every fed turn, for truncate
        if self.track is not None:
            self.track.clear()

    # -- building what to feed -----------------------------------------------------------------
    def user_turn(self, parts: list[Part], system: str | None = None, allow_special_tokens: bool = False) -> Turn:
        """The ids, embeddings and TMRoPE ids of a user turn after what the conversation holds. User text
        stays text: `<|im_start|>` typed in a prompt is not a control token unless `allow_special_tokens`."""
        content = user_segments(parts, self.media, self.tokenizer.token_text, trusted=allow_special_tokens)
        ids = self.user_turn_ids(content, system)
        ids_array = np.asarray(ids)
        embeds = splice_features(self.embeddings[ids_array], ids_array, parts, self.media)
        return Turn(ids, embeds, self._positions(ids, parts))

    def user_turn_ids(self, content: tuple[Segment, ...], system: str | None = None) -> list[int]:
        """The ids of a user turn with this content after what the conversation holds: the template around it,
        and the pending token and closing <|im_end|> of the previous reply before it."""
        if self.length == 0 and not self.pending:
            messages = ([Message("system", system)] if system else []) + [Message("user", content)]
            return self.tokenizer.encode_segments(chat_segments(messages))
        if system:
            raise InputError("a system prompt can only start a conversation; call reset() first")
        closing = [self.tokenizer.im_end_id] if self.turn_open else []
        return (
            self.pending + closing + self.tokenizer.encode_segments([Segment("\n", True), *user_turn_segments(content)])
        )

    def token_turn(self, token: int) -> Turn:
        """One sampled text token to feed."""
        return Turn([token], self.embeddings[[token]], text_positions(self.next_position, 1))

    def _positions(self, ids: list[int], parts: list[Part]) -> np.ndarray:
        info = self.media
        videos = [p for p in parts if isinstance(p, VideoPart)]
        with_audio = [v.audio is not None for v in videos]
        if any(with_audio) and not all(with_audio):
            raise InputError("use_audio_in_video applies to every video of a turn; give all or none an audio track")
        positions, _ = rope_index(
            np.asarray(ids),
            image_grid_thw=[p.grid_thw for p in parts if isinstance(p, ImagePart)],
            video_grid_thw=[v.grid_thw for v in videos],
            audio_mel_lengths=[a.mel_frames for a in audio_sequence(parts)],
            second_per_grid=[v.second_per_grid for v in videos],
            use_audio_in_video=any(with_audio),
            spatial_merge_size=info.spatial_merge_size,
            position_id_per_seconds=info.position_id_per_seconds,
            seconds_per_chunk=info.seconds_per_chunk,
            tokens=SpecialTokens(
                image=info.image_token_id,
                video=info.video_token_id,
                audio=info.audio_token_id,
                vision_start=info.vision_start_token_id,
                vision_end=info.vision_end_token_id,
                audio_start=info.audio_start_token_id,
                audio_end=info.audio_end_token_id,
            ),
        )
        # Ids continue from the conversation so far (max id + 1), as get_rope_index does over the whole text.
        return (positions + self.next_position)[:, None, :]

    # -- recording what happened ---------------------------------------------------------------
    def fed(self, turn: Turn, hidden: np.ndarray) -> None:
        """The Thinker has fed `turn` (its KV is in the cache); `hidden` is its last hidden state [n, hidden]."""
        self.length += len(turn.ids)
        # A turn fed in pieces (live input) continues from the max over all of them, as one turn would.
        self.next_position = max(self.next_position, int(turn.positions.max()) + 1)
        self._marks.append((self.length, self.next_position))
        self.pending = []
        self.turn_open = True  # fed tokens always continue the assistant turn the user turn opened
        if self.track is not None:
            self.track.append(turn, hidden)

    def sampled(self, token: int) -> None:
        self.pending = [token]

    def closed(self) -> None:
        """The reply ended with eos: the template's <|im_end|> is the pending token itself."""
        self.turn_open = False

    def truncate(self, length: int) -> None:
        """Forget every token after the first `length` fed ones (a reply cut short by barge-in), which must end
        a fed turn (a user turn, a piece of one, or a sampled token). The assistant turn stays open: the next
        user turn closes it with <|im_end|>. The caller truncates the KV cache to the same length."""
        kept = [mark for mark in self._marks if mark[0] <= length]
        if length and (not kept or kept[-1][0] != length):
            raise InputError(f"cannot truncate the conversation to {length} tokens: not the end of a fed turn")
        self._marks = kept
        self.length, self.next_position = kept[-1] if kept else (0, 0)
        self.pending = []
        self.turn_open = bool(kept)
        if self.track is not None:
            self.track.truncate(length)
