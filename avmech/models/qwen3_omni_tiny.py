"""Qwen3-Omni's embedded model: ``tiny-qwen3-omni`` (tests, demo).

The real `Qwen3OmniMoeThinkerForConditionalGeneration` at toy size (width 64, 4 layers of
4 experts with 2 active, q/k norms, a 2-block ViT whose first block feeds one DeepStack
level, added after decoder layer 0; the release has 3 levels, after layers 0-2), the real
`Qwen3OmniMoeProcessor` assembled from transformers' parts, and the real Qwen3 vocabulary
(`avmech.models.vocab`: the same 151,643 ranks as Qwen2.5) with Qwen3-Omni's special
tokens at their released ids: ``<|vision_start|>`` 151652, ``<|image_pad|>`` 151655,
``<|video_pad|>`` 151656, ``<|audio_start|>`` 151669, ``<|audio_end|>`` 151670, the TTS
tokens 151671-151674 and ``<|audio_pad|>`` 151675 (Qwen/Qwen3-Omni-30B-A3B-Instruct's
``config.json``, and the ids its processor gives in transformers' integration test:
``<|im_start|>user\\n<|audio_start|><|audio_pad|>`` = 151644, 872, 198, 151669, 151675).
The release marks ``<tool_call>`` ... ``</think>`` (151657-151668) as added but not special
tokens; here every added token is special (tokenization is the same; only what
``skip_special_tokens`` drops differs).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from avmech.models.base import MEDIA_POLICY_FILE
from avmech.models.tiny import write_atomically
from avmech.models.vocab import qwen_tokenizer

# Qwen3-Omni's special tokens in id order (151643 ...): Qwen3's, then the audio and TTS ones.
QWEN3_OMNI_SPECIALS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
    "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>",
    "</tool_response>", "<think>", "</think>", "<|audio_start|>", "<|audio_end|>", "<tts_pad>", "<tts_text_bos>",
    "<tts_text_eod>", "<tts_text_bos_single>", "<|audio_pad|>",
)
# the attributes its processor reads from the tokenizer (the released tokenizer_config's names)
QWEN3_OMNI_TOKEN_ATTRS = {
    "image_token": "<|image_pad|>",
    "audio_token": "<|audio_pad|>",
    "video_token": "<|video_pad|>",
    "vision_bos_token": "<|vision_start|>",
    "vision_eos_token": "<|vision_end|>",
    "audio_bos_token": "<|audio_start|>",
    "audio_eos_token": "<|audio_end|>",
}
VOCAB_SIZE = 152_064  # Qwen3-Omni-30B-A3B's embedding rows

# The Instruct model's chat rendering: ChatML turns, no system turn unless one is given
# (the released processor renders a user-only conversation as "<|im_start|>user\n..."),
# media as <|vision_start|><|image_pad|><|vision_end|>, <|vision_start|><|video_pad|><|vision_end|>
# and <|audio_start|><|audio_pad|><|audio_end|>. Written here for the conversations avmech
# builds (text, image, audio and video parts; no tools, no reasoning).
QWEN3_OMNI_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}{%- else -%}"
    "{%- for content in message['content'] -%}"
    "{%- if content['type'] == 'image' or 'image' in content or 'image_url' in content -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content -%}"
    "{{- '<|audio_start|><|audio_pad|><|audio_end|>' -}}"
    "{%- elif content['type'] == 'video' or 'video' in content -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in content -%}{{- content['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)


def build_qwen3_omni_processor(min_pixels: int, max_pixels: int, audio_seconds: int = 30):
    """The real `Qwen3OmniMoeProcessor` from transformers' parts (its image and video
    processors with Qwen3-Omni's 16 px patches, merged 2 x 2: multiples of 32 px)."""
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
        Qwen3OmniMoeProcessor,
        WhisperFeatureExtractor,
    )

    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    vision = dict(size=size, patch_size=16, temporal_patch_size=2, merge_size=2)
    return Qwen3OmniMoeProcessor(
        image_processor=Qwen2VLImageProcessor(**vision),
        video_processor=Qwen2VLVideoProcessor(**vision),
        feature_extractor=WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, chunk_length=audio_seconds),
        tokenizer=qwen_tokenizer(QWEN3_OMNI_SPECIALS, QWEN3_OMNI_TOKEN_ATTRS),
        chat_template=QWEN3_OMNI_CHAT_TEMPLATE,
    )


