"""Effective pathway: keep only the edges a sweep found necessary, block the rest.

From a knockout sweep's records, an (edge, window) is *necessary* when blocking it lowers
the correct letter's probability by more than ``threshold`` on average (mean ``dp`` below
``-threshold``). The pathway run blocks every other (edge, window) of the sweep at once,
in non-overlapping windows, and records the answer and the fraction of the swept edges
it keeps (edges x layers). If the answer survives with few edges kept, the necessary
edges are also (nearly) sufficient.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

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
    model_config = ConfigDict(frozen=True, extra="forbid")
    sweep: str = Field(description="a knockout sweep: its experiment name (same model) or results directory")
    k: int = 7
    results_root: str = "results"
    threshold: float = 0.1


def necessary(records: pd.DataFrame, k: int, threshold: float) -> dict[tuple[str, str, int, int], bool]:
    """(src, dst, start, stop) of non-overlapping windows -> whether the sweep found it necessary."""
    if "k" not in records.columns:
        raise InputError(
            "the sweep has no knockout records (only base runs: no sample was answered correctly?): "
            "run it on more samples, or with only_correct = false"
        )
    rows = records[(records["condition"] != "base") & (records["k"] == k) & (records.get("control", "edge") == "edge")]
    if rows.empty:
        raise InputError(f"the sweep has no k={k} knockout records: set the pathway's k to one the sweep used")
    mean = rows.groupby(["src", "dst", "centre", "start", "stop"])["dp"].mean().reset_index()
    out = {}
    for (src, dst), g in mean.groupby(["src", "dst"]):
        taken = -1
        for row in g.sort_values("start").itertuples():
            if row.start > taken:  # non-overlapping windows tile the depth
                out[(src, dst, int(row.start), int(row.stop))] = bool(row.dp < -threshold)
                taken = row.stop - 1
    return out


def effective_pathway(
    m: AVModel, samples: Iterable[AVSample], params: PathwayParams, done: frozenset = frozenset()
) -> Iterator[dict]:
    """One record per sample: the answer with only the necessary (edge, window)s kept."""
    from avmech.store import read_records, slug

    sweep = Path(params.sweep)
    if not sweep.is_dir():
        sweep = Path(params.results_root) / params.sweep / slug(m.name)
    needed = necessary(read_records(sweep), params.k, params.threshold)
    for s, p in prepared_samples(m, samples, "effective pathway"):
        fields = sample_fields(s)
        if (fields["sample_id"], "pathway") in done:
            continue
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
        r = m.run(p, blocked)
        yield {**fields, "condition": "pathway", "n_blocked_windows": len(blocked),
               "edges_total": total, "edges_kept": kept, "fraction_kept": kept / total if total else 1.0,
               "necessary": ";".join(f"{Edge(src=a, dst=b).label}@{s0}-{s1}" for (a, b, s0, s1), v in needed.items() if v),
               **answer_fields(r, base)}
