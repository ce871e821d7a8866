"""Shared benchmark pieces: the bench model, realistic inputs, and repeated timing."""

from __future__ import annotations

import os
import statistics
import time
from functools import cache
from typing import Callable

import numpy as np
import torch

import avmech
from avmech import media


def setup_threads() -> None:
    torch.set_num_threads(int(os.environ.get("AVMECH_BENCH_THREADS", os.cpu_count() or 1)))


@cache
def bench_model(attn: str = "sdpa"):
    return avmech.load("bench-omni", seed=0, attn_implementation=attn)


def clip_sample(seconds: float, seed: int = 0) -> avmech.AVSample:
    """``seconds`` of 224x224 video (4 fps native, sampled at 2 fps) with a chirp track:
    about 64 video tokens per second and 25 audio tokens per second, as with real clips."""
    frames = media.moving_shape_frames(int(seconds * 4), 224, 224, "circle", color=(230, 60, 40), seed=seed)
    wave = media.chirp(200, 1200, seconds)
    return avmech.AVSample(video=frames, fps=4, audio=wave, sample_rate=media.SAMPLE_RATE,
                           question="Which way does the pitch move, and what colour is the circle?",
                           options=("up", "down", "it stays", "no sound"), answer=0)


def prepared(seconds: float):
    m = bench_model()
    p = m.prepare(clip_sample(seconds))
    m.encode(p)
    return p


def plain_forward(m, embeds, position_ids, attention_mask=None):
    """transformers' own decoder forward (final norm included), unembedding the last position only:
    the untraced reference a run is compared with (over the real 152k-token vocabulary,
    unembedding every position would dominate both time and memory)."""
    with torch.no_grad():
        hidden = m.llm_module(inputs_embeds=embeds, position_ids=position_ids, attention_mask=attention_mask,
                              use_cache=False).last_hidden_state
        return m.lm_head_module(hidden[:, -1])[0]


def timed(fn: Callable[[], object], repeats: int = 3) -> float:
    """Median wall time of ``fn`` in seconds (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def av_fraction(p) -> float:
    return len(p.tokens.group("av")) / len(p)


def row(*cells) -> str:
    return " | ".join(f"{c:>10.3f}" if isinstance(c, float) else f"{c!s:>10}" for c in cells)


__all__ = ["av_fraction", "bench_model", "clip_sample", "np", "plain_forward", "prepared", "row", "setup_threads",
           "timed"]
