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


def group_edges(src: torch.Tensor, dst: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The causal (query, key) edges from ``src`` keys into ``dst`` queries (key <= query), flat."""
    q, k = torch.broadcast_tensors(dst[:, None], src[None, :])
    keep = k <= q
    return q[keep], k[keep]


class Knockout(Intervention):
    """What every knockout shares: a set of (query, key) edges blocked in ``layers``, and
    the refusal to cut nothing unless ``allow_empty`` (a field of each subclass).

    A subclass says which edges (`pairs`); `apply` blocks them in each layer of the
    window, on the positions still present there, and the sweep engine
    (`avmech.interventions.region`) reads the same `pairs` to recompute only what they
    can change."""

    stage: ClassVar = "edit"

    def pairs(self, ctx: RunContext) -> tuple[torch.Tensor, torch.Tensor]:
        """The blocked edges as flat (query, key) position tensors, key <= query."""
        raise NotImplementedError

    def apply(self, ctx: RunContext) -> None:
        q, k = self.pairs(ctx)
        for layer in ctx.check_layers(self.layers, type(self).__name__):  # `check` made sure some layer cuts
            alive = ctx.alive(layer)
            live = torch.isin(q, alive) & torch.isin(k, alive)
            if live.any():
                block(ctx, layer, (ctx.local(q[live], layer), ctx.local(k[live], layer)), getattr(self, "heads", None))

    def edges_per_layer(self, ctx: RunContext) -> dict[int, int]:
        """How many distinct (query, key) edges the knockout cuts in each of its layers, on the
        positions still present there (a `TokenDrop` before a layer removes its edges)."""
        q, k = self.pairs(ctx)
        out = {}
        for layer in ctx.check_layers(self.layers, type(self).__name__):
            alive = ctx.alive(layer)
            live = torch.isin(q, alive) & torch.isin(k, alive)
            out[layer] = len(torch.unique(q[live] * ctx.n + k[live]))
        return out

    def _check_cuts(self, ctx: RunContext, what: str) -> None:
        """A knockout must cut something (unless ``allow_empty``), and leave every query row some key."""
        if not self.allow_empty and not any(self.edges_per_layer(ctx).values()):
            raise InputError(
                f"{self!r} cuts no attention edge in this sample: {what}; a knockout that cuts nothing would "
                "read as 'no effect' (pass allow_empty=True where an empty condition is meant)"
            )
        q, k = self.pairs(ctx)
        edges = torch.unique(q * ctx.n + k)  # distinct (query, key) pairs, as one number each
        per_row = torch.bincount(edges // ctx.n, minlength=ctx.n)
        starved = torch.nonzero(per_row == torch.arange(len(per_row)) + 1).flatten()  # keys 0..q all blocked
        if len(starved):
            raise InputError(
                f"{self!r} leaves positions {starved[:5].tolist()} with no key to attend to: "
                "exclude them from the targets or keep some earlier keys"
            )


class AttentionKnockout(Knockout):
    """Block attention from ``dst`` queries to ``src`` keys in ``layers`` (all heads, or ``heads``).

    A knockout that would cut no edge in a sample (a group the sample lacks, no ``src``
    position at or before a ``dst`` one) is refused, unless ``allow_empty``: then it runs
    as the unchanged model, and says so through `edges_per_layer`."""

    src: GroupSpec
    dst: GroupSpec
    layers: int | range | tuple[int, ...] | list[int]
    heads: tuple[int, ...] | None = None
    allow_empty: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", layer_list(self.layers))
        if self.heads is not None:
            object.__setattr__(self, "heads", tuple(sorted(set(self.heads))))
            if not self.heads:
                raise InputError("AttentionKnockout heads=() blocks nothing: pass None for all heads")

    def pairs(self, ctx: RunContext) -> tuple[torch.Tensor, torch.Tensor]:
        return group_edges(ctx.positions(self.src), ctx.positions(self.dst))

    def check(self, ctx: RunContext) -> None:
        ctx.require_masks("AttentionKnockout")
        ctx.check_layers(self.layers, "AttentionKnockout")
        if self.heads is not None and not all(0 <= h < ctx.m.n_heads for h in self.heads):
            raise InputError(f"AttentionKnockout heads {self.heads} outside 0..{ctx.m.n_heads - 1}")
        if self.allow_empty:
            self._check_cuts(ctx, "")
            return
        src = ctx.tokens.nonempty(self.src, "AttentionKnockout src")
        dst = ctx.tokens.nonempty(self.dst, "AttentionKnockout dst")
        self._check_cuts(ctx, f"src {src.name!r} (positions {src.positions[0]}..{src.positions[-1]}) has no position "
                              f"at or before any of dst {dst.name!r} (positions {dst.positions[0]}..{dst.positions[-1]}) "
                              "still present in its layers")


class EdgeKnockout(Knockout):
    """Block an explicit set of (query, key) position pairs in ``layers``: the random-edge
    control of a group knockout, or any hand-picked edge set."""

    edges: tuple[tuple[int, int], ...]
    layers: int | range | tuple[int, ...] | list[int]
    allow_empty: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", layer_list(self.layers))
        object.__setattr__(self, "edges", tuple((int(q), int(k)) for q, k in self.edges))
        if any(k > q for q, k in self.edges):
            raise InputError("EdgeKnockout edges are (query, key) with key <= query (attention is causal)")
        if any(k < 0 for _, k in self.edges):
            raise InputError("EdgeKnockout edges are (query, key) positions counted from 0: negative positions "
                             "would wrap around; give positions from p.tokens")

    def pairs(self, ctx: RunContext) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.edges:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        q, k = torch.tensor(self.edges).T
        return q, k

    def check(self, ctx: RunContext) -> None:
        ctx.require_masks("EdgeKnockout")
        ctx.check_layers(self.layers, "EdgeKnockout")
        if self.edges and max(q for q, _ in self.edges) >= ctx.n:
            raise InputError(f"EdgeKnockout edges reach beyond the sample's {ctx.n} positions")
        self._check_cuts(ctx, "it has no edge, or its edges' positions were dropped before its layers")


def block(ctx: RunContext, layer: int, index: tuple[torch.Tensor, torch.Tensor], heads: tuple[int, ...] | None) -> None:
    """Set dtype-min at ``mask[..., index]`` in ``layer``'s attention mask (local indices).

    Starts from the mask the layer already receives (a copy: one tensor is shared by
    every layer), or from a causal mask where the kernel would run without one."""
    attn = ctx.decoder.attention(ctx.layer(layer))
    args, kwargs = attn.inputs
    hidden = args[0] if args else kwargs[ctx.decoder.hidden_kw]
    base = kwargs.get(ctx.decoder.mask_kw)
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
    attn.inputs = (args, {**kwargs, ctx.decoder.mask_kw: mask})
