"""Qwen2.5-Omni's embedded models: ``tiny-omni`` (tests, demo) and ``bench-omni`` (benchmarks).

The real `Qwen2_5OmniThinkerForConditionalGeneration` at small widths, the real
`Qwen2_5OmniProcessor` assembled from transformers' parts, the real Qwen2.5 vocabulary
with Qwen2.5-Omni's special tokens at their ids and its released chat template.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from avmech.models.base import MEDIA_POLICY_FILE
from avmech.models.tiny import mrope_section, write_atomically
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

    section = mrope_section(d_model // n_heads)
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


def save_omni(name: str, path: Path, seed: int = 0) -> None:
    """Build the embedded model ``name`` with ``seed`` and save it as a checkpoint at ``path``,
    with its media policy (the processor's pixel budget for frames and images)."""
    overrides, pixels = OMNI_SIZES[name]
    write_omni(path, seed, overrides, pixels)


def write_omni(path: Path, seed: int, overrides: dict, pixels: dict) -> None:
    """A random model of `omni_config` with ``overrides`` and the processor's ``pixels`` budget, saved at ``path``."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    processor = build_omni_processor(**pixels)
    config = omni_config(processor.tokenizer, **overrides)
    torch.manual_seed(seed)
    model = Qwen2_5OmniThinkerForConditionalGeneration(config).eval()
    policy = {"video_min_pixels": pixels["min_pixels"], "video_max_pixels": pixels["max_pixels"],
              "image_min_pixels": pixels["min_pixels"], "image_max_pixels": pixels["max_pixels"]}

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / MEDIA_POLICY_FILE).write_text(json.dumps(policy))

    write_atomically(path, write)
