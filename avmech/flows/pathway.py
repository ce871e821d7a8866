"""Effective pathway: keep only the edges a sweep found necessary, block the rest.

From a knockout sweep's records, an (edge, window) is *necessary* when blocking it lowers
the correct letter's probability by more than ``threshold`` on average (mean ``dp`` below
``-threshold``). The pathway run blocks every other (edge, window) of the sweep at once,
in non-overlapping windows, and records the answer and the fraction of the swept edges
it keeps (edges x layers). If the answer survives with few edges kept, the necessary
edges are also (nearly) sufficient. The sweep's records are the flow's ``sweep`` input
(an experiment file names the sweep in its ``[inputs]`` table).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from avmech.errors import InputError
from avmech.flows.common import answer_fields, has_group, prepared_samples, sample_fields
from avmech.flows.knockout import Edge
from avmech.interventions.knockout import AttentionKnockout, group_edges
from avmech.sample import AVSample

if TYPE_CHECKING:
    from avmech.models.base import AVModel


class PathwayParams(BaseModel):
    """The sweep's window size to read, and how much a knockout must lower p to make an edge necessary."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    k: int = Field(default=7, ge=1)
    threshold: float = Field(default=0.1, ge=0)


def necessary(records: pd.DataFrame, k: int, threshold: float) -> tuple[dict[tuple[str, str, int, int], bool], int]:
    """(src, dst, start, stop) of non-overlapping windows -> whether the sweep found it necessary, and
    how many knockout records had no finite dp (non-finite runs, empty conditions): left out, counted."""
    if "k" not in records.columns:
        raise InputError(
            "the sweep has no knockout records (only base runs: no sample was answered correctly?): "
            "run it on more samples, or with only_correct = false"
        )
    rows = records[(records["condition"] != "base") & (records["k"] == k) & (records.get("control", "edge") == "edge")]
    if rows.empty:
        raise InputError(f"the sweep has no k={k} knockout records: set the pathway's k to one the sweep used")
    finite = rows[np.isfinite(rows["dp"].astype(float))]
    mean = finite.groupby(["src", "dst", "centre", "start", "stop"])["dp"].mean().reset_index()
    out = {}
    for (src, dst), g in mean.groupby(["src", "dst"]):
        taken = -1
        for row in g.sort_values("start").itertuples():
            if row.start > taken:  # non-overlapping windows tile the depth
                out[(src, dst, int(row.start), int(row.stop))] = bool(row.dp < -threshold)
                taken = row.stop - 1
    return out, len(rows) - len(finite)


def effective_pathway(
    m: AVModel, samples: Iterable[AVSample], params: PathwayParams, sweep: pd.DataFrame
) -> Iterator[dict]:
    """One record per sample: the answer with only the necessary (edge, window)s kept."""
    needed, excluded = necessary(sweep, params.k, params.threshold)
    for s, p in prepared_samples(m, samples, "effective pathway"):
        fields = sample_fields(s)
        base = m.run(p)
        blocked, total, kept = [], 0, 0
        for (src, dst, start, stop), keep in needed.items():
            if not (has_group(p, src) and has_group(p, dst)):
                continue
            n = len(group_edges(p.tokens.positions(src), p.tokens.positions(dst))[0]) * (stop - start)
            total += n
            if keep:
                kept += n
            else:
                blocked.append(AttentionKnockout(src, dst, range(start, stop)))
        record = {**fields, "condition": "pathway", "n_blocked_windows": len(blocked), "edges_total": total,
                  "edges_kept": kept, "sweep_records_excluded": excluded,
                  "necessary": ";".join(f"{Edge(src=a, dst=b).label}@{s0}-{s1}"
                                        for (a, b, s0, s1), v in needed.items() if v)}
        if not total:
            yield {**record, "applies": False, "skip_reason": "none of the sweep's edges exists in this sample"}
            continue
        yield {**record, "applies": True, "fraction_kept": kept / total, **answer_fields(m.run(p, blocked), base)}
