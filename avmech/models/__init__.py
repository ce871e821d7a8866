"""Model families and `load`: one entry point for real checkpoints and embedded demo models.

``load("tiny-omni", seed=0)`` (or ``"tiny-salmonn"``) builds (once, cached on disk) a
random model of the real architecture and loads it through the same path a real
checkpoint takes; ``load("Qwen/Qwen2.5-Omni-7B")``, ``load("tsinghua-ee/video-SALMONN2_plus_7B_full")``
or ``load("/path/to/checkpoint")`` loads real weights with their processor. The family is
read from ``config.json``: Qwen2.5-Omni by its model type, video-SALMONN 2+ as a
``qwen2_5_vl`` config with an ``audio_config`` (its released layout).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from avmech.errors import ModelError
from avmech.models.base import MEDIA_POLICY_FILE, AVModel, Encoded, Prepared
from avmech.models.omni import OmniModel, load_omni
from avmech.models.salmonn import SalmonnModel, is_released_salmonn, load_salmonn
from avmech.models.tiny import OMNI_SIZES, SALMONN_SIZES, cache_dir, save_omni, save_salmonn

EMBEDDED = {**{name: "qwen2.5-omni" for name in OMNI_SIZES}, **{name: "video-salmonn2+" for name in SALMONN_SIZES}}


# Bumped whenever the embedded builders change, so a cache never serves a stale model.
EMBEDDED_VERSION = 3


def embedded_path(name: str, seed: int) -> Path:
    """The on-disk checkpoint of an embedded model, built on first use."""
    path = cache_dir() / f"{name}-seed{seed}-v{EMBEDDED_VERSION}"
    if not (path / "config.json").exists():
        if name in SALMONN_SIZES:
            save_salmonn(name, path, seed=seed)  # writes its media policy itself
            return path
        save_omni(name, path, seed=seed)
        _, pixels = OMNI_SIZES[name]
        (path / MEDIA_POLICY_FILE).write_text(json.dumps(
            {"video_min_pixels": pixels["min_pixels"], "video_max_pixels": pixels["max_pixels"],
             "image_min_pixels": pixels["min_pixels"], "image_max_pixels": pixels["max_pixels"]}
        ))
    return path


def _resolve(name: str) -> Path:
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if "/" in name and not path.exists():
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(name))
        except Exception as e:  # offline, unknown repo, no access: all end the same way
            raise ModelError(
                f"model {name!r} is neither a local directory nor downloadable here ({type(e).__name__}): "
                "download it first and pass its directory"
            ) from e
    raise ModelError(
        f"unknown model {name!r}: use an embedded model ({', '.join(sorted(EMBEDDED))}), "
        "a hub id such as 'Qwen/Qwen2.5-Omni-7B', or a checkpoint directory"
    )


def load(
    name: str,
    *,
    seed: int = 0,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype | str | None = None,
    decoder: str = "local",
    **kwargs: Any,
) -> AVModel:
    """Load an audio-visual model by embedded name, hub id or checkpoint directory.

    ``attn_implementation`` is "sdpa" (default) or "eager"; kernels that ignore explicit
    attention masks (flash attention) are refused by the primitives that need masks.
    ``decoder="server"`` loads what runs here when the LLM runs on an NDIF server (the
    processor, the encoders, the embeddings and one decoder layer for shapes; the other
    layers are never read), so a 7B client needs a fraction of its memory; such a model
    runs with ``backend="ndif"`` only. Other keyword arguments (``device_map`` ...) go to
    ``from_pretrained``; video-SALMONN 2+ also takes ``position_mode="official" |
    "aligned"`` (see `avmech.models.salmonn`).
    """
    if decoder not in ("local", "server"):
        raise ModelError(f"decoder={decoder!r}: use 'local' or 'server' (the LLM runs on an NDIF server)")
    path = embedded_path(name, seed) if name in EMBEDDED else _resolve(name)
    config_file = path / "config.json"
    if not config_file.exists():
        raise ModelError(f"{path} has no config.json: is it a checkpoint directory?")
    config = json.loads(config_file.read_text())
    policy_file = path / MEDIA_POLICY_FILE
    policy = json.loads(policy_file.read_text()) if policy_file.exists() else None
    model_type = config.get("model_type")
    dtype = dtype or ("auto" if name not in EMBEDDED else torch.float32)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    opts = dict(attn_implementation=attn_implementation, dtype=dtype, **kwargs)
    if is_released_salmonn(config):
        return load_salmonn(path, name=name, media_policy=policy, decoder=decoder, **opts)
    if "position_mode" in opts:
        raise ModelError("position_mode applies to video-SALMONN 2+ only: drop it for this model")
    if model_type not in ("qwen2_5_omni_thinker", "qwen2_5_omni"):
        raise ModelError(
            f"{path}: model type {model_type!r} is not supported: avmech knows qwen2_5_omni(_thinker) and "
            "video-SALMONN 2+ (qwen2_5_vl with an audio_config)"
        )
    return load_omni(path, name=name, media_policy=policy, decoder=decoder, **opts)



__all__ = ["AVModel", "Encoded", "OmniModel", "Prepared", "SalmonnModel", "load"]
