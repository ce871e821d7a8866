"""paper_figures: each figure/table drawn from a small hand-made record set shows exactly
the numbers of those records, and says what it left out; the driver renders everything
from saved files alone."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from avmech.experiment import load_experiment
from paper_figures import (
    attention_vs_knockout,
    common,
    discard_table,
    knockout_accuracy,
    knockout_av,
    knockout_interleaved,
    layout_strip,
    letter_lens,
    make,
    norm_sinks_table,
    registry,
    reliance,
    spikes_table,
    window_ablation,
)

DEMO, REAL = "tiny-omni", "Qwen/Qwen2.5-Omni-7B"
SPEAKER, VISUAL = "speaker recognition", "visual recognition"


def meta(experiment: str, *models: str, dataset: str = "av-speakerbench") -> common.Meta:
    return common.Meta(tuple(common.Source(experiment, m, dataset, "synthetic", f"r/{experiment}/{m}", 10, 3, "abc")
                             for m in models))


def line(fig, gid: str):
    found = [ln for ax in fig.axes for ln in ax.lines if ln.get_gid() == gid]
    assert len(found) == 1, f"{gid}: {len(found)} lines"
    return found[0]


def cells(fig) -> list[list[str]]:
    table = fig.axes[0].tables[0]
    n_rows = 1 + max(r for r, _ in table.get_celld())
    n_cols = 1 + max(c for _, c in table.get_celld())
    return [[table[r, c].get_text().get_text() for c in range(n_cols)] for r in range(n_rows)]


def footnotes(fig) -> str:
    return " ".join(t.get_text() for t in fig.texts).replace("\n", " ")


def table_draw(name: str):
    return {e.name: e for e in registry.entries()}[name].draw


def assert_titled(fig, *models: str, data: str = "av-speakerbench") -> None:
    title = fig._suptitle.get_text()
    assert data in title and "synthetic demo set" in title
    for m in models:
        assert m in title
    assert ("RANDOM demo model" in title) == any(common.is_demo(m) for m in models)


# ---- hand-made records -------------------------------------------------------------------
def dp_of(sample: str, edge: str, centre: int) -> float:
    """A known dp: sample s1/s2/s3 -> 0.1/0.2/0.6 (+ 0.01 per centre), negative for edges into last."""
    value = {"s1": 0.1, "s2": 0.2, "s3": 0.6}[sample] + 0.01 * centre
    return -value if edge.endswith("->last") else value


def knockout(edges, model=DEMO, tasks=((SPEAKER, ("s1", "s2", "s3")), (VISUAL, ("s1",))), task_col="category",
             ks=(7,), controls=("edge",), centres=range(3), times_k=False) -> pd.DataFrame:
    """Knockout records with dp from `dp_of` (times k when ``times_k``; the random control: -dp_of)."""
    rows = []
    for task, samples in tasks:
        for sid in samples:
            base = {"model": model, "dataset": "av-speakerbench", "sample_id": f"{task}/{sid}", task_col: task}
            rows.append({**base, "condition": "base", "p_correct": 0.5, "correct": True})
            for src, dst in edges:
                for k in ks:
                    for c in centres:
                        for control in controls:
                            dp = dp_of(sid, f"{src}->{dst}", c) * (-1 if control == "random" else k if times_k else 1)
                            rows.append({**base, "condition": f"{src}->{dst}|k={k}|c={c}|{control}",
                                         "edge": f"{src}->{dst}", "src": src, "dst": dst, "k": float(k),
                                         "centre": float(c), "start": float(max(0, c - k // 2)),
                                         "stop": float(min(len(centres), c + k // 2 + 1)), "control": control,
                                         "dp": dp, "correct": True})
    return pd.DataFrame(rows)


AV_EDGES = (("audio", "question"), ("video", "last"), ("last", "last"))


def write_results(root, name, frame, model=DEMO) -> None:
    """``frame`` as the finished records of experiment ``name`` on ``model``, with the metadata a run writes
    (for an experiment of the study: its configuration and fingerprint, its inputs' records already there)."""
    from avmech.experiment import fingerprint, load_inputs

    d = root / name / model
    d.mkdir(parents=True)
    frame.assign(experiment=name, model=model, dataset="av-speakerbench").to_parquet(d / "records.parquet")
    config = {"name": name, "model": model, "data": {"dataset": "av-speakerbench", "root": "synthetic"}}
    if (make.EXPERIMENTS / f"{name}.toml").exists():
        exp = load_experiment(make.EXPERIMENTS / f"{name}.toml", model=model)
        config = exp.model_dump()
        (d / "fingerprint.json").write_text(json.dumps(fingerprint(exp, inputs=load_inputs(exp, root)), default=str))
    (d / "config.json").write_text(json.dumps(config, default=str))
    (d / "env.json").write_text(json.dumps([{"git_revision": "0123abcd"}]))


# ---- helpers -----------------------------------------------------------------------------
def test_mean_ci_is_mean_plus_minus_1_96_sem():
    mean, lo, hi = common.mean_ci([0.1, 0.3, 0.8])
    half = 1.96 * np.std([0.1, 0.3, 0.8], ddof=1) / math.sqrt(3)
    assert (mean, lo, hi) == pytest.approx((0.4, 0.4 - half, 0.4 + half))
    assert math.isnan(common.mean_ci([0.2])[1])


def test_demo_models_are_the_embedded_ones():
    from avmech.models import embedded

    assert common.DEMO_MODELS | common.PLANTED_MODELS == set(embedded())
    assert not common.DEMO_MODELS & common.PLANTED_MODELS


# ---- figures -----------------------------------------------------------------------------
def test_knockout_av_means_per_window_task_and_model():
    records = pd.concat([knockout(AV_EDGES), knockout(AV_EDGES, model=REAL)])
    fig = knockout_av.draw(records, meta("av_video_knockout", DEMO, REAL))
    for model in (DEMO, REAL):
        audio = line(fig, f"{model}|{SPEAKER}|audio->question")
        assert list(audio.get_xdata()) == [0, 1, 2]
        # speaker recognition: samples s1, s2, s3 -> mean of 0.1, 0.2, 0.6 (+0.01 c), in %
        assert audio.get_ydata() == pytest.approx([100 * (0.3 + 0.01 * c) for c in range(3)])
        video = line(fig, f"{model}|{VISUAL}|video->last")
        assert video.get_ydata() == pytest.approx([-100 * (0.1 + 0.01 * c) for c in range(3)])
    # one row per (model, task), one panel per edge family; real model first, the demo marked
    assert len(fig.axes) == 2 * 2 * 3
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("audio / video → question block") and REAL in titles[0] and "RANDOM" not in titles[0]
    assert "last → last" in titles[2] and DEMO in titles[-1] and "RANDOM demo" in titles[-1]
    assert_titled(fig, DEMO, REAL)


def test_knockout_curves_use_window_7_and_skip_controls():
    records = knockout(AV_EDGES, ks=(3, 7), controls=("edge", "random"))
    records.loc[records["k"] == 3, "dp"] = 9.0
    fig = knockout_av.draw(records, meta("av_video_knockout", DEMO))
    assert line(fig, f"{DEMO}|{SPEAKER}|audio->question").get_ydata() == pytest.approx(
        [100 * (0.3 + 0.01 * c) for c in range(3)])


def test_knockout_rows_without_correct_samples_say_so():
    records = knockout(AV_EDGES)
    records = records[(records["category"] == SPEAKER) | (records["condition"] == "base")]
    fig = knockout_av.draw(records, meta("av_video_knockout", DEMO))
    texts = [t.get_text() for ax in fig.axes[3:] for t in ax.texts]
    assert len(fig.axes) == 6 and all("no knockout records" in t for t in texts) and len(texts) == 3


def test_knockout_interleaved_streams_in_their_panels():
    edges = (("candidates", "last"), ("reference", "last"), ("correct", "last"), ("incorrect", "last"),
             ("question", "reference"), ("candidates", "options"))
    records = knockout(edges, tasks=(("A->I", ("s1", "s2")), ("I->A", ("s3",))), task_col="direction")
    fig = knockout_interleaved.draw(records, meta("interleaved_knockout", DEMO, dataset="av-odyssey"))
    by_title = {ax.get_title().split("\n")[0]: {ln.get_gid().split("|")[-1] for ln in ax.lines if ln.get_gid()}
                for ax in fig.axes[:4]}
    assert by_title == {
        "items → last": {"candidates->last", "reference->last"},
        "correct vs incorrect option → last": {"correct->last", "incorrect->last"},
        "→ reference": {"question->reference"},
        "candidates → option letters": {"candidates->options"},
    }
    assert line(fig, f"{DEMO}|A->I|incorrect->last").get_ydata() == pytest.approx(
        [-100 * (0.15 + 0.01 * c) for c in range(3)])
    assert_titled(fig, DEMO, data="av-odyssey")


def test_window_ablation_curves_and_strongest_drop_against_random():
    records = knockout((("audio", "last"),), ks=(1, 3, 5), controls=("edge", "random"), centres=range(4), times_k=True)
    fig = window_ablation.draw(records, meta("av_video_window_ablation", DEMO))
    # speaker s1, s2, s3 and visual s1: mean of 0.1, 0.2, 0.6, 0.1 = 0.25 (+0.01 c), negated for "-> last", times k
    for k in (1, 3, 5):
        assert line(fig, f"{DEMO}|audio->last|k={k}").get_ydata() == pytest.approx(
            [-100 * k * (0.25 + 0.01 * c) for c in range(4)])
    edge, rand = line(fig, f"{DEMO}|audio->last|edge"), line(fig, f"{DEMO}|audio->last|random")
    assert list(edge.get_xdata()) == [1, 3, 5]
    assert edge.get_ydata() == pytest.approx([-100 * k * 0.28 for k in (1, 3, 5)])  # the deepest window, c = 3
    assert rand.get_ydata() == pytest.approx([100 * 0.25] * 3)  # random: +dp, strongest drop at c = 0
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["k = 1", "k = 3", "k = 5 (cut to depth 4)"]
    assert_titled(fig, DEMO)


def test_attention_beside_knockout():
    rows = []
    for sid, scale in (("s1", 1.0), ("s2", 2.0)):
        for layer in range(3):
            for query in ("last", "question"):
                for group, mass in (("audio", 0.1), ("video", 0.3)):
                    rows.append({"model": DEMO, "dataset": "av-speakerbench", "sample_id": sid, "query": query,
                                 "layer": layer, "key_group": group, "mass": mass * scale + 0.01 * layer})
    records = {"attention_allocation": pd.DataFrame(rows),
               "av_video_knockout": knockout((("audio", "last"), ("video", "question")))}
    fig = attention_vs_knockout.draw(records, meta("attention_allocation", DEMO))
    assert line(fig, f"{DEMO}|mass|last|video").get_ydata() == pytest.approx([45 + c for c in range(3)])
    assert line(fig, f"{DEMO}|mass|question|audio").get_ydata() == pytest.approx([15 + c for c in range(3)])
    assert line(fig, f"{DEMO}|knockout|last|audio").get_ydata() == pytest.approx(
        [-100 * (0.25 + 0.01 * c) for c in range(3)])
    assert line(fig, f"{DEMO}|knockout|question|video").get_ydata() == pytest.approx(
        [100 * (0.25 + 0.01 * c) for c in range(3)])
    assert len(fig.axes) == 4
    assert_titled(fig, DEMO)


def test_letter_lens_mean_per_task_and_top_rank_with_chance():
    rows = []
    for sid, task, n_options, p in (("s1", SPEAKER, 4, 0.2), ("s2", SPEAKER, 4, 0.4), ("s3", VISUAL, 2, 0.9)):
        for layer in range(3):
            letters = {f"p_{x}": (0.1 if i < n_options else None) for i, x in enumerate("ABCD")}
            rows.append({"model": DEMO, "dataset": "av-speakerbench", "sample_id": sid, "category": task,
                         "layer": layer, "p_layer": p + 0.01 * layer, "rank_layer": int(sid == "s2" or layer),
                         **letters})
    fig = letter_lens.draw(pd.DataFrame(rows), meta("letter_lens", DEMO))
    assert line(fig, f"{DEMO}|p_layer|all").get_ydata() == pytest.approx([50 + c for c in range(3)])
    assert line(fig, f"{DEMO}|p_layer|{SPEAKER}").get_ydata() == pytest.approx([30 + c for c in range(3)])
    assert line(fig, f"{DEMO}|top|all").get_ydata() == pytest.approx([200 / 3, 0, 0])
    chance = [ln for ln in fig.axes[1].lines if ln.get_label().startswith("chance")]
    assert chance[0].get_ydata()[0] == pytest.approx(100 * (0.25 + 0.25 + 0.5) / 3)
    assert_titled(fig, DEMO)


def test_norm_sinks_table_numbers_and_files(tmp_path):
    rows = [
        {"sample_id": "s1", "category": SPEAKER, "n_sinks": 3, "sinks_video": 2, "sinks_system": 1,
         "sink_mass_last": 0.5, "correct": True, "correct_sink_knockout": True, "dp_sink_knockout": -0.02},
        {"sample_id": "s2", "category": SPEAKER, "n_sinks": 1, "sinks_video": 1, "sink_mass_last": 0.3,
         "correct": False, "correct_sink_knockout": True, "dp_sink_knockout": 0.04},
        {"sample_id": "s3", "category": VISUAL, "n_sinks": 0, "correct": True},  # no sinks: counted apart
        {"sample_id": "s4", "category": VISUAL, "n_sinks": 2, "sinks_audio": 2, "sink_mass_last": 0.1,
         "correct": True, "correct_sink_knockout": False, "dp_sink_knockout": float("nan")},  # excluded
    ]
    records = pd.DataFrame(rows).assign(model=DEMO, dataset="av-speakerbench")
    fig = table_draw("table_norm_sinks")(records, meta("norm_sinks", DEMO))
    grid = cells(fig)
    header, all_row, speaker = grid[0], dict(zip(grid[0], grid[1])), dict(zip(grid[0], grid[2]))
    assert header[:4] == ["model", "data", "task", "n"]
    assert all_row["task"] == "all" and all_row["n"] == "4" and all_row["no sinks /\nexcluded"] == "1 / 1"
    assert all_row["sinks per sample\nby role"] == "video 0.8\naudio 0.5\nsystem 0.2"  # most frequent first
    assert all_row["attention mass\nlast → sinks %"] == "30.0"
    assert all_row["accuracy %\n(with sinks)"] == "50.0" and all_row["accuracy %\nsinks cut"] == "100.0"
    assert all_row["mean Δp %\nsinks cut"] == "+1.00"
    assert speaker["task"] == SPEAKER and speaker["n"] == "2"
    assert "excluded" in footnotes(fig) and "not the study's test" in norm_sinks_table.__doc__
    assert_titled(fig, DEMO)
    # render writes the image, Markdown (title, sources, same cells) and CSV (numbers)
    write_results(tmp_path, "norm_sinks", records)
    files = registry.render(registry.REGISTRY["table_norm_sinks"], tmp_path, tmp_path / "out").files
    assert sorted(p.suffix for p in files) == [".csv", ".md", ".pdf", ".png"]
    md = (tmp_path / "out" / "table_norm_sinks.md").read_text()
    assert "RANDOM demo model" in md and "| video 0.8<br>audio 0.5<br>system 0.2 |" in md and "excluded:" in md
    csv = pd.read_csv(tmp_path / "out" / "table_norm_sinks.csv")
    assert csv.loc[0, "sink_mass_last_pct"] == pytest.approx(30.0) and csv.loc[0, "excluded"] == 1


def test_spikes_table_accuracy_before_and_after_masking():
    rows = [
        {"sample_id": "s1", "category": SPEAKER, "n_spikes": 3, "spike_layers": "2:1;3:2", "spike_mass": 0.4,
         "correct": True, "p_correct": 0.5, "correct_masked": False, "dp_masked": -0.5},
        {"sample_id": "s2", "category": SPEAKER, "n_spikes": 1, "spike_layers": "3:1", "spike_mass": 0.2,
         "correct": False, "p_correct": 0.2, "correct_masked": True, "dp_masked": 0.1},
        {"sample_id": "s3", "category": VISUAL, "n_spikes": 0, "spike_layers": "", "correct": True,
         "p_correct": 0.6},  # nothing to mask: answers as before, counted apart
    ]
    records = pd.DataFrame(rows).assign(model=DEMO, dataset="av-speakerbench", ratio=10.0, max_ratio=14.0)
    t = spikes_table.table(records)
    row = t.iloc[0]
    assert row["task"] == "all" and row["with_spikes"] == 2 and row["spike_layers"] == "L2: 1, L3: 3"
    assert row["accuracy_spiked_pct"] == pytest.approx(50) and row["accuracy_spiked_masked_pct"] == pytest.approx(50)
    assert row["accuracy_pct"] == pytest.approx(200 / 3) and row["accuracy_all_masked_pct"] == pytest.approx(200 / 3)
    assert row["dp_masked_pct"] == pytest.approx(-20) and row["spike_mass_pct"] == pytest.approx(30)
    grid = cells(table_draw("table_attention_spikes")(records, meta("attention_spikes", DEMO)))
    assert dict(zip(grid[0], grid[1]))["spikes by layer"] == "L2: 1\nL3: 3"


def discard_records(settings, task_col, tasks) -> pd.DataFrame:
    rows = []
    for i, (sid, task) in enumerate(zip(("s1", "s2", "s3"), tasks)):
        for setting, correct, ms, full_ms in settings(i):
            full = setting == "full"
            rows.append({"model": DEMO, "sample_id": sid, task_col: task, "setting": setting, "applies": True,
                         "condition": setting if full else f"discard|{setting}",
                         "drops": None if full else "video@25", "correct": correct, "finite": True,
                         "layer_source": None if full else "fraction 0.72 of 36 layers",
                         "gen_correct": correct and i == 0, "gen_pred": 0 if i == 0 else None,
                         "p_correct": 0.5 + 0.1 * i, "prefill_ms": ms, "llm_ms": ms / 2, "n_tokens": 100,
                         "n_kept_last_layer": 100 if full else 60 + 10 * i,
                         "full_prefill_ms": None if full else full_ms, "full_llm_ms": None if full else full_ms / 2})
    return pd.DataFrame(rows)


def test_discard_table_accuracy_time_and_ratio():
    # full: 10/20/30 ms; video: 9/10/27 ms against 10/20/30 side by side -> ratios .9/.5/.9, median .9
    def video_runs(i):
        return [("full", True, 10.0 * (i + 1), None), ("video", i != 1, [9.0, 10.0, 27.0][i], 10.0 * (i + 1))]

    video = discard_records(video_runs, "category", (SPEAKER, SPEAKER, VISUAL))
    # a setting that removed nothing in s3 (flagged, no numbers) and a non-finite run in s2 (excluded)
    video = pd.concat([video, pd.DataFrame([{"model": DEMO, "sample_id": "s3", "category": VISUAL,
                                             "setting": "image", "condition": "discard|image", "applies": False,
                                             "skip_reason": "no drop of this setting removes anything here"}])])
    video.loc[(video["sample_id"] == "s2") & (video["setting"] == "video"), ["finite", "p_correct"]] = [False, np.nan]
    inter = discard_records(lambda i: [("full", i == 0, 5.0, None)], "direction", ("A->I", "I->A", "I->A"))
    world = discard_records(lambda i: [("full", True, 7.0, None)], "task_domain", ("Recognition",) * 3)
    records = {"token_discard": video.assign(dataset="av-speakerbench"),
               "token_discard_interleaved": inter.assign(dataset="av-odyssey"),
               "worldsense_discard": world.assign(dataset="worldsense")}
    t = discard_table.table(records)
    assert list(t["setting"]) == ["full", "video", "image", "full", "full"]
    fig = table_draw("table_token_discard")(records, meta("token_discard", DEMO))
    grid = cells(fig)
    full, vid, image, odyssey, world = (dict(zip(grid[0], row)) for row in grid[1:])
    assert vid["n / not applied\n/ excluded"] == "2 / 0 / 1" and image["n / not applied\n/ excluded"] == "0 / 1 / 0"
    assert image["acc letter %\n(Δ pp)"] == "—" and image["prefill ratio"] == "—"
    assert full["acc letter %\n(Δ pp)"] == "100.0" and vid["acc letter %\n(Δ pp)"] == "100.0 (+0.0)"
    assert vid["acc generated %\n(Δ pp)"] == "50.0 (+16.7)\n1 no letter"
    assert vid["acc letter %\nby task"] == f"{SPEAKER} 100.0\n{VISUAL} 100.0"
    assert full["prefill ms\n(full, side by side)"] == "20.0\n(—)" and vid["prefill ms\n(full, side by side)"] == "18.0\n(20.0)"
    assert vid["prefill ratio"] == "0.900\n(-10.0%)" and vid["LLM ms /\nLLM ratio"] == "9.0\n0.900"
    assert vid["mean\np(correct)"] == "0.6" and vid["tokens kept\nlast layer %"] == "70"
    assert vid["dropped after layer\n(how chosen)"] == "video after L25\n(fraction 0.72 of 36 layers)"
    assert odyssey["data"] == "av-odyssey" and odyssey["acc letter %\nby task"] == "A->I 100.0\nI->A 0.0"
    assert world["data"] == "worldsense"
    assert "encoders" in footnotes(fig) and "layers numbered from 0" in footnotes(fig)
    assert_titled(fig, DEMO)


def test_pathway_table():
    records = pd.DataFrame([
        {"sample_id": "s1", "category": SPEAKER, "correct_base": True, "correct": True, "dp": -0.1,
         "p_correct": 0.4, "fraction_kept": 0.2, "applies": True, "necessary": "audio->question@0-7;video->last@7-14"},
        {"sample_id": "s2", "category": VISUAL, "correct_base": True, "correct": False, "dp": -0.5,
         "p_correct": 0.1, "fraction_kept": 0.4, "applies": True, "necessary": "audio->question@0-7;video->last@7-14"},
        {"sample_id": "s3", "category": VISUAL, "applies": False, "necessary": ""},
    ]).assign(model=REAL, dataset="av-speakerbench")
    fig = table_draw("table_effective_pathway")(records, meta("effective_pathway", REAL))
    grid = cells(fig)
    row = dict(zip(grid[0], grid[1]))
    assert row["model"] == REAL and row["task"] == "all" and row["not applied /\nexcluded"] == "1 / 0"
    assert row["accuracy %\nfull model"] == "100.0" and row["accuracy %\npathway only"] == "50.0"
    assert row["mean Δp %"] == "-30.00" and row["edges kept %\n(edges × layers)"] == "30.0"
    assert row["necessary (edge @ layers)"] == "audio → question @ L0-7\nvideo → last @ L7-14"
    assert dict(zip(grid[0], grid[3]))["accuracy %\npathway only"] == "0.0"
    assert_titled(fig, REAL)


def layout_json() -> dict:
    roles = ["system"] * 3 + ["video"] * 2 + ["audio"] * 3 + ["video"] * 2 + ["audio"] * 2 + \
        ["question"] * 2 + ["option_letter", "option_text", "option_letter", "option_text", "last"]
    time = [None] * 3 + [0.0, 0.0, 0.0, 0.5, 1.0, 2.0, 2.0, 2.0, 2.5] + [None] * 7
    chunk = [-1] * 3 + [0] * 5 + [1] * 4 + [-1] * 7
    option = [-1] * 14 + [0, 0, 1, 1, -1]
    n = len(roles)
    return {"model": DEMO, "git_revision": "abc", "samples": [{
        "sample_id": "av-speakerbench/q0", "dataset": "av-speakerbench", "data_root": "synthetic", "answer": 1,
        "item_kinds": [], "positions": {"role": roles, "time": time, "chunk": chunk, "item": [-1] * n,
                                        "option": option, "item_role": [""] * n}}]}


def test_layout_strip_colours_each_position_by_role(tmp_path):
    path = tmp_path / "layout.json"
    path.write_text(json.dumps(layout_json()))
    records, sources = layout_strip.read(path)
    fig = layout_strip.draw(records, common.Meta(tuple(sources)))
    strip, times = fig.axes[0], fig.axes[1]
    key = f"{DEMO}|av-speakerbench/q0|dataset"

    def covered(role):
        (coll,) = [c for c in strip.collections if c.get_gid() == f"{key}|{role}"]
        return sorted(p for path in coll.get_paths()
                      for p in range(round(path.vertices[:, 0].min()), round(path.vertices[:, 0].max())))

    assert covered("video") == [3, 4, 8, 9]
    assert covered("audio") == [5, 6, 7, 10, 11]
    assert covered("last") == [18]
    (audio,) = [c for c in times.collections if c.get_gid() == f"{key}|time|audio"]
    assert audio.get_offsets().tolist() == [[5, 0.0], [6, 0.5], [7, 1.0], [10, 2.0], [11, 2.5]]
    assert [ln.get_xdata()[0] for ln in strip.lines] == [8]  # the chunk boundary
    assert sorted(t.get_text() for t in strip.texts) == ["A", "B✓"]
    assert_titled(fig, DEMO)


def interleaved_sample(layout: str) -> dict:
    """An A->I item sample: in the study's layout the image candidates come first, the audio reference after
    the question; in the data set's the reference comes where the question names it (first)."""
    cand = [("image", "candidate", 0), ("image", "candidate", 1)]
    ref = [("audio", "reference", 2)] * 2
    parts = cand + [("question", "", -1)] + ref if layout == "study" else ref + [("question", "", -1)] + cand
    parts += [("option_letter", "", -1), ("last", "", -1)]
    return {"sample_id": "av-odyssey/1_1", "dataset": "av-odyssey", "data_root": "synthetic", "answer": 0,
            "layout": layout, "item_kinds": ["image", "image", "audio"],
            "positions": {"role": [r for r, _, _ in parts], "item_role": [ir for _, ir, _ in parts],
                          "item": [i for *_, i in parts], "time": [None] * len(parts), "chunk": [-1] * len(parts),
                          "option": [0 if r == "option_letter" else -1 for r, _, _ in parts]}}


def test_layout_strip_draws_both_interleaved_layouts(tmp_path):
    layout = layout_json()
    layout["samples"] += [interleaved_sample("study"), interleaved_sample("dataset")]
    path = tmp_path / "layout.json"
    path.write_text(json.dumps(layout))
    records, sources = layout_strip.read(path)
    fig = layout_strip.draw(records, common.Meta(tuple(sources)))
    titles = [ax.get_title() for ax in fig.axes[::2]]
    assert len(titles) == 3 and "study's layout: [candidates][question][reference][options]" in titles[1]
    assert "data set's layout" in titles[2] and "layout" not in titles[0]
    strips = {layout: fig.axes[2 * i] for i, layout in ((1, "study"), (2, "dataset"))}
    labels = {k: [t.get_text().split("\n")[0] for t in ax.texts if "\n" in t.get_text()] for k, ax in strips.items()}
    assert labels == {"study": ["cand 0", "cand 1", "ref"], "dataset": ["ref", "cand 0", "cand 1"]}


# ---- exclusions, groups, layers ---------------------------------------------------------
def test_figures_leave_out_non_finite_records_and_count_them():
    records = knockout(AV_EDGES)
    bad = records.index[(records["condition"] != "base") & (records["sample_id"] == f"{SPEAKER}/s3")
                        & (records["edge"] == "audio->question")]
    records.loc[bad[0], "dp"] = float("nan")  # an empty condition (allow_empty)
    records.loc[bad[1], "finite"] = False  # a run with non-finite logits: its dp is not a number either
    fig = knockout_av.draw(records, meta("av_video_knockout", DEMO))
    ys = line(fig, f"{DEMO}|{SPEAKER}|audio->question").get_ydata()
    assert ys[:2] == pytest.approx([100 * (0.15 + 0.01 * c) for c in range(2)])  # s1, s2 only at c = 0, 1
    assert ys[2] == pytest.approx(100 * (0.3 + 0.02))
    assert "excluded from every mean: 2 records" in footnotes(fig)


def test_knockout_figure_names_the_roles_of_each_group_and_the_real_window():
    records = knockout((("audio_tokens", "question_block"), ("video", "last")))
    records["src_roles"] = records["src"].map({"audio_tokens": "audio+audio_pad", "video": "video"})
    records["dst_roles"] = records["dst"].map({"question_block": "instruction+question+option_letter+option_text",
                                               "last": "last"})
    fig = knockout_av.draw(records, meta("av_video_knockout", DEMO))
    note = footnotes(fig)
    assert "audio_tokens = audio+audio_pad" in note and \
        "question_block = instruction+question+option_letter+option_text" in note
    assert "layers numbered from 0" in note and "L26" in note
    assert fig.axes[0].get_xlabel() == "window centre layer (k = 7, cut to 3 layers)"  # a 3-layer model


def test_knockout_accuracy_is_the_share_of_swept_samples_that_keep_their_answer():
    records = knockout((("audio", "question"),))
    records.loc[(records["sample_id"] == f"{SPEAKER}/s1") & (records["centre"] == 1), "correct"] = False
    wrong = records[records["condition"] == "base"].iloc[:1].assign(sample_id="unswept", correct=False)
    frames = {"av_video_knockout": pd.concat([records, wrong]),
              "interleaved_knockout": knockout((("candidates", "last"),), tasks=(("A->I", ("s1",)),),
                                               task_col="direction")}
    fig = knockout_accuracy.draw(frames, meta("av_video_knockout", DEMO))
    ys = line(fig, f"av_video_knockout|{DEMO}|all|audio->question").get_ydata()
    assert list(ys) == pytest.approx([100, 75, 100])  # 4 swept samples, one loses its answer at c = 1
    assert "base accuracy 80% (n = 5)" in fig.axes[0].get_title()


def test_reliance_sets_removal_beside_knockout_per_task():
    rows = []
    speaker, visual = f"{SPEAKER}/s1", f"{VISUAL}/s2"  # the sample ids of `knockout`
    for task, sid, p_audio, p_video in ((SPEAKER, speaker, 0.2, 0.5), (VISUAL, visual, 0.5, 0.1)):
        rows.append({"sample_id": sid, "category": task, "input": "both", "applies": True, "correct": True,
                     "p_correct": 0.5})
        for name, p in (("no_audio", p_audio), ("no_video", p_video)):
            rows.append({"sample_id": sid, "category": task, "input": name, "applies": True, "correct": p >= 0.5,
                         "correct_base": True, "p_correct": p, "dp": (p - 0.5) / 0.5})
    rows.append({"sample_id": "silent", "category": VISUAL, "input": "no_audio", "applies": False})
    modal = pd.DataFrame(rows).assign(model=DEMO, dataset="av-speakerbench")
    sweep = knockout((("audio_tokens", "question_block"), ("video", "question_block")),
                     tasks=((SPEAKER, ("s1",)), (VISUAL, ("s2",))))
    fig = reliance.draw({"modality_reliance": modal, "av_video_knockout": sweep}, meta("modality_reliance", DEMO))
    audio = [c for ax in fig.axes for c in ax.collections if c.get_gid() == f"{DEMO}|points|audio"][0]
    # speaker task: removing the sound costs 60% of p; its audio -> question knockout raises p (dp_of > 0): -10%
    assert audio.get_offsets().tolist()[0] == pytest.approx([60, -10])
    bars = {b.get_gid(): b.get_height() for ax in fig.axes for b in ax.patches if b.get_gid()}
    assert bars[f"{DEMO}|accuracy|no_video|{VISUAL}"] == 0 and bars[f"{DEMO}|accuracy|no_audio|{VISUAL}"] == 100
    assert "Not applied (nothing to remove): 1 records" in footnotes(fig)


def test_planted_check_states_each_expectation_and_whether_it_holds():
    edges = (("audio_tokens", "last"), ("video", "last"), ("video", "question_block"), ("audio_tokens", "question_block"))
    records = knockout(edges, model="planted-omni")
    # dp_of: edges into last lower p by 10-62%, others raise it by 10-62%; samples s1-s3 answer by sound,
    # s1 alone by sight; in the interleaved items s3 answers A->I, s1 I->A
    interleaved = knockout((("reference", "last"), ("candidates", "last"), ("candidates", "reference"),
                            ("question", "reference")), model="planted-omni",
                           tasks=(("A->I", ("s3",)), ("I->A", ("s1",))), task_col="direction")
    interleaved["question_type_id"] = interleaved["direction"].map({"A->I": 5, "I->A": 6})  # count, fixed order
    numbers = {e.name: e for e in registry.entries()}["table_planted_check"].numbers
    t = numbers({"av_video_knockout": records, "interleaved_knockout": interleaved})
    rows = {(r.task, r.edge): r for r in t.itertuples()}
    hit = rows[SPEAKER, "audio_tokens->last"]  # mean over s1-s3 at centre 0: -(0.1 + 0.2 + 0.6) / 3 = -0.3
    assert hit.expected == "<= -50%" and hit.dp_pct == pytest.approx(100 * -(0.9 + 0.03 * 2) / 3) and not hit.holds
    spared = rows[SPEAKER, "video->question_block"]  # the largest |mean| over centres: centre 2, 0.32 + 0.02
    assert spared.dp_pct == pytest.approx(100 * (0.9 + 0.06) / 3) and not spared.holds
    assert rows[VISUAL, "audio_tokens->last"].dp_pct == pytest.approx(-12.0) and rows[VISUAL, "audio_tokens->last"].holds
    assert (VISUAL, "video->question_block") not in rows  # the answering stream into the question: no expectation
    # the interleaved items are answered by the reference; the candidates (in the class order) carry nothing
    ai, ia = "A->I (fixed order)", "I->A (fixed order)"
    assert rows[ai, "reference->last"].dp_pct == pytest.approx(-62.0) and rows[ai, "reference->last"].holds
    assert rows[ia, "reference->last"].dp_pct == pytest.approx(-12.0) and not rows[ia, "reference->last"].holds
    assert rows[ai, "candidates->reference"].dp_pct == pytest.approx(62.0)
    assert not rows[ai, "candidates->reference"].holds and rows[ia, "candidates->last"].holds
    assert {e for task, e in rows if task in (ai, ia)} == {"reference->last", "candidates->last",
                                                           "candidates->reference"}  # question: not checked
    # shuffled candidates (type 1: count A->I) must be matched: they answer too, into the last position;
    # and a model trained on both orders may match in the class order as well: nothing expected there
    both = interleaved.assign(question_type_id=interleaved["direction"].map({"A->I": 1, "I->A": 6}))
    t = numbers({"av_video_knockout": records, "interleaved_knockout": both})
    rows = {(r.task, r.edge): r for r in t.itertuples()}
    shuffled = "A->I (shuffled)"
    assert rows[shuffled, "candidates->last"].expected == "<= -50%" and (shuffled, "candidates->reference") not in rows
    assert {e for task, e in rows if task == ia} == {"reference->last"}
    with pytest.raises(FileNotFoundError, match="no planted model"):  # a random model: nothing is known in advance
        numbers({"av_video_knockout": knockout(edges), "interleaved_knockout": interleaved.assign(model=DEMO)})
    with pytest.raises(ValueError, match="no 'direction' column"):  # rows it cannot tell apart: never dropped
        numbers({"av_video_knockout": records, "interleaved_knockout": interleaved.drop(columns="direction")})
    with pytest.raises(ValueError, match="no 'question_type_id' column"):  # nor the candidates' order
        numbers({"av_video_knockout": records, "interleaved_knockout": interleaved.drop(columns="question_type_id")})
    # a model trained on the interleaved items alone runs only interleaved_knockout: its rows alone
    alone = numbers({"interleaved_knockout": both})
    pd.testing.assert_frame_equal(alone, t[t["experiment"] == "interleaved_knockout"].reset_index(drop=True))


def test_planted_check_expects_both_streams_in_a_binding_question_and_the_options_where_shuffled():
    binding = "audio-visual binding"
    records = knockout((("audio_tokens", "last"), ("video", "last"), ("options", "last"), ("video", "audio_tokens")),
                       model="planted-omni-shuffled-binding", tasks=((binding, ("s1", "s3")),))
    records["sub_category"] = records["sample_id"].map({f"{binding}/s1": "fixed order", f"{binding}/s3": "shuffled"})
    numbers = {e.name: e for e in registry.entries()}["table_planted_check"].numbers
    rows = {(r.task, r.edge): r for r in numbers({"binding_knockout": records}).itertuples()}
    fixed, shuffled = f"{binding} (fixed order)", f"{binding} (shuffled)"
    assert set(rows) == {(fixed, "audio_tokens->last"), (fixed, "video->last"), (shuffled, "audio_tokens->last"),
                         (shuffled, "video->last"), (shuffled, "options->last")}  # video->audio: nothing expected
    for task, edge, dp in ((fixed, "video->last", -12.0), (shuffled, "video->last", -62.0),
                           (shuffled, "options->last", -62.0)):
        assert rows[task, edge].expected == "<= -50%" and rows[task, edge].dp_pct == pytest.approx(dp)
        assert rows[task, edge].holds == (dp <= -50)
    # trained in the class order alone, the options carry nothing the answer needs: they are spared
    alone = numbers({"binding_knockout": records[records["sub_category"] == "fixed order"]})
    spared = alone[alone["edge"] == "options->last"].iloc[0]
    assert spared.expected == "within ±20%" and spared.dp_pct == pytest.approx(-12.0) and spared.holds
    with pytest.raises(ValueError, match="no 'sub_category' column"):
        numbers({"binding_knockout": records.drop(columns="sub_category")})


def test_planted_check_reads_whichever_configuration_was_run(tmp_path):
    entry = {e.name: e for e in registry.entries()}["table_planted_check"]
    with pytest.raises(FileNotFoundError,
                       match="no records of av_video_knockout or binding_knockout or interleaved_knockout"):
        entry.load(tmp_path)
    interleaved = knockout((("reference", "last"),), model="planted-omni-interleaved", tasks=(("A->I", ("s3",)),),
                           task_col="direction").assign(question_type_id=5)
    write_results(tmp_path, "interleaved_knockout", interleaved, model="planted-omni-interleaved")
    records, meta = entry.load(tmp_path)
    assert set(records) == {"interleaved_knockout"} and list(meta.models) == ["planted-omni-interleaved"]
    assert entry.numbers(records)["task"].tolist() == ["A->I (fixed order)"]
