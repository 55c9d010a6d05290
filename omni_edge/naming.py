"""Names shared by the exporter, the manifest and the runtime, defined once."""


def past_key(layer: int) -> str:
    return f"past.{layer}.key"


def past_value(layer: int) -> str:
    return f"past.{layer}.value"


def present_key(layer: int) -> str:
    return f"present.{layer}.key"


def present_value(layer: int) -> str:
    return f"present.{layer}.value"


def is_present(name: str) -> bool:
    return name.startswith("present.")


def past_names(num_layers: int) -> list[str]:
    return [name for i in range(num_layers) for name in (past_key(i), past_value(i))]


def present_names(num_layers: int) -> list[str]:
    return [name for i in range(num_layers) for name in (present_key(i), present_value(i))]


THINKER_DECODER = "thinker_decoder"  # one graph for prefill (empty past) and decode
THINKER_EMBEDDING_FILE = "thinker_embed_tokens.safetensors"
TOKENIZER_FILE = "tokenizer.json"
MANIFEST_FILE = "manifest.json"
AUDIO_ENCODER = "audio_encoder"
VISION_ENCODER = "vision_encoder"
TALKER_DECODER = "talker_decoder"
DIT_WINDOW = "dit_window"
BIGVGAN_WINDOW = "bigvgan_window"
TALKER_CODEC_EMBEDDING_FILE = "talker_codec_embed.safetensors"
SPEAKERS_FILE = "speakers.safetensors"
TIMING_CACHE_FILE = "timing.cache"  # full-TensorRT bundles: the builders' shared timing cache
