"""Figure: logit lens of the answer letters across layers, from ``letter_lens``.

One row per model. Left: the probability of the correct option letter (%, softmax over
the whole vocabulary) when the last position's residual stream after each layer is read
through the final norm and unembedding; mean over all samples (black, 95% band) and per
task. Right: how often the correct letter is the lens's top option letter (%), with
chance (one over the number of options).
"""

from __future__ import annotations

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from paper_figures import common, registry

TITLE = "Logit lens of the answer letters at the last position"
NOTE = "probability: softmax over the whole vocabulary at each layer's output; bands: 95% CI (mean ± 1.96 SEM)."


@registry.figure("fig_letter_lens", TITLE, ("letter_lens",))
def draw(records: pd.DataFrame, meta: common.Meta) -> Figure:
    records, excluded = common.usable(records, "p_layer")
    records = records.assign(top=(records["rank_layer"] == 0).astype(float))
    letters = records.filter(regex=r"^p_[A-Z]$")
    chance = 100 * (1 / letters.notna().sum(axis=1)).mean()
    models = common.order_models(records["model"].unique())
    task_names = [t for t, _ in common.tasks(records)[1:]]
    colors = dict(zip(task_names, sns.color_palette("Set2", len(task_names))))
    fig, axes = common.figure(len(models), 2, 5.2, 3.2)
    for r, model in enumerate(models):
        demo = common.tag(model)
        f = records[records["model"] == model]
        for ax, value, what in ((axes[r, 0], "p_layer", "p(correct letter) (%)"),
                                (axes[r, 1], "top", "correct letter ranked first (%)")):
            for task, g in common.tasks(f):
                overall = task == "all"
                common.plot_mean(ax, g, "layer", value, color="black" if overall else colors[task],
                                 label=f"{common.arrow(task)} (n = {g['sample_id'].nunique()})",
                                 gid=f"{model}|{value}|{task}", band=overall and value == "p_layer",
                                 linewidth=2 if overall else 1)
            ax.set(xlabel="layer (from 0; residual stream after it)", ylabel=what, ylim=(0, None))
            ax.set_title(f"{what}\n{model}{demo}", fontsize=9)
            common.layer_axis(ax)
        axes[r, 1].axhline(chance, color="grey", linestyle=":", label=f"chance ({chance:.0f}%)")
        axes[r, 1].legend(fontsize=8, title="samples", title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return common.finish(fig, TITLE, meta, f"{NOTE} {common.LAYERS_NOTE}", excluded)
