"""Table: does the knockout sweep find the pathways planted in the planted demo models?

A planted model (`avmech.models.planted`) answers each question from one known stream:
the sound in the "speaker recognition" questions (pitch, beeps), the frames in the
"visual recognition" ones (colour, motion), the options always in the same order. So,
in ``av_video_knockout``, cutting the answering stream's edges into the last position
must lower p(correct letter) by at least half in some window, and cutting the other
stream's edges must move it by at most 20% in every window. Each row states one such
expectation, the sweep's measured extreme over its windows, and whether it holds. Only
planted models have rows: for a random or a real model nothing is known in advance.
"""

from __future__ import annotations

import pandas as pd

from paper_figures import common, registry

TITLE = "Planted pathways: what the sweep should find, and what it found"
ANSWERED_BY = {"speaker recognition": "audio_tokens", "visual recognition": "video"}
NOTE = ("the strongest mean Δp over the sweep's windows, over correctly answered samples; "
        "answering stream -> last: expected <= -50% in some window; the other stream -> last or -> "
        "question_block: expected within ±20% in every window.")


def formatted(t: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "model": t["model"], "questions": t["category"], "n": t["samples"], "excluded": t["excluded"],
        "edge": t["edge"].map(common.arrow),
        "expected": t["expected"], "measured Δp %": t["dp_pct"].map(common.cell("+.1f")),
        "holds": t["holds"].map({True: "yes", False: "NO"}),
    })


@registry.table("table_planted_check", TITLE, ("av_video_knockout",), cells=formatted, note=NOTE)
def table(records: pd.DataFrame) -> pd.DataFrame:
    """One row per (planted model, question category, swept edge from a media stream)."""
    rows = []
    planted = records[records["model"].map(common.is_planted)]
    if planted.empty:
        raise FileNotFoundError("no planted model among the av_video_knockout records (make figures runs planted-omni and planted-salmonn)")
    for model in common.order_models(planted["model"].unique()):
        for category, answering in ANSWERED_BY.items():
            g = planted[(planted["model"] == model) & (planted["category"] == category)]
            swept, excluded = common.usable(g[g["condition"] != "base"], "dp")
            for (src, dst), e in swept.groupby(["src", "dst"], sort=False):
                if src not in ANSWERED_BY.values():
                    continue
                means = e.groupby("centre")["dp"].mean()
                if src == answering and dst == "last":
                    expected, dp = "<= -50%", means.min()
                    holds = dp <= -0.5
                elif src != answering:
                    expected, dp = "within ±20%", means.loc[means.abs().idxmax()]
                    holds = abs(dp) <= 0.2
                else:
                    continue
                rows.append({"model": model, "category": category, "samples": e["sample_id"].nunique(),
                             "excluded": excluded, "edge": f"{src}->{dst}", "expected": expected,
                             "dp_pct": 100 * dp, "holds": bool(holds)})
    return pd.DataFrame(rows)
