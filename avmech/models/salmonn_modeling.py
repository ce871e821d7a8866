"""video-SALMONN 2+, the network: Qwen2.5-VL with a Whisper + Q-Former audio branch.

video-SALMONN 2+ (3B and 7B) is not in transformers, so avmech rebuilds it from
transformers parts, composed and never copied:

    audio, 16 kHz mono
      -> 30-second chunks, each a Whisper log-mel spectrogram [128 mel, 3000 frames]
      -> `WhisperEncoder` (Whisper-large-v3 shape): 1500 frames per chunk, 50 per second
      -> 0.5 s windows of 25 frames, 60 per chunk; in a BLIP-2 `Blip2QFormerModel` one
         learned query (``q_tokens``) cross-attends to each window
      -> ``nn.Linear`` to the LLM width: 2 tokens per second, 60 per chunk, the padding
         silence of the last chunk included; they replace the ``<|audio_pad|>`` tokens
    video frames and images
      -> Qwen2.5-VL's ViT (14 px patches, 2 frames per temporal grid step, 2x2 merge): one
         token per 28 px cell per step, replacing ``<|video_pad|>`` / ``<|image_pad|>``
    the LLM: Qwen2.5-VL's decoder, with 3-D (temporal, height, width) rotary positions.

The module tree of `VideoSalmonn2Plus` (``m.hf``); AVModel finds the decoder by probing:

    vl      Qwen2_5_VLForConditionalGeneration: vl.model.visual (ViT), vl.model.language_model
            (embed_tokens, layers, norm: the ``llm``), vl.lm_head
    audio   SalmonnAudioEncoder: audio.whisper, audio.qformer, audio.q_tokens, audio.audio_proj

``m.hf(input_ids=..., attention_mask=..., position_ids=..., <media>)`` runs the whole model;
``m.hf(inputs_embeds=..., position_ids=..., attention_mask=...)`` the LLM alone. Position ids
are never computed here: `avmech.models.salmonn` lays out the prompt and computes them
(both of the released model's schemes); `avmech.models.salmonn_checkpoint` reads and
writes the released checkpoint layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import nn
from transformers import (
    Blip2QFormerConfig,
    Cache,
    Blip2QFormerModel,
    PreTrainedConfig,
    PreTrainedModel,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    WhisperConfig,
)
from transformers import initialization as init
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from avmech.errors import ModelError

# Whisper's feature extractor cuts audio into chunks of this many seconds (3000 mel frames).
CHUNK_SECONDS = 30


class SalmonnConfig(PreTrainedConfig):
    """The LLM + ViT (``vl_config``), Whisper (``audio_config``) and Q-Former (``qformer_config``)
    configs, the audio token id, and how Whisper frames are cut into Q-Former windows."""

    model_type = "video_salmonn2_plus"
    sub_configs_defaults = {
        "vl_config": Qwen2_5_VLConfig,
        "audio_config": WhisperConfig,
        "qformer_config": Blip2QFormerConfig,
    }

    vl_config: dict | PreTrainedConfig | None = None
    audio_config: dict | PreTrainedConfig | None = None
    qformer_config: dict | PreTrainedConfig | None = None
    audio_token_id: int = 151665
    second_per_window: float = 0.5
    second_stride: float = 0.5
    query_length: int = 1

    def get_text_config(self, decoder=None, encoder=None) -> PreTrainedConfig:
        """The LLM's config (what caches, masks and generation read)."""
        return self.vl_config.get_text_config(decoder=decoder, encoder=encoder)

    @property
    def window_frames(self) -> tuple[int, int]:
        """(kernel, stride) of the Q-Former windows, in Whisper encoder frames."""
        per_second = self.audio_config.max_source_positions / CHUNK_SECONDS
        return round(per_second * self.second_per_window), round(per_second * self.second_stride)

    @property
    def tokens_per_chunk(self) -> int:
        kernel, stride = self.window_frames
        return ((self.audio_config.max_source_positions - kernel) // stride + 1) * self.query_length


class SalmonnAudioEncoder(nn.Module):
    """Whisper encoder -> one Q-Former query per window -> Linear: audio chunks to LLM tokens."""

    def __init__(self, config: SalmonnConfig):
        super().__init__()
        self.kernel, self.stride = config.window_frames
        self.whisper = WhisperEncoder(config.audio_config)
        self.qformer = Blip2QFormerModel(config.qformer_config)
        width = config.qformer_config.hidden_size
        self.q_tokens = nn.Parameter(torch.zeros(1, config.query_length, width))
        self.audio_proj = nn.Linear(width, config.vl_config.text_config.hidden_size)

    def forward(self, input_features: Float[torch.Tensor, "chunk mel frame"]) -> Float[torch.Tensor, "token d_model"]:
        """Tokens in time order: chunk by chunk, window by window, query by query."""
        frames = self.whisper(input_features.to(self.q_tokens.dtype)).last_hidden_state  # [chunk, 1500, width]
        windows = frames.unfold(1, self.kernel, self.stride).transpose(-1, -2)  # [chunk, window, kernel, width]
        windows = windows.reshape(-1, self.kernel, windows.shape[-1])
        queries = self.q_tokens.expand(windows.shape[0], -1, -1)
        out = self.qformer(query_embeds=queries, encoder_hidden_states=windows).last_hidden_state
        out = self.audio_proj(out)  # [chunk * window, query, d_model]
        return out.reshape(-1, out.shape[-1])


class VideoSalmonn2Plus(PreTrainedModel):
    """video-SALMONN 2+: Qwen2.5-VL (``vl``) plus the audio branch (``audio``); see the module docstring."""

    config_class = SalmonnConfig
    config: SalmonnConfig
    main_input_name = "input_ids"
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock", "WhisperEncoderLayer"]

    def __init__(self, config: SalmonnConfig):
        super().__init__(config)
        self.vl = Qwen2_5_VLForConditionalGeneration(config.vl_config)
        self.audio = SalmonnAudioEncoder(config)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, SalmonnAudioEncoder):
            init.normal_(module.q_tokens, std=self.config.qformer_config.initializer_range)
        else:
            super()._init_weights(module)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.vl.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Linear:
        return self.vl.lm_head

    def embed(
        self,
        input_ids: Int[torch.Tensor, "batch pos"],
        pixel_values: Float[torch.Tensor, "patch dim"] | None = None,
        image_grid_thw: Int[torch.Tensor, "image 3"] | None = None,
        pixel_values_videos: Float[torch.Tensor, "patch dim"] | None = None,
        video_grid_thw: Int[torch.Tensor, "video 3"] | None = None,
        input_features: Float[torch.Tensor, "chunk mel frame"] | None = None,
    ) -> Float[torch.Tensor, "batch pos d_model"]:
        """Token embeddings with image, video and audio features in place of their placeholders."""
        embeds = self.get_input_embeddings()(input_ids)
        vl, cfg = self.vl.model, self.config.vl_config
        for what, token_id, given in (("image", cfg.image_token_id, pixel_values),
                                      ("video", cfg.video_token_id, pixel_values_videos),
                                      ("audio", self.config.audio_token_id, input_features)):
            if given is None and bool((input_ids == token_id).any()):
                raise ModelError(f"the tokens hold {what} placeholders but no {what} input was given")
        if pixel_values is not None:
            feats = torch.cat(vl.get_image_features(pixel_values, image_grid_thw).pooler_output)
            embeds = _scatter(embeds, input_ids, cfg.image_token_id, feats, "image")
        if pixel_values_videos is not None:
            feats = torch.cat(vl.get_video_features(pixel_values_videos, video_grid_thw).pooler_output)
            embeds = _scatter(embeds, input_ids, cfg.video_token_id, feats, "video")
        if input_features is not None:
            embeds = _scatter(embeds, input_ids, self.config.audio_token_id, self.audio(input_features), "audio")
        return embeds

    def forward(
        self,
        input_ids: Int[torch.Tensor, "batch pos"] | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: Int[torch.Tensor, "3 batch pos"] | None = None,
        inputs_embeds: Float[torch.Tensor, "batch pos d_model"] | None = None,
        pixel_values: Float[torch.Tensor, "patch dim"] | None = None,
        image_grid_thw: Int[torch.Tensor, "image 3"] | None = None,
        pixel_values_videos: Float[torch.Tensor, "patch dim"] | None = None,
        video_grid_thw: Int[torch.Tensor, "video 3"] | None = None,
        input_features: Float[torch.Tensor, "chunk mel frame"] | None = None,
        cache: Cache | None = None,
        **kwargs: Any,
    ):
        """Logits (``.logits``) of the whole model, or of the LLM alone given ``inputs_embeds``."""
        media = dict(pixel_values=pixel_values, image_grid_thw=image_grid_thw, pixel_values_videos=pixel_values_videos,
                     video_grid_thw=video_grid_thw, input_features=input_features)
        has_media = any(v is not None for v in media.values())
        if inputs_embeds is None:
            if input_ids is None:
                raise ModelError("pass input_ids (with media) or inputs_embeds")
            inputs_embeds = self.embed(input_ids, **media)
        elif has_media:
            raise ModelError("media tensors go with input_ids; inputs_embeds already holds the media features")
        if position_ids is None and has_media:
            raise ModelError(
                "video-SALMONN 2+ needs explicit 3-D position_ids with media: use m.prepare(sample).inputs"
            )
        return self.vl(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                       cache=cache, **kwargs)


