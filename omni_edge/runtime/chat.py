"""Tokenizer and the Qwen2.5-Omni chat template for text turns, without transformers or jinja."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from omni_edge.errors import BundleError

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
# Speech output needs exactly this system prompt; the reference model was trained with it.
SPEECH_SYSTEM_PROMPT = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
    "auditory and visual inputs, as well as generating text and speech."
)
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"


@dataclass(frozen=True)
class Segment:
    """A piece of prompt text. The template's markup and media placeholders are trusted: their special
    tokens are control tokens. Text from the user is not: `<|im_start|>` typed in a prompt stays text, as
    serving stacks keep it, so a prompt cannot open a system turn of its own."""

    text: str
    trusted: bool = False


@dataclass(frozen=True)
class Message:
    role: str  # system, user, assistant
    content: str | tuple[Segment, ...]  # plain text (untrusted) or segments


def chat_segments(messages: list[Message], add_generation_prompt: bool = True) -> list[Segment]:
    """The checkpoint's jinja chat template for these messages, as segments."""
    segments = []
    if messages and messages[0].role != "system":
        segments.append(Segment(f"{IM_START}system\n", True))
        segments.append(Segment(DEFAULT_SYSTEM_PROMPT, True))
        segments.append(Segment(f"{IM_END}\n", True))
    for message in messages:
        segments.append(Segment(f"{IM_START}{message.role}\n", True))
        segments += [Segment(message.content)] if isinstance(message.content, str) else message.content
        segments.append(Segment(f"{IM_END}\n", True))
    if add_generation_prompt:
        segments.append(Segment(f"{IM_START}assistant\n", True))
    return segments


def render_chat(messages: list[Message], add_generation_prompt: bool = True) -> str:
    """Same text as the checkpoint's jinja chat template."""
    return "".join(s.text for s in chat_segments(messages, add_generation_prompt))


def user_turn_segments(content: tuple[Segment, ...]) -> list[Segment]:
    """A follow-up user turn plus the assistant header, appended after the previous assistant turn."""
    return [Segment(f"{IM_START}user\n", True), *content, Segment(f"{IM_END}\n{IM_START}assistant\n", True)]


class TextTokenizer:
    def __init__(self, source: Path | bytes):
        """`source`: tokenizer.json, or its bytes as read and hashed from a bundle."""
        from tokenizers import Tokenizer

        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        try:
            self._tokenizer = Tokenizer.from_buffer(data)
            self._text_only = Tokenizer.from_buffer(data)  # special tokens in its input are plain text
        except Exception as exc:
            raise BundleError(f"cannot read the tokenizer ({exc}); re-export the bundle") from None
        self._text_only.encode_special_tokens = True
        self._special = [t.content for t in self._tokenizer.get_added_tokens_decoder().values()]
        self.im_end_id = self.token_id(IM_END)

    def token_id(self, token: str) -> int:
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise BundleError(f"the tokenizer has no {token} token; this is not a Qwen2.5-Omni tokenizer")
        return token_id

    def token_text(self, token_id: int) -> str:
        text = self._tokenizer.id_to_token(token_id)
        if text is None:
            raise BundleError(f"the tokenizer has no token {token_id}; this is not a Qwen2.5-Omni tokenizer")
        return text

    def encode(self, text: str) -> list[int]:
        """Special tokens in `text` are control tokens: for trusted text only (see encode_segments)."""
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_segments(self, segments: list[Segment]) -> list[int]:
        """One tokenization of the whole text, as the reference processor does, unless untrusted text holds
        special-token strings: then runs of trusted and untrusted text are tokenized apart, the untrusted
        ones with special tokens as plain text."""
        if not any(special in s.text for s in segments if not s.trusted for special in self._special):
            return self.encode("".join(s.text for s in segments))
        ids: list[int] = []
        for trusted, run in itertools.groupby(segments, key=lambda s: s.trusted):
            tokenizer = self._tokenizer if trusted else self._text_only
            ids += tokenizer.encode("".join(s.text for s in run), add_special_tokens=False).ids
        return ids

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)


class TextStreamer:
    """Turns a growing list of token ids into text deltas without splitting a UTF-8 character."""

    def __init__(self, tokenizer: TextTokenizer):
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._emitted = ""

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        text = self._tokenizer.decode(self._ids)
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the next token
            return ""
        delta = text[len(self._emitted) :]
        self._emitted = text
        return delta

    def flush(self) -> str:
        text = self._tokenizer.decode(self._ids)
        delta = text[len(self._emitted) :]
        self._emitted = text
        return delta
