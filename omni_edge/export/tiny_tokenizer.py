"""A small byte-level BPE tokenizer that carries Qwen's special-token ids.

Real Qwen2.5-Omni ids matter to the model (placeholders 151646/151655/151656, the talker's 151859..151861,
speaker bos ids), so the tiny tokenizer keeps them at the same numbers. Every id below the specials decodes
to some text: a BPE trained on a short corpus fills the low ids and pronounceable filler words fill the rest,
so a random-weight model prints words instead of nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tokenizers.pre_tokenizers import ByteLevel

FIRST_SPECIAL_ID = 151643
# (id, content) of the special tokens the runtime and the model rely on; other ids up to the vocab end
# are reserved names so that decoding any id the model can emit is defined.
SPECIAL_TOKENS = {
    151643: "<|endoftext|>",
    151644: "<|im_start|>",
    151645: "<|im_end|>",
    151646: "<|AUDIO|>",
    151647: "<|audio_bos|>",
    151648: "<|audio_eos|>",
    151649: "<|box_end|>",
    151650: "<|quad_start|>",
    151651: "<|quad_end|>",
    151652: "<|vision_bos|>",
    151653: "<|vision_eos|>",
    151654: "<|vision_pad|>",
    151655: "<|IMAGE|>",
    151656: "<|VIDEO|>",
    151859: "<|tts_text_pad|>",
    151860: "<|tts_text_bos|>",
    151861: "<|tts_text_eos|>",
    151870: "<|spk_ethan|>",
    151872: "<|spk_chelsie|>",
}

_CORPUS = """
The quick brown fox jumps over the lazy dog. A robot hears the kitchen and sees the table.
You are a helpful assistant. Hello, how are you today? I am fine, thank you for asking.
What is in this picture? Describe the sound you hear. Please answer in one short sentence.
The weather is sunny and warm. The cat sleeps on the mat while the dog plays in the garden.
Edge devices run small models quickly. Speech, images, video and text meet in one model.
Numbers like 1, 2, 3, 42 and 2026 appear in text; so do questions, answers and lists.
"""

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def _filler_word(index: int) -> str:
    """A pronounceable pseudo-word, unique per index, with a leading byte-level space (Ġ)."""
    syllables = []
    n = index
    while True:
        n, r = divmod(n, len(_CONSONANTS) * len(_VOWELS))
        syllables.append(_CONSONANTS[r // len(_VOWELS)] + _VOWELS[r % len(_VOWELS)])
        if n == 0:
            break
        n -= 1
    return "\u0120" + "".join(syllables)


def build_tokenizer(vocab_size: int, trained_size: int = 600) -> Tokenizer:
    if vocab_size <= max(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size {vocab_size} must exceed the largest special id {max(SPECIAL_TOKENS)}")
    trainer = trainers.BpeTrainer(vocab_size=trained_size, initial_alphabet=ByteLevel.alphabet(), show_progress=False)
    seed = Tokenizer(models.BPE())
    seed.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    seed.train_from_iterator([line for line in _CORPUS.splitlines() if line], trainer=trainer)
    trained = json.loads(seed.to_str())["model"]
    vocab: dict[str, int] = dict(trained["vocab"])
    pairs = [m.split(" ") if isinstance(m, str) else m for m in trained["merges"]]
    merges = [(str(a), str(b)) for a, b in pairs]

    filler_index = 0
    next_id = len(vocab)
    while next_id < FIRST_SPECIAL_ID:
        word = _filler_word(filler_index)
        filler_index += 1
        if word not in vocab:
            vocab[word] = next_id
            next_id += 1
    specials = {i: SPECIAL_TOKENS.get(i, f"<|reserved_{i}|>") for i in range(FIRST_SPECIAL_ID, vocab_size)}
    for token_id, content in specials.items():
        vocab[content] = token_id

    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([specials[i] for i in sorted(specials)])
    return tokenizer


# The Qwen2.5-Omni chat template restricted to text turns, in the jinja form Hugging Face tokenizers use;
# the runtime renders the same thing in Python (omni_edge.runtime.chat) and a test checks they agree.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def save_tokenizer(tokenizer: Tokenizer, out_dir: Path) -> None:
    tokenizer.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "model_max_length": 32768,
        "chat_template": CHAT_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
