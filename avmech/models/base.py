"""AVModel: one audio-visual LLM, traced with nnsight under standard module names.

Every family (Qwen2.5-Omni, video-SALMONN 2+) is an ordinary transformers module tree,
but the trees spell their parts differently and change between transformers versions.
avmech finds the parts by probing their structure once at load time and gives them one
vocabulary of names, bound as nnsight aliases (no module is copied or wrapped):

=================  ==========================================================
``llm``            the decoder: ``llm.embed_tokens``, ``llm.layers[i]``, ``llm.norm``
``llm.layers[i]``  a decoder layer: ``.self_attn`` (returns ``(out, weights)``), ``.mlp``
``ln_final``       the final norm before the unembedding
``lm_head``        the unembedding
``audio_encoder``  the audio tower;  ``vision_encoder``: the ViT
=================  ==========================================================

and checks at load time that each produces the shape it should. A family adapter (a
subclass) only says how to turn an `AVSample` into model inputs (`prepare`) and how to
run its encoders (`encode_media`); everything downstream works on any AVModel.

The data flow: ``prepare`` -> `Prepared` (model inputs + `TokenMap`) -> ``encode`` once
(encoders run, features scattered into the token embeddings, cached on the Prepared)
-> traces of the LLM alone on those embeddings with explicit 3-D position ids.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import nn

from avmech import media
from avmech.errors import InputError, ModelError
from avmech.sample import AVSample
from avmech.tokens import TokenMap


# Beside a checkpoint: how media are sampled and sized, where it differs from the family's release.
MEDIA_POLICY_FILE = "avmech_media.json"


@dataclass(frozen=True, eq=False)
class Prepared:
    """A sample turned into model inputs, with the map of what each position is.

    ``inputs`` runs the whole model: ``m.hf(**p.inputs)``; it holds the explicit 3-D
    ``position_ids`` and a 2-D ``attention_mask``. ``answer_ids`` are the token ids of
    the option letters as the model would write them at the last position.
    """

    sample: AVSample
    inputs: dict[str, Any]
    tokens: TokenMap
    answer_ids: tuple[int, ...]
    text: str
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def input_ids(self) -> Int[torch.Tensor, "batch pos"]:
        return self.inputs["input_ids"]

    @property
    def position_ids(self) -> Int[torch.Tensor, "3 batch pos"]:
        return self.inputs["position_ids"]

    def __len__(self) -> int:
        return self.input_ids.shape[-1]

    def __repr__(self) -> str:
        return f"Prepared({self.sample.id or 'sample'!r}, {len(self)} positions)\n{self.tokens.summary()}"


@dataclass(frozen=True)
class Encoded:
    """The LLM's inputs after the encoders ran: what every later trace starts from."""

    inputs_embeds: Float[torch.Tensor, "batch pos d_model"]
    position_ids: Int[torch.Tensor, "3 batch pos"]


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

    Subclasses set `family`, the encoder path candidates, and implement `prepare` and
    `encode_media`.
    """

    family: str = "base"
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
        rename = {path: alias for alias, path in self.paths.items() if path != alias}
        from avmech.backends import AVRemoteModel

        self.nn = AVRemoteModel(self.hf, rename=rename)  # an nnsight envoy that can also run on an NDIF server
        self.nn.repo_id = name
        text = self.llm_module.layers[0].self_attn
        # A client of a server that holds the decoder keeps one layer here (for shapes) and
        # knows the served depth: see `avmech.load(..., decoder="server")`.
        self.decoder_on_server = served_layers is not None
        self.n_layers = served_layers if self.decoder_on_server else len(self.llm_module.layers)
        self.d_model = self.llm_module.embed_tokens.embedding_dim
        self.n_heads = getattr(text, "num_heads", None) or text.config.num_attention_heads
        self.n_kv_heads = getattr(text, "num_key_value_heads", None) or text.config.num_key_value_heads
        self.head_dim = text.head_dim
        self.d_vocab = self.lm_head_module.out_features
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
    def lm_head_module(self) -> nn.Module:
        return self._module("lm_head")

    @property
    def attn_implementation(self) -> str:
        """The attention kernel the decoder layers run, read from each layer's own config (a
        kernel set on the text config alone is what runs; "mixed(...)" if they differ)."""
        kinds = {(getattr(layer.self_attn, "config", None) or self.hf.config)._attn_implementation or "eager"
                 for layer in self.llm_module.layers}
        return kinds.pop() if len(kinds) == 1 else f"mixed({', '.join(sorted(kinds))})"

    @property
    def cache_kwarg(self) -> str:
        """The forward's name for a KV cache: ``cache`` from transformers 5.24, ``past_key_values`` before."""
        return "cache" if "cache" in inspect.signature(self.hf.forward).parameters else "past_key_values"

    @property
    def device(self) -> torch.device:
        return self.llm_module.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.llm_module.embed_tokens.weight.dtype

    def check_sites(self) -> None:
        """Run the LLM on 3 tokens in a trace and check each standard site's shape."""
        n = 3
        ids = torch.zeros(1, n, dtype=torch.long, device=self.device)
        d, v = self.d_model, self.d_vocab
        # Read in execution order (nnsight requires it): attention, MLP, layer, norm, head.
        expect = {
            "llm.layers[0].self_attn output[0]": (1, n, d),
            "llm.layers[0].mlp output": (1, n, d),
            "llm.layers[0] output": (1, n, d),
            "ln_final output": (1, n, d),
            "lm_head output": (1, n, v),
        }
        layer = self.nn.llm.layers[0]
        with torch.no_grad(), self.nn.trace(inputs_embeds=self.llm_module.embed_tokens(ids), use_cache=False):
            attn = layer.self_attn.output[0].shape.save()
            mlp = layer.mlp.output.shape.save()
            out = layer.output.shape.save()
            norm = self.nn.ln_final.output.shape.save()
            head = self.nn.lm_head.output.shape.save()
        got = dict(zip(expect, (attn, mlp, out, norm, head)))
        bad = {k: (tuple(v), expect[k]) for k, v in got.items() if tuple(v) != expect[k]}
        if bad:
            raise ModelError(f"{self.name}: standard sites have unexpected shapes (got, expected): {bad}")

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

    def encode_media(self, p: Prepared) -> Float[torch.Tensor, "batch pos d_model"]:
        raise NotImplementedError

    def encode(self, p: Prepared) -> Encoded:
        """Run the encoders once for ``p`` (cached on it): token embeddings with media features."""
        if "encoded" not in p._cache:
            with torch.no_grad():
                embeds = self.encode_media(p)
            p._cache["encoded"] = Encoded(embeds, p.position_ids.to(self.device))
        return p._cache["encoded"]

    # ---- running ---------------------------------------------------------------------
    # ``backend``: "local", "ndif" or an `avmech.backends.Backend`; None: the one
    # `avmech.backends.use` set, else local.
    def run(self, p: Prepared, interventions=(), backend=None):
        """Run the LLM on ``p`` with a list of primitives in one trace: a `RunResult`."""
        from avmech.interventions.run import run

        return run(self, p, list(interventions), backend=backend)

    def run_many(self, p: Prepared, conditions, backend=None):
        """Run each condition (a list of primitives) on ``p``; results in the same order.

        Locally, knockout conditions recompute only their affected region
        (`avmech.interventions.region`); remotely each condition is one full run."""
        from avmech.interventions.region import run_many

        return run_many(self, p, conditions, backend=backend)

    def generate(self, p: Prepared, interventions=(), max_new_tokens: int = 8, backend=None):
        """Greedy continuation of ``p`` under ``interventions`` (see `avmech.interventions.generate`)."""
        from avmech.backends import resolve, use
        from avmech.interventions.generate import generate

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
