"""Attention spikes on video tokens: found per layer, masked only where they occur.

The study sees late "attention spikes": in some layers a few video positions receive far
more attention from the last position than the other video positions do, the signature
of attention sinks. Masking them leaves accuracy intact (42.24 -> 42.52), so they do not
carry the answer.

Per sample, the last position's attention to each video position is read in every layer
(`AttentionRead` with one key group per position, mean over heads): ``a[l, v]``. A
*spike* is a (layer, position) whose ``a[l, v]`` exceeds ``ratio`` times that layer's
mean over the video positions. The mask blocks each spike's edge to the query in the
layers where it spikes (one `AttentionKnockout` per such layer), and the record holds
the answer before and after, the layers where spikes occur and the attention mass they
took. A sample without a spike has nothing to mask: its record says so (``n_spikes`` 0,
no masked answer) and is never counted as "masked, no change".

`avmech.flows.attention.norm_sinks` is the other reading of sinks (residual-norm
outliers of any role, cut from the last position in every layer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Iterator

import torch
from pydantic import BaseModel, ConfigDict, Field

from avmech.flows.common import GroupExpr, answer_fields, prepared_samples, sample_fields
from avmech.interventions.attention import AttentionRead
from avmech.interventions.knockout import AttentionKnockout
from avmech.sample import AVSample
from avmech.tokens import Group

if TYPE_CHECKING:
    from avmech.models.base import AVModel, Prepared


class SpikeParams(BaseModel):
    """Which keys may spike (``keys``), seen from which query, and how far above their layer's mean."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    keys: GroupExpr = "video"
    query: GroupExpr = "last"
    ratio: float = Field(default=10.0, gt=1.0, description="a spike gets more than ratio x its layer's mean")


def key_attention(m: AVModel, p: Prepared, keys: str, query: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The key positions, and ``[layer, key]``: the query's attention to each, mean over heads and query rows."""
    positions = p.tokens.nonempty(keys, "spike keys").positions
    each = tuple(Group(f"{keys}@{k}", (k,)) for k in positions)
    r = m.run(p, [AttentionRead(layers="all", queries=query, keys_by_group=each)])
    return torch.tensor(positions), r[0].mean(dim=(1, 2))[:, : len(positions)]


def find_spikes(attention: torch.Tensor, ratio: float) -> torch.Tensor:
    """``[layer, key]`` booleans: attention above ``ratio`` times the layer's mean over the keys."""
    return attention > ratio * attention.mean(dim=1, keepdim=True)


def attention_spikes(m: AVModel, samples: Iterable[AVSample], params: SpikeParams) -> Iterator[dict]:
    """One record per sample: where the spikes are, what they take, and the answer with them masked."""
    for s, p in prepared_samples(m, samples, "attention spikes"):
        fields = sample_fields(s)
        base = m.run(p)
        positions, attention = key_attention(m, p, params.keys, params.query)
        spikes = find_spikes(attention, params.ratio)
        layers = [int(layer) for layer in torch.nonzero(spikes.any(1)).flatten()]
        share = attention / attention.mean(dim=1, keepdim=True)
        record = {
            **fields, "condition": "spikes", "keys": params.keys, "query": params.query, "ratio": params.ratio,
            "n_keys": len(positions), "n_spikes": int(spikes.sum()),
            "n_spike_positions": int(spikes.any(0).sum()), "max_ratio": float(share.max()),
            "spike_layers": ";".join(f"{layer}:{int(spikes[layer].sum())}" for layer in layers),
            "key_mass": float(attention.sum(1).mean()), **answer_fields(base),
        }
        if layers:
            masks = [AttentionKnockout(Group(f"spikes@L{layer}", tuple(positions[spikes[layer]].tolist())),
                                       params.query, [layer]) for layer in layers]
            masked = m.run(p, masks)
            record.update({
                "spike_mass": float(torch.stack([attention[layer, spikes[layer]].sum() for layer in layers]).mean()),
                **{f"{key}_masked": value for key, value in answer_fields(masked, base).items()
                   if key in ("p_correct", "pred", "correct", "finite", "dp")},
            })
        yield record
