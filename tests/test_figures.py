"""paper_figures: each figure/table drawn from a small hand-made record set shows exactly
the numbers of those records; the driver renders everything from saved files alone."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from paper_figures import (
    attention_vs_knockout,
    common,
    discard_table,
    knockout_av,
    knockout_interleaved,
    layout_strip,
    letter_lens,
    make,
    pathway_table,
    sinks_table,
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


# ---- helpers -----------------------------------------------------------------------------
def test_mean_ci_is_mean_plus_minus_1_96_sem():
    mean, lo, hi = common.mean_ci([0.1, 0.3, 0.8])
    half = 1.96 * np.std([0.1, 0.3, 0.8], ddof=1) / math.sqrt(3)
    assert (mean, lo, hi) == pytest.approx((0.4, 0.4 - half, 0.4 + half))
    assert math.isnan(common.mean_ci([0.2])[1])


def test_demo_models_are_the_embedded_ones():
    from avmech.models import EMBEDDED

    assert common.DEMO_MODELS == set(EMBEDDED)


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
    assert titles[0].startswith("modality → question") and REAL in titles[0] and "RANDOM" not in titles[0]
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


def test_sinks_table_numbers_and_files(tmp_path):
    rows = [
        {"sample_id": "s1", "category": SPEAKER, "n_sinks": 3, "sinks_video": 2, "sinks_system": 1,
         "sink_mass_last": 0.5, "correct": True, "correct_sink_knockout": True, "dp_sink_knockout": -0.02},
        {"sample_id": "s2", "category": SPEAKER, "n_sinks": 1, "sinks_video": 1, "sink_mass_last": 0.3,
         "correct": False, "correct_sink_knockout": True, "dp_sink_knockout": 0.04},
        {"sample_id": "s3", "category": VISUAL, "n_sinks": 0, "correct": True},  # no sinks: answer kept
    ]
    records = pd.DataFrame(rows).assign(model=DEMO, dataset="av-speakerbench")
    fig = sinks_table.draw(records, meta("attention_sinks", DEMO))
    grid = cells(fig)
    header, all_row, speaker = grid[0], dict(zip(grid[0], grid[1])), dict(zip(grid[0], grid[2]))
    assert header[:4] == ["model", "data", "task", "n"]
    assert all_row["task"] == "all" and all_row["n"] == "3" and all_row["sinks\nper sample"] == "1.3"
    assert all_row["sinks per sample\nby role"] == "video 1.0\nsystem 0.3"  # most frequent first
    assert all_row["attention mass\nlast → sinks %"] == "40.0"
    assert all_row["accuracy\n%"] == "66.7" and all_row["accuracy %\nsinks masked"] == "100.0"
    assert all_row["mean Δp %\nsinks masked"] == "+1.00"
    assert speaker["task"] == SPEAKER and speaker["accuracy\n%"] == "50.0" and speaker["n"] == "2"
    assert_titled(fig, DEMO)
    # main writes the image, Markdown (title, sources, same cells) and CSV (numbers)
    d = tmp_path / "attention_sinks" / DEMO
    d.mkdir(parents=True)
    records.to_parquet(d / "records.parquet")
    (d / "config.json").write_text(json.dumps({"name": "attention_sinks", "model": DEMO,
                                               "data": {"dataset": "av-speakerbench", "root": "synthetic"}}))
    files = sinks_table.main(tmp_path, tmp_path / "out").files
    assert sorted(p.suffix for p in files) == [".csv", ".md", ".pdf", ".png"]
    md = (tmp_path / "out" / "table_attention_sinks.md").read_text()
    assert "RANDOM demo model" in md and "| video 1.0<br>system 0.3 |" in md
    csv = pd.read_csv(tmp_path / "out" / "table_attention_sinks.csv")
    assert csv.loc[0, "sink_mass_last_pct"] == pytest.approx(40.0)


def test_discard_table_accuracy_time_and_ratio():
    def frame(settings, task_col, tasks):
        rows = []
        for i, (sid, task) in enumerate(zip(("s1", "s2", "s3"), tasks)):
            for setting, correct, ms, full_ms in settings(i):
                rows.append({"model": DEMO, "sample_id": sid, task_col: task, "setting": setting,
                             "condition": setting if setting == "full" else f"discard|{setting}",
                             "drops": None if setting == "full" else "video@25", "correct": correct,
                             "p_correct": 0.5 + 0.1 * i, "prefill_ms": ms, "n_tokens": 100,
                             "n_kept_last_layer": 100 if setting == "full" else 60 + 10 * i,
                             "full_prefill_ms": None if setting == "full" else full_ms})
        return pd.DataFrame(rows)

    # full: 10/20/30 ms; video: 9/10/27 ms against 10/20/30 side by side -> ratios .9/.5/.9, median .9
    def video_runs(i):
        return [("full", True, 10.0 * (i + 1), None), ("video", i != 1, [9.0, 10.0, 27.0][i], 10.0 * (i + 1))]

    video = frame(video_runs, "category", (SPEAKER, SPEAKER, VISUAL))
    inter = frame(lambda i: [("full", i == 0, 5.0, None)], "direction", ("A->I", "I->A", "I->A"))
    records = {"token_discard": video.assign(dataset="av-speakerbench"),
               "token_discard_interleaved": inter.assign(dataset="av-odyssey")}
    t = discard_table.table(records)
    assert list(t["setting"]) == ["full", "video", "full"]
    fig = discard_table.draw(records, meta("token_discard", DEMO))
    grid = cells(fig)
    full, vid, odyssey = (dict(zip(grid[0], row)) for row in grid[1:])
    assert full["accuracy\n%"] == "100.0" and vid["accuracy\n%"] == "66.7" and vid["Δ acc\n(pp)"] == "-33.3"
    assert vid["accuracy %\nby task"] == f"{SPEAKER} 50.0\n{VISUAL} 100.0"
    assert full["prefill ms\n(median)"] == "20.00" and vid["prefill ms\n(median)"] == "10.00"
    assert vid["full ms\n(side by side)"] == "20.00" and vid["ratio\nto full"] == "0.900\n(-10.0%)"
    assert vid["mean\np(correct)"] == "0.6" and vid["tokens kept\nlast layer %"] == "70"
    assert vid["dropped\n(after layer)"] == "video after L25"
    assert odyssey["data"] == "av-odyssey" and odyssey["accuracy %\nby task"] == "A->I 100.0\nI->A 0.0"
    assert_titled(fig, DEMO)


def test_pathway_table():
    records = pd.DataFrame([
        {"sample_id": "s1", "category": SPEAKER, "correct_base": True, "correct": True, "dp": -0.1,
         "fraction_kept": 0.2, "necessary": "audio->question@0-7;video->last@7-14"},
        {"sample_id": "s2", "category": VISUAL, "correct_base": True, "correct": False, "dp": -0.5,
         "fraction_kept": 0.4, "necessary": "audio->question@0-7;video->last@7-14"},
    ]).assign(model=REAL, dataset="av-speakerbench")
    fig = pathway_table.draw(records, meta("effective_pathway", REAL))
    grid = cells(fig)
    row = dict(zip(grid[0], grid[1]))
    assert row["model"] == REAL and row["task"] == "all"
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
    key = f"{DEMO}|av-speakerbench/q0"

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


# ---- the driver --------------------------------------------------------------------------
def hand_made_results(root, skip=()) -> None:
    """Hand-made records for every experiment of the study (no model run), with config/env files."""
    av = knockout(AV_EDGES + (("video", "question"), ("audio", "last"), ("question", "last")))
    frames = {
        "av_video_knockout": av,
        "interleaved_knockout": knockout((("candidates", "last"), ("candidates", "reference")),
                                         tasks=(("A->I", ("s1",)),), task_col="direction"),
        "av_video_window_ablation": knockout((("audio", "question"),), ks=(1, 3), controls=("edge", "random")),
        "attention_allocation": pd.DataFrame({"sample_id": ["s1"] * 2, "query": "last", "layer": [0, 1],
                                              "key_group": "audio", "mass": [0.2, 0.3]}),
        "attention_sinks": pd.DataFrame({"sample_id": ["s1"], "n_sinks": [0], "correct": [True]}),
        "letter_lens": pd.DataFrame({"sample_id": ["s1"] * 2, "layer": [0, 1], "p_layer": [0.1, 0.2],
                                     "rank_layer": [1, 0], "p_A": 0.1, "p_B": 0.2}),
        "token_discard": pd.DataFrame({"sample_id": ["s1"] * 2, "setting": ["full", "video"],
                                       "drops": [None, "video@2"], "correct": True, "p_correct": 0.3,
                                       "prefill_ms": [5.0, 4.0], "full_prefill_ms": [None, 5.0],
                                       "n_tokens": 10, "n_kept_last_layer": [10, 8]}),
        "effective_pathway": pd.DataFrame({"sample_id": ["s1"], "correct_base": [True], "correct": [True],
                                           "dp": [0.0], "fraction_kept": [0.5], "necessary": [""]}),
    }
    frames["token_discard_interleaved"] = frames["token_discard"]
    for name, frame in frames.items():
        if name in skip:
            continue
        write_results(root, name, frame)
    (root / "layout" / DEMO).mkdir(parents=True)
    (root / "layout" / DEMO / "layout.json").write_text(json.dumps(layout_json()))


def write_results(root, name, frame) -> None:
    d = root / name / DEMO
    d.mkdir(parents=True)
    frame.assign(experiment=name, model=DEMO, dataset="av-speakerbench").to_parquet(d / "records.parquet")
    (d / "config.json").write_text(json.dumps({"name": name, "model": DEMO,
                                               "data": {"dataset": "av-speakerbench", "root": "synthetic"}}))
    (d / "env.json").write_text(json.dumps([{"git_revision": "0123abcd"}]))


def test_driver_renders_every_figure_from_saved_results_without_a_model(tmp_path, monkeypatch):
    import avmech
    import avmech.experiment

    def no_model(*args, **kwargs):
        raise AssertionError("the driver loaded or ran a model although every result was on disk")

    monkeypatch.setattr(avmech, "load", no_model)
    monkeypatch.setattr(avmech.experiment, "run_experiment", no_model)
    hand_made_results(tmp_path / "results")
    index = make.make(tmp_path / "results", tmp_path / "out")
    out = tmp_path / "out"
    for module in make.FIGURES:
        assert (out / f"{module.NAME}.png").stat().st_size > 10_000 and (out / f"{module.NAME}.pdf").exists()
    for table in ("table_token_discard", "table_attention_sinks", "table_effective_pathway"):
        assert (out / f"{table}.md").exists() and (out / f"{table}.csv").exists()
    md = index.read_text()
    assert md.count("## ") == len(make.FIGURES) and "Not drawn" not in md
    av = tmp_path / "results" / "av_video_knockout" / DEMO / "records.parquet"
    n = len(pd.read_parquet(av))
    assert f"| av_video_knockout | {av} | {n} | 4 | {DEMO} (RANDOM demo model — not a finding) |" in md
    assert "0123abcd" in md and "layout.json" in md
    assert (out / "index.html").read_text().count("<img ") == len(make.FIGURES)


def test_driver_runs_missing_experiments_sweep_first(tmp_path, monkeypatch):
    import avmech
    import avmech.experiment

    ran = []
    monkeypatch.setattr(avmech, "load", lambda name, seed=0: f"model {name}")

    def fake_run(exp, results, model=None):
        assert model == f"model {DEMO}"
        ran.append(exp.name)
        write_results(results, exp.name, pd.DataFrame({"sample_id": ["s1"], "correct_base": [True],
                                                       "correct": [True], "dp": [0.0], "fraction_kept": [1.0],
                                                       "necessary": [""]}))

    monkeypatch.setattr(avmech.experiment, "run_experiment", fake_run)
    hand_made_results(tmp_path, skip=("av_video_knockout", "effective_pathway"))
    assert make.run_missing(tmp_path, make.EXPERIMENTS, None, lambda name, seed: avmech.load(name)) == ran
    assert ran == ["av_video_knockout", "effective_pathway"]


def test_layout_file_is_the_prepared_token_map(tmp_path, omni):
    from avmech.experiment import load_experiment, load_samples

    path = make.write_layout(tmp_path, make.EXPERIMENTS, None, lambda name, seed: omni)
    layout = json.loads(path.read_text())
    assert path == tmp_path / "layout" / DEMO / "layout.json" and layout["model"] == DEMO
    for name, sample in zip(make.LAYOUT_FROM, layout["samples"]):
        exp = load_experiment(make.EXPERIMENTS / f"{name}.toml")
        tokens = omni.prepare(load_samples(exp.data, exp.seed)[0]).tokens
        assert sample["positions"]["role"] == tokens.roles
        assert sample["positions"]["chunk"] == tokens.chunk.tolist()
        assert [np.nan if t is None else t for t in sample["positions"]["time"]] == pytest.approx(
            tokens.time.tolist(), nan_ok=True)
    assert {"reference", "candidate"} <= set(layout["samples"][1]["positions"]["item_role"])


def test_cli_figures_calls_the_driver(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from avmech.cli import app

    calls = []
    monkeypatch.setattr(make, "make", lambda *args: calls.append(args) or tmp_path / "index.md")
    result = CliRunner().invoke(app, ["figures", "--results", str(tmp_path), "--out", "o", "--model", "m"])
    assert result.exit_code == 0, result.output
    assert calls == [(tmp_path, make.Path("o"), "m")] and "index.md" in result.output
