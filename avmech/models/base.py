"""AVModel: one audio-visual LLM, traced with nnsight under standard module names.

Every family (Qwen2.5-Omni, video-SALMONN 2+, Qwen3-Omni) is an ordinary transformers
module tree, but the trees spell their parts differently and change between transformers
versions. avmech finds the parts by probing their structure once at load time and gives
them one vocabulary of names, bound as nnsight aliases (no module is copied or wrapped):

=================  ==========================================================
``llm``            the decoder: ``llm.embed_tokens``, ``llm.layers[i]``, ``llm.norm``
``llm.layers[i]``  a decoder layer (its attention, MLP ... reached through ``m.decoder``)
``ln_final``       the final norm before the unembedding
``lm_head``        the unembedding
``audio_encoder``  the audio tower;  ``vision_encoder``: the ViT
=================  ==========================================================

What lies inside a decoder layer is family knowledge, declared once per family as a
decoder map (``m.decoder``, see `avmech.decoder`). At load time `check_sites` runs the
LLM on a few tokens and checks each standard site and each part of the decoder map:
shapes, queries and keys after the rotary embedding, and that calling one layer by the
map reproduces the layer.

A family adapter (a subclass) says how to turn an `AVSample` into model inputs
(`prepare`) and how to run its encoders (`encode_media`); `run`, `run_many` and
`generate` hand the model to the engine (`avmech.interventions`), which works on any
model with a decoder map. A family is registered with a `Family` record
(`avmech.models.registry`).

The data flow: ``prepare`` -> `Prepared` (model inputs + `TokenMap`) -> ``encode`` once
(encoders run, features scattered into the token embeddings, cached on the Prepared)
-> traces of the LLM alone on those embeddings with explicit position ids.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import nnsight
import numpy as np
import torch
from jaxtyping import Float, Int
from torch import nn

from avmech import media
from avmech.backends import Backend, resolve, use
from avmech.decoder import Decoder
from avmech.errors import InputError, ModelError
from avmech.interventions.base import Intervention
from avmech.interventions.generate import Generation, generate
from avmech.interventions.region import run_many
from avmech.interventions.run import run
from avmech.models.envoy import AVEnvoy
from avmech.prepared import Encoded, Prepared, RunResult
from avmech.sample import AVSample

# Beside a checkpoint: how media are sampled and sized, where it differs from the family's release.
MEDIA_POLICY_FILE = "avmech_media.json"


def _module_path(root: nn.Module, target: nn.Module) -> str:
    for name, mod in root.named_modules():
        if mod is target:
            return name
    raise ModelError(f"module {type(target).__name__} is not part of the model")


def _first_path(root: nn.Module, candidates: tuple[str, ...]) -> str | None:
    names = dict(root.named_modules())
    return next((c for c in candidates if c in names), None)


class AVModel:
    """An audio-visual LLM with its processor, traced by nnsight under standard names.

    Subclasses set `family`, `decoder` (the family's decoder map), the encoder path
    candidates, and implement `prepare` and `encode_media`.
    """

    family: str = "base"
    decoder: Decoder
    audio_paths: tuple[str, ...] = ()
    vision_paths: tuple[str, ...] = ()

    def __init__(self, hf: nn.Module, processor: Any, name: str, media_policy: dict[str, Any] | None = None,
                 served_layers: int | None = None):
        self.hf = hf.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.name = name
        self.media_policy = dict(media_policy or {})
        self.paths = self._probe_paths()
        self.aliases = {path: alias for alias, path in self.paths.items() if path != alias}
        self.nn = AVEnvoy(self.hf, rename=self.aliases)  # an nnsight envoy that can also run on an NDIF server
        self.nn.repo_id = name
        attention = self.decoder.attention(self.llm_module.layers[0])
        # A client of a server that holds the decoder keeps one layer here (for shapes) and
        # knows the served depth: see `avmech.load(..., decoder="server")`.
        self.decoder_on_server = served_layers is not None
        self.n_layers = served_layers if self.decoder_on_server else len(self.llm_module.layers)
        self.d_model = self.llm_module.embed_tokens.embedding_dim
        self.n_heads = attention.config.num_attention_heads
        self.n_kv_heads = attention.config.num_key_value_heads
        self.head_dim = attention.head_dim
        self.d_vocab = self.lm_head_module.out_features
        if not self.on_meta:  # a structure-only build has no values to probe
            self.check_sites()

    # ---- standard names ------------------------------------------------------------
    def _probe_paths(self) -> dict[str, str]:
        llm = next(
            (
                name
                for name, mod in self.hf.named_modules()
                if isinstance(getattr(mod, "layers", None), nn.ModuleList)
                and isinstance(getattr(mod, "embed_tokens", None), nn.Embedding)
                and isinstance(getattr(mod, "norm", None), nn.Module)
            ),
            None,
        )
        if llm is None:
            raise ModelError(f"{type(self.hf).__name__} has no decoder with embed_tokens/layers/norm")
        paths = {
            "llm": llm,
            "ln_final": f"{llm}.norm",
            "lm_head": _module_path(self.hf, self.hf.get_output_embeddings()),
        }
        for alias, candidates in (("audio_encoder", self.audio_paths), ("vision_encoder", self.vision_paths)):
            found = _first_path(self.hf, candidates)
            if found is not None:
                paths[alias] = found
        return paths

    def _module(self, alias: str) -> nn.Module:
        return self.hf.get_submodule(self.paths[alias])

    @property
    def llm_module(self) -> nn.Module:
        return self._module("llm")

    @property
    def final_norm_module(self) -> nn.Module:
        return self._module("ln_final")

    @property
    def lm_head_module(self) -> nn.Module:
        return self._module("lm_head")

    def embed(self, ids: Int[torch.Tensor, "batch pos"]) -> Float[torch.Tensor, "batch pos d_model"]:
        """Token embeddings of ``ids`` (no media features)."""
        return self.llm_module.embed_tokens(ids.to(self.device))

    @property
    def attn_implementation(self) -> str:
        """The attention kernel the decoder layers run, read from each layer's own config (a
        kernel set on the text config alone is what runs; "mixed(...)" if they differ)."""
        kinds = {(getattr(self.decoder.attention(layer), "config", None) or self.hf.config)._attn_implementation
                 or "eager" for layer in self.llm_module.layers}
        return kinds.pop() if len(kinds) == 1 else f"mixed({', '.join(sorted(kinds))})"

    @property
    def cache_kwarg(self) -> str:
        """The forward's name for a KV cache: ``cache`` from transformers 5.24, ``past_key_values`` before."""
        return "cache" if "cache" in inspect.signature(self.hf.forward).parameters else "past_key_values"

    @property
    def device(self) -> torch.device:
        return self.llm_module.embed_tokens.weight.device

    @property
    def on_meta(self) -> bool:
        """Whether this is a structure-only build (``avmech.load(..., device="meta")``): no weights."""
        return self.device.type == "meta"

    def _require_weights(self, what: str) -> None:
        if self.on_meta:
            raise ModelError(f"{self.name} was built on the meta device (structure only, no weights): it cannot "
                             f"{what}; load it without device='meta'")

    @property
    def dtype(self) -> torch.dtype:
        return self.llm_module.embed_tokens.weight.dtype

    def check_sites(self) -> None:
        """Run the LLM on 3 tokens and check each standard site and the decoder map.

        Layer 0's keys and values as the map reads them (``decoder.keys_values``) must equal
        what the layer writes into a KV cache (the region engine starts from them); then, in
        one trace, in execution order: layer 0's input, its queries after the rotary
        embedding (``decoder.qk``), the heads' concatenated output (``decoder.heads_in``),
        the attention and MLP outputs, the layer's output, the final norm and the
        unembedding, each against its expected shape."""
        n, dec = 3, self.decoder
        d, v, h, kv, hd = self.d_model, self.d_vocab, self.n_heads, self.n_kv_heads, self.head_dim
        embeds = self.embed(torch.zeros(1, n, dtype=torch.long))
        positions = torch.arange(n, device=self.device).expand(dec.position_axes, 1, n)
        expect = {
            "llm.layers[0] input": (1, n, d), "decoder.keys_values keys": (1, kv, n, hd),
            "decoder.keys_values values": (1, kv, n, hd), "decoder.qk queries": (1, h, n, hd),
            "decoder.heads_in input": (1, n, h * hd), "decoder.attention output[0]": (1, n, d),
            "decoder.mlp output": (1, n, d), "llm.layers[0] output": (1, n, d), "ln_final output": (1, n, d),
            "lm_head output": (1, n, v),
        }
        layer, cache = self.nn.llm.layers[0], dec.new_cache()
        try:
            with torch.no_grad(), self.nn.trace(inputs_embeds=embeds, position_ids=positions, use_cache=True,
                                                **{self.cache_kwarg: cache}):
                keys, values = dec.keys_values(layer, kv, hd)
                keys, values = keys.save(), values.save()
            with torch.no_grad(), self.nn.trace(inputs_embeds=embeds, position_ids=positions, use_cache=False):
                x = layer.input
                q, _ = dec.qk(layer)
                shapes = [x.shape, keys.shape, values.shape, q.shape, dec.heads_in(layer).input.shape,
                          dec.attention(layer).output[0].shape, dec.mlp(layer).output.shape, layer.output.shape,
                          self.nn.ln_final.output.shape, self.nn.lm_head.output.shape]
                shapes = nnsight.save([tuple(s) for s in shapes])
        except Exception as e:  # a map naming a part the model does not have fails inside nnsight
            raise ModelError(f"{self.name}: the {self.family} decoder map does not fit this model ({e})") from e
        bad = {k: (got, want) for (k, want), got in zip(expect.items(), shapes) if got != want}
        if bad:
            raise ModelError(f"{self.name}: standard sites have unexpected shapes (got, expected): {bad}")
        cached = cache.layers[0]
        if not (torch.equal(keys, cached.keys) and torch.equal(values, cached.values)):
            raise ModelError(f"{self.name}: the {self.family} decoder map's keys and values of layer 0 are not what "
                             "the layer caches")

    # ---- inputs --------------------------------------------------------------------
    def prepare(self, sample: AVSample) -> Prepared:
        raise NotImplementedError

    @staticmethod
    def check_video(s: AVSample, wants_sound: bool) -> None:
        """The clip file exists, and has a sound track when its sound is asked for."""
        if isinstance(s.video, np.ndarray):
            return
        if not Path(s.video).exists():
            raise InputError(f"video file '{s.video}' does not exist: check the path")
        if wants_sound and s.audio is None and not media.probe(s.video).has_audio:
            raise InputError(
                f"video '{s.video}' has no audio track, but its sound was asked for: pass audio=..., "
                "or use_video_audio=False for the video-only variant"
            )

    @staticmethod
    def native_frames(s: AVSample) -> tuple[int, float]:
        """The clip's frame count and frame rate (an array's ``fps``, else the file's)."""
        if isinstance(s.video, np.ndarray):
            return len(s.video), float(s.fps)
        info = media.probe(s.video)
        if not info.has_video:
            raise InputError(f"{s.video} has no video stream: pass it as audio= instead")
        native_fps = float(s.fps or info.fps or 0)
        return info.n_frames or int(round(info.duration_s * native_fps)), native_fps

    def check_length(self, n: int) -> None:
        """A prompt longer than the LLM's positions is an error, not a silent truncation."""
        limit = self.llm_module.config.max_position_embeddings
        if n > limit:
            raise InputError(f"the prompt has {n} tokens, beyond this model's {limit}: use a shorter clip or fewer frames")

    def encode_media(self, p: Prepared) -> Encoded:
        """The LLM's inputs for ``p``: token embeddings with the media features in place."""
        raise NotImplementedError

    def encode(self, p: Prepared) -> Encoded:
        """Run the encoders once for ``p`` (cached on it): token embeddings with media features."""
        self._require_weights("encode media")
        if "encoded" not in p._cache:
            with torch.no_grad():
                p._cache["encoded"] = self.encode_media(p)
        return p._cache["encoded"]

    # ---- running ---------------------------------------------------------------------
    # ``backend``: "local", "ndif" or an `avmech.backends.Backend`; None: the one
    # `avmech.backends.use` set, else local.
    def run(self, p: Prepared, interventions: Sequence[Intervention] = (),
            backend: str | Backend | None = None) -> RunResult:
        """Run the LLM on ``p`` with a list of primitives in one trace (`avmech.interventions.run`)."""
        return run(self, p, list(interventions), backend=backend)

    def run_many(self, p: Prepared, conditions: Sequence[Sequence[Intervention]],
                 backend: str | Backend | None = None) -> list[RunResult]:
        """Run each condition (a list of primitives) on ``p``; results in the same order.

        Locally, knockout conditions recompute only their affected region
        (`avmech.interventions.region`); remotely each condition is one full run."""
        return run_many(self, p, conditions, backend=backend)

    def generate(self, p: Prepared, interventions: Sequence[Intervention] = (), max_new_tokens: int = 8,
                 backend: str | Backend | None = None) -> Generation:
        """Greedy continuation of ``p`` under ``interventions`` (see `avmech.interventions.generate`)."""
        where = resolve(backend)
        if where.remote:
            raise InputError(
                "generate loops over traces around a KV cache kept in this process, which cannot run on an NDIF "
                "server: generate with backend='local' (m.run and m.run_many run remotely)"
            )
        with use(where):
            return generate(self, p, list(interventions), max_new_tokens=max_new_tokens)

    def save_pretrained(self, path: str | Path) -> None:
        """Write weights, processor and media policy: `avmech.load(path)` gives this model back."""
        path = Path(path)
        self.hf.save_pretrained(path)
        self.processor.save_pretrained(path)
        if self.media_policy:
            (path / MEDIA_POLICY_FILE).write_text(json.dumps(self.media_policy, indent=1))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name!r}: {self.n_layers} layers, d_model {self.d_model}, "
            f"{self.n_heads} heads / {self.n_kv_heads} kv, vocab {self.d_vocab}, "
            f"attention {self.attn_implementation})"
        )


def load_processor(path: str | Path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(path))


@dataclass(frozen=True)
class Family:
    """One model family, as the registry (`avmech.models.registry`) knows it.

    ``recognises``: whether a checkpoint's ``config.json`` (a dict) is this family's;
    ``load``: ``load(path, name=, media_policy=, decoder="local" | "server", **options)``
    builds its `AVModel` (``decoder="server"``: one decoder layer, the rest served
    remotely); ``embedded``: its embedded demo models, name -> ``build(path, seed)``
    writing a checkpoint that ``load`` reads; ``options``: the keyword options only this
    family takes (e.g. video-SALMONN 2+'s ``position_mode``)."""

    name: str
    recognises: Callable[[dict[str, Any]], bool]
    load: Callable[..., AVModel]
    embedded: dict[str, Callable[[Path, int], None]] = field(default_factory=dict)
    options: tuple[str, ...] = ()
