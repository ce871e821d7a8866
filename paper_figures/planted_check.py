"""Table: does the knockout sweep find the pathways planted in the planted demo models?

A planted model (`avmech.models.planted`) answers each question from one known stream.
In the audio-visual video (``av_video_knockout``): the sound in the "speaker
recognition" questions (pitch, beeps), the frames in the "visual recognition" ones
(colour, motion), the options always in the same order. In the interleaved items
(``interleaved_knockout``): the reference, in both directions; where the candidates come in the
class order (candidate i is class i, planted-omni-interleaved) they carry nothing the answer
needs, and where they are shuffled (planted-omni-interleaved-shuffled) the reference must be
matched against them, so both answer. So cutting an answering stream's edges into the last
position must lower p(correct letter) by at least half in some window, and cutting the other
stream's edges must move it by at most 20% in every window. A model trained on both orders
matches in both: on its class-order items nothing is expected of the candidates (their rows
are split by order, read from the question type). Each row states one such expectation,
the sweep's measured extreme over its windows, and whether it holds. Only planted models
have rows: for a random or a real model nothing is known in advance.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from paper_figures import common, registry

TITLE = "Planted pathways: what the sweep should find, and what it found"
# experiment -> (the column naming the task, {task: the stream that answers it}, the streams checked)
ANSWERED_BY = {
    "av_video_knockout": ("category", {"speaker recognition": "audio_tokens", "visual recognition": "video"},
                          ("audio_tokens", "video")),
    "interleaved_knockout": ("direction", {"A->I": "reference", "I->A": "reference"}, ("reference", "candidates")),
}
NOTE = ("the strongest mean Δp over the sweep's windows, over correctly answered samples; "
        "answering stream -> last: expected <= -50% in some window; the other stream -> any group: expected "
        "within ±20% in every window. Interleaved items by the candidates' order: shuffled, the candidates answer "
        "too; in the class order, of a model trained on both orders, nothing is expected of them.")


def formatted(t: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "model": t["model"], "experiment": t["experiment"], "questions": t["task"], "n": t["samples"],
        "excluded": t["excluded"], "edge": t["edge"].map(common.arrow),
        "expected": t["expected"], "measured Δp %": t["dp_pct"].map(common.cell("+.1f")),
        "holds": t["holds"].map({True: "yes", False: "NO"}),
    })


def expectation(src: str, dst: str, answering: tuple[str, ...], spared: tuple[str, ...],
                means: pd.Series) -> tuple[str, float, bool] | None:
    """(expected, measured dp, holds) for one swept edge, or None where nothing is expected."""
    if src in answering and dst == "last":
        return "<= -50%", means.min(), bool(means.min() <= -0.5)
    if src in spared:
        dp = means.loc[means.abs().idxmax()]
        return "within ±20%", dp, bool(abs(dp) <= 0.2)
    return None


def by_order(experiment: str, model_rows: pd.DataFrame, task_rows: pd.DataFrame, task: str, answering: str,
             streams: tuple[str, ...]) -> list[tuple[str, pd.DataFrame, tuple[str, ...], tuple[str, ...]]]:
    """(label, rows, answering streams, spared streams) of one task's questions: the interleaved items
    split by the candidates' order (see the module docstring), the others as they are."""
    if experiment != "interleaved_knockout":
        return [(task, task_rows, (answering,), tuple(s for s in streams if s != answering))]
    if "question_type_id" not in model_rows:
        raise ValueError(f"the planted {experiment} records have no 'question_type_id' column to tell the candidates' "
                         f"order by: rerun the experiment ({', '.join(model_rows['model'].unique())})")
    from avmech.data.planted import VARIANT_NAMES, odyssey_type

    def order(rows: pd.DataFrame) -> pd.Series:
        return rows["question_type_id"].map(lambda t: odyssey_type(t)[2])

    both = order(model_rows).nunique() > 1
    out = []
    for variant, rows in task_rows.groupby(order(task_rows), sort=True):
        answers = (answering, "candidates") if variant == "shuffled" else (answering,)
        spared = () if both else tuple(s for s in streams if s not in answers)
        out.append((f"{task} ({VARIANT_NAMES[variant]})", rows, answers, spared))
    return out


def read(results: Path) -> tuple[dict[str, pd.DataFrame], common.Meta]:
    """The records of whichever of the two experiments were run (a model trained on one configuration
    runs only its own)."""
    return common.load_present(results, tuple(ANSWERED_BY))


@registry.table("table_planted_check", TITLE, tuple(ANSWERED_BY), cells=formatted, note=NOTE, read=read)
def table(records: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per (planted model, experiment, task, swept edge from a checked stream), over the
    experiments in ``records``."""
    rows = []
    for experiment, (column, answered_by, streams) in ANSWERED_BY.items():
        if experiment not in records:
            continue
        planted = records[experiment][records[experiment]["model"].map(common.is_planted)]
        if not planted.empty and column not in planted:
            raise ValueError(f"the planted models' {experiment} records have no {column!r} column to tell the "
                             f"questions apart by: rerun the experiment ({', '.join(planted['model'].unique())})")
        for model in common.order_models(planted["model"].unique()):
            mine = planted[planted["model"] == model]
            for task, answering in answered_by.items():
                for label, g, answers, spared in by_order(experiment, mine, mine[mine[column] == task], task,
                                                          answering, streams):
                    swept, excluded = common.usable(g[g["condition"] != "base"], "dp")
                    for (src, dst), e in swept[swept["src"].isin(streams)].groupby(["src", "dst"], sort=False):
                        found = expectation(src, dst, answers, spared, e.groupby("centre")["dp"].mean())
                        if found is not None:
                            expected, dp, holds = found
                            rows.append({"model": model, "experiment": experiment, "task": label,
                                         "samples": e["sample_id"].nunique(), "excluded": excluded,
                                         "edge": f"{src}->{dst}", "expected": expected, "dp_pct": 100 * dp,
                                         "holds": holds})
    if not rows:
        raise FileNotFoundError(f"no planted model among the {' / '.join(ANSWERED_BY)} records "
                                f"(make figures runs {', '.join(sorted(common.PLANTED_MODELS))})")
    return pd.DataFrame(rows)
