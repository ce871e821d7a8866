"""video-SALMONN 2+'s embedded model: ``tiny-salmonn``, written in the released checkpoint layout.

`VideoSalmonn2Plus` (Qwen2.5-VL + Whisper + Q-Former + Linear) at small widths, the
processors it is fed by, and the real Qwen2.5 vocabulary with Qwen2.5-VL's special
tokens and video-SALMONN 2+'s ``<|audio_pad|>`` at their ids; saved by
`write_released`, so it loads through the very reader a real checkpoint takes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from avmech.models.base import MEDIA_POLICY_FILE
from avmech.models.salmonn_checkpoint import write_released
from avmech.models.salmonn_modeling import SalmonnConfig, SalmonnProcessor, VideoSalmonn2Plus
from avmech.models.tiny import mrope_section, write_atomically
from avmech.models.vocab import VOCAB_SIZE, qwen_tokenizer

# Qwen2.5-VL's special tokens in id order (151643 ...), then video-SALMONN 2+'s added
# <|audio_pad|> (151665). Token ids are read from the config, never from these names.
SALMONN_SPECIALS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
    "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<|audio_pad|>",
)

# name -> (config overrides, media policy). The tiny model takes 56 px frames (4 tokens per
# grid step) instead of the released per-frame budget.
SALMONN_SIZES = {
    "tiny-salmonn": (
        dict(),
        dict(video_max_frame_pixels=28 * 28 * 4, video_min_frame_pixels=28 * 28 * 4, boost_short_clips=False,
             image_min_pixels=28 * 28 * 4, image_max_pixels=28 * 28 * 16),
    ),
}


def build_salmonn_processor():
    """The processors video-SALMONN 2+ is fed by, with a tiny tokenizer carrying its special tokens."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor, WhisperFeatureExtractor

    patches = dict(patch_size=14, temporal_patch_size=2, merge_size=2)
    return SalmonnProcessor(
        tokenizer=qwen_tokenizer(SALMONN_SPECIALS, {}),
        image_processor=Qwen2VLImageProcessor(**patches),
        video_processor=Qwen2VLVideoProcessor(**patches),
        feature_extractor=WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, chunk_length=30),
    )


def salmonn_config(tokenizer, *, d_model: int = 64, n_layers: int = 4, n_heads: int = 4, n_kv_heads: int = 2,
                   d_mlp: int = 128, vision_width: int = 32, audio_width: int = 32, encoder_layers: int = 2):
    """A small `SalmonnConfig` of the released architecture whose token ids come from ``tokenizer``."""
    section = mrope_section(d_model // n_heads)
    ids = tokenizer.convert_tokens_to_ids
    return SalmonnConfig(
        vl_config=dict(
            text_config=dict(
                vocab_size=VOCAB_SIZE, hidden_size=d_model, intermediate_size=d_mlp,
                num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_kv_heads,
                max_position_embeddings=32768, bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"),
                rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": section},
            ),
            vision_config=dict(
                depth=encoder_layers, hidden_size=vision_width, intermediate_size=2 * vision_width, num_heads=2,
                out_hidden_size=d_model, fullatt_block_indexes=[encoder_layers - 1], window_size=112,
                tokens_per_second=2,
            ),
            vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
            image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"), tie_word_embeddings=False,
        ),
        audio_config=dict(
            num_mel_bins=128, encoder_layers=encoder_layers, encoder_attention_heads=2, encoder_ffn_dim=2 * audio_width,
            d_model=audio_width, max_source_positions=1500,
        ),
        qformer_config=dict(
            hidden_size=audio_width, num_hidden_layers=2, num_attention_heads=2, intermediate_size=2 * audio_width,
            encoder_hidden_size=audio_width, cross_attention_frequency=1,
        ),
        audio_token_id=ids("<|audio_pad|>"),
    )


def save_salmonn(name: str, path: Path, seed: int = 0) -> None:
    """Build the embedded model ``name`` with ``seed`` and save it at ``path`` in the released layout."""
    overrides, policy = SALMONN_SIZES[name]
    write_salmonn(path, seed, overrides, policy)


def write_salmonn(path: Path, seed: int, overrides: dict, policy: dict) -> None:
    """A random model of `salmonn_config` with ``overrides`` and the media ``policy``, saved at ``path``."""
    processor = build_salmonn_processor()
    config = salmonn_config(processor.tokenizer, **overrides)
    torch.manual_seed(seed)
    model = VideoSalmonn2Plus(config).eval()

    def write(tmp: Path) -> None:
        write_released(model, tmp)
        processor.save_pretrained(tmp)
        (tmp / MEDIA_POLICY_FILE).write_text(json.dumps(policy))

    write_atomically(path, write)
