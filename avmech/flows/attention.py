"""Attention allocation and norm outliers: where the model looks, and why that misleads.

*Allocation*: for each layer, the attention mass the last position (and the question)
gives each token group, averaged over heads and query rows; with its knockout effect
beside it (from a sweep), this shows that attention weights are not information flow.

*Norm sinks* (`norm_sinks`): positions of any role whose residual stream norm is an
outlier (norm above ``z`` robust standard deviations over the median at a late layer)
soak up attention without carrying content. The flow records, per sample, where they
are (role counts), the attention mass they receive from the last position, and what
knocking out every edge from them to the last position in *all* layers does. This is
harsher than the study's test, which masks the late attention spikes on video tokens in
the layers where they occur (`avmech.flows.spikes`); it is kept as its own analysis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Iterable, Iterator

import numpy as np
import torch
from jaxtyping import Float
from pydantic import BaseModel, ConfigDict, Field

from avmech.flows.common import GroupExpr, answer_fields, has_group, prepared_samples, sample_fields
from avmech.interventions.attention import AttentionRead
from avmech.interventions.base import Intervention, RunContext
from avmech.interventions.knockout import AttentionKnockout
from avmech.metrics import dp
from avmech.sample import AVSample
from avmech.tokens import ROLES, Group

if TYPE_CHECKING:
    from avmech.models.base import AVModel


class ResidNorm(Intervention):
    """Readout ``[layer, pos]``: the L2 norm of the residual stream leaving each layer."""

    layers: tuple[int, ...]

    stage: ClassVar = "read"

    def apply(self, ctx: RunContext) -> Float[torch.Tensor, "layer pos"]:
        return torch.stack([ctx.layer(layer).output[0].float().norm(dim=-1) for layer in self.layers])


class AttentionParams(BaseModel):
    """Key groups to read, query groups to read them from, and the sink threshold."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    key_groups: list[GroupExpr] = Field(default=["system", "video", "audio", "image", "question", "options"])
    queries: list[GroupExpr] = Field(default=["last", "question"])
    sink_z: float = 6.0
    only_correct: bool = False


def attention_allocation(m: AVModel, samples: Iterable[AVSample], params: AttentionParams) -> Iterator[dict]:
    """One record per (sample, query group, layer, key group): attention mass, mean over heads and rows."""
    for s, p in prepared_samples(m, samples, "attention allocation"):
        fields = sample_fields(s)
        keys = tuple(g for g in params.key_groups if has_group(p, g))
        for query in params.queries:
            if not has_group(p, query):
                continue
            reader = AttentionRead(layers="all", queries=query, keys_by_group=keys)
            r = m.run(p, [reader])
            if params.only_correct and not r.correct:
                continue
            mass = r[0].mean(dim=(1, 2))  # [layer, group]: the key groups, then "other" when they leave keys out
            names = list(keys) + ["other"] * (mass.shape[1] - len(keys))
            for layer in range(m.n_layers):
                for i, g in enumerate(names):
                    yield {**fields, "condition": f"attention|{query}|L{layer}|{g}", "query": query, "layer": layer,
                           "key_group": g, "mass": float(mass[layer, i]), **answer_fields(r)}


def find_sinks(norms: torch.Tensor, z: float) -> torch.Tensor:
    """Positions whose norm exceeds median + z * 1.4826 * MAD at any of the given layers."""
    med = norms.median(dim=-1, keepdim=True).values
    mad = (norms - med).abs().median(dim=-1, keepdim=True).values * 1.4826 + 1e-6
    return torch.nonzero(((norms - med) / mad > z).any(0)).flatten()


def norm_sinks(m: AVModel, samples: Iterable[AVSample], params: AttentionParams) -> Iterator[dict]:
    """One record per sample: outlier-norm positions by role, their attention mass from the last
    position (late layers), and the answer under knockout of sink -> last edges in every layer."""
    late = tuple(range(m.n_layers // 2, m.n_layers))
    for s, p in prepared_samples(m, samples, "norm sinks"):
        fields = sample_fields(s)
        base = m.run(p, [ResidNorm(late)])
        sinks = find_sinks(base[0], params.sink_z)
        sinks = sinks[sinks != len(p) - 1]  # the last position is the query, not a sink candidate
        roles = np.bincount(p.tokens.role[sinks.numpy()], minlength=len(ROLES)) if len(sinks) else np.zeros(len(ROLES))
        record = {**fields, "condition": "norm_sinks", "n_sinks": int(len(sinks)),
                  **{f"sinks_{ROLES[i]}": int(c) for i, c in enumerate(roles) if c},
                  **answer_fields(base)}
        if len(sinks):
            group = Group("sinks", tuple(sinks.tolist()))
            read = m.run(p, [AttentionRead(late, "last", (group,))])
            cut = m.run(p, [AttentionKnockout(group, "last", "all")])
            record.update({
                "sink_mass_last": float(read[0][..., 0].mean()),
                "p_sink_knockout": cut.p_correct, "correct_sink_knockout": bool(cut.correct),
                "dp_sink_knockout": dp(cut, base),
            })
        yield record
