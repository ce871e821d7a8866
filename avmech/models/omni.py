"""Qwen2.5-Omni (thinker only) as an AVModel.

Input layout, as the released model is fed (qwen-omni-utils + `Qwen2_5OmniProcessor`):

- Frames: the clip is sampled at 2 fps (an even count, 4..768 frames, evenly spaced
  over the native frames), each frame sized to a multiple of 28 px within a per-frame
  pixel budget that shrinks as the clip gets longer; two frames make one temporal grid
  step, so a step covers ``second_per_grid = 2 / fps`` seconds.
- Audio: 16 kHz Whisper log-mel features (128 bins); the encoder emits one token per
  40 ms, i.e. 25 per second.
- Audio in video: ``<|vision_bos|><|audio_bos|> [V0][A0][V1][A1] ... <|audio_eos|><|vision_eos|>``
  where chunk j holds the video tokens and audio tokens whose temporal position index
  (25 per second) falls in ``[50 j, 50 (j + 1))``, i.e. 2-second chunks. So "video" and
  "audio" are not contiguous spans; the `TokenMap` records each token's chunk and time.
- Interleaved items: each image as ``<|vision_bos|><|IMAGE|>...<|vision_eos|>`` and each
  audio clip as ``<|audio_bos|><|AUDIO|>...<|audio_eos|>``, in question order.

The prompt is assembled here piece by piece (so each piece's role is known), rendered
with the processor's own chat template conventions (ChatML, the official system
prompt), expanded by the processor itself, and the two are checked to agree token for
token. Position ids come from the model's own ``get_rope_index``, computed once.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.functional import InterpolationMode, resize

from avmech import media
from avmech.errors import InputError, ModelError
from avmech.models.base import AVModel, Family, load_processor
from avmech.models.decoders import QwenDecoder
from avmech.models.omni_tiny import OMNI_SIZES, save_omni
from avmech.models.thinker import load_thinker
from avmech.prepared import Encoded, Prepared
from avmech.prompt import (
    Built, Part, PromptBuilder, Slot, chat_parts, check_text, conversation, item_slots, render, user_parts,
)
from avmech.sample import AVSample, Item

# What the released chat template writes when a conversation has no system message. The
# official README's "You are Qwen, a virtual human ..." is what speech output needs; the
# thinker alone answers in text (pass AVSample(system=...) for another prompt).
DEFAULT_SYSTEM = "You are a helpful assistant."


def _smart_resize(h: int, w: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's rule: round to multiples of ``factor`` within [min_pixels, max_pixels]."""
    if max(h, w) / min(h, w) > 200:
        raise InputError(f"frame aspect ratio {w}x{h} is beyond 200: crop the media")
    hb, wb = max(factor, round(h / factor) * factor), max(factor, round(w / factor) * factor)
    if hb * wb > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        hb, wb = max(factor, math.floor(h / beta / factor) * factor), max(factor, math.floor(w / beta / factor) * factor)
    elif hb * wb < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        hb, wb = math.ceil(h * beta / factor) * factor, math.ceil(w * beta / factor) * factor
    return hb, wb


