"""Figure: modality reliance against the knockout contributions, per task, from
``modality_reliance`` and ``av_video_knockout``.

The study's abstract: audio and video feed the question "in proportion to the task's
reliance on each modality". Left, per task: accuracy with the clip as given, without its
sound, and without its frames. Right, one point per (task, modality): x, the reliance,
how much of the correct letter's probability is lost when that modality is removed
(-mean dp, samples answered correctly with both); y, the knockout contribution, the
strongest mean drop when that modality's edges into the question block are blocked
(-min over windows of the mean dp, from the sweep). Points on a rising line would be the
study's finding.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from paper_figures import common, registry
from paper_figures.knockout_av import knockout_rows

TITLE = "Modality reliance vs knockout contribution, per task"
INPUTS = (("both", "clip with its sound"), ("no_audio", "without the sound"), ("no_video", "without the frames"))
SOURCES = {"audio": ("audio_tokens", "audio"), "video": ("video",)}  # the sweep's source group, first found
QUESTION = ("question_block", "question")
MODALITY_COLORS = {"audio": common.ROLE_COLORS["audio"], "video": common.ROLE_COLORS["video"]}
NOTE = ("reliance: −mean dp of p(correct letter) when the modality is removed, over samples answered correctly "
        "with both; contribution: −min over windows of the mean dp of blocking modality → question block "
        "(av_video_knockout, samples answered correctly). Accuracy: all samples.")


def contribution(sweep: pd.DataFrame, modality: str) -> tuple[float, str, int]:
    """The strongest mean drop (%) of the modality -> question edge in a sweep's rows, the edge read, and how
    many of its records had no finite dp."""
    for src in SOURCES[modality]:
        for dst in QUESTION:
            rows = sweep[(sweep["src"] == src) & (sweep["dst"] == dst)] if len(sweep) else sweep
            if len(rows):
                kept, left = common.usable(rows, "dp")
                return -100 * kept.groupby("centre")["dp"].mean().min(), f"{src}->{dst}", left
    return math.nan, "", 0


def reliance(records: pd.DataFrame, modality: str) -> tuple[float, int]:
    """-mean dp (%) of removing ``modality``, over the samples answered correctly with both; and how many
    of those records had no finite dp."""
    rows, _ = common.applied(records[records["input"] == f"no_{modality}"])
    rows = rows[rows["correct_base"].astype(bool)] if len(rows) else rows
    kept, left = common.usable(rows, "dp")
    return (-100 * kept["dp"].mean() if len(kept) else math.nan), left


@registry.figure("fig_modality_reliance", TITLE, ("modality_reliance", "av_video_knockout"))
def draw(records: dict[str, pd.DataFrame], meta: common.Meta) -> Figure:
    modal, (sweep, k) = records["modality_reliance"], knockout_rows(records["av_video_knockout"])
    models = common.order_models(modal["model"].unique())
    fig, axes = common.figure(len(models), 2, 5.6, 3.4)
    excluded, not_applied, read = 0, 0, set()
    for r, model in enumerate(models):
        demo = common.tag(model)
        f, s = modal[modal["model"] == model], sweep[sweep["model"] == model]
        tasks = [(t, g) for t, g in common.tasks(f)]
        bars, points = axes[r, 0], axes[r, 1]
        width = 0.8 / len(INPUTS)
        for i, (name, label) in enumerate(INPUTS):
            heights = []
            for task, g in tasks:
                ran, skipped = common.applied(g[g["input"] == name])
                acc, left = common.accuracy(ran)
                heights.append(acc)
                if task == "all":  # every record once
                    not_applied, excluded = not_applied + skipped, excluded + left
            artists = bars.bar(np.arange(len(tasks)) + (i - 1) * width, heights, width, label=label,
                               color=sns.color_palette("Set2")[i])
            for (task, _), bar in zip(tasks, artists.patches):
                bar.set_gid(f"{model}|accuracy|{name}|{task}")
        bars.set_xticks(np.arange(len(tasks)), [common.arrow(t) for t, _ in tasks], fontsize=8)
        bars.set(ylabel="accuracy (%)", ylim=(0, 100))
        bars.set_title(f"accuracy by input\n{model}{demo} · n = {f['sample_id'].nunique()}", fontsize=9)
        bars.legend(fontsize=7, loc="upper right")
        for modality, color in MODALITY_COLORS.items():
            xs, ys = [], []
            for task, g in tasks:
                if task == "all":  # the points are per task
                    continue
                y, edge, left = contribution(s[s["sample_id"].isin(g["sample_id"])], modality)
                x, left_here = reliance(g, modality)
                read.add(edge)
                xs.append(x)
                ys.append(y)
                excluded += left + left_here
                points.annotate(common.arrow(task), (xs[-1], ys[-1]), fontsize=7, xytext=(3, 3),
                                textcoords="offset points")
            dots = points.scatter(xs, ys, color=color, label=f"{modality} (removed / → question)", s=25)
            dots.set_gid(f"{model}|points|{modality}")
        points.axhline(0, color="black", linewidth=0.6)
        points.axvline(0, color="black", linewidth=0.6)
        points.set(xlabel="reliance: p(correct) lost when removed (%)",
                   ylabel=f"knockout contribution (%, k = {k})")
        points.set_title(f"reliance vs knockout contribution\n{model}{demo}", fontsize=9)
        points.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    note = (f"{NOTE} Edges read: {', '.join(sorted(e for e in read if e)) or 'none'}. Not applied (nothing to "
            f"remove): {not_applied} records.")
    return common.finish(fig, TITLE, meta, note, excluded)
