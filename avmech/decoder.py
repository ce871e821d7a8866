"""The decoder as the engine sees it: one interface to every family's LLM.

The primitives, the region sweep engine, token drops, generation, the FLOP model and the
attention readout reach inside a decoder: the attention module of a layer, where the
heads' outputs are concatenated, the queries, keys and values as attention and its cache
see them, the keywords a layer is called with (its hidden states, mask, rotary tables and
positions), a fresh cache, the positions of a generated token.
Families spell these differently (Qwen2.5's dense decoders; Qwen3-Omni's
mixture-of-experts decoder with q/k norms and DeepStack visual features added to the
residual stream after its first layers), so each family declares a `Decoder` in its
adapter (`avmech.models`), checked at load with shapes and a one-token probe. The
engine uses only this interface; no module outside `avmech.models` names a family's
internals.

A `Decoder` has two kinds of methods:

- inside a trace, on nnsight envoys (``attention``, ``mlp``, ``heads_in``, ``qk``,
  ``keys_values``, ``scaling``, ``after_layer``, ``new_cache``; the keyword names of a
  layer's call): these run wherever the trace runs, an NDIF server included, so a Decoder
  holds plain values only and travels with a request;
- outside a trace (``next_positions``, ``mlp_flops``): generation and the FLOP model.

`Model` is the narrow face of a loaded model that the engine is typed against, and
`ModelFacts` its shape, which is all a primitive may read from ``ctx.m`` on a server.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from jaxtyping import Float, Int
from torch import nn

from avmech.prepared import Encoded, Prepared, RunResult


class Decoder(Protocol):
    """How the engine reaches into one family's decoder (see the module docstring)."""

    # keyword names of a decoder layer's call
    hidden_kw: str
    mask_kw: str
    rotary_kw: str
    positions_kw: str
    # how many rows of position ids (3 for M-RoPE: temporal, height, width)
    position_axes: int
    # layers after which the family adds features to the residual stream outside any layer (DeepStack)
    injected_layers: tuple[int, ...]

    def attention(self, layer: Any) -> Any:
        """The self-attention of a decoder layer (module or envoy); it returns ``(output, weights)``."""

    def mlp(self, layer: Any) -> Any:
        """The MLP (dense or mixture of experts) of a decoder layer."""

    def heads_in(self, layer: Any) -> Any:
        """The module whose input is every head's output, concatenated ``[b, pos, heads * d_head]``."""

    def qk(self, layer: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Inside a trace: the layer's queries ``[b, heads, pos, d_head]`` and keys
        ``[b, kv_heads, pos, d_head]``, after the rotary embedding (and any q/k norms)."""

    def scaling(self, layer: Any) -> float:
        """The factor on ``q . k`` before the softmax."""

    def keys_values(self, layer: Any, n_kv_heads: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inside a trace: the layer's keys (after the rotary embedding) and values
        ``[b, kv_heads, pos, d_head]``, as its KV cache would hold them."""

    def new_cache(self) -> Any:
        """An empty KV cache for this decoder (made where the trace runs: on a server too)."""

    def next_positions(self, position_ids: torch.Tensor, step: int) -> torch.Tensor:
        """Position ids ``[axes, 1, 1]`` of the ``step``-th generated token after a prompt."""

    def mlp_flops(self, llm: nn.Module) -> float:
        """FLOPs of one layer's MLP per position (active experts only for a mixture)."""

    def after_layer(self, index: int, hidden: torch.Tensor, positions: torch.Tensor,
                    extra: dict[str, Any]) -> torch.Tensor:
        """What the decoder adds to the residual stream after layer ``index`` outside the
        layer, for the original ``positions`` that ``hidden`` holds (DeepStack; else nothing)."""


@dataclass(frozen=True)
class ModelFacts:
    """A model's shape and its decoder: what a primitive may read from ``ctx.m``, also on a server."""

    name: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_vocab: int
    attn_implementation: str
    decoder: Decoder

    @classmethod
    def of(cls, m: Any) -> ModelFacts:
        return cls(**{f.name: getattr(m, f.name) for f in dataclasses.fields(cls)})

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(
            f"ctx.m.{name} is not available in a remote run (the server has only the model): primitives may "
            f"read ctx.m's shape ({', '.join(f.name for f in dataclasses.fields(self))}) and ctx.nn"
        )


class Model(Protocol):
    """The face of a loaded model the engine works with (`avmech.models.AVModel` is one)."""

    name: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_vocab: int
    attn_implementation: str
    decoder: Decoder
    decoder_on_server: bool
    nn: Any  # the nnsight envoy, under the standard names (llm, ln_final, lm_head, ...)
    tokenizer: Any
    llm_module: nn.Module
    final_norm_module: nn.Module
    lm_head_module: nn.Module
    cache_kwarg: str
    device: torch.device
    dtype: torch.dtype

    def encode(self, p: Prepared) -> Encoded: ...

    def run(self, p: Prepared, interventions: Any = (), backend: Any = None) -> RunResult: ...

    def embed(self, ids: Int[torch.Tensor, "batch pos"]) -> Float[torch.Tensor, "batch pos d_model"]: ...
