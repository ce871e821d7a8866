"""Figure: accuracy under knockout, beside the dp curves, from ``av_video_knockout`` and
``interleaved_knockout``.

The study reports both the relative change of the correct letter's probability and the
accuracy under knockout. Swept samples are those the model answers correctly (100% at
base), so the curve is the share of them that keep their answer when the edge is blocked
in the window centred on x; the base accuracy over all samples of the data set is in each
panel's title. One row per (experiment, model), one panel per task (all tasks first), one
line per edge.
"""

from __future__ import annotations

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from paper_figures import common, registry
from paper_figures.knockout_av import knockout_rows

EXPERIMENTS = ("av_video_knockout", "interleaved_knockout")
TITLE = "Accuracy under attention knockout: share of correctly answered samples that keep their answer"
NOTE = ("y: accuracy (%) over the samples answered correctly at base, with the edge blocked in a window of k layers "
        "centred on x; 'base': accuracy over all samples of the data set (without knockout).")


@registry.figure("fig_knockout_accuracy", TITLE, EXPERIMENTS)
def draw(records: dict[str, pd.DataFrame], meta: common.Meta) -> Figure:
    panels = []
    for experiment in EXPERIMENTS:
        frame = records[experiment]
        rows, k = knockout_rows(frame)
        for model in common.order_models(frame["model"].unique()):
            f, mine = frame[frame["model"] == model], rows[rows["model"] == model]
            panels.append((experiment, model, k, [(task, g, mine[mine["sample_id"].isin(g["sample_id"])])
                                                  for task, g in common.tasks(f)]))
    ncols = max(len(tasks) for *_, tasks in panels)
    fig, axes = common.figure(len(panels), ncols, 4.6, 2.9)
    excluded = 0
    for r, (experiment, model, k, tasks) in enumerate(panels):
        demo = common.tag(model)
        for c in range(ncols):
            ax = axes[r, c]
            if c >= len(tasks):
                ax.axis("off")
                continue
            task, g, swept = tasks[c]
            base = g[g["condition"] == "base"]
            base_acc, left = common.accuracy(base)
            hit = swept["correct"].map({True: 1.0, False: 0.0}).astype(float)  # NaN: nothing measured
            kept, left_out = common.usable(swept.assign(hit=hit), "hit")
            excluded += (left + left_out) if task == "all" else 0  # every record once
            colors = dict(zip(dict.fromkeys(kept["edge"]), sns.color_palette("tab10")))
            for edge, color in colors.items():
                common.plot_mean(ax, kept[kept["edge"] == edge], "centre", "hit", label=common.arrow(edge),
                                 color=color, gid=f"{experiment}|{model}|{task}|{edge}", band=False)
            ax.set(ylim=(-5, 105), ylabel="accuracy kept (%)" if c == 0 else "")
            ax.set_xlabel(common.window_label(kept, k), fontsize=8)
            ax.set_title(f"{experiment} · {common.arrow(task)} · {model}{demo}\nbase accuracy {base_acc:.0f}% "
                         f"(n = {len(base)}) · swept {kept['sample_id'].nunique()}", fontsize=8)
            common.layer_axis(ax)
            if kept.empty:
                ax.text(0.5, 0.5, "no knockout records\n(no sample answered correctly)", transform=ax.transAxes,
                        ha="center", va="center", fontsize=9)
            elif c == len(tasks) - 1:
                ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), title="edge", title_fontsize=8)
    return common.finish(fig, TITLE, meta, f"{NOTE} {common.LAYERS_NOTE}", excluded)
