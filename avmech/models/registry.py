"""The model families avmech knows, and `load`: one entry point for real checkpoints and demo models.

Each family declares one `Family` record in its adapter (how to recognise its
``config.json``, load a checkpoint, build its embedded demo models); `FAMILIES` lists
them, and nothing else in avmech needs to know which families exist. Adding a family is
its adapter, its record here, and its tests.

``load("tiny-omni", seed=0)`` (or another embedded name: ``tiny-salmonn``,
``tiny-qwen3-omni`` ...) builds (once, cached on disk) a random model of the real
architecture and loads it through the same path a real checkpoint takes;
``load("Qwen/Qwen2.5-Omni-7B")``, ``load("tsinghua-ee/video-SALMONN2_plus_7B_full")``,
``load("Qwen/Qwen3-Omni-30B-A3B-Instruct")`` or ``load("/path/to/checkpoint")`` loads real
weights with their processor, the family read from ``config.json``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from avmech.errors import ModelError
from avmech.models import omni, planted, qwen3_omni, salmonn
from avmech.models.base import MEDIA_POLICY_FILE, AVModel, Family
from avmech.models.tiny import cache_dir

# Each family with its embedded models: the random ones its adapter declares, and the planted
# (trained) ones of `avmech.models.planted`.
FAMILIES: tuple[Family, ...] = tuple(
    dataclasses.replace(f, embedded={**f.embedded, **planted.builders(f.name)})
    for f in (omni.FAMILY, salmonn.FAMILY, qwen3_omni.FAMILY)
)

# Bumped whenever an embedded builder changes, so a cache never serves a stale model.
EMBEDDED_VERSION = 3


def embedded() -> dict[str, Family]:
    """Every embedded demo model's name, with its family."""
    return {name: family for family in FAMILIES for name in family.embedded}


def embedded_path(name: str, seed: int) -> Path:
    """The on-disk checkpoint of an embedded model, built on first use (one builder at a time:
    a second process waits for the first). A builder's ``cache_tag`` (a trained model's recipe
    digest) is part of the folder name."""
    build = embedded()[name].embedded[name]
    path = cache_dir() / f"{name}-seed{seed}{getattr(build, 'cache_tag', '')}-v{EMBEDDED_VERSION}"
    if not (path / "config.json").exists():
        from filelock import FileLock
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(path.parent / f".{path.name}.lock"):
            if not (path / "config.json").exists():
                build(path, seed)
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
        f"unknown model {name!r}: use an embedded model ({', '.join(sorted(embedded()))}), "
        "a hub id such as 'Qwen/Qwen2.5-Omni-7B', or a checkpoint directory"
    )


def load(
    name: str,
    *,
    seed: int = 0,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype | str | None = None,
    decoder: str = "local",
    device: str | None = None,
    **kwargs: Any,
) -> AVModel:
    """Load an audio-visual model by embedded name, hub id or checkpoint directory.

    ``attn_implementation`` is "sdpa" (default) or "eager"; kernels that ignore explicit
    attention masks (flash attention) are refused by the primitives that need masks.
    ``decoder="server"`` loads what runs here when the LLM runs on an NDIF server (the
    processor, the encoders, the embeddings and one decoder layer for shapes; the other
    layers are never read), so a 7B client needs a fraction of its memory; such a model
    runs with ``backend="ndif"`` only. ``device`` places the model (``"cuda:1"``);
    ``device="meta"`` builds the architecture alone from the config files, opening no
    weight file (what a server sizes a model by; such a model cannot run). Other keyword
    arguments (``device_map`` ...) go to ``from_pretrained``; a family's own options (video-SALMONN 2+'s ``position_mode="official" |
    "aligned"``, see `avmech.models.salmonn`) go to its loader.
    """
    meta = device == "meta"
    if device is not None and not meta:
        kwargs["device_map"] = device
    if decoder not in ("local", "server"):
        raise ModelError(f"decoder={decoder!r}: use 'local' or 'server' (the LLM runs on an NDIF server)")
    path = embedded_path(name, seed) if name in embedded() else _resolve(name)
    config_file = path / "config.json"
    if not config_file.exists():
        raise ModelError(f"{path} has no config.json: is it a checkpoint directory?")
    config = json.loads(config_file.read_text())
    family = next((f for f in FAMILIES if f.recognises(config)), None)
    if family is None:
        raise ModelError(
            f"{path}: model type {config.get('model_type')!r} is not a family avmech knows "
            f"({', '.join(f.name for f in FAMILIES)}): add a Family record (see avmech.models.registry)"
        )
    owners = {o: f.name for f in FAMILIES for o in f.options if o not in family.options}
    foreign = sorted(k for k in kwargs if k in owners)
    if foreign:
        raise ModelError(f"{foreign[0]} applies to {owners[foreign[0]]} only, not {family.name}: drop it for this model")
    policy_file = path / MEDIA_POLICY_FILE
    policy = json.loads(policy_file.read_text()) if policy_file.exists() else None
    dtype = dtype or ("auto" if name not in embedded() else torch.float32)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return family.load(path, name=name, media_policy=policy, decoder=decoder, meta=meta,
                       attn_implementation=attn_implementation, dtype=dtype, **kwargs)
