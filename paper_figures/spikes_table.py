"""Table: attention spikes on video tokens and masking them where they occur (the study's
sink test), from ``attention_spikes``.

Per model and task (and all samples): how many samples have spikes (video positions whose
attention from the last position exceeds ``ratio`` times their layer's video mean), in
which layers (0-based) and how many, the attention mass they take, and the accuracy
before and after masking each spike -> last edge in the layers where it spikes: over the
samples with spikes, and over all samples (those without spikes answer as before: there
was nothing to mask, and the table says how many they are). The study: 42.24 -> 42.52.
Written as a table image (PNG, PDF), Markdown and CSV.
"""

from __future__ import annotations

from collections import Counter

import pandas as pd

from paper_figures import common, registry

TITLE = "Attention spikes on video tokens, masked in the layers where they occur"
OPTIONAL = ("spike_mass", "correct_masked", "dp_masked", "finite_masked")  # absent when no sample has a spike
NOTE = ("spike: a video position whose attention from the last position (mean over heads) exceeds the ratio "
        "times the mean over video positions in that layer; masked: its edge to the last position blocked in "
        "those layers only. 'all, masked': samples with spikes masked, the others as they are (nothing to mask).")


def layer_counts(values: pd.Series) -> str:
    """"L3: 4, L4: 2" from the records' ``spike_layers`` ("3:2;4:1"), summed over samples."""
    total: Counter[int] = Counter()
    for text in values.dropna():
        for part in filter(None, str(text).split(";")):
            layer, count = part.split(":")
            total[int(layer)] += int(count)
    return ", ".join(f"L{layer}: {n}" for layer, n in sorted(total.items())) or "none"


def formatted(t: pd.DataFrame) -> pd.DataFrame:
    """The cells as shown in the image and the Markdown."""
    return pd.DataFrame({
        "model": [f"{m}\n{common.tag(m).strip()}" if common.tag(m) else m for m in t["model"]],
        "data": t["data"], "task": t["task"], "n": t["samples"],
        "with spikes /\nexcluded": t["with_spikes"].astype(str) + " / " + t["excluded"].astype(str),
        "ratio\n(max seen)": t["ratio"].map(common.cell("g")) + "\n(" + t["max_ratio"].map(common.cell(".1f")) + ")",
        "spikes by layer": t["spike_layers"].str.replace(", ", "\n"),
        "mass on spikes %\n(spike layers)": t["spike_mass_pct"].map(common.cell(".1f")),
        "accuracy % with spikes\nbefore → masked": t["accuracy_spiked_pct"].map(common.cell(".1f")) + " → "
        + t["accuracy_spiked_masked_pct"].map(common.cell(".1f")),
        "accuracy % all\nbefore → all, masked": t["accuracy_pct"].map(common.cell(".1f")) + " → "
        + t["accuracy_all_masked_pct"].map(common.cell(".1f")),
        "mean Δp %\nmasked": t["dp_masked_pct"].map(common.cell("+.2f")),
    })


@registry.table("table_attention_spikes", TITLE, ("attention_spikes",), cells=formatted,
                note=f"{NOTE} {common.LAYERS_NOTE}")
def table(records: pd.DataFrame) -> pd.DataFrame:
    """The numbers: one row per (model, task), "all" first."""
    records = records.reindex(columns=[*records.columns, *(c for c in OPTIONAL if c not in records)])
    rows = []
    for model in common.order_models(records["model"].unique()):
        for task, g in common.tasks(records[records["model"] == model]):
            base, excluded = common.usable(g, "p_correct")
            spiked = base[base["n_spikes"] > 0]
            masked, masked_excluded = common.usable(spiked, "dp_masked")
            after = pd.concat([masked["correct_masked"], base.loc[base["n_spikes"] == 0, "correct"]])
            rows.append({
                "model": model, "data": g["dataset"].iloc[0], "task": task, "samples": g["sample_id"].nunique(),
                "with_spikes": len(spiked), "excluded": excluded + masked_excluded,
                "ratio": g["ratio"].iloc[0], "max_ratio": g["max_ratio"].max(),
                "spike_layers": layer_counts(spiked["spike_layers"]),
                "spike_mass_pct": 100 * spiked["spike_mass"].mean(),
                "accuracy_pct": 100 * base["correct"].astype(float).mean(),
                "accuracy_spiked_pct": 100 * masked["correct"].astype(float).mean(),
                "accuracy_spiked_masked_pct": 100 * masked["correct_masked"].astype(float).mean(),
                "accuracy_all_masked_pct": 100 * after.astype(float).mean(),
                "dp_masked_pct": 100 * masked["dp_masked"].mean(),
            })
    return pd.DataFrame(rows)
