"""Token discarding: keep the answer while throwing tokens away, and measure the time saved.

Once a group's information has moved on, the later layers may not need it. Each setting
drops groups after chosen layers (`TokenDrop`: the tensors really shrink), and the flow
records the answer and the measured LLM prefill time against the full model on the same
samples, interleaving the runs (full, setting, full, ...) so that drifts in machine speed
hit both alike. Layers may be given as fractions of depth (``0.72`` of 36 layers -> after
layer 25), so one setting fits models of any depth.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Iterable, Iterator

import torch
from pydantic import BaseModel, ConfigDict, Field

from avmech.flows.common import GroupExpr, answer_fields, has_group, prepared_samples, sample_fields
from avmech.interventions.drop import TokenDrop
from avmech.sample import AVSample

if TYPE_CHECKING:
    from avmech.interventions.run import RunResult
    from avmech.models.base import AVModel, Prepared


class Drop(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    group: GroupExpr
    after: float  # a layer index, or a fraction of depth when 0 < after < 1

    def layer(self, n_layers: int) -> int:
        if 0 < self.after < 1:
            return max(0, round(self.after * n_layers) - 1)
        return int(self.after)


class Setting(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    drops: list[Drop] = Field(min_length=1)


class DiscardParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    settings: list[Setting] = Field(min_length=1)
    repeats: int = Field(default=3, ge=1)


def timed_run(m: AVModel, p: Prepared, interventions: list, repeats: int) -> tuple[RunResult, float]:
    """The result and the median LLM prefill time in ms over ``repeats`` runs (encoders cached)."""
    m.encode(p)
    times, result = [], None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = m.run(p, interventions)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1000)
    return result, sorted(times)[len(times) // 2]


def token_discard(
    m: AVModel, samples: Iterable[AVSample], params: DiscardParams, done: frozenset = frozenset()
) -> Iterator[dict]:
    """One record per (sample, setting), plus the full model (setting ``full``)."""
    for s, p in prepared_samples(m, samples, "token discarding"):
        fields = sample_fields(s)
        full, full_ms = timed_run(m, p, [], params.repeats)
        if (fields["sample_id"], "full") not in done:
            yield {**fields, "condition": "full", "setting": "full", "prefill_ms": full_ms,
                   "n_tokens": len(p), "n_kept_last_layer": len(p), **answer_fields(full)}
        for setting in params.settings:
            cond = f"discard|{setting.name}"
            if (fields["sample_id"], cond) in done:
                continue
            drops = [TokenDrop(d.group, d.layer(m.n_layers)) for d in setting.drops if has_group(p, d.group)]
            result, ms = timed_run(m, p, drops, params.repeats)
            _, ref_ms = timed_run(m, p, [], params.repeats)  # side by side: the full run again
            dropped = set()
            for d in drops:
                dropped |= set(p.tokens.positions(d.group).tolist())
            yield {**fields, "condition": cond, "setting": setting.name,
                   "drops": ";".join(f"{d.group}@{d.after_layer}" for d in drops),
                   "prefill_ms": ms, "full_prefill_ms": ref_ms, "n_tokens": len(p),
                   "n_kept_last_layer": len(p) - len(dropped), **answer_fields(result, full)}
