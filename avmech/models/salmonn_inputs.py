"""The rules video-SALMONN 2+ was fed by: frame sampling and sizing, audio interleaving, 3-D positions.

Pure functions and small records, used by `avmech.models.salmonn.SalmonnModel` to lay a
sample out; each follows the released data pipeline and inference code
(``qwenvl/data/dataset.py``, ``inference.py``, ``get_rope_index``).

Position ids. Qwen2.5-VL's rotary embedding takes three ids per token (temporal, height,
width); text tokens have all three equal. Media tokens sit in `Block` s, and the released
code knows two ways to number them. With ``s0`` the position the block's first token
would get as text:

- ``"official"``: what the released inference computes (``inference.py`` passes neither
  the audio lengths nor the seconds per grid step, and ``generate`` recomputes the
  positions, so ``get_rope_index`` takes its vision-only branch): the first T x H x W tokens of a video block, *whatever their type*, get the
  video grid ``(s0 + 2 g, s0 + row, s0 + col)`` in grid order (g = 0..T-1; the audio
  tokens interleaved there take video cells), images ``(s0, s0 + row, s0 + col)``; every
  other token (the rest of the audio, text, audio items) counts on from the block's
  largest id + 1. Without any video or image, positions are simply 0..n-1.
- ``"aligned"``: what training computed (the time-aligned scheme): a video token of step
  g gets ``(s0 + floor(2 g spg), s0 + row, s0 + col)``, audio token k ``(s0 + k, s0, s0 + k)``
  (audio runs at 2 tokens per second, so ids are half-seconds on both streams), and the
  text after the block continues at ``s0 + (largest temporal id) + 1``. Video without
  audio and images number as in "official" but with the true ``spg``; audio alone (no
  video or image in the sample) gets ``(s0 + k, s0 + k, s0)``; audio items beside images
  count as text, as the released code does.

``floor(2 g spg)`` is computed as the released code computes it, in float32
(``(torch.arange(T) * spg * 2).long()``), both for the interleaving and for the ids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Int

from avmech.errors import InputError, ModelError

POSITION_MODES = ("official", "aligned")


def check_position_mode(mode: str) -> str:
    if mode not in POSITION_MODES:
        raise InputError(f"position_mode {mode!r} is unknown: use one of {POSITION_MODES}")
    return mode


@dataclass(frozen=True)
class MediaPolicy:
    """How media are sampled and sized; the defaults are the released inference settings.

    Frames: ``round(duration / base_interval)`` clamped to [``video_min_frames``,
    ``video_max_frames``], taken evenly; each frame within ``video_max_frame_pixels``
    (times ``0.95 * video_max_frames / frames`` when ``boost_short_clips`` and the clip has
    fewer frames than the maximum, so short clips get high resolution) and at least
    ``video_min_frame_pixels``. Images within [``image_min_pixels``, ``image_max_pixels``].
    Audio shorter than ``audio_min_seconds`` is padded with silence first.

    ``audio_interleave`` says which audio tokens follow each grid step: ``"time"`` (the
    released pipeline on its main branch since its 2025-09-26 change, which passes the
    seconds per grid step: [f_g, f_(g+1)) with f_g = floor(2 g spg), the rest, padding
    included, after the last step) or ``"even"`` (the July 2025 release only,
    ``split_into_groups``: every step gets ``A // T`` tokens, the first ``A % T`` steps
    one more, so the padding is spread over the later steps).

    Override any of them in ``avmech_media.json`` beside a checkpoint (the tiny model uses
    small frames so).
    """

    base_interval: float = 0.1
    video_min_frames: int = 16
    video_max_frames: int = 768
    video_max_frame_pixels: int = 61250
    video_min_frame_pixels: int = 4 * 28 * 28
    boost_short_clips: bool = True
    image_min_pixels: int = 16 * 28 * 28
    image_max_pixels: int = 61250
    audio_min_seconds: float = 1.0
    audio_interleave: Literal["time", "even"] = "time"

    def __post_init__(self) -> None:
        if self.audio_interleave not in ("time", "even"):
            raise ModelError(f"audio_interleave {self.audio_interleave!r} is unknown: use 'time' or 'even'")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> MediaPolicy:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values or {}) - known)
        if unknown:
            raise ModelError(f"unknown video-SALMONN 2+ media policy keys {unknown}: use {sorted(known)}")
        return cls(**(values or {}))

    def frame_indices(self, total: int, native_fps: float) -> tuple[np.ndarray, float]:
        """Native frame indices to take and the resulting sampling rate (frames / duration)."""
        duration = total / native_fps
        target = min(max(round(duration / self.base_interval), self.video_min_frames), self.video_max_frames)
        idx = np.unique(np.linspace(0, total - 1, target, dtype=int))
        return idx, len(idx) / duration

    def frame_max_pixels(self, n_frames: int) -> int:
        """The per-frame pixel budget (floored to whole pixels: the processor takes integers)."""
        budget = self.video_max_frame_pixels
        if self.boost_short_clips and n_frames < self.video_max_frames:
            budget = 0.95 * self.video_max_frames / n_frames * budget
        return math.floor(budget)


def step_starts(n_steps: int, spg: float) -> Int[torch.Tensor, " step"]:
    """``floor(2 g spg)`` for each grid step g, in float32 as the released code computes it."""
    return (torch.arange(n_steps) * spg * 2).long()


def audio_per_step(n_steps: int, spg: float, n_audio: int, rule: str = "time") -> list[int]:
    """How many audio tokens follow each grid step (see `MediaPolicy.audio_interleave`).

    "time": [f_g, f_(g+1)), the last step all the rest; steps that start beyond the audio
    get none (a clip whose sound ends early). "even": ``A // T`` each, the first ``A % T`` one more."""
    if rule == "even":
        base, extra = divmod(n_audio, n_steps)
        return [base + 1] * extra + [base] * (n_steps - extra)
    starts = step_starts(n_steps, spg).clamp(max=n_audio).tolist() + [n_audio]
    return [b - a for a, b in zip(starts, starts[1:])]


