"""Attention knockout: cut the attention edges from one token group to another.

Following Geva et al. (2023) and the audio-visual flow studies, information can move
from a source token to a later target token only through attention edges (the target's
query attending to the source's key). Blocking every edge from the ``src`` group (keys)
into the ``dst`` group (queries) in a window of layers, and watching the answer's
probability, tells whether that route carries what the answer needs, and where.

The block is an additive dtype-minimum on exactly those (query, key) entries of the
attention mask, before the softmax, in the chosen layers (and heads). Each knocked-out
layer gets its own explicit ``[1, 1 or heads, q, k]`` mask; the others keep the
kernel's fast causal path. A kernel that ignores explicit masks (flash attention) is
refused, not silently left un-knocked-out. When ``src`` and ``dst`` overlap, a
position's edge to itself is cut too (``last -> last``); a query left with no key at
all has no defined attention and is an error.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from avmech.errors import InputError
from avmech.interventions.base import GroupSpec, Intervention, RunContext, layer_list


def causal_mask(n_q: int, n_k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``[1, 1, n_q, n_k]`` additive mask: 0 where the key is at or before the query, dtype-min after.

    The queries are the last ``n_q`` of the ``n_k`` positions (a cache may hold the first ones)."""
    q = torch.arange(n_k - n_q, n_k, device=device)[:, None]
    k = torch.arange(n_k, device=device)[None, :]
    mask = torch.zeros(n_q, n_k, dtype=dtype, device=device)
    return mask.masked_fill(k > q, torch.finfo(dtype).min)[None, None]


class AttentionKnockout(Intervention):
    """Block attention from ``dst`` queries to ``src`` keys in ``layers`` (all heads, or ``heads``)."""

    src: GroupSpec
    dst: GroupSpec
    layers: int | range | tuple[int, ...] | list[int]
    heads: tuple[int, ...] | None = None

    stage: ClassVar = "edit"

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", layer_list(self.layers))
        if self.heads is not None:
            object.__setattr__(self, "heads", tuple(sorted(set(self.heads))))
            if not self.heads:
                raise InputError("AttentionKnockout heads=() blocks nothing: pass None for all heads")

    def check(self, ctx: RunContext) -> None:
        ctx.require_masks("AttentionKnockout")
        ctx.check_layers(self.layers, "AttentionKnockout")
        if self.heads is not None and not all(0 <= h < ctx.m.n_heads for h in self.heads):
            raise InputError(f"AttentionKnockout heads {self.heads} outside 0..{ctx.m.n_heads - 1}")
        src, dst = ctx.positions(self.src), ctx.positions(self.dst)
        ctx.tokens.nonempty(self.dst, "AttentionKnockout dst")
        # keys visible to query d: 0..d; blocked: src <= d. None left -> undefined softmax.
        blocked = torch.searchsorted(src, dst, right=True)
        starved = dst[blocked == dst + 1]
        if len(starved):
            raise InputError(
                f"AttentionKnockout {self.src!r} -> {self.dst!r} leaves positions {starved[:5].tolist()} "
                "with no key to attend to: exclude them from dst or keep some earlier keys"
            )

    def edges(self, ctx: RunContext) -> int:
        """How many (query, key) edges this knockout blocks per layer and head."""
        src, dst = ctx.positions(self.src), ctx.positions(self.dst)
        return int((src[None, :] <= dst[:, None]).sum())

    def apply(self, ctx: RunContext) -> None:
        src, dst = ctx.positions(self.src), ctx.positions(self.dst)
        for layer in ctx.check_layers(self.layers, "AttentionKnockout"):
            alive = ctx.alive(layer)
            keep_src, keep_dst = src[torch.isin(src, alive)], dst[torch.isin(dst, alive)]
            if len(keep_src) and len(keep_dst):
                q, k = ctx.local(keep_dst, layer), ctx.local(keep_src, layer)
                block(ctx, layer, (q[:, None], k[None, :]), self.heads)


class EdgeKnockout(Intervention):
    """Block an explicit set of (query, key) position pairs in ``layers``: the random-edge
    control of a group knockout, or any hand-picked edge set."""

    pairs: tuple[tuple[int, int], ...]
    layers: int | range | tuple[int, ...] | list[int]

    stage: ClassVar = "edit"

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", layer_list(self.layers))
        object.__setattr__(self, "pairs", tuple((int(q), int(k)) for q, k in self.pairs))
        if any(k > q for q, k in self.pairs):
            raise InputError("EdgeKnockout pairs are (query, key) with key <= query (attention is causal)")

    def check(self, ctx: RunContext) -> None:
        ctx.require_masks("EdgeKnockout")
        ctx.check_layers(self.layers, "EdgeKnockout")
        if self.pairs and max(q for q, _ in self.pairs) >= ctx.n:
            raise InputError(f"EdgeKnockout pairs reach beyond the sample's {ctx.n} positions")
        rows: dict[int, set[int]] = {}
        for q, k in self.pairs:
            rows.setdefault(q, set()).add(k)
        starved = sorted(q for q, keys in rows.items() if len(keys) == q + 1)  # keys 0..q all blocked
        if starved:
            raise InputError(f"EdgeKnockout leaves positions {starved[:5]} with no key to attend to")

    def apply(self, ctx: RunContext) -> None:
        if not self.pairs:
            return
        q, k = torch.tensor(self.pairs).T
        for layer in ctx.check_layers(self.layers, "EdgeKnockout"):
            alive = ctx.alive(layer)
            live = torch.isin(q, alive) & torch.isin(k, alive)
            if live.any():
                block(ctx, layer, (ctx.local(q[live], layer), ctx.local(k[live], layer)), None)


def block(ctx: RunContext, layer: int, index: tuple[torch.Tensor, torch.Tensor], heads: tuple[int, ...] | None) -> None:
    """Set dtype-min at ``mask[..., index]`` in ``layer``'s attention mask (local indices).

    Starts from the mask the layer already receives (a copy: one tensor is shared by
    every layer), or from a causal mask where the kernel would run without one."""
    attn = ctx.layer(layer).self_attn
    args, kwargs = attn.inputs
    hidden = args[0] if args else kwargs["hidden_states"]
    base = kwargs.get("attention_mask")
    n = hidden.shape[1]
    low = torch.finfo(hidden.dtype).min
    if base is None:
        mask = causal_mask(n, n, hidden.dtype, hidden.device)
    elif base.dtype == torch.bool:  # True = may attend
        mask = torch.zeros(base.shape, dtype=hidden.dtype, device=base.device).masked_fill(~base, low)
    else:
        mask = base.clone()
    q, k = index
    if heads is not None:
        mask = mask.expand(mask.shape[0], ctx.m.n_heads, n, n).clone()
        h = torch.tensor(heads).view(-1, *([1] * q.dim()))
        mask[:, h, q.unsqueeze(0), k.unsqueeze(0)] = low
    else:
        mask[:, :, q, k] = low
    attn.inputs = (args, {**kwargs, "attention_mask": mask})
