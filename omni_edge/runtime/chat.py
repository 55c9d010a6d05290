"""Tokenizer and the Qwen2.5-Omni chat template for text turns, without transformers or jinja."""

from __future__ import annotations

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
class Message:
    role: str  # system, user, assistant
    content: str


def render_chat(messages: list[Message], add_generation_prompt: bool = True) -> str:
    """Same text as the checkpoint's jinja chat template for text-only messages."""
    parts = []
    if messages and messages[0].role != "system":
        parts.append(f"{IM_START}system\n{DEFAULT_SYSTEM_PROMPT}{IM_END}\n")
    for message in messages:
        parts.append(f"{IM_START}{message.role}\n{message.content}{IM_END}\n")
    if add_generation_prompt:
        parts.append(f"{IM_START}assistant\n")
    return "".join(parts)


def render_user_turn(content: str) -> str:
    """A follow-up user turn plus the assistant header, appended after a closed assistant turn."""
    return f"{IM_START}user\n{content}{IM_END}\n{IM_START}assistant\n"


class TextTokenizer:
    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:
            raise BundleError(f"cannot read tokenizer {path.name} ({exc}); re-export the bundle") from None
        self.im_end_id = self.token_id(IM_END)

    def token_id(self, token: str) -> int:
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise BundleError(f"the tokenizer has no {token} token; this is not a Qwen2.5-Omni tokenizer")
        return token_id

    def token_text(self, token_id: int) -> str:
        return self._tokenizer.id_to_token(token_id)

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

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