@dataclass(frozen=True, eq=False)
class Block:
    """A run of media tokens that may take grid positions, as laid out in the sequence.

    ``kinds`` holds, in sequence order, 0 for each video/image token (in grid order,
    step by step, row by row) and 1 for each audio token (in time order); ``grid`` is the
    merged (T, H, W) grid of the vision tokens, ``spg`` the seconds per grid step.
    """

    medium: Literal["video", "image", "audio"]
    start: int
    kinds: np.ndarray
    grid: tuple[int, int, int] = (0, 0, 0)
    spg: float = 0.0

    def __len__(self) -> int:
        return len(self.kinds)

    @property
    def has_audio(self) -> bool:
        return bool(self.kinds.any())


def _grid(grid: tuple[int, int, int], spg: float) -> Int[torch.Tensor, "3 cell"]:
    t, h, w = grid
    steps = step_starts(t, spg)[:, None, None].expand(t, h, w)
    rows = torch.arange(h)[None, :, None].expand(t, h, w)
    cols = torch.arange(w)[None, None, :].expand(t, h, w)
    return torch.stack([steps, rows, cols]).reshape(3, -1)


def _block_ids(block: Block, mode: str, rule: str) -> tuple[torch.Tensor, bool]:
    """(ids relative to s0 [3, covered tokens], whether the next text counts from the temporal max)."""
    if rule == "vision":  # the first T*H*W tokens take the grid, whatever they are
        spg = 0.0 if block.medium == "image" else (1.0 if mode == "official" else block.spg)
        return _grid(block.grid, spg), False
    if rule == "av":
        ids = torch.empty(3, len(block), dtype=torch.long)
        kinds = torch.from_numpy(block.kinds.astype(bool))
        ids[:, ~kinds] = _grid(block.grid, block.spg)
        k = torch.arange(int(kinds.sum()))
        ids[:, kinds] = torch.stack([k, torch.zeros_like(k), k])
        return ids, True
    k = torch.arange(len(block))  # audio alone
    return torch.stack([k, k, torch.zeros_like(k)]), True


def _rules(blocks: list[Block], mode: str) -> list[tuple[Block, str]]:
    """Which blocks take grid positions, by which rule: the branch of the released get_rope_index."""
    vision = [(b, "vision") for b in blocks if b.medium in ("video", "image")]
    if mode == "official":
        return vision
    if any(b.medium == "video" and b.has_audio for b in blocks):
        return [(b, "av") for b in blocks if b.medium == "video"]
    if vision:
        return vision
    return [(b, "audio") for b in blocks if b.medium == "audio"]


def position_ids(n: int, blocks: list[Block], mode: str) -> Int[torch.Tensor, "3 1 pos"]:
    """Explicit 3-D position ids of an ``n``-token sequence with these media blocks."""
    check_position_mode(mode)
    out = torch.empty(3, n, dtype=torch.long)
    cursor = nxt = 0
    for block, rule in _rules(blocks, mode):
        out[:, cursor:block.start] = torch.arange(block.start - cursor) + nxt
        s0 = nxt + block.start - cursor
        ids, temporal = _block_ids(block, mode, rule)
        cursor = block.start + ids.shape[1]
        out[:, block.start:cursor] = ids + s0
        nxt = int((ids[0] if temporal else ids).max()) + s0 + 1
    out[:, cursor:] = torch.arange(n - cursor) + nxt
    return out[:, None]
