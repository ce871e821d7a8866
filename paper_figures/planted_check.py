"""Table: does the knockout sweep find the pathways planted in the planted demo models?

A planted model (`avmech.models.planted`) answers each question from known streams.
In the audio-visual video (``av_video_knockout``): the sound in the "speaker
recognition" questions (pitch, beeps), the frames in the "visual recognition" ones
(colour, motion). In the "audio-visual binding" questions (``binding_knockout``, the
colour the shape shows while the tone sounds; planted-omni-shuffled-binding): both. In
the interleaved items (``interleaved_knockout``): the reference, in both directions. Where
the options (the candidates, in the interleaved items) come in the class order (option i is
class i) they carry nothing the answer needs; where they are shuffled the model must read
them to find the letter, so they answer too. So cutting an answering stream's edges into the
last position must lower p(correct letter) by at least half in some window, and cutting the
other stream's edges must move it by at most 20% in every window. A model trained on both
orders reads the options in both: on its class-order questions nothing is expected of them
(rows split by order, read from the sub-category or, for the interleaved items, the question
type). Each row states one such expectation, the sweep's measured extreme over its windows,
and whether it holds. Only planted models have rows: for a random or a real model nothing is
known in advance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from paper_figures import common, registry

TITLE = "Planted pathways: what the sweep should find, and what it found"


def odyssey_order(rows: pd.DataFrame) -> pd.Series:
    """The candidates' order ("fixed" or "shuffled") of planted AV-Odyssey records, from the question type."""
    from avmech.data.planted import odyssey_type

    return rows["question_type_id"].map(lambda t: odyssey_type(t)[2])


def options_order(rows: pd.DataFrame) -> pd.Series:
    """The options' order ("fixed" or "shuffled") of planted AV-SpeakerBench records, from the sub-category."""
    from avmech.data.planted import VARIANT_NAMES

    return rows["sub_category"].map({name: variant for variant, name in VARIANT_NAMES.items()})


@dataclass(frozen=True)
class Known:
    """What the sweep of one experiment must find on a planted model."""

    column: str  # the records' column naming the task
    answered_by: dict[str, tuple[str, ...]]  # task -> the streams that carry its answer
    streams: tuple[str, ...]  # the streams whose edges are checked
    order: Callable[[pd.DataFrame], pd.Series] | None = None  # each record's option order, where it matters
    order_column: str = ""  # the column ``order`` reads
    shuffled: str = ""  # the group that answers too where the order is shuffled


ANSWERED_BY = {
    "av_video_knockout": Known("category", {"speaker recognition": ("audio_tokens",), "visual recognition": ("video",)},
                               ("audio_tokens", "video")),
    "binding_knockout": Known("category", {"audio-visual binding": ("audio_tokens", "video")},
                              ("audio_tokens", "video", "options"), options_order, "sub_category", "options"),
    "interleaved_knockout": Known("direction", {"A->I": ("reference",), "I->A": ("reference",)},
                                  ("reference", "candidates"), odyssey_order, "question_type_id", "candidates"),
}
NOTE = ("the strongest mean Δp over the sweep's windows, over correctly answered samples; "
        "answering stream -> last: expected <= -50% in some window; the other stream -> any group: expected "
        "within ±20% in every window. Binding questions need both streams. Questions by the options' (the "
        "candidates') order: shuffled, the options answer too; in the class order, of a model trained on both "
        "orders, nothing is expected of them.")


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


def by_order(experiment: str, model_rows: pd.DataFrame, task_rows: pd.DataFrame, task: str
             ) -> list[tuple[str, pd.DataFrame, tuple[str, ...], tuple[str, ...]]]:
    """(label, rows, answering streams, spared streams) of one task's questions: split by the options'
    order where it matters (see the module docstring), the others as they are."""
    known = ANSWERED_BY[experiment]
    answering = known.answered_by[task]
    if known.order is None:
        return [(task, task_rows, answering, tuple(s for s in known.streams if s not in answering))]
    if known.order_column not in model_rows:
        raise ValueError(f"the planted {experiment} records have no {known.order_column!r} column to tell the "
                         f"options' order by: rerun the experiment ({', '.join(model_rows['model'].unique())})")
    from avmech.data.planted import VARIANT_NAMES

    both = known.order(model_rows).nunique() > 1
    out = []
    for variant, rows in task_rows.groupby(known.order(task_rows), sort=True):
        answers = answering + ((known.shuffled,) if variant == "shuffled" else ())
        spared = () if both else tuple(s for s in known.streams if s not in answers)
        out.append((f"{task} ({VARIANT_NAMES[variant]})", rows, answers, spared))
    return out


def read(results: Path) -> tuple[dict[str, pd.DataFrame], common.Meta]:
    """The records of whichever of the experiments were run (a planted model runs only those of the
    questions it is trained on)."""
    return common.load_present(results, tuple(ANSWERED_BY))


@registry.table("table_planted_check", TITLE, tuple(ANSWERED_BY), cells=formatted, note=NOTE, read=read)
def table(records: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per (planted model, experiment, task, swept edge from a checked stream), over the
    experiments in ``records``."""
    rows = []
    for experiment, known in ANSWERED_BY.items():
        if experiment not in records:
            continue
        planted = records[experiment][records[experiment]["model"].map(common.is_planted)]
        if not planted.empty and known.column not in planted:
            raise ValueError(f"the planted models' {experiment} records have no {known.column!r} column to tell "
                             f"the questions apart by: rerun the experiment ({', '.join(planted['model'].unique())})")
        for model in common.order_models(planted["model"].unique()):
            mine = planted[planted["model"] == model]
            for task in known.answered_by:
                for label, g, answers, spared in by_order(experiment, mine, mine[mine[known.column] == task], task):
                    swept, excluded = common.usable(g[g["condition"] != "base"], "dp")
                    for (src, dst), e in swept[swept["src"].isin(known.streams)].groupby(["src", "dst"], sort=False):
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