def _scatter(embeds, ids, token_id: int, feats, what: str):
    mask = ids == token_id
    if int(mask.sum()) != feats.shape[0]:
        raise ModelError(f"{feats.shape[0]} {what} features for {int(mask.sum())} placeholder tokens")
    return embeds.masked_scatter(mask.unsqueeze(-1).expand_as(embeds), feats.to(embeds.dtype))


@dataclass(frozen=True)
class SalmonnProcessor:
    """The tokenizer and the media processors video-SALMONN 2+ was fed by.

    A released checkpoint directory holds the tokenizer and Qwen2.5-VL's image processor
    config (``preprocessor_config.json``); the video processor takes the image processor's
    patch settings, and the audio front end is Whisper's with 128 mel bins, as the
    released inference code builds them.
    """

    tokenizer: Any
    image_processor: Any
    video_processor: Any
    feature_extractor: Any

    @classmethod
    def from_pretrained(cls, path: str | Path) -> SalmonnProcessor:
        from transformers import AutoTokenizer, Qwen2VLImageProcessor, Qwen2VLVideoProcessor, WhisperFeatureExtractor

        path = Path(path)
        if not (path / "preprocessor_config.json").exists():
            raise ModelError(f"{path} has no preprocessor_config.json: copy Qwen2.5-VL's image processor config there")
        image = Qwen2VLImageProcessor.from_pretrained(str(path))
        video = Qwen2VLVideoProcessor(
            patch_size=image.patch_size, temporal_patch_size=image.temporal_patch_size, merge_size=image.merge_size,
            image_mean=image.image_mean, image_std=image.image_std,
        )
        return cls(
            tokenizer=AutoTokenizer.from_pretrained(str(path)),
            image_processor=image,
            video_processor=video,
            feature_extractor=WhisperFeatureExtractor(
                feature_size=128, sampling_rate=16000, chunk_length=CHUNK_SECONDS
            ),
        )

    def save_pretrained(self, path: str | Path) -> None:
        self.tokenizer.save_pretrained(str(path))
        self.image_processor.save_pretrained(str(path))
