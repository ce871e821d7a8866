"""Embedded random models: real architectures at toy sizes, built in seconds, no download.

Tests, the demo (`make figures`) and the benchmarks need models of the real classes
without their weights. Each builder here makes a real transformers model from a small
config, a small byte-level BPE tokenizer that carries the family's real special tokens
(in the real order, at small ids: token ids are always read from the config), and the
real processor class assembled from transformers' own parts. Everything is seeded, and
written as an ordinary checkpoint directory, so loading a demo model goes through the
same `from_pretrained` path as a real one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

# The split pattern of the Qwen2 tokenizers (byte-level BPE over these pre-tokens).
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Qwen2.5-Omni's special tokens in id order (151643 ...), and the attributes its
# processor reads from the tokenizer.
OMNI_SPECIALS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>",
    "<|audio_eos|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_bos|>",
    "<|vision_eos|>", "<|vision_pad|>", "<|IMAGE|>", "<|VIDEO|>",
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

# A chat template that renders exactly the layout of Qwen2.5-Omni's official one.
OMNI_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- elif part['type'] == 'image' -%}{{ '<|vision_bos|><|IMAGE|><|vision_eos|>' }}"
    "{%- elif part['type'] == 'audio' -%}{{ '<|audio_bos|><|AUDIO|><|audio_eos|>' }}"
    "{%- elif part['type'] == 'video' -%}{{ '<|vision_bos|><|VIDEO|><|vision_eos|>' }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)

_CORPUS = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of "
    "perceiving auditory and visual inputs, as well as generating text and speech. "
    "You are a helpful assistant. Select the best answer to the following multiple-choice "
    "question based on the video. Respond with only the letter (A, B, C, or D) of the correct "
    "option. The best answer is: Answer with the option's letter from the given choices "
    "directly. Question: Which image matches the audio? Who is speaking? What colour is the "
    "shape? How many tones are there? the first second third fourth image audio clip red green "
    "blue yellow circle square triangle high low rising falling tone man woman speaker 0 1 2 3 4 5 "
    "6 7 8 9 A B C D E system user assistant"
)


def build_tokenizer(specials: tuple[str, ...], token_attrs: dict[str, str], vocab_size: int = 512):
    """A byte-level BPE tokenizer with Qwen2's pre-tokenizer; ``specials`` get the last ids."""
    from transformers import Qwen2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return Qwen2TokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", extra_special_tokens=token_attrs
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
        tokenizer=build_tokenizer(OMNI_SPECIALS, OMNI_TOKEN_ATTRS),
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
    vocab = (len(tokenizer) + 63) // 64 * 64
    return Qwen2_5OmniThinkerConfig(
        text_config=dict(
            vocab_size=vocab, hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=n_layers,
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
        tokenizer=build_tokenizer(SALMONN_SPECIALS, {}),
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
                vocab_size=(len(tokenizer) + 63) // 64 * 64, hidden_size=d_model, intermediate_size=d_mlp,
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
