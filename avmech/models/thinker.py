"""Reading the thinker of a Qwen-Omni checkpoint: the whole release, a thinker-only copy, or no weights.

Qwen2.5-Omni and Qwen3-Omni are released whole: a config of model type ``qwen2_5_omni`` /
``qwen3_omni_moe`` whose ``thinker_config`` describes the part avmech studies, and
weights under ``thinker.*`` beside the talker's and the vocoder's. `load_thinker` builds
the thinker class alone from such a checkpoint, from a thinker-only copy (the same layout
with only ``thinker.*`` weights, or the thinker's own model type), and refuses a
checkpoint that lacks a thinker weight, naming it. Two ways to read less:

- ``decoder="server"``: one decoder layer (the rest runs on an NDIF server); the other
  layers' weights are never read;
- ``meta=True``: the architecture alone, on the meta device, from the config files; no
  weight file is opened (what a server sizes a model with, and builds its sandbox's
  module map from, before loading weights).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from avmech.errors import ModelError


def load_thinker(model_class: type, path: str | Path, *, released: str, decoder: str = "local",
                 meta: bool = False, **kwargs: Any) -> tuple[nn.Module, int | None]:
    """The thinker (an instance of ``model_class``) of the checkpoint at ``path`` whose whole-model
    type is ``released``, and the served depth when ``decoder="server"`` (else None).

    ``kwargs`` go to ``from_pretrained`` (``dtype``, ``attn_implementation``, ``device_map`` ...)."""
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    config = AutoConfig.from_pretrained(str(path))
    whole = config.model_type == released
    if whole:
        config = config.thinker_config
    served = None
    if decoder == "server":
        text = config.get_text_config()
        served = text.num_hidden_layers
        text.num_hidden_layers = 1
        if getattr(text, "layer_types", None):
            text.layer_types = text.layer_types[:1]
    if meta:
        dtype = kwargs.get("dtype")
        dtype = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
        with torch.device("meta"):
            hf = model_class._from_config(config, attn_implementation=kwargs.get("attn_implementation", "sdpa"),
                                          dtype=dtype if isinstance(dtype, torch.dtype) else None)
        return hf.eval(), served
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the talker's keys (and the server's layers) are unexpected by design
    try:
        hf, info = model_class.from_pretrained(
            str(path), config=config, key_mapping={r"^thinker\.": ""} if whole else None,
            output_loading_info=True, **kwargs)
    finally:
        hf_logging.set_verbosity(previous)
    tied = {"lm_head.weight"} if config.get_text_config().tie_word_embeddings else set()
    missing = sorted(set(info["missing_keys"]) - tied)
    if missing:
        raise ModelError(
            f"{path} lacks {len(missing)} thinker weight(s), e.g. {missing[:3]}: is the checkpoint complete "
            "(every safetensors shard downloaded)?"
        )
    return hf, served