class OmniModel(AVModel):
    """Qwen2.5-Omni thinker. Media policy keys (defaults = the released rules):
    ``fps``, ``min_frames``, ``max_frames``, ``video_min_pixels``, ``video_max_pixels``,
    ``video_total_pixels``, ``image_min_pixels``, ``image_max_pixels``."""

    family = "qwen2.5-omni"
    decoder = QwenDecoder()
    audio_paths = ("model.audio_tower", "audio_tower")
    vision_paths = ("model.visual", "visual")
    policy_defaults = dict(
        fps=2.0, min_frames=4, max_frames=768,
        video_min_pixels=128 * 28 * 28, video_max_pixels=768 * 28 * 28,
        video_total_pixels=int(128000 * 28 * 28 * 0.9),
        image_min_pixels=4 * 28 * 28, image_max_pixels=16384 * 28 * 28,
    )

    @property
    def policy(self) -> dict[str, Any]:
        return {**self.policy_defaults, **self.media_policy}

    @property
    def config(self):
        return self.hf.config

    # ---- media -------------------------------------------------------------------
    def _video_frames(self, s: AVSample) -> tuple[torch.Tensor, float, float]:
        """Frames as qwen-omni-utils makes them: (float frames [T, 3, H, W], sample fps, duration s).

        ``fps`` frames per second (an even count, evenly spaced over the native frames,
        rounded to the nearest), then resized on uint8 by torchvision's antialiased
        bicubic resize to multiples of 28 px within the per-frame budget; the processor
        then only rescales and normalises them."""
        pol = self.policy
        total, native_fps = self.native_frames(s)
        native = s.video if isinstance(s.video, np.ndarray) else None
        if total < 2 or native_fps <= 0:
            raise InputError(f"video {s.video if native is None else 'array'} has {total} frame(s): need at least 2")
        factor = 2
        n = total / native_fps * pol["fps"]
        lo = math.ceil(pol["min_frames"] / factor) * factor
        hi = math.floor(min(pol["max_frames"], total) / factor) * factor
        n = max(factor, math.floor(min(max(n, lo), hi, total) / factor) * factor)
        idx = np.linspace(0, total - 1, n).round().astype(int)
        if native is None:
            frames = media.read_video(s.video).frames
            frames = frames[np.minimum(idx, len(frames) - 1)]
        else:
            frames = native[idx]
        h, w = _smart_resize(*frames.shape[1:3], 28, pol["video_min_pixels"], self._video_max_pixels(n))
        video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
        video = resize(video, [h, w], interpolation=InterpolationMode.BICUBIC, antialias=True).float()
        return video, n / total * native_fps, total / native_fps

    def _video_max_pixels(self, n_frames: int) -> float:
        pol = self.policy
        return max(min(pol["video_max_pixels"], pol["video_total_pixels"] / n_frames * 2), int(pol["video_min_pixels"] * 1.05))

    def _video_size(self, n_frames: int) -> dict[str, int]:
        """The processor's size bounds (the frames already fit them, so it does not resize again)."""
        return {"shortest_edge": self.policy["video_min_pixels"], "longest_edge": int(self._video_max_pixels(n_frames))}

    def _image(self, item: Item) -> np.ndarray:
        """An image as qwen-omni-utils' fetch_image makes it: PIL's bicubic resize to multiples of 28 px."""
        pol = self.policy
        image = item.image()
        h, w = _smart_resize(*image.shape[:2], 28, pol["image_min_pixels"], pol["image_max_pixels"])
        return np.array(Image.fromarray(image).resize((w, h), Image.Resampling.BICUBIC))

    def _audio(self, source, sample_rate: int | None, what: str) -> np.ndarray:
        wave = media.load_wave(source, sample_rate, recipe="librosa")  # qwen-omni-utils: librosa.load
        fe = self.processor.feature_extractor
        limit = fe.n_samples / fe.sampling_rate
        if len(wave) / media.SAMPLE_RATE > limit + 1e-6:
            raise InputError(
                f"{what} lasts {len(wave) / media.SAMPLE_RATE:.1f} s, longer than this model's audio limit "
                f"of {limit:.0f} s: trim the clip"
            )
        if len(wave) < 0.1 * media.SAMPLE_RATE:
            raise InputError(f"{what} is shorter than 0.1 s: the audio encoder needs at least one token")
        return wave.astype(np.float32)

    # ---- prompt --------------------------------------------------------------------
    def parts(self, s: AVSample, video_audio: bool) -> list[Part]:
        """The prompt's parts: ChatML turns around the user turn, the clip first."""
        lead = Slot("video", with_audio=video_audio) if s.video is not None else Slot("audio") if s.audio is not None else None
        return chat_parts(self.system(s), user_parts(s, lead))

    def system(self, s: AVSample) -> str:
        return s.system if s.system is not None else DEFAULT_SYSTEM

    def conversation(self, s: AVSample) -> list[dict[str, Any]]:
        """The chat-template conversation of ``s``; with no system prompt of its own, none is
        given and the released template inserts its default."""
        conv = conversation(self.parts(s, s.video is not None))
        return conv if s.system is not None else conv[1:]

    def _placeholder(self, slot: Slot) -> str:
        tok = self.tokenizer
        return {
            "video": f"{tok.vision_bos_token}{tok.video_token}{tok.vision_eos_token}",
            "image": f"{tok.vision_bos_token}{tok.image_token}{tok.vision_eos_token}",
            "audio": f"{tok.audio_bos_token}{tok.audio_token}{tok.audio_eos_token}",
        }[slot.kind]

    # ---- prepare ---------------------------------------------------------------------
    def prepare(self, s: AVSample) -> Prepared:
        if not isinstance(s, AVSample):
            raise InputError(f"prepare takes an avmech.AVSample, got {type(s).__name__}")
        has_video = s.video is not None
        video_audio = has_video and (s.audio is not None or (s.use_video_audio and not isinstance(s.video, np.ndarray)))
        call: dict[str, Any] = {}
        audios: list[np.ndarray] = []
        if has_video:
            self.check_video(s, wants_sound=video_audio)
            frames, fps, _ = self._video_frames(s)
            call["videos"] = [frames]
            call["videos_kwargs"] = {
                "size": self._video_size(len(frames)), "fps": fps, "do_sample_frames": False,
                "cap_pixels_per_frame": False,
            }
            if video_audio:
                source = s.audio if s.audio is not None else s.video
                audios.append(self._audio(source, s.sample_rate, "the clip's audio"))
                call.update(load_audio_from_video=True, audio_from_video_indices=[0])
        elif s.audio is not None:
            audios.append(self._audio(s.audio, s.sample_rate, "the audio"))
        parts = self.parts(s, video_audio)
        check_text(parts, self.tokenizer)
        items = [s.items[slot.item] for slot in item_slots(parts)]  # in prompt order
        audios += [self._audio(it.data, it.sample_rate, f"audio item {it.tag}") for it in items if it.kind == "audio"]
        images = [self._image(it) for it in items if it.kind == "image"]
        if images:
            pol = self.policy
            call["images"] = images
            call["images_kwargs"] = {"size": {"shortest_edge": pol["image_min_pixels"], "longest_edge": pol["image_max_pixels"]}}
        if audios:
            call["audio"] = audios

        text = render(parts, self._placeholder)
        out = self.processor(text=text, return_tensors="pt", **call)
        built = self._build(s, parts, out)
        ids = out["input_ids"]
        if not torch.equal(built.ids, ids):
            at = int(torch.nonzero(built.ids[0, :ids.shape[1]] != ids[0, :built.ids.shape[1]]).flatten()[:1].sum())
            raise ModelError(
                f"internal: the prompt avmech assembled differs from the processor's ids at position {at} "
                f"({self.tokenizer.convert_ids_to_tokens(built.ids[0, at:at + 3])} vs "
                f"{self.tokenizer.convert_ids_to_tokens(ids[0, at:at + 3])}); please report this with the sample"
            )
        self.check_length(ids.shape[-1])
        inputs = self._inputs(out, video_audio)
        return Prepared(sample=s, inputs=inputs, tokens=built.tokens, answer_ids=built.answer_ids, text=text)

    def _inputs(self, out, video_audio: bool) -> dict[str, Any]:
        inputs = {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
        if "video_second_per_grid" in out:
            inputs["video_second_per_grid"] = torch.as_tensor(out["video_second_per_grid"], dtype=torch.float)
        inputs["use_audio_in_video"] = video_audio
        audio_lengths = inputs["feature_attention_mask"].sum(-1) if "feature_attention_mask" in inputs else None
        position_ids, _ = self.hf.model.get_rope_index(
            inputs["input_ids"], inputs.get("image_grid_thw"), inputs.get("video_grid_thw"),
            inputs["attention_mask"], video_audio, audio_lengths, inputs.get("video_second_per_grid"),
        )
        inputs["position_ids"] = position_ids
        return inputs

    def _build(self, s: AVSample, parts: list[Part], out) -> Built:
        """The expanded prompt, tokenized once, with its TokenMap (see `avmech.prompt`)."""
        cfg, tok = self.config, self.tokenizer
        n_audio: list[int] = []
        if "feature_attention_mask" in out:
            lengths = out["feature_attention_mask"].sum(-1)
            n_audio = [int(x) for x in self.hf.model.audio_tower._get_feat_extract_output_lengths(lengths)[1]]
        audio, images = iter(n_audio), iter(out.get("image_grid_thw", []))
        items = list(s.items)
        rate = cfg.position_id_per_seconds

        def expand(b: PromptBuilder, slot: Slot) -> None:
            tag = dict(item=slot.item, item_role=items[slot.item].role) if slot.item >= 0 else {}
            if slot.kind == "video":
                b.run(tok.vision_bos_token, 1, "marker")
                if slot.with_audio:
                    b.run(tok.audio_bos_token, 1, "marker")
                    self._interleave(b, out, next(audio))
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

    def _video_cells(self, out) -> tuple[np.ndarray, float]:
        """The merged (t, row, col) cells of the video in token order, and seconds per grid step."""
        merge = self.processor.video_processor.merge_size
        t, h, w = (int(x) for x in out["video_grid_thw"][0])
        grid = np.stack(np.meshgrid(np.arange(t), np.arange(h // merge), np.arange(w // merge), indexing="ij"), -1)
        return grid.reshape(-1, 3), float(out["video_second_per_grid"][0])

    def _interleave(self, b: PromptBuilder, out, n_audio: int) -> None:
        """``[V_j][A_j]`` chunk by chunk: the video and audio tokens whose temporal position
        index (25 per second) falls in ``[50 j, 50 (j + 1))``, as the processor splits them."""
        tok, rate = self.tokenizer, self.config.position_id_per_seconds
        cells, spg = self._video_cells(out)
        per_chunk = int(rate * self.config.seconds_per_chunk)
        v_chunks = self.processor.get_chunked_index(cells[:, 0] * spg * rate, per_chunk)
        a_chunks = self.processor.get_chunked_index(np.arange(n_audio), per_chunk)
        for j in range(max(len(v_chunks), len(a_chunks))):
            if j < len(v_chunks):
                a, z = v_chunks[j]
                b.run(tok.video_token, z - a, "video", grid=cells[a:z], time=cells[a:z, 0] * spg, chunk=j)
            if j < len(a_chunks):
                a, z = a_chunks[j]
                b.run(tok.audio_token, z - a, "audio", time=np.arange(a, z) / rate, chunk=j)

    # ---- encoders ------------------------------------------------------------------
    def encode_media(self, p: Prepared) -> Encoded:
        """Token embeddings with the audio/image/video features scattered in at their placeholders."""
        inp = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in p.inputs.items()}
        ids = inp["input_ids"]
        core = self.hf.model
        embeds = core.get_input_embeddings()(ids)
        cfg = self.config

        def scatter(embeds, token_id, feats):
            mask = (ids == token_id).unsqueeze(-1).expand_as(embeds)
            if int((ids == token_id).sum()) != feats.shape[0]:
                raise ModelError(f"{feats.shape[0]} features for {int((ids == token_id).sum())} placeholders")
            return embeds.masked_scatter(mask, feats.to(embeds.dtype))

        if "input_features" in inp:
            feats = core.get_audio_features(
                inp["input_features"].to(self.dtype), inp["feature_attention_mask"], return_dict=True
            ).last_hidden_state
            embeds = scatter(embeds, cfg.audio_token_id, feats)
        if "pixel_values" in inp:
            feats = core.get_image_features(inp["pixel_values"], inp["image_grid_thw"], return_dict=True).pooler_output
            embeds = scatter(embeds, cfg.image_token_id, torch.cat(feats))
        if "pixel_values_videos" in inp:
            feats = core.get_video_features(
                inp["pixel_values_videos"], inp["video_grid_thw"], return_dict=True
            ).pooler_output
            embeds = scatter(embeds, cfg.video_token_id, torch.cat(feats))
        return Encoded(embeds, p.position_ids.to(self.device))


def load_omni(path: str | Path, name: str, media_policy: dict[str, Any] | None = None, decoder: str = "local",
              meta: bool = False, **kwargs) -> OmniModel:
    """The thinker of a Qwen2.5-Omni checkpoint, whichever way it was saved (`load_thinker`): a
    released one (model type ``qwen2_5_omni``, with the talker's weights and a speaker
    dictionary, neither read) or a thinker-only one; ``meta=True`` builds it without weights."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    hf, served = load_thinker(Qwen2_5OmniThinkerForConditionalGeneration, path, released="qwen2_5_omni",
                              decoder=decoder, meta=meta, **kwargs)
    return OmniModel(hf, load_processor(path), name=name, media_policy=media_policy, served_layers=served)


FAMILY = Family(
    name="qwen2.5-omni",
    recognises=lambda config: config.get("model_type") in ("qwen2_5_omni", "qwen2_5_omni_thinker"),
    load=load_omni,
    embedded={name: partial(save_omni, name) for name in OMNI_SIZES},
)
