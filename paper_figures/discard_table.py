"""Table: token discarding (finding 3), from ``token_discard`` (audio-visual video) and
``token_discard_interleaved`` (interleaved items).

One row per (model, data, setting): accuracy (all samples and per task), its change
against the full model, the mean probability of the correct letter, the median measured
LLM prefill time, the full model's time measured side by side, their ratio (median of the
per-sample ratios) and the share of tokens left at the last layer. Written as a table
image (PNG, PDF), Markdown and CSV.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from paper_figures import common

EXPERIMENTS = ("token_discard", "token_discard_interleaved")
NAME = "table_token_discard"
TITLE = "Token discarding: accuracy and measured prefill time"
NOTE = ("ratio: median over samples of prefill(setting) / prefill(full run side by side); "
        "dropped: group removed from the sequence after that layer; Δ acc: percentage points vs full.")


def table(records: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The numbers: one row per (experiment, model, setting), the full model first."""
    rows = []
    for experiment in EXPERIMENTS:
        frame = records[experiment]
        col = common.task_column(frame)
        for model in common.order_models(frame["model"].unique()):
            f = frame[frame["model"] == model]
            full_acc = 100 * f.loc[f["setting"] == "full", "correct"].mean()
            for setting, g in f.groupby("setting", sort=False):
                full = setting == "full"
                row = {
                    "model": model, "data": g["dataset"].iloc[0], "experiment": experiment, "setting": setting,
                    "dropped": "" if full else g["drops"].dropna().iloc[0] if g["drops"].notna().any() else "",
                    "samples": g["sample_id"].nunique(),
                    "accuracy_pct": 100 * g["correct"].mean(),
                    "delta_accuracy_pp": 100 * g["correct"].mean() - full_acc,
                    "mean_p_correct": g["p_correct"].mean(),
                    "prefill_ms": g["prefill_ms"].median(),
                    "full_prefill_ms_side_by_side": float("nan") if full else g["full_prefill_ms"].median(),
                    "prefill_ratio": 1.0 if full else (g["prefill_ms"] / g["full_prefill_ms"]).median(),
                    "tokens_kept_last_layer_pct": 100 * (g["n_kept_last_layer"] / g["n_tokens"]).mean(),
                }
                for task, t in (g.groupby(col) if col else []):
                    row[f"accuracy_pct[{task}]"] = 100 * t["correct"].mean()
                rows.append(row)
    return pd.DataFrame(rows)


def formatted(t: pd.DataFrame) -> pd.DataFrame:
    """The cells as shown in the image and the Markdown."""
    task_cols = [c for c in t.columns if c.startswith("accuracy_pct[")]

    def by_task(row) -> str:
        return "\n".join(f"{c[13:-1]} {row[c]:.1f}" for c in task_cols if pd.notna(row[c]))

    return pd.DataFrame({
        "model": [f"{m}\n(RANDOM demo)" if common.is_demo(m) else m for m in t["model"]],
        "data": t["data"],
        "setting": t["setting"],
        "dropped\n(after layer)": t["dropped"].str.replace("@", " after L").str.replace(";", ";\n"),
        "n": t["samples"],
        "accuracy\n%": t["accuracy_pct"].map(common.cell(".1f")),
        "accuracy %\nby task": t.apply(by_task, axis=1),
        "Δ acc\n(pp)": t["delta_accuracy_pp"].map(common.cell("+.1f")),
        "mean\np(correct)": t["mean_p_correct"].map(common.cell(".4g")),
        "prefill ms\n(median)": t["prefill_ms"].map(common.cell(".2f")),
        "full ms\n(side by side)": t["full_prefill_ms_side_by_side"].map(common.cell(".2f")),
        "ratio\nto full": t["prefill_ratio"].map(lambda r: f"{r:.3f}\n({100 * (r - 1):+.1f}%)"),
        "tokens kept\nlast layer %": t["tokens_kept_last_layer_pct"].map(common.cell(".0f")),
    })


def draw(records: dict[str, pd.DataFrame], meta: common.Meta) -> Figure:
    return common.table_figure(formatted(table(records)), TITLE, meta, NOTE)


def main(results_dir: str | Path = "results", out_dir: str | Path = "paper_figures/out") -> common.Rendered:
    records, meta = common.load_many(results_dir, EXPERIMENTS)
    t = table(records)
    return common.render_table(NAME, TITLE, NOTE, t, formatted(t), draw(records, meta), meta, out_dir)


if __name__ == "__main__":
    common.script(main)
