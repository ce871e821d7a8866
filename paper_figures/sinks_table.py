"""Table: attention sinks and the effect of masking them, from ``attention_sinks``.

Per model and task (and all samples): how many positions have an outlier residual norm
(sinks) and of which roles, the attention mass the last position gives them in the late
layers, and the accuracy and dp when every sink -> last edge is blocked (the study: the
late "attention spikes" on video tokens are sinks; masking them leaves accuracy intact).
Written as a table image (PNG, PDF), Markdown and CSV.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from paper_figures import common

EXPERIMENT = "attention_sinks"
NAME = "table_attention_sinks"
TITLE = "Attention sinks: where they sit, the attention they get, and masking them"
OPTIONAL = ("sink_mass_last", "correct_sink_knockout", "dp_sink_knockout")  # absent when no sample has a sink
NOTE = ("sink: residual-norm outlier in the late layers; mass: attention from the last position to the sinks "
        "(late layers, mean over heads); masked: every sink → last edge blocked in all layers (samples without "
        "sinks keep their answer); dp over samples with sinks.")


def table(records: pd.DataFrame) -> pd.DataFrame:
    """The numbers: one row per (model, task), "all" first."""
    role_cols = [c for c in records.columns if c.startswith("sinks_")]
    records = records.reindex(columns=[*records.columns, *(c for c in OPTIONAL if c not in records)])
    rows = []
    for model in common.order_models(records["model"].unique()):
        for task, g in common.tasks(records[records["model"] == model]):
            masked = g["correct_sink_knockout"].astype("boolean").fillna(g["correct"].astype("boolean"))
            row = {"model": model, "data": g["dataset"].iloc[0], "task": task, "samples": g["sample_id"].nunique(),
                   "sinks_per_sample": g["n_sinks"].mean(),
                   "sink_mass_last_pct": 100 * g["sink_mass_last"].mean(),
                   "accuracy_pct": 100 * g["correct"].mean(),
                   "accuracy_masked_pct": 100 * masked.astype(float).mean(),
                   "dp_masked_pct": 100 * g["dp_sink_knockout"].mean()}
            row.update({f"{c}_per_sample": g[c].fillna(0).mean() for c in role_cols})
            rows.append(row)
    return pd.DataFrame(rows)


def formatted(t: pd.DataFrame) -> pd.DataFrame:
    """The cells as shown in the image and the Markdown."""
    role_cols = [c for c in t.columns if c.startswith("sinks_") and c != "sinks_per_sample"]

    def roles(row) -> str:  # most frequent first
        ranked = sorted(role_cols, key=lambda c: -row[c])
        return "\n".join(f"{c[6:-11]} {row[c]:.1f}" for c in ranked if row[c] > 0) or "—"

    return pd.DataFrame({
        "model": [f"{m}\n(RANDOM demo)" if common.is_demo(m) else m for m in t["model"]],
        "data": t["data"], "task": t["task"], "n": t["samples"],
        "sinks\nper sample": t["sinks_per_sample"].map(common.cell(".1f")),
        "sinks per sample\nby role": t.apply(roles, axis=1),
        "attention mass\nlast → sinks %": t["sink_mass_last_pct"].map(common.cell(".1f")),
        "accuracy\n%": t["accuracy_pct"].map(common.cell(".1f")),
        "accuracy %\nsinks masked": t["accuracy_masked_pct"].map(common.cell(".1f")),
        "mean Δp %\nsinks masked": t["dp_masked_pct"].map(common.cell("+.2f")),
    })


def draw(records: pd.DataFrame, meta: common.Meta) -> Figure:
    return common.table_figure(formatted(table(records)), TITLE, meta, NOTE)


def main(results_dir: str | Path = "results", out_dir: str | Path = "paper_figures/out") -> common.Rendered:
    records, meta = common.load(results_dir, EXPERIMENT)
    t = table(records)
    return common.render_table(NAME, TITLE, NOTE, t, formatted(t), draw(records, meta), meta, out_dir)


if __name__ == "__main__":
    common.script(main)
