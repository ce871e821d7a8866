"""Qwen3-Omni (the thinker of Qwen3-Omni-30B-A3B) as an AVModel.

The thinker is `Qwen3OmniMoeThinkerForConditionalGeneration`: a Qwen3 mixture-of-experts
decoder (48 layers of 128 experts, 8 active; queries and keys RMS-normalised per head
before the rotary embedding), a ViT with 16 px patches merged 2 x 2 (32 px per token),
and an audio encoder giving 13 tokens per second. Its decoder map is
`avmech.models.decoders.Qwen3OmniDecoder`.

Input layout, as the released model is fed (qwen-omni-utils' ``process_mm_info`` with its
default patch size, as the Qwen3-Omni cookbooks call it, then `Qwen3OmniMoeProcessor`):

- Frames: sampled at 2 fps and sized to multiples of 28 px within qwen-omni-utils' per-frame
  budget, exactly as for Qwen2.5-Omni (`avmech.models.omni`); the processor then resizes
  them to multiples of 32 px within its own bounds (``processor_video_min_pixels`` ..
  ``processor_video_max_pixels``: its defaults, 128 .. 768 tokens per grid step). Two
  frames make one temporal grid step of ``seconds_per_grid = 2 / fps`` seconds.
- Audio: 16 kHz Whisper log-mel features (128 bins), 13 tokens per second.
- Audio in video: ``<|vision_start|><|audio_start|> [V0][A0][V1][A1] ... <|audio_end|><|vision_end|>``
  interleaved per grid step by position ids: grid step g sits at ``t_g = 13 g seconds_per_grid``
  and audio token k at ``k``; step g's video tokens come first, then the audio tokens with
  ``t_g <= k < t_(g+1)`` (the processor's ``replace_video_with_audio_token``). The
  `TokenMap` records each token's grid step as its ``chunk`` and its time in seconds.
- Interleaved items: ``<|vision_start|><|image_pad|>...<|vision_end|>`` per image and
  ``<|audio_start|><|audio_pad|>...<|audio_end|>`` per audio clip, in question order.
- The chat: ChatML with no system turn unless the sample has a system prompt (the released
  template inserts none), ending with ``<|im_start|>assistant\\n``.

Positions come from the model's own ``get_rope_index``, computed once: 3 rows (temporal,
height, width). Text after a medium continues from the medium's largest position + 1;
temporal positions of video are ``t_g`` and may be fractional.

DeepStack. The ViT also emits features from early blocks (``deepstack_visual_indexes``:
blocks 8, 16, 24 of 27 in the release), merged to the text width; the text model adds
level i to the residual stream of the image and video positions *after decoder layer i*
(layers 0, 1, 2), outside any layer. ``m.decoder.injected_layers`` names those layers.
What it means for the primitives:

- Knockouts: blocking attention edges *from* video positions does not stop the visual
  information DeepStack writes into those positions' own residual stream in the first
  layers; it only stops it from moving to other positions through attention. (Blocking
  edges *into* a video position leaves its DeepStack additions in place too.) A video
  position knocked out of every layer still carries its input embedding and the
  DeepStack levels, and so do the keys and values it offers wherever it is not blocked.
- Sites: ``resid_post.i`` of an injected layer is the layer's output *before* the
  injection; ``resid_pre.(i+1)`` is after it. A patch or ablation of ``resid_post.i``
  is therefore followed by the injection; one of ``resid_pre.(i+1)`` replaces it.
- Token drops before the last DeepStack layer are refused (the injection runs at full
  length); drop after it. The affected-region engine adds the injection at the rows it
  recomputes (`Qwen3OmniDecoder.after_layer`), so region sweeps equal full runs.

The encoders run once (`encode`): the audio and visual features are scattered into the
token embeddings, and the visual encoders' outputs travel with every run as the model's
own ``mm_encoder_outputs`` (with ``input_ids`` to find their placeholders), so that
``m.hf(inputs_embeds=..., position_ids=..., **extra)`` is the full model: it places the
visual features again (the same values) and adds the DeepStack levels itself.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avmech.errors import ModelError
from avmech.models.base import Family, load_processor
from avmech.models.decoders import Qwen3OmniDecoder
from avmech.models.omni import OmniModel
from avmech.models.qwen3_omni_tiny import QWEN3_OMNI_SIZES, save_qwen3_omni
from avmech.models.thinker import load_thinker
from avmech.prepared import Encoded, Prepared
from avmech.prompt import Built, Part, PromptBuilder, Slot, Text, chat_parts, user_parts
from avmech.sample import AVSample


class Qwen3OmniModel(OmniModel):
    """Qwen3-Omni thinker. Media policy keys: Qwen2.5-Omni's (`OmniModel`, qwen-omni-utils'
    rules) and ``processor_video_min_pixels`` / ``processor_video_max_pixels``, the
    processor's per-frame bounds at 32 px."""

    family = "qwen3-omni"
    policy_defaults = dict(OmniModel.policy_defaults, processor_video_min_pixels=128 * 32 * 32,
                           processor_video_max_pixels=768 * 32 * 32)

    def __init__(self, hf, processor, name: str, media_policy: dict[str, Any] | None = None,
                 served_layers: int | None = None):
        cfg = hf.config
        self.decoder = Qwen3OmniDecoder(injected_layers=tuple(range(len(cfg.vision_config.deepstack_visual_indexes))),
                                        visual_ids=(cfg.image_token_id, cfg.video_token_id))
        super().__init__(hf, processor, name, media_policy=media_policy, served_layers=served_layers)
        self.decoder.mlp_flops(self.llm_module)  # MLPs the FLOP model cannot count are refused at load

    # ---- prompt --------------------------------------------------------------------
    def parts(self, s: AVSample, video_audio: bool) -> list[Part]:
        """ChatML turns around the user turn (the clip first); a system turn only when the
        sample has a system prompt, as the released template renders it."""
        lead = (Slot("video", with_audio=video_audio) if s.video is not None
                else Slot("audio") if s.audio is not None else None)
        turns = chat_parts(s.system or "", user_parts(s, lead))
        return turns if s.system is not None else [p for p in turns if not (isinstance(p, Text) and p.role == "system")]

    def _video_size(self, n_frames: int) -> dict[str, int]:
        """The processor's per-frame bounds: it resizes the 28 px frames to 32 px multiples within them."""
        pol = self.policy
        return {"shortest_edge": pol["processor_video_min_pixels"], "longest_edge": pol["processor_video_max_pixels"]}

    def _build(self, s: AVSample, parts: list[Part], out) -> Built:
        """The expanded prompt, tokenized once, with its TokenMap (see `avmech.prompt`)."""
        from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import _get_feat_extract_output_lengths

        cfg, tok = self.config, self.tokenizer
        n_audio: list[int] = []
        if "feature_attention_mask" in out:
            lengths = out["feature_attention_mask"].sum(-1)
            n_audio = [int(x) for x in _get_feat_extract_output_lengths(lengths, cfg.audio_config.n_window)]
        audio, images = iter(n_audio), iter(out.get("image_grid_thw", []))
        items = list(s.items)
        rate = cfg.position_id_per_seconds

        def expand(b: PromptBuilder, slot: Slot) -> None:
            tag = dict(item=slot.item, item_role=items[slot.item].role) if slot.item >= 0 else {}
            if slot.kind == "video":
                b.run(tok.vision_bos_token, 1, "marker")
                if slot.with_audio:
                    b.run(tok.audio_bos_token, 1, "marker")
                    self._interleave(b, s, out, next(audio))
                    b.run(tok.audio_eos_token, 1, "marker")
                else:
                    cells, spg = self._video_cells(out)
                    b.run(tok.video_token, len(cells), "video", grid=cells, time=cells[:, 0] * spg)
                b.run(tok.vision_eos_token, 1, "marker")
            elif slot.kind == "audio":
                na = next(audio)
                b.run(tok.audio_bos_token, 1, "marker", **tag)
                b.run(tok.audio_token, na, "audio", time=np.arange(na) / rate, **tag)
                b.run(tok.audio_eos_token, 1, "marker", **tag)
            else:
                _, h, w = (int(x) for x in next(images))
                m = self.processor.image_processor.merge_size
                cells = [(0, r, c) for r in range(h // m) for c in range(w // m)]
                b.run(tok.vision_bos_token, 1, "marker", **tag)
                b.run(tok.image_token, len(cells), "image", grid=cells, **tag)
                b.run(tok.vision_eos_token, 1, "marker", **tag)

        b = PromptBuilder(tok, {"video": cfg.video_token_id, "audio": cfg.audio_token_id, "image": cfg.image_token_id})
        b.add(parts, expand)
        return b.build(s)

    def _interleave(self, b: PromptBuilder, s: AVSample, out, n_audio: int) -> None:
        """Grid step by grid step: step g's video tokens, then the audio tokens k with
        ``t_g <= k < t_(g+1)``, ``t_g = g * seconds_per_grid * 13`` (the processor's rule).

        ``seconds_per_grid`` is recomputed as the processor computed it from the frame
        rate `prepare` passed (``2 / fps`` in double precision; the float32 copy in the
        processor's output can fall on the other side of an audio index)."""
        cells, _ = self._video_cells(out)
        steps = np.unique(cells[:, 0])
        total, native_fps = self.native_frames(s)
        tps = self.processor.video_processor.temporal_patch_size
        spg = tps / (len(steps) * tps / total * native_fps)  # the frame rate as `_video_frames` computes it
        first = np.searchsorted(np.arange(n_audio), steps * spg * self.processor.position_id_per_seconds, side="left")
        bounds, rate = [*first.tolist()[1:], n_audio], self.config.position_id_per_seconds
        for g, a, z in zip(steps, first.tolist(), bounds):
            at = np.flatnonzero(cells[:, 0] == g)
            b.run(self.tokenizer.video_token, len(at), "video", grid=cells[at], time=g * spg, chunk=int(g))
            if z > a:
                b.run(self.tokenizer.audio_token, z - a, "audio", time=np.arange(a, z) / rate, chunk=int(g))

    # ---- encoders ------------------------------------------------------------------
    def encode_media(self, p: Prepared) -> Encoded:
        """Token embeddings with the audio and visual features in place; the visual
        encoders' outputs (pooled and DeepStack levels) and the ids go in ``extra``."""
        from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import BaseModelOutputWithDeepstackFeatures

        inp = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in p.inputs.items()}
        ids, core, cfg = inp["input_ids"], self.hf.model, self.config
        embeds = core.get_input_embeddings()(ids)

        def scatter(embeds, token_id, feats):
            at = ids == token_id
            if int(at.sum()) != feats.shape[0]:
                raise ModelError(f"{feats.shape[0]} features for {int(at.sum())} placeholders of id {token_id}")
            return embeds.masked_scatter(at.unsqueeze(-1).expand_as(embeds), feats.to(embeds.dtype))

        if "input_features" in inp:
            feats = core.get_audio_features(inp["input_features"].to(self.dtype), inp["feature_attention_mask"],
                                            return_dict=True).last_hidden_state
            embeds = scatter(embeds, cfg.audio_token_id, feats)
        encoded: dict[str, Any] = {}
        for key, token_id, pixels, grid, encoder in (
            ("image", cfg.image_token_id, "pixel_values", "image_grid_thw", core.get_image_features),
            ("video", cfg.video_token_id, "pixel_values_videos", "video_grid_thw", core.get_video_features),
        ):
            if pixels in inp:
                out = encoder(inp[pixels], inp[grid], return_dict=True)
                encoded[key] = BaseModelOutputWithDeepstackFeatures(pooler_output=out.pooler_output,
                                                                    deepstack_features=out.deepstack_features)
                embeds = scatter(embeds, token_id, torch.cat(out.pooler_output))
        extra = {"input_ids": ids, "mm_encoder_outputs": encoded} if encoded else {}
        return Encoded(embeds, p.position_ids.to(self.device), extra)


def load_qwen3_omni(path: str | Path, name: str, media_policy: dict[str, Any] | None = None, decoder: str = "local",
                    meta: bool = False, **kwargs) -> Qwen3OmniModel:
    """The thinker of a Qwen3-Omni checkpoint, whichever way it was saved (`load_thinker`): a
    released one (model type ``qwen3_omni_moe``, with the talker's and code2wav's weights,
    never read) or a thinker-only one; ``meta=True`` builds it without weights."""
    from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

    hf, served = load_thinker(Qwen3OmniMoeThinkerForConditionalGeneration, path, released="qwen3_omni_moe",
                              decoder=decoder, meta=meta, **kwargs)
    return Qwen3OmniModel(hf, load_processor(path), name=name, media_policy=media_policy, served_layers=served)


FAMILY = Family(
    name="qwen3-omni",
    recognises=lambda config: config.get("model_type") in ("qwen3_omni_moe", "qwen3_omni_moe_thinker"),
    load=load_qwen3_omni,
    embedded={name: partial(save_qwen3_omni, name) for name in QWEN3_OMNI_SIZES},
)
