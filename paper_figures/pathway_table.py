"""Table: the effective pathway, from ``effective_pathway`` (built on ``av_video_knockout``).

Per model and task (and all samples): accuracy of the full model and with only the
(edge, window)s the sweep found necessary left open, the mean dp of the correct letter,
and the fraction of the swept edges (edges x layers) kept. If accuracy survives with few
edges kept, the necessary edges are also (nearly) sufficient. Samples in which none of
the sweep's edges exists are counted apart (``not applied``), and runs without a finite
answer are left out and counted (``excluded``). Written as a table image (PNG, PDF),
Markdown and CSV.
"""

from __future__ import annotations

import pandas as pd

from paper_figures import common, registry

TITLE = "Effective pathway: only the necessary edges kept"
NOTE = ("necessary: (edge, layers) whose knockout lowered p(correct letter) by more than the threshold on "
        "average in av_video_knockout; every other swept (edge, window) is blocked at once.")


def formatted(t: pd.DataFrame) -> pd.DataFrame:
    """The cells as shown in the image and the Markdown."""
    return pd.DataFrame({
        "model": [f"{m}\n{common.tag(m).strip()}" if common.tag(m) else m for m in t["model"]],
        "data": t["data"], "task": t["task"], "n": t["samples"],
        "not applied /\nexcluded": t["not_applied"].astype(str) + " / " + t["excluded"].astype(str),
        "accuracy %\nfull model": t["accuracy_full_pct"].map(common.cell(".1f")),
        "accuracy %\npathway only": t["accuracy_pathway_pct"].map(common.cell(".1f")),
        "mean Δp %": t["dp_pct"].map(common.cell("+.2f")),
        "edges kept %\n(edges × layers)": t["edges_kept_pct"].map(common.cell(".1f")),
        "necessary (edge @ layers)": t["necessary"].map(
            lambda s: "\n".join(common.arrow(e).replace("@", " @ L") for e in s.split(";")) if s else "none"),
    })


@registry.table("table_effective_pathway", TITLE, ("effective_pathway",), cells=formatted,
                note=f"{NOTE} {common.LAYERS_NOTE}")
def table(records: pd.DataFrame) -> pd.DataFrame:
    """The numbers: one row per (model, task), "all" first."""
    rows = []
    for model in common.order_models(records["model"].unique()):
        for task, g in common.tasks(records[records["model"] == model]):
            ran, not_applied = common.applied(g)
            kept, excluded = common.usable(ran, "p_correct")
            necessary = sorted({e for s in g["necessary"].dropna() for e in s.split(";") if e})
            rows.append({"model": model, "data": g["dataset"].iloc[0], "task": task,
                         "samples": g["sample_id"].nunique(), "not_applied": not_applied, "excluded": excluded,
                         "accuracy_full_pct": 100 * kept["correct_base"].astype(float).mean(),
                         "accuracy_pathway_pct": 100 * kept["correct"].astype(float).mean(),
                         "dp_pct": 100 * common.usable(kept, "dp")[0]["dp"].mean(),
                         "edges_kept_pct": 100 * kept["fraction_kept"].mean(),
                         "necessary": ";".join(necessary)})
    return pd.DataFrame(rows)
