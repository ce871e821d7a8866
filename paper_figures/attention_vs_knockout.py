"""Figure: attention allocation beside the knockout effect (why attention weights mislead),
from ``attention_allocation`` and ``av_video_knockout``.

Per model, one column per query group (last position, question). Top row: the attention
mass (%) the queries give each key group per layer (mean over heads, query rows and
samples, 95% band). Bottom row: the knockout effect of the same group -> query edge (mean
dp %, window centred on the layer). A group can receive much attention yet matter
little when blocked (attention sinks), and the reverse.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from paper_figures import common, registry
from paper_figures.knockout_av import knockout_rows

TITLE = "Attention allocation vs knockout effect: where the model looks is not what it uses"
NOTE = ("top: attention mass from the query group to each key group (mean over heads, query rows, samples); "
        "bottom: dp of blocking group → query in a window centred on the layer (samples answered correctly); "
        "bands: 95% CI.")


@registry.figure("fig_attention_vs_knockout", TITLE, ("attention_allocation", "av_video_knockout"))
def draw(records: dict[str, pd.DataFrame], meta: common.Meta) -> Figure:
    mass = records["attention_allocation"]
    excluded = 0
    knock, k = knockout_rows(records["av_video_knockout"])
    queries = list(dict.fromkeys(mass["query"]))
    models = common.order_models(set(mass["model"]) | set(knock["model"]))
    fig, axes = common.figure(2 * len(models), len(queries), 5.0, 3.0)
    for m, model in enumerate(models):
        demo = common.tag(model)
        for c, query in enumerate(queries):
            top, bottom = axes[2 * m, c], axes[2 * m + 1, c]
            a = mass[(mass["model"] == model) & (mass["query"] == query)]
            for group in dict.fromkeys(a["key_group"]):
                excluded += common.plot_mean(top, a[a["key_group"] == group], "layer", "mass", label=group,
                                 color=common.ROLE_COLORS.get(group, "#616161"), gid=f"{model}|mass|{query}|{group}")
            top.set(title=f"attention from {query}\n{model}{demo} · n = {a['sample_id'].nunique()}",
                    xlabel="layer (from 0)", ylabel="attention mass (%)" if c == 0 else "", ylim=(0, None))
            kq = knock[(knock["model"] == model) & (knock["dst"] == query)]
            for src in dict.fromkeys(kq["src"]):
                excluded += common.plot_mean(bottom, kq[kq["src"] == src], "centre", "dp", label=f"{src} → {query}",
                                 color=common.ROLE_COLORS.get(src, "#616161"), gid=f"{model}|knockout|{query}|{src}")
            bottom.axhline(0, color="black", linewidth=0.6)
            bottom.set(title=f"knockout of group → {query} · n = {kq['sample_id'].nunique()}",
                       xlabel=common.window_label(kq, k), ylabel="Δp correct letter (%)" if c == 0 else "")
            if kq.empty:
                bottom.text(0.5, 0.5, "no knockout records for this query", transform=bottom.transAxes,
                            ha="center", va="center", fontsize=9)
            for ax in (top, bottom):
                ax.title.set_fontsize(9)
                common.layer_axis(ax)
                if ax.get_legend_handles_labels()[0]:
                    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1),
                              title="key group" if ax is top else "edge", title_fontsize=8)
    groups = common.groups_note(knock)
    note = " ".join(filter(None, [NOTE, f"groups: {groups}." if groups else "", common.LAYERS_NOTE]))
    return common.finish(fig, TITLE, meta, note, excluded)
