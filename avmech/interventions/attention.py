"""Attention readout: how much attention mass each key group gets from chosen queries.

Attention weights say where a position *looks*, not what it *uses* (the study shows late
"attention spikes" on video tokens that are sinks: knocking them out costs nothing), so
this readout is best read beside a knockout. It is computed for the chosen query rows
only, from the layer's own queries and keys after the rotary embedding (read inside the
attention forward), with the mask in force (so knockouts composed in the same run are
seen): ``softmax(q_rows k^T * scale + mask_rows)``, summed over each key group. A
20,000-token input never materialises a full attention matrix. Key groups that do not
cover every key get an ``"other"`` group, so each row sums to 1.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from jaxtyping import Float

from avmech.errors import InputError
from avmech.interventions.base import GroupSpec, Intervention, RunContext, layer_list


class AttentionRead(Intervention):
    """Readout ``[layer, head, query, group]``: attention mass from each query row to each key group.

    ``keys_by_group`` is a tuple of group specs (names, expressions or `Group`s); the
    group names of the last axis are `group_names` (with ``"other"`` last when needed).
    """

    layers: int | range | tuple[int, ...] | list[int] | str
    queries: GroupSpec = "last"
    keys_by_group: tuple[GroupSpec, ...] = ("system", "video", "audio", "image", "question", "options")

    stage: ClassVar = "read"

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", layer_list(self.layers))
        object.__setattr__(self, "keys_by_group", tuple(self.keys_by_group))
        if not self.keys_by_group:
            raise InputError("AttentionRead needs at least one key group")

    def group_names(self, ctx: RunContext) -> list[str]:
        names = [ctx.group(g).name for g in self.keys_by_group]
        return names + (["other"] if self._other(ctx) is not None else [])

    def _members(self, ctx: RunContext) -> torch.Tensor:
        """``[group, pos]`` membership (bool); groups may overlap."""
        member = torch.zeros(len(self.keys_by_group), ctx.n, dtype=torch.bool)
        for i, g in enumerate(self.keys_by_group):
            member[i, ctx.positions(g)] = True
        return member

    def _other(self, ctx: RunContext) -> torch.Tensor | None:
        rest = ~self._members(ctx).any(0)
        return rest if rest.any() else None

    def check(self, ctx: RunContext) -> None:
        ctx.check_layers(self.layers, "AttentionRead")
        ctx.tokens.nonempty(self.queries, "AttentionRead queries")

    def apply(self, ctx: RunContext) -> Float[torch.Tensor, "layer head query key_group"]:
        member = self._members(ctx)
        other = self._other(ctx)
        if other is not None:
            member = torch.cat([member, other[None]])
        queries = ctx.positions(self.queries)
        m = ctx.m
        out = []
        for layer in ctx.check_layers(self.layers, "AttentionRead"):
            decoder_layer = ctx.layer(layer)
            _, kwargs = ctx.decoder.attention(decoder_layer).inputs
            base = kwargs.get(ctx.decoder.mask_kw)
            q, k = ctx.decoder.qk(decoder_layer)
            alive = ctx.alive(layer)
            rows = ctx.local(queries, layer)
            n = k.shape[2]
            # grouped-query attention without copying the keys: [b, kv, group, rows, hd] @ [b, kv, 1, hd, n]
            b, kv = k.shape[0], k.shape[1]
            q = q[:, :, rows].float().view(b, kv, m.n_heads // kv, len(rows), -1)
            scores = (q @ k.float().unsqueeze(2).transpose(-1, -2)).view(b, m.n_heads, len(rows), n)
            scores = scores * ctx.decoder.scaling(decoder_layer)  # the module's own scale
            if base is None:
                keys = torch.arange(n, device=scores.device)
                mask = torch.zeros(len(rows), n, device=scores.device).masked_fill(
                    keys[None, :] > rows.to(scores.device)[:, None], torch.finfo(torch.float32).min)[None, None]
            elif base.dtype == torch.bool:
                mask = torch.zeros(base[:, :, rows].shape, device=scores.device).masked_fill(
                    ~base[:, :, rows], torch.finfo(torch.float32).min)
            else:
                mask = base[:, :, rows].float().clamp(min=torch.finfo(torch.float32).min)
            probs = torch.softmax(scores + mask, dim=-1)[0]  # [head, query, key]
            groups = member[:, alive].to(probs.device, probs.dtype)  # [group, key]
            out.append(probs @ groups.T)
        return torch.stack(out)
