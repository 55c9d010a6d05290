"""GGUF files for the peer benchmark, with llama.cpp's own tools (run in the side environment).

    python scripts/peers_gguf.py convert LLAMA_CPP_DIR QWEN2_DIR OUT.gguf      # f32, convert_hf_to_gguf.py
    python scripts/peers_gguf.py quantize IN.gguf OUT.gguf q8_0|q4_0           # llama_model_quantize

The converter names a BPE tokenizer's pre-tokenizer by hashing how it splits a test string, and refuses
hashes it does not list. The medium preset's tokenizer (omni_edge.export.tiny_tokenizer) is a small
byte-level BPE with ByteLevel(add_prefix_space=False) and the GPT-2 split regex, which no released model has,
so for an unknown hash it is told "gpt-2" here (a known hash keeps the converter's answer). After
converting, llama.cpp's tokenizer must give the same ids as the Hugging Face tokenizer on a test text.
"""

from __future__ import annotations

import sys
from pathlib import Path

PRE_TOKENIZER = "gpt-2"
CHECK_TEXT = "Hello, how are you today? The quick brown fox jumps over the lazy dog 42 times.\n  Edge devices!"


def convert(llama_dir: Path, model_dir: Path, out: Path) -> None:
    sys.path.insert(0, str(llama_dir))
    sys.path.insert(1, str(llama_dir / "gguf-py"))
    import convert_hf_to_gguf  # the sdist's vendor/llama.cpp, on the path just above
    from conversion import base

    known = base.TextModel.get_vocab_base_pre

    def vocab_base_pre(self, tokenizer) -> str:
        try:
            return known(self, tokenizer)
        except NotImplementedError:
            print(f"peers_gguf: pre-tokenizer hash not in the converter's list; using {PRE_TOKENIZER!r}")
            return PRE_TOKENIZER

    base.TextModel.get_vocab_base_pre = vocab_base_pre
    sys.argv = ["convert_hf_to_gguf.py", str(model_dir), "--outfile", str(out), "--outtype", "f32"]
    convert_hf_to_gguf.main()
    check_tokenizer(model_dir, out)


def check_tokenizer(model_dir: Path, gguf: Path) -> None:
    from llama_cpp import Llama
    from tokenizers import Tokenizer

    expected = Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode(CHECK_TEXT).ids
    vocab = Llama(str(gguf), vocab_only=True, verbose=False)
    got = vocab.tokenize(CHECK_TEXT.encode(), add_bos=False, special=False)
    if got != expected:
        sys.exit(f"llama.cpp tokenizes the check text differently:\n  hf    {expected}\n  llama {got}")
    print(f"peers_gguf: llama.cpp and the HF tokenizer agree on the check text ({len(got)} ids)")


def quantize(src: Path, dst: Path, kind: str) -> None:
    import ctypes

    import llama_cpp

    ftypes = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0}
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftypes[kind]
    params.nthread = 2
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        sys.exit(f"llama_model_quantize {src} -> {dst} ({kind}) failed")


def main() -> None:
    command, *args = sys.argv[1:]
    if command == "convert":
        convert(Path(args[0]), Path(args[1]), Path(args[2]))
    elif command == "quantize":
        quantize(Path(args[0]), Path(args[1]), args[2])
    else:
        sys.exit(f"unknown command {command!r}: convert or quantize")


if __name__ == "__main__":
    main()
