"""The released video-SALMONN 2+ checkpoint layout, read and written.

The merged checkpoints (``tsinghua-ee/video-SALMONN2_plus_{3B,7B}_full``) were saved by the
released code's own model class under transformers 4.x. Their ``config.json`` is a flat
``qwen2_5_vl`` config (the LLM's fields at the top level, ``vision_config``, ``rope_scaling``
of type mrope) with two additions: ``audio_token_id`` and ``audio_config`` (Whisper's fields,
``second_per_window``, ``second_stride``, and a BERT-style ``qformer_config``; fields left
out take the released classes' defaults, listed below). Their weights map onto
`VideoSalmonn2Plus` so:

========================================================  =========================================
released name                                             here
========================================================  =========================================
``model.*``                                               ``vl.model.language_model.*``
``visual.*``                                              ``vl.model.visual.*``
``lm_head.*`` (absent when tied to the embeddings)        ``vl.lm_head.*``
``audio.{conv1,conv2,embed_positions,layers,layer_norm}`` ``audio.whisper.*``
``audio.qformer.bert.embeddings.LayerNorm.*``             ``audio.qformer.layernorm.*``
``audio.qformer.bert.encoder.*``                          ``audio.qformer.encoder.*``, with
                                                          ``.attention.self.`` -> ``.attention.attention.``
                                                          ``.crossattention.self.`` -> ``.crossattention.attention.``
``audio.qformer.bert.embeddings.position_ids``            dropped (a constant BERT buffer)
``audio.q_tokens``, ``audio.audio_proj.*``                the same
========================================================  =========================================

Every weight is accounted for: a model weight the checkpoint lacks, or a checkpoint
tensor the model has no place for, is a `ModelError` that names it (by its released
name). `write_released` writes the same layout, so a tiny random model goes through the
very loader a real checkpoint takes.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import Blip2QFormerConfig, Qwen2_5_VLConfig, WhisperConfig
from transformers.initialization import no_init_weights

from avmech.errors import ModelError
from avmech.models.salmonn_modeling import SalmonnConfig, VideoSalmonn2Plus

# (released prefix, prefix here); the first match wins.
PREFIXES: tuple[tuple[str, str], ...] = (
    ("model.", "vl.model.language_model."),
    ("visual.", "vl.model.visual."),
    ("lm_head.", "vl.lm_head."),
    *((f"audio.{p}.", f"audio.whisper.{p}.") for p in ("conv1", "conv2", "embed_positions", "layers", "layer_norm")),
    ("audio.qformer.bert.embeddings.LayerNorm.", "audio.qformer.layernorm."),
    ("audio.qformer.bert.encoder.", "audio.qformer.encoder."),
    ("audio.q_tokens", "audio.q_tokens"),
    ("audio.audio_proj.", "audio.audio_proj."),
)
# BERT -> BLIP-2 names inside the Q-Former layers.
QFORMER_INFIXES = (
    (".attention.self.", ".attention.attention."),
    (".crossattention.self.", ".crossattention.attention."),
)
DROPPED = "audio.qformer.bert.embeddings.position_ids"

# The released WhisperConfig / BertConfig defaults (Whisper-large-v3 encoder, 2-layer Q-Former).
WHISPER_DEFAULTS: dict[str, Any] = dict(
    num_mel_bins=128, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120, d_model=1280,
    activation_function="gelu", scale_embedding=False, max_source_positions=1500, init_std=0.02,
    second_per_window=0.5, second_stride=0.5,
)
QFORMER_DEFAULTS: dict[str, Any] = dict(
    hidden_size=3072, num_hidden_layers=2, num_attention_heads=12, intermediate_size=12288, hidden_act="gelu",
    layer_norm_eps=1e-12, max_position_embeddings=512, initializer_range=0.02, encoder_width=1280,
    add_cross_attention=True, cross_attention_freq=1, query_length=1,
)
WHISPER_FIELDS = ("num_mel_bins", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim", "d_model",
                  "activation_function", "scale_embedding", "max_source_positions", "init_std")
# BERT name -> Blip2QFormerConfig name
QFORMER_FIELDS = {
    "hidden_size": "hidden_size", "num_hidden_layers": "num_hidden_layers",
    "num_attention_heads": "num_attention_heads", "intermediate_size": "intermediate_size",
    "hidden_act": "hidden_act", "layer_norm_eps": "layer_norm_eps",
    "max_position_embeddings": "max_position_embeddings", "initializer_range": "initializer_range",
    "encoder_width": "encoder_hidden_size", "cross_attention_freq": "cross_attention_frequency",
}
TEXT_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "hidden_act", "max_position_embeddings", "max_window_layers", "rms_norm_eps",
               "initializer_range", "use_sliding_window", "sliding_window", "attention_dropout", "bos_token_id",
               "eos_token_id")
VISION_FIELDS = ("depth", "hidden_size", "hidden_act", "intermediate_size", "num_heads", "in_channels", "patch_size",
                 "spatial_merge_size", "temporal_patch_size", "tokens_per_second", "window_size", "out_hidden_size",
                 "fullatt_block_indexes")
TOKEN_FIELDS = ("vision_start_token_id", "vision_end_token_id", "image_token_id", "video_token_id")


def _swap(key: str, pairs: tuple[tuple[str, str], ...]) -> str | None:
    return next((dst + key[len(src):] for src, dst in pairs if key.startswith(src)), None)


def internal_name(released: str) -> str | None:
    """Where a released tensor goes in `VideoSalmonn2Plus` (None: dropped, or not a released name)."""
    name = None if released == DROPPED else _swap(released, PREFIXES)
    if name is not None and name.startswith("audio.qformer.encoder."):
        for bert, blip in QFORMER_INFIXES:
            name = name.replace(bert, blip)
    # one name per weight: a Blip2-style name under `bert.` is not the released one
    return name if name is not None and released_name(name) == released else None


def released_name(internal: str) -> str:
    """The released name of a `VideoSalmonn2Plus` weight."""
    name = _swap(internal, tuple((ours, theirs) for theirs, ours in PREFIXES))
    if name is None:
        raise ModelError(f"internal: weight {internal!r} has no released name")
    if name.startswith("audio.qformer.bert.encoder."):
        for bert, blip in QFORMER_INFIXES:
            name = name.replace(blip, bert)
    return name


# ---- config ----------------------------------------------------------------------------
def config_from_released(flat: dict[str, Any]) -> SalmonnConfig:
    """`SalmonnConfig` from a released flat ``config.json`` dict."""
    flat = dict(flat)
    audio = dict(flat.pop("audio_config"))
    if "audio_token_id" not in flat:
        raise ModelError("config.json has no audio_token_id: is this a video-SALMONN 2+ checkpoint?")
    audio_token_id = flat.pop("audio_token_id")
    vl = Qwen2_5_VLConfig.from_dict(flat)
    bert = {**QFORMER_DEFAULTS, **audio.pop("qformer_config", {})}
    whisper = {**WHISPER_DEFAULTS, **audio}
    width = vl.text_config.hidden_size
    if not bert["add_cross_attention"]:
        raise ModelError("the Q-Former config has add_cross_attention=false: the audio branch cannot see Whisper")
    if bert.get("out_hidden_size", width) != width:
        raise ModelError(f"the Q-Former projects to {bert['out_hidden_size']} but the LLM is {width} wide")
    if bert["encoder_width"] != whisper["d_model"]:
        raise ModelError(
            f"the Q-Former reads {bert['encoder_width']}-wide frames but Whisper is {whisper['d_model']} wide"
        )
    return SalmonnConfig(
        vl_config=vl,
        audio_config=WhisperConfig(**{k: whisper[k] for k in WHISPER_FIELDS}),
        qformer_config=Blip2QFormerConfig(**{QFORMER_FIELDS[k]: bert[k] for k in QFORMER_FIELDS}),
        audio_token_id=audio_token_id,
        second_per_window=whisper["second_per_window"],
        second_stride=whisper["second_stride"],
        query_length=bert["query_length"],
    )


def config_to_released(config: SalmonnConfig) -> dict[str, Any]:
    """The released flat ``config.json`` dict of ``config`` (inverse of `config_from_released`)."""
    vl, text, vision = config.vl_config, config.vl_config.text_config, config.vl_config.vision_config
    rope = text.rope_parameters
    qformer = {bert: getattr(config.qformer_config, ours) for bert, ours in QFORMER_FIELDS.items()}
    return {
        "architectures": ["video_SALMONN2_plus"],
        "model_type": "qwen2_5_vl",
        **{k: getattr(text, k) for k in TEXT_FIELDS},
        "rope_theta": rope["rope_theta"],
        "rope_scaling": {"type": "mrope", "mrope_section": list(rope["mrope_section"])},
        "tie_word_embeddings": vl.tie_word_embeddings,
        **{k: getattr(vl, k) for k in TOKEN_FIELDS},
        "audio_token_id": config.audio_token_id,
        "torch_dtype": str(vl.dtype or torch.float32).removeprefix("torch."),
        "vision_config": {"model_type": "qwen2_5_vl", **{k: _plain(getattr(vision, k)) for k in VISION_FIELDS}},
        "audio_config": {
            "model_type": "whisper",
            **{k: getattr(config.audio_config, k) for k in WHISPER_FIELDS},
            "second_per_window": config.second_per_window,
            "second_stride": config.second_stride,
            "qformer_config": {
                "model_type": "bert", **qformer, "add_cross_attention": True,
                "query_length": config.query_length, "out_hidden_size": text.hidden_size,
            },
        },
    }


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


# ---- weights ---------------------------------------------------------------------------
@contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _names(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(repr(k) for k in keys[:limit]) + more


def read_released(
    path: Path, *, attn_implementation: str = "sdpa", dtype: torch.dtype | str | None = "auto",
    device: torch.device = torch.device("cpu"), keep_layers: int | None = None, meta: bool = False,
) -> tuple[VideoSalmonn2Plus, int]:
    """Build `VideoSalmonn2Plus` from a released checkpoint directory, every weight accounted for,
    and return it with the checkpoint's decoder depth. ``keep_layers`` builds and reads only the
    first decoder layers (a client whose decoder runs on a server); the others are not read.
    ``meta=True`` builds the architecture alone on the meta device from ``config.json``,
    opening no weight file."""
    config = config_from_released(json.loads((path / "config.json").read_text()))
    config._attn_implementation = attn_implementation
    text = config.vl_config.get_text_config()
    depth = text.num_hidden_layers
    if keep_layers is not None:
        text.num_hidden_layers = keep_layers
        if getattr(text, "layer_types", None):
            text.layer_types = text.layer_types[:keep_layers]
    skipped = re.compile(r"^vl\.model\.language_model\.layers\.(\d+)\.")
    if dtype in (None, "auto"):
        dtype = config.vl_config.dtype or torch.float32
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if meta:
        with _default_dtype(dtype), torch.device("meta"):
            return VideoSalmonn2Plus(config).eval(), depth
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{path} has no *.safetensors weights: download the checkpoint's weight files there")
    state: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for file in files:
        with safe_open(str(file), framework="pt", device=str(device)) as f:
            for key in f.keys():
                name = internal_name(key)
                layer = skipped.match(name) if name is not None else None
                if keep_layers is not None and layer and int(layer.group(1)) >= keep_layers:
                    continue  # served by the server: never read here
                if name is not None:
                    state[name] = f.get_tensor(key)
                elif key != DROPPED:
                    unknown.append(key)
    with _default_dtype(dtype), torch.device(device), no_init_weights():
        hf = VideoSalmonn2Plus(config)
    expected = hf.state_dict()
    tied = config.vl_config.tie_word_embeddings
    embed = "vl.model.language_model.embed_tokens.weight"
    if tied and "vl.lm_head.weight" not in state and embed in state:
        state["vl.lm_head.weight"] = state[embed]
    unknown += [released_name(k) for k in state if k not in expected]
    missing = [released_name(k) for k in expected if k not in state]
    if missing or unknown:
        raise ModelError(
            f"{path} is not a complete video-SALMONN 2+ checkpoint in the released layout: "
            + (f"{len(missing)} weight(s) missing: {_names(missing)}" if missing else "")
            + ("; " if missing and unknown else "")
            + (f"{len(unknown)} unexpected tensor(s): {_names(unknown)}" if unknown else "")
            + ". Check the weight names against avmech.models.salmonn_checkpoint (layout table)"
        )
    bad = {released_name(k): (tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items()
           if state[k].shape != v.shape}
    if bad:
        raise ModelError(f"{path}: weights of the wrong shape (checkpoint, model): {bad}: config.json does not fit them")
    hf.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    if tied:
        hf.vl.lm_head.weight = hf.get_input_embeddings().weight
    return hf.eval(), depth


def write_released(hf: VideoSalmonn2Plus, path: Path) -> None:
    """Write ``hf`` as a checkpoint in the released layout (config.json + model.safetensors)."""
    path.mkdir(parents=True, exist_ok=True)
    config = hf.config
    state = {released_name(k): v.detach().contiguous() for k, v in hf.state_dict().items()}
    if config.vl_config.tie_word_embeddings:
        state.pop("lm_head.weight")
    state[DROPPED] = torch.arange(config.qformer_config.max_position_embeddings).unsqueeze(0)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config_to_released(config), indent=2))
