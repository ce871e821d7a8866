"""paper_figures' driver and registry: every declared figure drawn from saved files alone, the
experiments run in the order their inputs say, the layouts written by preparing samples,
and `avmech figures` reached through an entry point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from avmech.errors import InputError
from avmech.experiment import load_experiment
from paper_figures import make, registry
from test_figures import AV_EDGES, DEMO, knockout, layout_json, write_results


# ---- the driver --------------------------------------------------------------------------
def discard_frame() -> pd.DataFrame:
    return pd.DataFrame({"sample_id": ["s1"] * 2, "setting": ["full", "video"], "applies": True,
                         "drops": [None, "video@2"], "layer_source": [None, "fraction 0.72 of 4 layers"],
                         "correct": True, "p_correct": 0.3, "prefill_ms": [5.0, 4.0], "llm_ms": [3.0, 2.0],
                         "full_prefill_ms": [None, 5.0], "full_llm_ms": [None, 3.0], "n_tokens": 10,
                         "n_kept_last_layer": [10, 8]})


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
        "attention_spikes": pd.DataFrame({"sample_id": ["s1"], "n_spikes": [0], "spike_layers": [""], "ratio": 10.0,
                                          "max_ratio": 2.0, "correct": [True], "p_correct": [0.3]}),
        "norm_sinks": pd.DataFrame({"sample_id": ["s1"], "n_sinks": [0], "correct": [True]}),
        "letter_lens": pd.DataFrame({"sample_id": ["s1"] * 2, "layer": [0, 1], "p_layer": [0.1, 0.2],
                                     "rank_layer": [1, 0], "p_A": 0.1, "p_B": 0.2}),
        "modality_reliance": pd.DataFrame({"sample_id": ["s1"] * 3, "input": ["both", "no_audio", "no_video"],
                                           "applies": True, "correct": True, "correct_base": True,
                                           "p_correct": 0.3, "dp": [None, 0.1, -0.1]}),
        "token_discard": discard_frame(), "token_discard_interleaved": discard_frame(),
        "worldsense_discard": discard_frame(),
        "effective_pathway": pd.DataFrame({"sample_id": ["s1"], "correct_base": [True], "correct": [True],
                                           "p_correct": [0.3], "applies": [True], "dp": [0.0],
                                           "fraction_kept": [0.5], "necessary": [""]}),
    }
    for name, frame in frames.items():
        if name in skip:
            continue
        write_results(root, name, frame)
    write_results(root, "av_video_knockout", av.assign(model="planted-omni"), model="planted-omni")
    binding = knockout((("video", "audio_tokens"), ("audio_tokens", "last"), ("options", "last")),
                       model="planted-omni-shuffled-binding", tasks=(("audio-visual binding", ("s1",)),))
    write_results(root, "binding_knockout", binding.assign(sub_category="shuffled"),
                  model="planted-omni-shuffled-binding")  # only a model trained on them runs them
    (root / "layout" / DEMO).mkdir(parents=True)
    (root / "layout" / DEMO / "layout.json").write_text(json.dumps(layout_json()))


def test_the_registry_is_the_one_list_of_figures():
    entries = registry.entries()
    scripts = {p.stem for p in Path(make.__file__).parent.glob("*.py")} - {
        "__init__", "__main__", "common", "registry", "make", "index"}
    assert {e.module.split(".")[-1] for e in entries} == scripts  # every script declares, nothing else does
    assert len({e.name for e in entries}) == len(entries) == 14
    for e in entries:
        assert not hasattr(__import__(e.module, fromlist=["x"]), "main")  # no per-script main tails
    studied = {x for e in entries for x in e.experiments}
    assert studied == {p.stem for p in make.EXPERIMENTS.glob("*.toml")}  # every experiment is drawn
    with pytest.raises(ValueError, match="both declare"):
        registry.figure("fig_letter_lens", "t", ())(lambda records, meta: None)


def test_driver_renders_every_figure_from_saved_results_without_a_model(tmp_path, monkeypatch):
    import avmech
    import avmech.experiment

    def no_model(*args, **kwargs):
        raise AssertionError("the driver loaded or ran a model although every result was on disk")

    monkeypatch.setattr(avmech, "load", no_model)
    monkeypatch.setattr(avmech.experiment, "run_experiment", no_model)
    hand_made_results(tmp_path / "results")
    index = make.make(tmp_path / "results", tmp_path / "out", models=(DEMO,))
    out = tmp_path / "out"
    entries = registry.entries()
    for e in entries:
        assert (out / f"{e.name}.png").stat().st_size > 10_000 and (out / f"{e.name}.pdf").exists()
        if e.numbers is not None:
            assert (out / f"{e.name}.md").exists() and (out / f"{e.name}.csv").exists()
    md = index.read_text()
    assert md.count("## ") == len(entries) and "Not drawn" not in md
    av = tmp_path / "results" / "av_video_knockout" / DEMO / "records.parquet"
    n = len(pd.read_parquet(av))
    assert f"| av_video_knockout | {av} | {n} | 4 | {DEMO} (RANDOM demo model — not a finding) |" in md
    assert "0123abcd" in md and "layout.json" in md
    assert (out / "index.html").read_text().count("<img ") == len(entries)


def test_driver_runs_each_experiment_after_those_it_reads(tmp_path, monkeypatch):
    import avmech
    import avmech.experiment

    ran = []
    monkeypatch.setattr(avmech, "load", lambda name, seed=0: f"model {name}")

    def fake_run(exp, results, model=None):
        assert model == f"model {exp.model}"
        ran.append(f"{exp.name} on {exp.model}")
        write_results(results, exp.name, pd.DataFrame({"sample_id": ["s1"], "condition": ["base"]}))

    monkeypatch.setattr(avmech.experiment, "run_experiment", fake_run)
    readers = ("effective_pathway", "token_discard", "worldsense_discard")  # all that read av_video_knockout
    hand_made_results(tmp_path, skip=("av_video_knockout", *readers))
    assert make.run_missing(tmp_path, make.EXPERIMENTS, (DEMO,), lambda name, seed: avmech.load(name)) == ran
    assert ran[0] == f"av_video_knockout on {DEMO}" and len(ran) == 4  # the sweep before what reads it
    assert set(ran[1:]) == {f"{name} on {DEMO}" for name in readers}
    seed = json.loads((tmp_path / "letter_lens" / DEMO / "fingerprint.json").read_text())
    (tmp_path / "letter_lens" / DEMO / "fingerprint.json").write_text(json.dumps({**seed, "seed": 1}))
    with pytest.raises(InputError, match=r"another configuration \(seed: 1 -> 0\)"):  # stale records: never drawn
        make.run_missing(tmp_path, make.EXPERIMENTS, (DEMO,), lambda name, seed: avmech.load(name))


def test_the_demo_runs_both_families_of_the_study_and_the_planted_model():
    from avmech.models import embedded

    families = {name: family.name for name, family in embedded().items()}
    assert [families[m] for m in make.DEMO] == ["qwen2.5-omni", "video-salmonn2+", "qwen2.5-omni", "qwen2.5-omni",
                                                "video-salmonn2+"]
    assert make.DEMO[:3] == ("planted-omni", "planted-salmonn", "planted-omni-interleaved")


def test_a_planted_model_runs_the_experiments_of_its_data_on_its_planted_questions():
    exps, skipped = make.experiments_for("planted-omni", make.EXPERIMENTS)
    assert exps and {e.data.dataset for e in exps} == {"av-speakerbench"}
    assert {e.data.root for e in exps} == {"planted"} and {e.model for e in exps} == {"planted-omni"}
    assert "av_video_knockout" in {e.name for e in exps} and "interleaved_knockout" not in {e.name for e in exps}
    assert skipped["interleaved_knockout"] == "it is not trained on their data sets"
    assert skipped["binding_knockout"] == "their data selection keeps none of its questions of av-speakerbench"
    interleaved, _ = make.experiments_for("planted-omni-interleaved", make.EXPERIMENTS)
    assert {e.name for e in interleaved} == {"interleaved_knockout", "token_discard_interleaved"}
    assert {e.data.root for e in interleaved} == {"planted"}
    # the model trained on the questions that need both streams runs the sweep of those alone
    binding, skipped = make.experiments_for("planted-omni-shuffled-binding", make.EXPERIMENTS)
    assert [e.name for e in binding] == ["binding_knockout"] and set(skipped) == {
        p.stem for p in make.EXPERIMENTS.glob("*.toml")} - {"binding_knockout"}
    everything, skipped = make.experiments_for("tiny-omni", make.EXPERIMENTS)
    assert {e.data.root for e in everything} == {"synthetic"} and list(skipped) == ["binding_knockout"]
    assert len(everything) == len(list(make.EXPERIMENTS.glob("*.toml"))) - 1
    # beside the planted demo models, a random one runs only what none of them can: WorldSense's experiment,
    # and the sweep whose records it reads
    rest, _ = make.experiments_for("tiny-omni", make.EXPERIMENTS, make.planted_datasets(make.DEMO))
    assert make.planted_datasets(make.DEMO) == {"av-speakerbench", "av-odyssey"}
    assert {e.name for e in rest} == {"worldsense_discard", "av_video_knockout"}


def test_an_experiment_that_reads_one_not_run_is_not_run_either(tmp_path):
    """A selection of no question drops the sweep, and with it the experiments that read its records."""
    for path in make.EXPERIMENTS.glob("*.toml"):
        text = path.read_text()
        if path.stem == "av_video_knockout":
            text = text.replace('select = { category = ["speaker recognition", "visual recognition"] }',
                                'select = { category = ["speaker counting"] }')
        (tmp_path / path.name).write_text(text)
    exps, skipped = make.experiments_for("tiny-omni", tmp_path)
    assert skipped["av_video_knockout"].startswith("their data selection keeps none")
    readers = {"effective_pathway", "token_discard", "worldsense_discard"}
    assert {name for name, why in skipped.items() if why == "they read the records of an experiment not run on it"
            } == readers
    assert not readers & {e.name for e in exps}


def test_a_planted_models_experiments_read_the_planted_questions_of_its_own_tasks(tmp_path, monkeypatch):
    """``root = "planted"`` is the set of the tasks and orders the experiment's model was trained on
    (planted-omni-shuffled's experiments must not ask it about beeps it never heard)."""
    from avmech.data import planted
    from avmech.experiment import DataSpec, load_samples

    monkeypatch.setenv("AVMECH_CACHE", str(tmp_path))
    spec = DataSpec(dataset="av-speakerbench", root="planted", n_synthetic=12)

    def tasks(model):
        return {s.meta["task_id"] for s in load_samples(spec, 0, model)}

    assert tasks("planted-omni-shuffled") == {planted.task_label(t, v) for t in ("pitch", "colour")
                                              for v in ("fixed", "shuffled")}
    assert tasks("planted-omni-shuffled-binding") == {planted.task_label("binding", v) for v in ("fixed", "shuffled")}
    trained = {planted.task_label(t, "fixed") for t in planted.TRAINED}
    assert tasks("planted-omni") == trained and tasks("tiny-omni") == trained and tasks(None) == trained

    def orders(model):  # the interleaved items: the candidates' orders the model was trained on
        spec = DataSpec(dataset="av-odyssey", root="planted", n_synthetic=8)
        return {planted.odyssey_type(s.meta["question_type_id"])[2] for s in load_samples(spec, 0, model)}

    assert orders("planted-omni-interleaved-shuffled") == {"fixed", "shuffled"}
    assert orders("planted-omni-interleaved") == {"fixed"}


def test_a_selection_that_keeps_no_question_is_an_error_not_an_empty_run(tmp_path, monkeypatch):
    """The study's experiments select speaker and visual recognition; planted-omni-shuffled-binding's
    planted set holds only audio-visual binding: zero questions, which must stop the run, naming why."""
    from avmech.errors import InputError
    from avmech.experiment import DataSpec, load_samples

    monkeypatch.setenv("AVMECH_CACHE", str(tmp_path))
    study = {"category": ["speaker recognition", "visual recognition"]}
    spec = DataSpec(dataset="av-speakerbench", root="planted", n_synthetic=8, select=study)
    assert load_samples(spec, 0, "planted-omni-shuffled")
    with pytest.raises(InputError, match=r"no question of the tasks planted-omni-shuffled-binding .*binding"):
        load_samples(spec, 0, "planted-omni-shuffled-binding")


def test_layout_file_is_the_prepared_token_map(tmp_path, omni):
    import dataclasses

    from avmech.experiment import load_experiment, load_samples

    path = make.write_layout(tmp_path, make.EXPERIMENTS, DEMO, lambda name, seed: omni)
    layout = json.loads(path.read_text())
    assert path == tmp_path / "layout" / DEMO / "layout.json" and layout["model"] == DEMO
    assert [(s["dataset"], s["layout"]) for s in layout["samples"]] == [
        ("av-speakerbench", "dataset"), ("av-odyssey", "study"), ("av-odyssey", "dataset")]
    for sample in layout["samples"]:
        name = make.LAYOUT_FROM[sample["dataset"] == "av-odyssey"]
        exp = load_experiment(make.EXPERIMENTS / f"{name}.toml")
        s = dataclasses.replace(load_samples(exp.data, exp.seed)[0], layout=sample["layout"])
        tokens = omni.prepare(s).tokens
        assert sample["positions"]["role"] == tokens.roles
        assert sample["positions"]["chunk"] == tokens.chunk.tolist()
        assert [np.nan if t is None else t for t in sample["positions"]["time"]] == pytest.approx(
            tokens.time.tolist(), nan_ok=True)
    assert {"reference", "candidate"} <= set(layout["samples"][1]["positions"]["item_role"])


def test_cli_figures_runs_the_entry_point_without_avmech_importing_the_figures(tmp_path, monkeypatch):
    import subprocess
    import sys

    from typer.testing import CliRunner

    from avmech.cli import app

    calls = []
    monkeypatch.setattr(make, "make", lambda *args, **kw: calls.append((args, kw)) or tmp_path / "index.md")
    result = CliRunner().invoke(app, ["figures", "--results", str(tmp_path), "--out", "o", "--model", "m"])
    assert result.exit_code == 0, result.output
    assert calls == [((tmp_path, Path("o"), ("m",)), {"only": ()})] and "index.md" in result.output
    code = "import avmech.cli, sys; assert not any(m.startswith('paper_figures') for m in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
