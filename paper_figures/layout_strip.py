"""Figure: the TokenMap layout of one sample per configuration: which sequence position is
which modality, and when.

The layout is not in any experiment's records: it is read from
``results/layout/<model-slug>/layout.json``, which the figures driver (`paper_figures.make`)
writes by *preparing* (no forward pass) the first sample of ``av_video_knockout`` (or of
``binding_knockout``, on a model that runs it), and the first of ``interleaved_knockout`` in
both interleaved layouts: the study's
(``[candidates][question][reference][options]``, what the study's experiments use) and
the data set's (items where the question names them). Per sample: a strip coloured by
role (interleaving chunks and items marked, option letters labelled) and, below it, the
time in seconds of each audio / video position.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from paper_figures import common, registry

TITLE = "Token layout of one sample per input configuration and layout (TokenMap)"
LAYOUT = "layout.json"
LAYOUTS = {"study": "study's layout: [candidates][question][reference][options]",
           "dataset": "data set's layout: items where the question names them"}
NOTE = "strip: role of every sequence position; below: start time of audio / video positions; dashed: chunk boundaries."


def read(path: Path) -> tuple[pd.DataFrame, list[common.Source]]:
    """One row per (sample, position) of a layout file, and a source per sample."""
    layout = json.loads(path.read_text())
    frames, sources = [], []
    for s in layout["samples"]:
        f = pd.DataFrame(s["positions"]).assign(model=layout["model"], sample_id=s["sample_id"],
                                                dataset=s["dataset"], answer=s.get("answer"),
                                                layout=s.get("layout", "dataset"))
        f["position"] = np.arange(len(f))
        f["item_kind"] = [s["item_kinds"][i] if i >= 0 else "" for i in f["item"]]
        frames.append(f)
        sources.append(common.Source("layout", layout["model"], s["dataset"], s.get("data_root", "unknown"),
                                     str(path), len(f), 1, layout.get("git_revision")))
    return pd.concat(frames, ignore_index=True), sources


def load(results_dir: Path) -> tuple[pd.DataFrame, common.Meta]:
    """Every model's layout file under ``results_dir/layout``."""
    paths = sorted((Path(results_dir) / "layout").glob(f"*/{LAYOUT}"))
    if not paths:
        raise FileNotFoundError(f"no {Path(results_dir) / 'layout'}/<model>/{LAYOUT}: the figures driver writes it")
    parts = [read(p) for p in paths]
    return pd.concat([f for f, _ in parts], ignore_index=True), common.Meta(tuple(s for _, src in parts for s in src))


def runs(values: pd.Series) -> list[tuple[int, int]]:
    """(start, length) of each maximal run of equal values."""
    v = values.to_numpy()
    starts = [0] + [i for i in range(1, len(v)) if v[i] != v[i - 1]]
    return [(a, b - a) for a, b in zip(starts, starts[1:] + [len(v)])]


def draw_strip(ax, f: pd.DataFrame, key: str) -> None:
    """Role strip: one bar collection per role, chunk boundaries, item and option labels."""
    for role in dict.fromkeys(f["role"]):
        spans = [(f["position"].iloc[a], n) for a, n in runs(f["role"] == role) if f["role"].iloc[a] == role]
        ax.broken_barh(spans, (0, 1), facecolors=common.ROLE_COLORS.get(role, "#000000"), gid=f"{key}|{role}")
    for a, n in runs(f["item"]):
        if f["item"].iloc[a] >= 0:
            row = f.iloc[a]
            label = "ref" if row["item_role"] == "reference" else f"cand {row['item']}"
            ax.text(a + n / 2, 1.08, f"{label}\n{row['item_kind']}", ha="center", va="bottom", fontsize=6.5)
    for _, row in f[f["role"] == "option_letter"].iterrows():
        tick = "✓" if row["option"] == row["answer"] else ""
        ax.text(row["position"] + 0.5, -0.12, "ABCDEFGHIJ"[row["option"]] + tick, ha="center", va="top", fontsize=7)
    ax.set(ylim=(0, 1), yticks=[], xlim=(0, len(f)))
    ax.tick_params(labelbottom=False)


@registry.figure("fig_token_layout", TITLE, (), read=load)
def draw(records: pd.DataFrame, meta: common.Meta) -> Figure:
    samples = list(records.groupby(["model", "sample_id", "layout"], sort=False))
    fig, axes = common.figure(2 * len(samples), 1, 14.0, 1.6, gridspec_kw={"height_ratios": [1, 1.6] * len(samples)})
    for i, ((model, sample_id, layout), f) in enumerate(samples):
        strip, times = axes[2 * i, 0], axes[2 * i + 1, 0]
        f = f.sort_values("position")
        key = f"{model}|{sample_id}|{layout}"
        draw_strip(strip, f, key)
        demo = common.tag(model)
        shown = f" · {LAYOUTS[layout]}" if (f["item"] >= 0).any() else ""
        strip.set_title(f"{model}{demo} · {f['dataset'].iloc[0]} sample {sample_id} · {len(f)} positions{shown}",
                        fontsize=9, pad=22)
        timed = f[f["time"].notna()]
        for role, g in timed.groupby("role", sort=False):
            times.scatter(g["position"], g["time"], s=6, color=common.ROLE_COLORS.get(role), gid=f"{key}|time|{role}")
        chunked = f[f["chunk"] >= 0]
        for a, _ in runs(chunked["chunk"])[1:]:
            for ax in (strip, times):
                ax.axvline(chunked["position"].iloc[a], color="black", linestyle="--", linewidth=0.8)
        times.set(xlim=(0, len(f)), xlabel="sequence position", ylabel="time (s)")
        if timed.empty:
            times.text(0.5, 0.5, "no timed positions", transform=times.transAxes, ha="center", va="center")
    roles = list(dict.fromkeys(records["role"]))
    handles = [Patch(color=common.ROLE_COLORS.get(r, "#000000"), label=r) for r in roles]
    axes[-1, 0].legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.3), fontsize=8,
                       ncols=min(len(handles), 8), title="role", title_fontsize=8)
    return common.finish(fig, TITLE, meta, NOTE)
