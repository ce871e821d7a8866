"""Logit lens: read the residual stream as if the model stopped at layer l.

nostalgebraist's logit lens projects an intermediate residual stream through the final
norm and the unembedding, giving the next-token distribution a layer "has in mind". At
the last layer it is exactly the model's output. Here the stream read at layer ``l`` is
``resid_post.l`` (what layer l hands on); ``norm=False`` skips the final norm, and
``unembed="input"`` projects on the input embedding matrix instead of ``lm_head``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from jaxtyping import Float

from avmech.errors import InputError
from avmech.interventions.base import GroupSpec, Intervention, RunContext, layer_list


class LogitLens(Intervention):
    """Readout ``[layer, pos, d_vocab]`` logits (or only ``vocab_ids`` columns) at ``positions``."""

    layers: int | range | tuple[int, ...] | list[int] | str = "all"
    positions: GroupSpec = "last"
    norm: bool = True
    unembed: Literal["output", "input"] = "output"
    vocab_ids: tuple[int, ...] | None = None

    stage: ClassVar = "read"

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", layer_list(self.layers))
        if self.unembed not in ("output", "input"):
            raise InputError(f"LogitLens unembed={self.unembed!r}: use 'output' or 'input'")
        if self.vocab_ids is not None:
            object.__setattr__(self, "vocab_ids", tuple(int(i) for i in self.vocab_ids))

    def check(self, ctx: RunContext) -> None:
        ctx.check_layers(self.layers, "LogitLens")
        ctx.tokens.nonempty(self.positions, "LogitLens positions")
        if self.vocab_ids is not None and not all(0 <= i < ctx.m.d_vocab for i in self.vocab_ids):
            raise InputError(f"LogitLens vocab_ids outside 0..{ctx.m.d_vocab - 1}")

    def apply(self, ctx: RunContext) -> Float[torch.Tensor, "layer pos d_vocab"]:
        positions = ctx.positions(self.positions)
        out = []
        for layer in ctx.check_layers(self.layers, "LogitLens"):
            h = ctx.layer(layer).output[:, ctx.local(positions, layer)]
            if self.norm:
                h = ctx.nn.ln_final(h)
            logits = ctx.nn.lm_head(h) if self.unembed == "output" else h @ ctx.nn.llm.embed_tokens.weight.T
            if self.vocab_ids is not None:
                logits = logits[..., list(self.vocab_ids)]
            out.append(logits[0].float())
        return torch.stack(out)
