"""Checks of caller-given numbers and text, before any work: each refusal says the bound and why it is there."""

from __future__ import annotations

from omni_edge.errors import InputError

SEED_MAX = 2**63 - 1  # numpy's generators take non-negative seeds; one int64 is plenty


def check_seed(seed: int | None, flag: str = "--seed") -> None:
    if seed is None:
        return
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise InputError(f"{flag} {seed} must be an integer from 0 to {SEED_MAX}")


def check_text(text: str | None, flag: str = "--prompt") -> None:
    """Text that is valid Unicode all the way: a shell passes undecodable bytes as lone surrogates, which the
    tokenizer cannot encode."""
    if text is None:
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(
            f"{flag} is not valid UTF-8 (byte {exc.start} of the text cannot be decoded); pass UTF-8 text"
        ) from None


def check_max_codec_tokens(max_codec_tokens: int, talker) -> None:
    """A spoken reply cannot be longer than the Talker's KV cache (its prompt shares it), and the noise and
    buffers of the reply are sized by this bound before it starts: 10**9 tried to allocate 1.16 TiB."""
    if isinstance(max_codec_tokens, bool) or not isinstance(max_codec_tokens, int) or max_codec_tokens < 1:
        raise InputError(f"--max-codec-tokens {max_codec_tokens} must be at least 1")
    room = talker.kv_cache.max_seq_len
    if max_codec_tokens > room:
        raise InputError(
            f"--max-codec-tokens {max_codec_tokens} is more than the Talker's KV cache holds ({room} tokens, its "
            f"prompt included, about {room / 50:.0f} s of speech at 50 codec tokens per second); use at most "
            f"{room}, or re-export the bundle with a larger --max-seq-len"
        )
