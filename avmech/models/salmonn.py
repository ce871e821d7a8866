"""video-SALMONN 2+ (3B, 7B) as an AVModel: its prompts, laid out as the released model was fed.

The network is in `avmech.models.salmonn_modeling`, the released checkpoint layout in
`avmech.models.salmonn_checkpoint`, the sampling and position rules in
`avmech.models.salmonn_inputs`. Here a sample becomes a prompt:

ChatML with the released system prompt, ending after the assistant header (the last
token is its ``\\n``, where the answer letter is read)::

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n
    <|vision_start|>[V x N][A x n_0][V x N][A x n_1]...<|vision_end|>\\n{question and options}<|im_end|>\\n
    <|im_start|>assistant\\n

- Video: ``round(duration / 0.1)`` frames clamped to [16, 768], taken evenly; fps =
  frames / duration; two frames make a temporal grid step of ``spg = 2 / fps`` seconds;
  each step gives N = H x W merged 28 px cells (``<|video_pad|>``, role ``video``).
- Audio (the clip's own track, or ``audio=``): 2 tokens per second, in whole 30-second
  chunks of 60 (``<|audio_pad|>``); tokens past the end of the sound encode padding
  silence and get their own role, ``audio_pad``; token k's time is k / 2 s.
- Interleaving: grid step g is followed by the audio tokens [f_g, f_(g+1)) with
  f_g = floor(2 g spg); the last step takes all the rest, the padding included: the
  released pipeline on its main branch (since 2025-09-26). Media policy
  ``audio_interleave="even"`` reproduces the July 2025 release's even split instead
  (see `MediaPolicy`). The TokenMap's ``chunk`` of a video or audio token is its
  grid step.
- Video only: the V runs alone. Audio only: ``<|vision_start|>[A ...]<|vision_end|>\\n``
  (the released code reuses the vision markers for audio).
- Interleaved items (images and audio clips placed at their tags in the question):
  an image is ``<|vision_start|><|image_pad|>...<|vision_end|>``, an audio clip
  ``<|vision_start|><|audio_pad|>...<|vision_end|>`` padded to whole 30-second chunks
  like any audio; each item's tokens and its two markers carry its item index and role.

Position ids come in two modes (see `avmech.models.salmonn_inputs`): ``"official"``, what
the released inference code computes (the default), and ``"aligned"``, the time-aligned
scheme of training. Choose at load time, ``avmech.load("tiny-salmonn", position_mode="aligned")``,
by setting ``m.position_mode``, or per call, ``m.prepare(sample, position_mode="aligned")``.
Either way they are explicit in ``p.inputs["position_ids"]``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float

from avmech import media
from avmech.errors import InputError, ModelError
from avmech.models.base import MEDIA_POLICY_FILE, AVModel, Family
from avmech.models.decoders import QwenDecoder
from avmech.models.salmonn_tiny import SALMONN_SIZES, save_salmonn
from avmech.prepared import Encoded, Prepared
from avmech.models.salmonn_checkpoint import read_released, write_released
from avmech.models.salmonn_inputs import Block, MediaPolicy, audio_per_step, check_position_mode, position_ids
from avmech.models.salmonn_modeling import CHUNK_SECONDS, SalmonnProcessor, VideoSalmonn2Plus
from avmech.prompt import Part, PromptBuilder, Slot, chat_parts, check_text, item_slots, render, user_parts
from avmech.sample import AVSample

DEFAULT_SYSTEM = "You are a helpful assistant."
MEDIA_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "input_features")


@dataclass(frozen=True, eq=False)
class AudioClip:
    """One audio stream as model input: Whisper features of its 30 s chunks and each token's time."""

    features: Float[torch.Tensor, "chunk mel frame"]
    times: np.ndarray  # seconds, one per token
    duration: float  # of the sound itself, before padding

    @property
    def real(self) -> np.ndarray:
        return self.times < self.duration


