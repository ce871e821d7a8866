"""Figure: window-size ablation (k = 1..11) with the random-edge control, from
``av_video_window_ablation``.

Per model, one column per edge. Top row: knockout curves (x: window centre layer, y: mean
dp %, all tasks pooled) for each window size k. Bottom row: the strongest drop, min over
windows of the mean dp (%), against k, for the edge's knockout and for the random control
that blocks as many randomly drawn edges into the same queries (the effect is about
*which* edges, not how many).
"""

from __future__ import annotations

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from paper_figures import common, registry

TITLE = "Window-size ablation of the knockout, with the random-edge control"
NOTE = ("top: mean dp over samples answered correctly (all tasks); bottom: strongest drop = min over windows of "
        "the mean dp; random: as many random edges into the same queries, keys outside the source group.")


def strongest_drop(rows: pd.DataFrame) -> pd.Series:
    """Per window size k: min over window centres of the mean dp (%), over the `common.usable` records."""
    kept, _ = common.usable(rows, "dp")
    return kept.groupby(["k", "centre"])["dp"].mean().groupby("k").min() * 100


def size_label(rows: pd.DataFrame, k: int) -> str:
    """"k = 5", saying so when the model has fewer layers and the window was cut to its depth."""
    widest = int((rows.loc[rows["k"] == k, "stop"] - rows.loc[rows["k"] == k, "start"]).max())
    return f"k = {k}" if widest >= k else f"k = {k} (cut to depth {widest})"


@registry.figure("fig_window_ablation", TITLE, ("av_video_window_ablation",))
def draw(records: pd.DataFrame, meta: common.Meta) -> Figure:
    rows = records[records["condition"] != "base"]
    excluded = common.usable(rows, "dp")[1]
    edges = list(dict.fromkeys(rows["edge"]))
    models = common.order_models(rows["model"].unique())
    sizes = sorted(int(k) for k in rows["k"].unique())
    shades = dict(zip(sizes, sns.color_palette("viridis", len(sizes))))
    fig, axes = common.figure(2 * len(models), len(edges), 4.0, 2.9)
    for m, model in enumerate(models):
        demo = common.tag(model)
        for c, edge in enumerate(edges):
            g = rows[(rows["model"] == model) & (rows["edge"] == edge)]
            top, bottom = axes[2 * m, c], axes[2 * m + 1, c]
            edge_rows = g[g["control"] == "edge"]
            for k in sizes:
                common.plot_mean(top, edge_rows[edge_rows["k"] == k], "centre", "dp", label=size_label(edge_rows, k),
                                 color=shades[k], gid=f"{model}|{edge}|k={k}", band=False)
            top.axhline(0, color="black", linewidth=0.6)
            common.layer_axis(top)
            top.set(title=f"{common.arrow(edge)}: knockout curves\n{model}{demo} · n = {g['sample_id'].nunique()}",
                    xlabel="window centre layer (from 0)", ylabel="Δp correct letter (%)" if c == 0 else "")
            top.title.set_fontsize(9)
            for control, style, color in (("edge", "-", "#1f77b4"), ("random", "--", "#7f7f7f")):
                drop = strongest_drop(g[g["control"] == control])
                (line,) = bottom.plot(drop.index, drop.values, style, marker="o", color=color,
                                      label="the edge" if control == "edge" else "as many random edges (control)")
                line.set_gid(f"{model}|{edge}|{control}")
            bottom.axhline(0, color="black", linewidth=0.6)
            bottom.set_xticks(sizes)
            bottom.set(title=f"{common.arrow(edge)}: strongest drop", xlabel="window size k (layers)",
                       ylabel="min over windows of mean Δp (%)" if c == 0 else "")
            bottom.title.set_fontsize(9)
        axes[2 * m, -1].legend(fontsize=8, title="window size", title_fontsize=8, loc="upper left",
                               bbox_to_anchor=(1.02, 1))
        axes[2 * m + 1, -1].legend(fontsize=8, title="knocked out", title_fontsize=8, loc="upper left",
                                   bbox_to_anchor=(1.02, 1))
    return common.finish(fig, TITLE, meta, f"{NOTE} {common.LAYERS_NOTE}", excluded)
