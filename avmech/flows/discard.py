"""Token discarding: keep the answer while throwing tokens away, and measure the time saved.

Once a group's information has moved on, the later layers may not need it. Each setting
drops groups after chosen layers (`TokenDrop`: the tensors really shrink) and the flow
records, against the full model on the same sample:

- the answer, scored two ways: the best option letter at the last position, and the
  letter read from the greedily generated answer (`avmech.metrics.parse_letter`, as the
  benchmarks score a model; no letter is a wrong answer);
- the measured prefill time as the study times it, encoders included (the encoders run
  afresh each time, not from the copy cached on the sample), and the LLM's share beside
  it; full and setting runs alternate (full, setting, full, ...) so that drifts in
  machine speed hit both alike, and the medians over ``repeats`` are kept.

The layer after which a group goes is, per drop, one of

- a layer index (0-based: ``after = 25`` keeps the group through the 26th layer),
- a fraction of depth (``0.72`` of 36 layers is after layer 25: the study's "L26" read
  as the 26th layer), so one setting fits models of any depth,
- ``"sweep"``: the layer a knockout sweep says the group's information has left by
  (`settle_layer`): the last layer of the last window whose knockout of the drop's
  ``edges`` still moves the mean probability by more than ``sweep_rule.threshold``.
  The sweep is the flow's ``sweep`` input, named in the experiment file.

A drop whose group the sample lacks, or that would fall after the last layer, removes
nothing: it is named in the record (``not_applied``). A setting none of whose drops
removes anything is recorded as such (``applies`` false, the reason, no numbers), never
as a discard result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from avmech.backends import resolve
from avmech.errors import InputError
from avmech.flows.common import GroupExpr, answer_fields, has_group, prepared_samples, sample_fields
from avmech.interventions.drop import TokenDrop
from avmech.metrics import parse_letter
from avmech.sample import AVSample

if TYPE_CHECKING:
    from avmech.interventions.run import RunResult
    from avmech.models.base import AVModel, Prepared


class Drop(BaseModel):
    """One group and the layer after which it goes (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    group: GroupExpr
    after: float | Literal["sweep"]
    edges: list[str] = Field(default=[], description='with after = "sweep": the swept edges ("src->dst") to read')

    @model_validator(mode="after")
    def _edges_with_sweep(self) -> Drop:
        if (self.after == "sweep") != bool(self.edges):
            raise ValueError('after = "sweep" takes the swept edges that set the layer (edges = ["video->last"]), '
                             "and edges are read only then")
        return self


class Setting(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    drops: list[Drop] = Field(min_length=1)


class SweepRule(BaseModel):
    """How a layer follows from a sweep: its window size ``k``, and the |mean dp| that still counts as moving p."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    k: int = Field(default=7, ge=1)
    threshold: float = Field(default=0.05, gt=0)


class DiscardParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    settings: list[Setting] = Field(min_length=1)
    repeats: int = Field(default=3, ge=1)
    sweep_rule: SweepRule = Field(default_factory=SweepRule)
    generate: bool = Field(default=True, description="also score the generated answer (runs locally only)")
    max_new_tokens: int = Field(default=8, ge=1)

    def inputs_needed(self) -> frozenset[str]:
        return frozenset({"sweep"}) if any(d.after == "sweep" for s in self.settings for d in s.drops) else frozenset()


@dataclass(frozen=True)
class Layer:
    """Where a drop applies: after ``layer`` (-1: before the first), and how that was decided."""

    layer: int
    source: str


def settle_layer(sweep: pd.DataFrame, edges: list[str], rule: SweepRule) -> Layer:
    """The last layer of the last window whose knockout of ``edges`` moves the mean dp past the threshold.

    Every window reaching past that layer moves p by at most ``rule.threshold`` (|mean dp|,
    over the samples the sweep swept); -1 when no window does. Records without a finite
    dp are left out and counted in ``source``."""
    rows = sweep[(sweep["condition"] != "base")] if "edge" in sweep else sweep.iloc[:0]
    if "control" in rows:
        rows = rows[rows["control"].fillna("edge") == "edge"]
    rows = rows[(rows["k"] == rule.k) & rows["edge"].isin(edges)] if len(rows) else rows
    missing = sorted(set(edges) - set(rows["edge"] if len(rows) else ()))
    if missing:
        raise InputError(f"the sweep has no k={rule.k} knockout records of {missing}: name edges it swept, or set "
                         "sweep_rule.k to a window size it used")
    finite = rows[np.isfinite(rows["dp"].astype(float))]
    mean = finite.groupby(["edge", "start", "stop"])["dp"].mean().reset_index()
    moving = mean[mean["dp"].abs() > rule.threshold]
    layer = int(moving["stop"].max()) - 1 if len(moving) else -1
    return Layer(layer, f"sweep k={rule.k}, |mean dp| > {rule.threshold:g} (of {'+'.join(edges)} over "
                        f"{finite['sample_id'].nunique()} samples, {len(rows) - len(finite)} records without a "
                        "finite dp left out)")


def drop_layer(drop: Drop, n_layers: int, sweep: pd.DataFrame | None, rule: SweepRule) -> Layer:
    """The layer after which ``drop`` applies on a model of ``n_layers``."""
    if drop.after == "sweep":
        if sweep is None:
            raise InputError('a drop with after = "sweep" reads a knockout sweep: name it in the experiment\'s '
                             '[inputs] table (sweep = "av_video_knockout")')
        return settle_layer(sweep, drop.edges, rule)
    if 0 < drop.after < 1:
        return Layer(max(0, round(drop.after * n_layers) - 1), f"fraction {drop.after:g} of {n_layers} layers")
    if drop.after != int(drop.after):
        raise InputError(f"drop of {drop.group!r}: after = {drop.after} is neither a layer index nor a fraction in (0, 1)")
    return Layer(int(drop.after), "layer index")


@dataclass(frozen=True)
class Timed:
    """A condition's result and its median prefill time, encoders included, and the LLM's share (ms)."""

    result: RunResult
    prefill_ms: float
    llm_ms: float


def fresh_prefill(m: AVModel, p: Prepared, interventions: list) -> tuple[RunResult, float, float]:
    """One prefill as the study times it: the encoders afresh (the copy cached on ``p`` dropped), then the LLM.
    Returns the result, the whole time and the LLM's share, in ms."""
    p._cache.pop("encoded", None)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t0 = time.perf_counter()
    m.encode(p)
    sync()
    t1 = time.perf_counter()
    result = m.run(p, interventions)
    sync()
    t2 = time.perf_counter()
    return result, (t2 - t0) * 1000, (t2 - t1) * 1000


def timed(m: AVModel, p: Prepared, conditions: dict[str, list], repeats: int) -> dict[str, Timed]:
    """Each condition's prefill ``repeats`` times, the conditions alternating: its result and median times."""
    runs: dict[str, list] = {name: [] for name in conditions}
    for _ in range(repeats):
        for name, interventions in conditions.items():
            runs[name].append(fresh_prefill(m, p, interventions))
    return {name: Timed(r[-1][0], float(np.median([x[1] for x in r])), float(np.median([x[2] for x in r])))
            for name, r in runs.items()}


def generated(m: AVModel, p: Prepared, drops: list[TokenDrop], max_new_tokens: int) -> dict[str, Any]:
    """The greedy answer under ``drops``, and the option its letter names (None: no letter, scored wrong)."""
    text = m.generate(p, drops, max_new_tokens=max_new_tokens).text
    pred = parse_letter(text, p.sample.letters)
    return {"gen_text": text, "gen_pred": pred, "gen_correct": pred is not None and pred == p.sample.answer}


def token_discard(
    m: AVModel, samples: Iterable[AVSample], params: DiscardParams, sweep: pd.DataFrame | None = None
) -> Iterator[dict]:
    """One record per (sample, setting), after the full model's (setting ``full``)."""
    if params.generate and resolve(None).remote:
        raise InputError("generation runs locally only: set generate = false in the discard's params for a run on "
                         "an NDIF server (accuracy is then the best letter's alone)")
    layers = {(s.name, i): drop_layer(d, m.n_layers, sweep, params.sweep_rule)
              for s in params.settings for i, d in enumerate(s.drops)}
    for s, p in prepared_samples(m, samples, "token discarding"):
        fields = sample_fields(s)
        full = timed(m, p, {"full": []}, params.repeats)["full"]
        gen = generated(m, p, [], params.max_new_tokens) if params.generate else {}
        yield {**fields, "condition": "full", "setting": "full", "applies": True, "n_tokens": len(p),
               "n_kept_last_layer": len(p), "prefill_ms": full.prefill_ms, "llm_ms": full.llm_ms,
               **gen, **answer_fields(full.result)}
        for setting in params.settings:
            record = {**fields, "condition": f"discard|{setting.name}", "setting": setting.name, "n_tokens": len(p)}
            drops, skipped, dropped = [], [], set()
            for i, d in enumerate(setting.drops):
                at = layers[(setting.name, i)]
                if not has_group(p, d.group):
                    skipped.append(f"{d.group}: absent from this sample")
                elif at.layer >= m.n_layers - 1:
                    skipped.append(f"{d.group}: after the last layer ({at.source})")
                else:
                    drops.append(TokenDrop(d.group, at.layer))
                    dropped |= set(p.tokens.positions(d.group).tolist())
            record.update(drops=";".join(f"{d.group}@{d.after_layer}" for d in drops),
                          layer_source=";".join(layers[(setting.name, i)].source for i in range(len(setting.drops))),
                          not_applied=";".join(skipped))
            if not drops:
                yield {**record, "applies": False, "skip_reason": "no drop of this setting removes anything here"}
                continue
            runs = timed(m, p, {"full": [], "setting": drops}, params.repeats)
            gen = generated(m, p, drops, params.max_new_tokens) if params.generate else {}
            yield {**record, "applies": True, "n_kept_last_layer": len(p) - len(dropped),
                   "prefill_ms": runs["setting"].prefill_ms, "llm_ms": runs["setting"].llm_ms,
                   "full_prefill_ms": runs["full"].prefill_ms, "full_llm_ms": runs["full"].llm_ms,
                   **gen, **answer_fields(runs["setting"].result, full.result)}
