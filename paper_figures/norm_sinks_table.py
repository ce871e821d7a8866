"""Table: residual-norm sinks and the effect of cutting them off, from ``norm_sinks``.

Per model and task (and all samples): how many positions of any role have an outlier
residual norm (norm sinks) and of which roles, the attention mass the last position
gives them in the late layers, and the accuracy and dp when every sink -> last edge is
blocked in every layer. This is not the study's test (it masks the late attention spikes
on video tokens where they occur: `spikes_table`); it is the harsher, norm-based
reading, kept under its own name. Accuracy with the sinks masked is over the samples
that have sinks; samples without are counted apart. Written as a table image (PNG, PDF),
Markdown and CSV.
"""

from __future__ import annotations

import pandas as pd

from paper_figures import common, registry

TITLE = "Norm sinks (residual-norm outliers of any role): where they sit, their attention, cutting them off"
OPTIONAL = ("sink_mass_last", "correct_sink_knockout", "dp_sink_knockout")  # absent when no sample has a sink
NOTE = ("sink: residual-norm outlier in the late layers, any role; mass: attention from the last position to the "
        "sinks (late layers, mean over heads); cut: every sink → last edge blocked in all layers, over the samples "
        "with sinks (the others: 'no sinks').")


def formatted(t: pd.DataFrame) -> pd.DataFrame:
    """The cells as shown in the image and the Markdown."""
    role_cols = [c for c in t.columns if c.startswith("sinks_") and c != "sinks_per_sample"]

    def roles(row) -> str:  # most frequent first
        ranked = sorted(role_cols, key=lambda c: -row[c])
        return "\n".join(f"{c[6:-11]} {row[c]:.1f}" for c in ranked if row[c] > 0) or "—"

    return pd.DataFrame({
        "model": [f"{m}\n{common.tag(m).strip()}" if common.tag(m) else m for m in t["model"]],
        "data": t["data"], "task": t["task"], "n": t["samples"],
        "no sinks /\nexcluded": t["no_sinks"].astype(str) + " / " + t["excluded"].astype(str),
        "sinks\nper sample": t["sinks_per_sample"].map(common.cell(".1f")),
        "sinks per sample\nby role": t.apply(roles, axis=1),
        "attention mass\nlast → sinks %": t["sink_mass_last_pct"].map(common.cell(".1f")),
        "accuracy %\n(with sinks)": t["accuracy_pct"].map(common.cell(".1f")),
        "accuracy %\nsinks cut": t["accuracy_masked_pct"].map(common.cell(".1f")),
        "mean Δp %\nsinks cut": t["dp_masked_pct"].map(common.cell("+.2f")),
    })


@registry.table("table_norm_sinks", TITLE, ("norm_sinks",), cells=formatted, note=NOTE)
def table(records: pd.DataFrame) -> pd.DataFrame:
    """The numbers: one row per (model, task), "all" first."""
    role_cols = [c for c in records.columns if c.startswith("sinks_")]
    records = records.reindex(columns=[*records.columns, *(c for c in OPTIONAL if c not in records)])
    rows = []
    for model in common.order_models(records["model"].unique()):
        for task, g in common.tasks(records[records["model"] == model]):
            with_sinks = g[g["n_sinks"] > 0]
            cut, excluded = common.usable(with_sinks, "dp_sink_knockout")
            row = {"model": model, "data": g["dataset"].iloc[0], "task": task, "samples": g["sample_id"].nunique(),
                   "no_sinks": int((g["n_sinks"] == 0).sum()), "excluded": excluded,
                   "sinks_per_sample": g["n_sinks"].mean(),
                   "sink_mass_last_pct": 100 * with_sinks["sink_mass_last"].mean(),
                   "accuracy_pct": 100 * cut["correct"].astype(float).mean(),
                   "accuracy_masked_pct": 100 * cut["correct_sink_knockout"].astype(float).mean(),
                   "dp_masked_pct": 100 * cut["dp_sink_knockout"].mean()}
            row.update({f"{c}_per_sample": g[c].fillna(0).mean() for c in role_cols})
            rows.append(row)
    return pd.DataFrame(rows)
