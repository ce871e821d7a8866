"""Real checkpoints, when present on disk: set AVMECH_REAL_MODEL to a checkpoint directory or
hub id in the local cache (Qwen2.5-Omni 3B/7B, video-SALMONN 2+ 3B/7B) and run `pytest -m real`."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import avmech
from avmech import AttentionKnockout, LogitLens, TokenDrop, media

pytestmark = pytest.mark.real
REAL = os.environ.get("AVMECH_REAL_MODEL")


@pytest.fixture(scope="module")
def real():
    if not REAL:
        pytest.skip("AVMECH_REAL_MODEL is not set")
    return avmech.load(REAL, dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32,
                       device_map="auto" if torch.cuda.is_available() else None)


def test_real_model_runs_every_primitive_kind(real, tmp_path):
    frames = media.moving_shape_frames(16, 224, 224, "circle", color=(220, 40, 40))
    clip = tmp_path / "clip.mp4"
    media.write_video(clip, frames, fps=4, audio=media.chirp(200, 800, 4.0))
    p = real.prepare(avmech.AVSample(video=str(clip), question="What colour is the circle?",
                                     options=("red", "green", "blue", "yellow"), answer=0))
    assert len(p.tokens.positions("audio")) and len(p.tokens.positions("video"))
    base = real.run(p)
    lens = real.run(p, [LogitLens(layers="all", positions="last")])
    assert torch.allclose(lens[0][-1, 0].float(), base.logits, atol=1e-2)
    cut = real.run(p, [AttentionKnockout("audio | video", "question | last", range(real.n_layers // 2))])
    drop = real.run(p, [TokenDrop("audio | video", after_layer=real.n_layers - 1)])
    assert np.isfinite(avmech.metrics.dp(cut, base))
    assert torch.allclose(drop.logits, base.logits, atol=1e-2)
