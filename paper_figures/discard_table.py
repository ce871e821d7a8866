"""Table: token discarding (finding 3), from ``token_discard`` (audio-visual video, AV-SpeakerBench),
``token_discard_interleaved`` (interleaved items, AV-Odyssey) and ``worldsense_discard``
(WorldSense: does the result generalise).

One row per (data, model, setting): what was dropped after which layer (0-based) and how
that layer was chosen (a fraction of depth, or from the knockout sweep); accuracy scored by
the best option letter and by the letter of the generated answer, each with its change
against the full model; the mean probability of the correct letter; the median measured
prefill time as the study times it (encoders included), the full model's measured side by
side and their ratio (median of the per-sample ratios); the same for the LLM alone; and
the share of tokens left at the last layer. Settings that removed nothing in a sample
are counted apart (``not applied``) and kept out of every number, as are runs without a
finite answer (``excluded``). Written as a table image (PNG, PDF), Markdown and CSV.
"""

from __future__ import annotations

import math

import pandas as pd

from paper_figures import common, registry

EXPERIMENTS = ("token_discard", "token_discard_interleaved", "worldsense_discard")
TITLE = "Token discarding: accuracy and measured prefill time (encoders included)"
NOTE = ("ratio: median over samples of prefill(setting) / prefill(full model, measured side by side); prefill: "
        "encoders + LLM (the study's latency), LLM: the LLM alone; acc letter: highest option letter at the last "
        "position; acc generated: the letter of the greedy answer (no letter = wrong; counted); Δ: percentage "
        "points vs full; dropped: group removed from the sequence after that layer.")


def one_row(experiment: str, model: str, setting: str, g: pd.DataFrame, full: pd.DataFrame, col: str | None) -> dict:
    """The numbers of one setting's records ``g`` beside the full model's ``full``."""
    ran, not_applied = common.applied(g)
    kept, excluded = common.usable(ran, "p_correct")
    is_full = setting == "full"
    acc, _ = common.accuracy(kept)
    full_acc, _ = common.accuracy(common.usable(full, "p_correct")[0])
    gen = "gen_correct" in kept and kept["gen_correct"].notna().any()
    row = {
        "experiment": experiment, "data": g["dataset"].iloc[0], "model": model, "setting": setting,
        "dropped": "" if is_full else ";".join(dict.fromkeys(kept["drops"].dropna())),
        "layer_source": "" if is_full or "layer_source" not in kept else ";".join(dict.fromkeys(
            kept["layer_source"].dropna())),
        "samples": kept["sample_id"].nunique(), "not_applied": not_applied, "excluded": excluded,
        "accuracy_pct": acc, "delta_accuracy_pp": acc - full_acc,
        "gen_accuracy_pct": 100 * kept["gen_correct"].astype(float).mean() if gen else math.nan,
        "gen_no_letter": int(kept["gen_pred"].isna().sum()) if gen else 0,
        "mean_p_correct": kept["p_correct"].mean(),
        "prefill_ms": kept["prefill_ms"].median(), "llm_ms": kept["llm_ms"].median(),
        "full_prefill_ms_side_by_side": math.nan if is_full else kept["full_prefill_ms"].median(),
        "prefill_ratio": 1.0 if is_full else (kept["prefill_ms"] / kept["full_prefill_ms"]).median(),
        "llm_ratio": 1.0 if is_full else (kept["llm_ms"] / kept["full_llm_ms"]).median(),
        "tokens_kept_last_layer_pct": 100 * (kept["n_kept_last_layer"] / kept["n_tokens"]).mean(),
    }
    if gen:
        full_gen = common.usable(full, "p_correct")[0]["gen_correct"].astype(float).mean()
        row["delta_gen_accuracy_pp"] = row["gen_accuracy_pct"] - 100 * full_gen
    for task, t in (kept.groupby(col) if col else []):
        row[f"accuracy_pct[{task}]"] = common.accuracy(t)[0]
    return row


def formatted(t: pd.DataFrame) -> pd.DataFrame:
    """The cells as shown in the image and the Markdown."""
    task_cols = [c for c in t.columns if c.startswith("accuracy_pct[")]
    t = t.reindex(columns=[*t.columns, *(c for c in ("delta_gen_accuracy_pp",) if c not in t)])

    def by_task(row) -> str:
        return "\n".join(f"{c[13:-1]} {row[c]:.1f}" for c in task_cols if pd.notna(row[c]))

    def generated(row) -> str:
        if pd.isna(row["gen_accuracy_pct"]):
            return "—"
        delta = "" if row["setting"] == "full" else f" ({row['delta_gen_accuracy_pp']:+.1f})"
        return f"{row['gen_accuracy_pct']:.1f}{delta}\n{row['gen_no_letter']} no letter"

    def source(text: str) -> str:  # the rule, not its evidence (that is in the CSV)
        return "\n".join(dict.fromkeys(part.split(" (")[0] for part in text.split(";"))) if text else ""

    def dropped(drops: str, how: str) -> str:
        if not drops:
            return ""
        after = drops.replace("@-1", " before L0").replace("@", " after L").replace(";", ";\n")
        return f"{after}\n({source(how)})"

    def with_delta(value: float, delta: float, setting: str) -> str:
        if pd.isna(value):
            return "—"
        return f"{value:.1f}" + ("" if setting == "full" else f" ({delta:+.1f})")

    return pd.DataFrame({
        "data": t["data"],
        "model": [f"{m}\n{common.tag(m).strip()}" if common.tag(m) else m for m in t["model"]],
        "setting": t["setting"],
        "dropped after layer\n(how chosen)": [dropped(d, s) for d, s in zip(t["dropped"], t["layer_source"])],
        "n / not applied\n/ excluded": t["samples"].astype(str) + " / " + t["not_applied"].astype(str) + " / "
        + t["excluded"].astype(str),
        "acc letter %\n(Δ pp)": [with_delta(a, d, s) for a, d, s in zip(t["accuracy_pct"], t["delta_accuracy_pp"],
                                                                     t["setting"])],
        "acc generated %\n(Δ pp)": t.apply(generated, axis=1),
        "acc letter %\nby task": t.apply(by_task, axis=1),
        "mean\np(correct)": t["mean_p_correct"].map(common.cell(".4g")),
        "prefill ms\n(full, side by side)": t["prefill_ms"].map(common.cell(".1f")) + "\n("
        + t["full_prefill_ms_side_by_side"].map(common.cell(".1f")) + ")",
        "prefill ratio": t["prefill_ratio"].map(lambda r: "—" if pd.isna(r) else f"{r:.3f}\n({100 * (r - 1):+.1f}%)"),
        "LLM ms /\nLLM ratio": t["llm_ms"].map(common.cell(".1f")) + "\n" + t["llm_ratio"].map(common.cell(".3f")),
        "tokens kept\nlast layer %": t["tokens_kept_last_layer_pct"].map(common.cell(".0f")),
    })


@registry.table("table_token_discard", TITLE, EXPERIMENTS, cells=formatted, note=f"{NOTE} {common.LAYERS_NOTE}")
def table(records: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The numbers: one row per (experiment, model, setting), the full model first."""
    rows = []
    for experiment in EXPERIMENTS:
        frame = records[experiment]
        col = common.task_column(frame)
        for model in common.order_models(frame["model"].unique()):
            f = frame[frame["model"] == model]
            full = f[f["setting"] == "full"]
            for setting, g in f.groupby("setting", sort=False):
                rows.append(one_row(experiment, model, setting, g, full, col))
    return pd.DataFrame(rows)