def qwen3_mrope_section(head_dim: int) -> list[int]:
    """Qwen3's interleaved M-RoPE split of ``head_dim / 2`` rotary pairs over (temporal,
    height, width) in the released proportions ([24, 20, 20] of 64 at head_dim 128)."""
    half = head_dim // 2
    spatial = half * 5 // 16
    return [half - 2 * spatial, spatial, spatial]


def qwen3_omni_config(tokenizer, *, d_model: int = 64, n_layers: int = 4, n_heads: int = 4, n_kv_heads: int = 2,
                      n_experts: int = 4, active: int = 2, d_expert: int = 32, vision_width: int = 32,
                      audio_width: int = 32, vision_depth: int = 2, deepstack: tuple[int, ...] = (0,)):
    """A small `Qwen3OmniMoeThinkerConfig` whose token ids come from ``tokenizer``; the
    ViT blocks ``deepstack`` feed one DeepStack level each (added after decoder layers
    0, 1, ...)."""
    from transformers import Qwen3OmniMoeThinkerConfig

    head_dim = d_model // n_heads
    ids = tokenizer.convert_tokens_to_ids
    rope = {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": qwen3_mrope_section(head_dim),
            "interleaved": True, "mrope_interleaved": True}
    return Qwen3OmniMoeThinkerConfig(
        text_config=dict(
            vocab_size=VOCAB_SIZE, hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
            num_attention_heads=n_heads, num_key_value_heads=n_kv_heads, head_dim=head_dim,
            num_experts=n_experts, num_experts_per_tok=active, moe_intermediate_size=d_expert,
            max_position_embeddings=65536, rope_parameters=rope, tie_word_embeddings=False,
        ),
        vision_config=dict(
            depth=vision_depth, hidden_size=vision_width, intermediate_size=2 * vision_width, num_heads=2,
            out_hidden_size=d_model, patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
            num_position_embeddings=64, deepstack_visual_indexes=list(deepstack),
        ),
        audio_config=dict(
            num_mel_bins=128, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=2 * audio_width,
            d_model=audio_width, output_dim=d_model, downsample_hidden_size=16,
        ),
        position_id_per_seconds=13,
        seconds_per_chunk=2,
        audio_token_id=ids("<|audio_pad|>"),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        audio_start_token_id=ids("<|audio_start|>"),
        audio_end_token_id=ids("<|audio_end|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )


# name -> (config overrides, pixel budget of frames and images: 4 to 16 merged tokens each)
QWEN3_OMNI_SIZES = {
    "tiny-qwen3-omni": (dict(), dict(min_pixels=32 * 32 * 4, max_pixels=32 * 32 * 16)),
}


def save_qwen3_omni(name: str, path: Path, seed: int = 0) -> None:
    """Build the embedded model ``name`` with ``seed`` and save it as a thinker checkpoint
    at ``path``, with its media policy (the pixel budgets of frames and images)."""
    from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

    overrides, pixels = QWEN3_OMNI_SIZES[name]
    processor = build_qwen3_omni_processor(**pixels)
    config = qwen3_omni_config(processor.tokenizer, **overrides)
    torch.manual_seed(seed)
    model = Qwen3OmniMoeThinkerForConditionalGeneration(config).eval()
    small, large = pixels["min_pixels"], pixels["max_pixels"]
    policy = {"video_min_pixels": small, "video_max_pixels": large, "image_min_pixels": small,
              "image_max_pixels": large, "processor_video_min_pixels": small, "processor_video_max_pixels": large}

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / MEDIA_POLICY_FILE).write_text(json.dumps(policy))

    write_atomically(path, write)
