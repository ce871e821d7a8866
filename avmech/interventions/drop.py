"""Token discarding: remove a group's positions from every layer after ``after_layer``.

Once a group's information has moved on (audio and video into the question, say), the
later layers may no longer need the group at all. `TokenDrop` tests that, and saves the
compute: from layer ``after_layer + 1`` on, the group's positions are removed from the
hidden states, from the rotary position embeddings (the kept tokens keep their original
positions: cos/sin are indexed, never recomputed) and from any explicit mask. The
sequence really gets shorter, so every later layer costs less.

Several drops compose (video after 20, question after 28): the run holds one schedule of
which original positions are alive at each layer, applied by the first `TokenDrop`, and
every other primitive maps its positions through it (`RunContext.local`).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from avmech.errors import InputError
from avmech.interventions.base import GroupSpec, Intervention, RunContext


def _index(value, keep: torch.Tensor, dims: tuple[int, ...]):
    for d in dims:
        value = value.index_select(d, keep.to(value.device))
    return value


class TokenDrop(Intervention):
    """Remove ``group`` from the sequence after layer ``after_layer`` (-1: before layer 0).

    A group with no positions in the sample is refused unless ``allow_empty``: dropping
    nothing would read as "the model does not need it"."""

    group: GroupSpec
    after_layer: int
    allow_empty: bool = False

    stage: ClassVar = "structure"

    def check(self, ctx: RunContext) -> None:
        if not -1 <= self.after_layer < ctx.n_layers:
            raise InputError(f"TokenDrop after_layer={self.after_layer} is outside -1..{ctx.n_layers - 1}")
        injected = [i for i in ctx.decoder.injected_layers if i > self.after_layer]
        if injected:
            raise InputError(
                f"TokenDrop after layer {self.after_layer}: this model adds features to the residual stream after "
                f"layer {injected[-1]} outside its layers (DeepStack), at full length; drop after layer "
                f"{injected[-1]} or later"
            )
        if not self.allow_empty and not len(ctx.group(self.group)):
            raise InputError(
                f"TokenDrop({self.group!r}) removes nothing: the sample has no such positions; a run that drops "
                "nothing would read as 'not needed' (pass allow_empty=True where an empty drop is meant)"
            )
        if len(ctx.tokens.group("last") & ctx.group(self.group)):
            raise InputError("TokenDrop would remove the last position, where the answer is read: drop 'group - last'")

    def apply(self, ctx: RunContext) -> None:
        if ctx.drops[0] is not self:  # the first drop applies the whole schedule
            return
        full = torch.arange(ctx.n)
        for layer in range(ctx.n_layers):
            alive = ctx.alive(layer)
            if len(alive) == len(full):
                continue
            dec, decoder_layer = ctx.decoder, ctx.layer(layer)
            args, kwargs = decoder_layer.inputs
            kwargs = dict(kwargs)
            before = ctx.alive(layer - 1) if layer else full
            if len(alive) != len(before):  # this layer is where (more) positions go
                hidden = args[0] if args else kwargs.pop(dec.hidden_kw)
                keep = torch.nonzero(torch.isin(before, alive)).flatten()
                args = (_index(hidden, keep, (1,)), *args[1:])
            kwargs[dec.rotary_kw] = tuple(_index(table, alive, (1,)) for table in kwargs[dec.rotary_kw])
            mask = kwargs.get(dec.mask_kw)
            if isinstance(mask, torch.Tensor):
                kwargs[dec.mask_kw] = _index(mask, alive, (2, 3))
            positions = kwargs.get(dec.positions_kw)
            if isinstance(positions, torch.Tensor):
                kwargs[dec.positions_kw] = _index(positions, alive, (positions.dim() - 1,))
            decoder_layer.inputs = (args, kwargs)
