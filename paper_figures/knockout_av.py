"""Figure: knockout curves of the audio-visual video configuration (finding 1), from
``av_video_knockout``.

x: the centre layer of the blocked window of k layers (its real width on a shallow
model in the axis label); y: mean relative change of the correct letter's probability,
``dp`` (%), over the samples the model answers correctly, with a 95% band. One panel per
edge family (audio / video -> question block; audio / video / question block -> last;
last -> last), one line per edge, one row per (model, task): audio-reliant (speaker
recognition) vs visual-reliant (visual recognition) tasks. The footnote says which roles
each group name covered (``question_block`` = instruction + question + option letters
and texts) and how many records the means left out.

The same curves of ``binding_knockout`` (questions that need both streams, which the study
does not have: a planted demo model's) are a second figure, a row per option order.
"""

from __future__ import annotations

from typing import Callable

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from paper_figures import common, registry

TITLE = "Attention knockout per layer window: audio-visual video"
FAMILIES: tuple[tuple[str, Callable[[str, str], bool]], ...] = (
    ("audio / video → question block", lambda src, dst: dst != "last"),
    ("audio / video / question block → last", lambda src, dst: dst == "last" and src != "last"),
    ("last → last", lambda src, dst: src == "last" and dst == "last"),
)
NOTE = ("dp = (p_knockout − p_base) / p_base of the correct letter, mean over samples answered correctly; "
        "band: 95% CI (mean ± 1.96 SEM); window of k layers centred on x, clipped at the ends.")


def knockout_rows(records: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The edge-knockout records (no base runs, no random controls) of one window size (7 if swept)."""
    rows = records[records["condition"] != "base"]
    if "control" in rows:
        rows = rows[rows["control"].fillna("edge") == "edge"]
    sizes = sorted(int(k) for k in rows["k"].dropna().unique())
    k = 7 if 7 in sizes else sizes[-1]
    return rows[rows["k"] == k], k


def panels(edges: pd.DataFrame, families) -> list[tuple[str, list[str]]]:
    """(family title, its edges) for each family with edges; edges in no family go to "other edges"."""
    pairs = list(edges[["edge", "src", "dst"]].drop_duplicates().itertuples(index=False))
    out, seen = [], set()
    for title, member in families:
        chosen = [e.edge for e in pairs if member(e.src, e.dst) and e.edge not in seen]
        seen.update(chosen)
        if chosen:
            out.append((title, chosen))
    rest = [e.edge for e in pairs if e.edge not in seen]
    return out + ([("other edges", rest)] if rest else [])


def draw_curves(records: pd.DataFrame, meta: common.Meta, families, title: str, col: str | None = None) -> Figure:
    """Knockout curves: a row per (model, task), a panel per edge family, a line per edge; the tasks
    are the values of ``col`` (default: `common.task_column`)."""
    rows, k = knockout_rows(records)
    families = panels(rows, families)
    src = dict(zip(rows["edge"], rows["src"]))
    spare = iter(sns.color_palette("tab10"))
    colors = {e: common.ROLE_COLORS.get(src[e]) or next(spare) for _, members in families for e in members}
    col = col or common.task_column(records)
    grid = [(m, t, rows[(rows["model"] == m) & ((rows[col] == t) if col else True)])
            for m in common.order_models(records["model"].unique())
            for t in (sorted(records.loc[records["model"] == m, col].dropna().unique()) if col else ["all tasks"])]
    fig, axes = common.figure(len(grid), len(families), 4.2, 2.9, sharex="row")
    excluded = 0
    for r, (model, task, g) in enumerate(grid):
        for c, (family, members) in enumerate(families):
            ax = axes[r, c]
            for edge in members:
                if (g["edge"] == edge).any():
                    excluded += common.plot_mean(ax, g[g["edge"] == edge], "centre", "dp", label=common.arrow(edge),
                                                 color=colors[edge], gid=f"{model}|{task}|{edge}")
            ax.axhline(0, color="black", linewidth=0.6)
            common.layer_axis(ax)
            demo = common.tag(model)
            ax.set_title(f"{family}\n{model}{demo} · {common.arrow(task)} · n = {g['sample_id'].nunique()}",
                         fontsize=9)
            ax.set_xlabel(common.window_label(g, k), fontsize=8)
            ax.set_ylabel("Δp correct letter (%)" if c == 0 else "")
            if g.empty:
                ax.text(0.5, 0.5, "no knockout records\n(only samples answered correctly are swept)",
                        transform=ax.transAxes, ha="center", va="center", fontsize=9)
                ax.set(xticks=[], yticks=[])
    for c, (_, members) in enumerate(families):  # colours hold down each column: one legend below it
        handles = [Line2D([], [], color=colors[e], marker="o", markersize=3, label=common.arrow(e)) for e in members]
        axes[-1, c].legend(handles=handles, fontsize=8, title="edge (keys → queries)", title_fontsize=8,
                           loc="upper center", bbox_to_anchor=(0.5, -0.3), ncols=min(len(members), 3))
    groups = common.groups_note(rows)
    note = " ".join(filter(None, [NOTE, f"groups: {groups}." if groups else "", common.LAYERS_NOTE]))
    return common.finish(fig, title, meta, note, excluded)


@registry.figure("fig_knockout_av_video", TITLE, ("av_video_knockout",))
def draw(records: pd.DataFrame, meta: common.Meta) -> Figure:
    return draw_curves(records, meta, FAMILIES, TITLE)


BINDING_TITLE = "Attention knockout per layer window: questions that need both streams"
BINDING_FAMILIES = (("audio ↔ video", lambda src, dst: {src, dst} == {"audio_tokens", "video"}), *FAMILIES)


@registry.figure("fig_knockout_binding", BINDING_TITLE, ("binding_knockout",))
def draw_binding(records: pd.DataFrame, meta: common.Meta) -> Figure:
    """The same curves for ``binding_knockout`` (the colour the shape shows while the tone sounds): a row
    per option order, with the edges between the two streams in a panel of their own."""
    return draw_curves(records, meta, BINDING_FAMILIES, BINDING_TITLE, col="sub_category")
