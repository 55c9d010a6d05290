"""Manifest entries and side tables for speech output: Talker facts, codec embeddings, speakers."""

from __future__ import annotations

from omni_edge import naming
from omni_edge.bundle import TalkerInfo, Token2WavInfo
from omni_edge.export.decoder import kv_geometry, talker_parts

# The reference generate stops on codec pad or eos (transformers' talker_eos_token_id default).
STOP_ON = ("tts_codec_pad_token_id", "tts_codec_end_token_id")


def talker_info(model, max_seq_len: int, kv_dtype: str = "float32") -> TalkerInfo:
    config = model.talker.config
    return TalkerInfo(
        kv_cache=kv_geometry(talker_parts(model), max_seq_len, kv_dtype),
        codec_embedding_file=naming.TALKER_CODEC_EMBEDDING_FILE,
        vocab_size=config.vocab_size,
        codec_bos_token_id=config.tts_codec_start_token_id,
        codec_eos_token_id=config.tts_codec_end_token_id,
        codec_pad_token_id=config.tts_codec_pad_token_id,
        codec_mask_token_id=config.tts_codec_mask_token_id,
        text_bos_token_id=config.tts_text_start_token_id,
        text_eos_token_id=config.tts_text_end_token_id,
        text_pad_token_id=config.tts_text_pad_token_id,
        stop_token_ids=[getattr(config, name) for name in STOP_ON],
        speakers={name: int(params["bos_token"]) for name, params in model.speaker_map.items()},
        speakers_file=naming.SPEAKERS_FILE,
    )


def token2wav_info(model) -> Token2WavInfo:
    dit = model.token2wav.config.dit_config
    vocoder = model.token2wav.config.bigvgan_config
    samples_per_frame = 1
    for rate in vocoder.upsample_rates:
        samples_per_frame *= rate
    return Token2WavInfo(
        mel_dim=dit.mel_dim,
        repeats=dit.repeats,
        block_size=dit.block_size,
        num_code_embeddings=dit.num_embeds,
        samples_per_frame=samples_per_frame,
        sample_rate=100 * samples_per_frame,  # mel runs at 100 frames/s
        look_back_blocks=len(dit.look_backward_layers),
        look_ahead_blocks=len(dit.look_ahead_layers),
    )