class SalmonnModel(AVModel):
    """video-SALMONN 2+; media policy keys are the fields of `MediaPolicy` (defaults = the released rules)."""

    family = "video-salmonn2+"
    decoder = QwenDecoder()
    audio_paths = ("audio",)
    vision_paths = ("vl.model.visual",)

    def __init__(self, hf: VideoSalmonn2Plus, processor: SalmonnProcessor, name: str,
                 media_policy: dict[str, Any] | None = None, position_mode: str = "official",
                 served_layers: int | None = None):
        self.policy = MediaPolicy.from_dict(media_policy)
        self.position_mode = check_position_mode(position_mode)
        super().__init__(hf, processor, name=name, media_policy=media_policy, served_layers=served_layers)
        cfg = hf.config
        self.token_ids = dict(
            video=cfg.vl_config.video_token_id, image=cfg.vl_config.image_token_id, audio=cfg.audio_token_id,
            start=cfg.vl_config.vision_start_token_id, end=cfg.vl_config.vision_end_token_id,
        )

    # ---- media -------------------------------------------------------------------
    def _video_frames(self, s: AVSample) -> tuple[np.ndarray, float]:
        """Frames sampled by the released rules, and their rate."""
        total, native_fps = self.native_frames(s)
        if total < 1 or native_fps <= 0:
            what = "array" if isinstance(s.video, np.ndarray) else f"'{s.video}'"
            raise InputError(f"video {what} has no frames or no frame rate: pass fps= or re-encode the clip")
        idx, fps = self.policy.frame_indices(total, native_fps)
        if isinstance(s.video, np.ndarray):
            return s.video[idx], fps
        frames = media.read_video(s.video).frames
        return frames[np.minimum(idx, len(frames) - 1)], fps

    def _audio(self, source, sample_rate: int | None, what: str) -> AudioClip:
        wave = media.load_wave(source, sample_rate, recipe="ffmpeg")  # torchcodec, num_channels=1
        if not len(wave):
            raise InputError(f"{what} is empty: the audio branch needs sound")
        sr, duration = media.SAMPLE_RATE, len(wave) / media.SAMPLE_RATE
        wave = np.pad(wave, (0, max(0, round(self.policy.audio_min_seconds * sr) - len(wave))))
        step = CHUNK_SECONDS * sr
        fe = self.processor.feature_extractor
        chunks = [fe(wave[k:k + step], sampling_rate=sr, return_tensors="pt")["input_features"][0]
                  for k in range(0, len(wave), step)]
        cfg = self.hf.config
        per_chunk = cfg.tokens_per_chunk // cfg.query_length
        windows = np.arange(len(chunks) * per_chunk).repeat(cfg.query_length)
        times = (windows // per_chunk) * CHUNK_SECONDS + (windows % per_chunk) * cfg.second_stride
        return AudioClip(torch.stack(chunks), times, duration)

    def _media(self, s: AVSample, parts: list[Part]) -> tuple[dict[str, Any], list[AudioClip], float | None]:
        """Processor outputs for the media of ``parts``, the audio clips in prompt order, and spg."""
        out: dict[str, Any] = {}
        clips: list[AudioClip] = []
        spg = None
        if s.video is not None:
            wants_sound = s.audio is None and s.use_video_audio and not isinstance(s.video, np.ndarray)
            self.check_video(s, wants_sound)
            frames, fps = self._video_frames(s)
            vp = self.processor.video_processor
            size = {"shortest_edge": self.policy.video_min_frame_pixels,
                    "longest_edge": self.policy.frame_max_pixels(len(frames))}
            out.update(vp(videos=[frames], size=size, do_sample_frames=False, cap_pixels_per_frame=False,
                          return_tensors="pt"))
            spg = vp.temporal_patch_size / fps
            if wants_sound:
                clips.append(self._audio(s.video, None, "the clip's audio"))
        if s.audio is not None:
            clips.append(self._audio(s.audio, s.sample_rate, "the audio"))
        images = []
        for slot in item_slots(parts):  # in prompt order
            it = s.items[slot.item]
            if it.kind == "audio":
                clips.append(self._audio(it.data, it.sample_rate, f"audio item {it.tag}"))
            else:
                images.append(it.image())
        if images:
            size = {"shortest_edge": self.policy.image_min_pixels, "longest_edge": self.policy.image_max_pixels}
            out.update(self.processor.image_processor(images=images, size=size, return_tensors="pt"))
        if clips:
            out["input_features"] = torch.cat([c.features for c in clips])
        return out, clips, spg

    # ---- prompt --------------------------------------------------------------------
    def _grid(self, grid_thw) -> tuple[int, int, int]:
        merge = self.processor.video_processor.merge_size
        t, h, w = (int(x) for x in grid_thw)
        return t, h // merge, w // merge

    def _video_block(self, b: PromptBuilder, grid_thw, spg: float, clip: AudioClip | None) -> tuple[int, Block]:
        """``<|vision_start|>`` each grid step's video tokens, then its audio tokens ``<|vision_end|>``."""
        t, h, w = self._grid(grid_thw)
        b.run(self.token_ids["start"], 1, "marker")
        first, kinds, k = None, [], 0
        counts = audio_per_step(t, spg, len(clip.times), self.policy.audio_interleave) if clip is not None else [0] * t
        for g, n in enumerate(counts):
            cells = [(g, r, c) for r in range(h) for c in range(w)]
            at = b.run(self.token_ids["video"], len(cells), "video", grid=cells, time=g * spg, chunk=g)
            first = at if first is None else first
            if n:
                self._audio_run(b, clip, k, k + n, chunk=g)
            kinds += [0] * len(cells) + [1] * n
            k += n
        b.run(self.token_ids["end"], 1, "marker")
        return first, Block("video", -1, np.array(kinds, dtype=np.int8), (t, h, w), spg)

    def _image_block(self, b: PromptBuilder, grid_thw, **item) -> tuple[int, Block]:
        t, h, w = self._grid(grid_thw)
        cells = [(0, r, c) for r in range(h) for c in range(w)]
        b.run(self.token_ids["start"], 1, "marker", **item)
        first = b.run(self.token_ids["image"], len(cells), "image", grid=cells, **item)
        b.run(self.token_ids["end"], 1, "marker", **item)
        return first, Block("image", -1, np.zeros(len(cells), dtype=np.int8), (t, h, w))

    def _audio_run(self, b: PromptBuilder, clip: AudioClip, a: int, z: int, chunk: int = -1, **item) -> int | None:
        """Audio tokens a..z-1 of a clip: those of its sound as ``audio``, the padding as ``audio_pad``."""
        real, first = clip.real[a:z], None
        for role, mask in (("audio", real), ("audio_pad", ~real)):
            if mask.any():
                at = b.run(self.token_ids["audio"], int(mask.sum()), role, time=clip.times[a:z][mask], chunk=chunk, **item)
                first = at if first is None else first
        return first

    def _audio_block(self, b: PromptBuilder, clip: AudioClip, **item) -> tuple[int, Block]:
        b.run(self.token_ids["start"], 1, "marker", **item)
        first = self._audio_run(b, clip, 0, len(clip.times), **item)
        b.run(self.token_ids["end"], 1, "marker", **item)
        return first, Block("audio", -1, np.ones(len(clip.times), dtype=np.int8))

    def prepare(self, s: AVSample, *, position_mode: str | None = None) -> Prepared:
        """Model inputs and TokenMap of ``s``; positions by ``position_mode`` (default: ``self.position_mode``)."""
        if not isinstance(s, AVSample):
            raise InputError(f"prepare takes an avmech.AVSample, got {type(s).__name__}")
        mode = check_position_mode(position_mode or self.position_mode)
        parts = self._parts(s)
        check_text(parts, self.tokenizer)
        out, clips, spg = self._media(s, parts)
        clips, images, items = iter(clips), iter(out.get("image_grid_thw", [])), list(s.items)
        blocks: list[tuple[int, Block]] = []  # (the part holding its first token, the block)

        def expand(b: PromptBuilder, slot: Slot) -> None:
            if slot.item < 0 and slot.kind == "video":
                blocks.append(self._video_block(b, out["video_grid_thw"][0], spg, next(clips, None)))
                return
            tag = dict(item=slot.item, item_role=items[slot.item].role) if slot.item >= 0 else {}
            if slot.kind == "image":
                blocks.append(self._image_block(b, next(images), **tag))
            else:
                blocks.append(self._audio_block(b, next(clips), **tag))

        b = PromptBuilder(self.tokenizer, {"video": self.token_ids["video"], "image": self.token_ids["image"],
                                          "audio": self.token_ids["audio"], "audio_pad": self.token_ids["audio"]})
        b.add(parts, expand)
        built = b.build(s)
        ids = built.ids
        self.check_length(ids.shape[1])
        placed = [dataclasses.replace(blk, start=built.spans[piece][0]) for piece, blk in blocks]
        inputs = {k: v for k, v in out.items() if k in MEDIA_KEYS}
        inputs.update(input_ids=ids, attention_mask=torch.ones_like(ids),
                      position_ids=position_ids(ids.shape[1], placed, mode))
        return Prepared(sample=s, inputs=inputs, tokens=built.tokens, answer_ids=built.answer_ids,
                        text=render(parts, lambda slot: f"<{slot.kind}>"))

    def _parts(self, s: AVSample) -> list[Part]:
        """ChatML turns; the clip's block comes first, then a line break, as the released prompts have it."""
        lead = Slot("video") if s.video is not None else Slot("audio") if s.audio is not None else None
        system = s.system if s.system is not None else DEFAULT_SYSTEM
        return chat_parts(system, user_parts(s, lead, after_lead="\n"))

    # ---- encoders and checkpoints -------------------------------------------------------
    def encode_media(self, p: Prepared) -> Encoded:
        """Token embeddings with the image, video and audio features scattered in at their placeholders."""
        media_inputs = {k: v.to(self.device) for k, v in p.inputs.items() if k in MEDIA_KEYS}
        return Encoded(self.hf.embed(p.input_ids.to(self.device), **media_inputs), p.position_ids.to(self.device))

    def save_pretrained(self, path: str | Path) -> None:
        """Write the released checkpoint layout, processor and media policy: `avmech.load(path)` gives it back."""
        path = Path(path)
        write_released(self.hf, path)
        self.processor.save_pretrained(path)
        if self.media_policy:
            (path / MEDIA_POLICY_FILE).write_text(json.dumps(self.media_policy, indent=1))


def load_salmonn(
    path: str | Path,
    name: str,
    media_policy: dict[str, Any] | None = None,
    *,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype | str | None = "auto",
    device_map: str | torch.device | None = None,
    position_mode: str = "official",
    decoder: str = "local",
    meta: bool = False,
) -> SalmonnModel:
    """Load a checkpoint in the released layout as a `SalmonnModel`.

    ``device_map`` is one device ("cuda", "cuda:1", "cpu") or "auto" (the first GPU if
    any); ``position_mode`` is "official" or "aligned" (see the module docstring);
    ``decoder="server"`` reads only the encoders, embeddings and one decoder layer;
    ``meta=True`` builds the architecture without weights.
    """
    if device_map == "auto":
        device_map = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_map or "cpu")
    hf, served = read_released(Path(path), attn_implementation=attn_implementation, dtype=dtype, device=device,
                               keep_layers=1 if decoder == "server" else None, meta=meta)
    return SalmonnModel(hf, SalmonnProcessor.from_pretrained(path), name=name, media_policy=media_policy,
                        position_mode=position_mode, served_layers=served if decoder == "server" else None)


def is_released_salmonn(config: dict[str, Any]) -> bool:
    """Whether a ``config.json`` dict is a video-SALMONN 2+ checkpoint in the released layout."""
    return config.get("model_type") == "qwen2_5_vl" and isinstance(config.get("audio_config"), dict)


FAMILY = Family(
    name="video-salmonn2+",
    recognises=is_released_salmonn,
    load=load_salmonn,
    embedded={name: partial(save_salmonn, name) for name in SALMONN_SIZES},
    options=("position_mode",),
)
