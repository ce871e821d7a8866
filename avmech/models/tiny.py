"""Embedded random models: real architectures at toy sizes, built in seconds, no download.

Tests, the demo (`make figures`) and the benchmarks need models of the real classes
without their weights. Each builder here makes a real transformers model from a small
config, the real Qwen2.5 tokenizer (`avmech.models.vocab`: the released vocabulary with
the family's special tokens at their real ids, 151643 on, and Qwen2.5-Omni's released
chat template), and the real processor class assembled from transformers' own parts. Everything is seeded, and
written as an ordinary checkpoint directory, so loading a demo model goes through the
same `from_pretrained` path as a real one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from avmech.models.vocab import VOCAB_SIZE, qwen_tokenizer

# Qwen2.5-Omni's special tokens in id order (151643 ...), and the attributes its
# processor reads from the tokenizer.
OMNI_SPECIALS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>",
    "<|audio_eos|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_bos|>",
    "<|vision_eos|>", "<|vision_pad|>", "<|IMAGE|>", "<|VIDEO|>", "<tool_call>", "</tool_call>",
    "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
)
OMNI_TOKEN_ATTRS = {
    "image_token": "<|IMAGE|>",
    "audio_token": "<|AUDIO|>",
    "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
}

# Qwen2.5-Omni's released chat template (the checkpoints' chat_template.json), verbatim.
OMNI_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant."
    "<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_bos|><|IMAGE|><|vision_eos|>{% elif content['type'] == 'audio' or 'audio' in content "
    "or 'audio_url' in content %}{% set audio_count.value = audio_count.value + 1 %}{% if add_audio_id %}"
    "Audio {{ audio_count.value }}: {% endif %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_omni_processor(min_pixels: int = 28 * 28 * 4, max_pixels: int = 28 * 28 * 16, audio_seconds: int = 30):
    """The real `Qwen2_5OmniProcessor`, from transformers' parts and a tiny tokenizer.

    ``audio_seconds`` is the longest audio the feature extractor takes (Qwen2.5-Omni: 300)."""
    from transformers import (
        Qwen2_5OmniProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
        WhisperFeatureExtractor,
    )

    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    return Qwen2_5OmniProcessor(
        image_processor=Qwen2VLImageProcessor(size=size, patch_size=14, temporal_patch_size=2, merge_size=2),
        video_processor=Qwen2VLVideoProcessor(size=size, patch_size=14, temporal_patch_size=2, merge_size=2),
        feature_extractor=WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, chunk_length=audio_seconds),
        tokenizer=qwen_tokenizer(OMNI_SPECIALS, OMNI_TOKEN_ATTRS),
        chat_template=OMNI_CHAT_TEMPLATE,
    )


def omni_config(tokenizer, *, d_model: int = 64, n_layers: int = 4, n_heads: int = 4, n_kv_heads: int = 2,
                d_mlp: int = 128, vision_width: int = 32, audio_width: int = 32, encoder_layers: int = 2):
    """A small `Qwen2_5OmniThinkerConfig` whose token ids come from ``tokenizer``."""
    from transformers import Qwen2_5OmniThinkerConfig

    head_dim = d_model // n_heads
    quarter = head_dim // 2 // 4  # mrope_section must sum to head_dim / 2, as [16, 24, 24] does for 128
    section = [quarter, (head_dim // 2 - quarter) // 2, head_dim // 2 - quarter - (head_dim // 2 - quarter) // 2]
    ids = tokenizer.convert_tokens_to_ids
    return Qwen2_5OmniThinkerConfig(
        text_config=dict(
            vocab_size=VOCAB_SIZE, hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=n_layers,
            num_attention_heads=n_heads, num_key_value_heads=n_kv_heads, max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": section},
            tie_word_embeddings=False,
        ),
        vision_config=dict(
            depth=encoder_layers, hidden_size=vision_width, intermediate_size=2 * vision_width, num_heads=2,
            out_hidden_size=d_model, fullatt_block_indexes=[encoder_layers - 1], window_size=112,
        ),
        audio_config=dict(
            num_mel_bins=128, encoder_layers=encoder_layers, encoder_attention_heads=2,
            encoder_ffn_dim=2 * audio_width, d_model=audio_width, output_dim=d_model,
        ),
        audio_token_index=ids("<|AUDIO|>"),
        image_token_index=ids("<|IMAGE|>"),
        video_token_index=ids("<|VIDEO|>"),
        audio_start_token_id=ids("<|audio_bos|>"),
        audio_end_token_id=ids("<|audio_eos|>"),
        vision_start_token_id=ids("<|vision_bos|>"),
        vision_end_token_id=ids("<|vision_eos|>"),
        tie_word_embeddings=False,
    )


# name -> (config overrides, processor pixel budget)
OMNI_SIZES = {
    "tiny-omni": (dict(), dict(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)),
    # The benchmark model: the real shape family at width 512, 12 layers (heads 16 of
    # width 32 as in the 3B, 2 key/value heads), with real-size frames.
    "bench-omni": (
        dict(d_model=512, n_layers=12, n_heads=16, n_kv_heads=2, d_mlp=1376, vision_width=64, audio_width=64),
        dict(min_pixels=28 * 28 * 16, max_pixels=28 * 28 * 64, audio_seconds=300),
    ),
}


def save_omni(name: str, path: Path, seed: int = 0) -> Path:
    """Build the embedded model ``name`` with ``seed`` and save it as a checkpoint at ``path``."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    overrides, pixels = OMNI_SIZES[name]
    processor = build_omni_processor(**pixels)
    config = omni_config(processor.tokenizer, **overrides)
    torch.manual_seed(seed)
    model = Qwen2_5OmniThinkerForConditionalGeneration(config).eval()
    _write_atomically(path, lambda tmp: (model.save_pretrained(tmp), processor.save_pretrained(tmp)))
    return path


def cache_dir() -> Path:
    return Path(os.environ.get("AVMECH_CACHE", Path.home() / ".cache" / "avmech"))


def _write_atomically(path: Path, write) -> None:
    """Write a directory under a temporary name and rename it, so no half-written checkpoint stays."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
    try:
        write(tmp)
        os.replace(tmp, path) if not path.exists() else shutil.rmtree(tmp)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


# ---- video-SALMONN 2+ ---------------------------------------------------------------------
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

    from avmech.models.salmonn_modeling import SalmonnProcessor

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
    from avmech.models.salmonn_modeling import SalmonnConfig

    half = d_model // n_heads // 2  # mrope_section must sum to head_dim / 2, as [16, 24, 24] does for 128
    section = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]
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


def save_salmonn(name: str, path: Path, seed: int = 0) -> Path:
    """Build the embedded model ``name`` with ``seed`` and save it at ``path`` in the released layout."""
    import json

    from avmech.models.base import MEDIA_POLICY_FILE
    from avmech.models.salmonn_checkpoint import write_released
    from avmech.models.salmonn_modeling import VideoSalmonn2Plus

    overrides, policy = SALMONN_SIZES[name]
    processor = build_salmonn_processor()
    config = salmonn_config(processor.tokenizer, **overrides)
    torch.manual_seed(seed)
    model = VideoSalmonn2Plus(config).eval()

    def write(tmp: Path) -> None:
        write_released(model, tmp)
        processor.save_pretrained(tmp)
        (tmp / MEDIA_POLICY_FILE).write_text(json.dumps(policy))

    _write_atomically(path, write)
    return path
