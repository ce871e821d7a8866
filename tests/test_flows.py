"""Flows, experiments and the resumable store on the tiny model and the synthetic sets."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import avmech
from avmech import AttentionKnockout, AttentionRead, TokenDrop, data
from avmech.cli import app
from avmech.errors import InputError
from avmech.experiment import load_experiment, run_experiment
from avmech.flows import FLOWS
from avmech.flows.attention import AttentionParams, attention_allocation, find_sinks
from avmech.flows.common import windows
from avmech.flows.discard import DiscardParams, token_discard
from avmech.flows.knockout import KnockoutParams, knockout_sweep, random_pairs
from avmech.flows.lens import LensParams, letter_lens
from avmech.models.planted_recipes import RECIPES
from avmech.store import RecordStore, slug

EXPERIMENTS = sorted(Path(__file__).resolve().parents[1].glob("experiments/*.toml"))


@pytest.fixture(scope="module")
def av_samples():
    return data.read("av-speakerbench", data.synthetic.ensure("av-speakerbench", n=8), limit=3)


@pytest.fixture(scope="module")
def odyssey_samples():
    return data.read("av-odyssey", data.synthetic.ensure("av-odyssey", n=8), limit=2)


def test_windows_are_centred_and_clipped():
    w = windows(12, 7)
    assert [(x.start, x.stop) for x in w[:2]] == [(0, 4), (0, 5)]
    assert (w[6].start, w[6].stop) == (3, 10) and all(x.start <= x.centre < x.stop for x in w)
    assert (w[-1].start, w[-1].stop) == (8, 12)
    assert [(x.start, x.stop) for x in windows(4, 7)][0] == (0, 3)  # k cut to the depth


def test_sweep_dp_equals_a_single_run(omni, av_samples):
    params = KnockoutParams(edges=[["audio", "question"], ["video", "last"]], k=[3], only_correct=False)
    records = list(knockout_sweep(omni, av_samples[:1], params))
    base = [r for r in records if r["condition"] == "base"]
    conds = [r for r in records if r["condition"] != "base"]
    assert len(base) == 1 and len(conds) == 2 * omni.n_layers
    p = omni.prepare(av_samples[0])
    for r in conds[:: omni.n_layers // 2]:
        single = omni.run(p, [AttentionKnockout(r["src"], r["dst"], range(r["start"], r["stop"]))])
        assert r["dp"] == pytest.approx(avmech.metrics.dp(single, omni.run(p)), abs=1e-6)
        assert r["p_correct"] == pytest.approx(single.p_correct, rel=1e-5)


def test_only_correct_skips_wrong_samples(omni, av_samples):
    params = KnockoutParams(edges=[["audio", "last"]], k=[1], only_correct=True)
    records = list(knockout_sweep(omni, av_samples, params))
    by_sample = pd.DataFrame(records).groupby("sample_id")
    for _, g in by_sample:
        base = g[g.condition == "base"].iloc[0]
        assert (len(g) > 1) == bool(base["correct"])


def test_random_control_blocks_as_many_edges_per_row(omni, av_samples):
    import numpy as np

    from avmech.flows.knockout import Edge

    p = omni.prepare(av_samples[0])
    edge = Edge(src="audio", dst="question")
    pairs = random_pairs(p, edge, np.random.default_rng(0))
    audio = set(p.tokens.positions("audio").tolist())
    for q in p.tokens.positions("question").tolist():
        keys = [k for qq, k in pairs if qq == q]
        assert len(keys) == sum(1 for a in audio if a <= q) and not audio & set(keys) and q not in keys


def test_lens_flow_last_layer_is_the_answer(omni, av_samples):
    records = list(letter_lens(omni, av_samples[:2], LensParams()))
    assert len(records) == 2 * omni.n_layers
    last = [r for r in records if r["layer"] == omni.n_layers - 1]
    for r in last:
        assert r["p_layer"] == pytest.approx(r["p_correct"], abs=1e-6)
        assert r["pred_layer"] == r["pred"]


def test_attention_allocation_sums_to_one_per_layer(omni, av_samples):
    records = pd.DataFrame(attention_allocation(omni, av_samples[:1], AttentionParams(queries=["last"])))
    sums = records.groupby("layer")["mass"].sum()
    assert len(sums) == omni.n_layers and ((sums - 1).abs() < 1e-5).all()
    p = omni.prepare(av_samples[0])
    direct = omni.run(p, [AttentionRead([1], "last", ("audio",))])[0][0, ..., 0].mean()
    row = records[(records.layer == 1) & (records.key_group == "audio")]
    assert float(row["mass"].iloc[0]) == pytest.approx(float(direct), abs=1e-6)


def test_find_sinks_flags_outlier_norms():
    norms = torch.ones(2, 50)
    norms[1, 7] = 40.0
    norms += torch.linspace(0, 0.1, 50)
    assert find_sinks(norms, z=6.0).tolist() == [7]


def test_discard_flow_times_and_scores(omni, av_samples):
    params = DiscardParams(settings=[{"name": "av", "drops": [{"group": "audio | video", "after": 0.5}]}], repeats=1)
    records = list(token_discard(omni, av_samples[:1], params))
    full, cut = records
    assert full["setting"] == "full" and cut["setting"] == "av" and cut["drops"] == "audio | video@1"
    assert cut["prefill_ms"] > cut["llm_ms"] > 0 and full["prefill_ms"] > full["llm_ms"] > 0
    assert cut["full_prefill_ms"] > cut["full_llm_ms"] > 0 and cut["applies"]
    p = omni.prepare(av_samples[0])
    ref = omni.run(p, [TokenDrop("audio | video", 1)])
    assert cut["p_correct"] == pytest.approx(ref.p_correct, rel=1e-5)
    assert cut["n_kept_last_layer"] == len(p) - len(p.tokens.group("audio | video"))
    generated = omni.generate(p, [TokenDrop("audio | video", 1)], max_new_tokens=8).text
    assert cut["gen_text"] == generated
    assert cut["gen_pred"] == avmech.metrics.parse_letter(generated, "ABCD")


def test_interleaved_sweep_runs(omni, odyssey_samples):
    """In the data set's layout an A->I question names the reference before the candidates, so
    candidates -> reference has nothing to cut: an error, or, when allowed, NaN records with the
    reason. In the study's layout the same edge is measured."""
    import dataclasses
    import math

    edges = [["candidates", "reference"], ["reference", "last"], ["incorrect", "last"]]
    with pytest.raises(InputError, match="candidates->reference has nothing to cut"):
        list(knockout_sweep(omni, odyssey_samples, KnockoutParams(edges=edges, k=[2], only_correct=False)))
    params = KnockoutParams(edges=edges, k=[2], only_correct=False, allow_empty=True)
    records = pd.DataFrame(knockout_sweep(omni, odyssey_samples, params))
    assert set(records.edge.dropna()) == {"candidates->reference", "reference->last", "incorrect->last"}
    pairs = records[records.edge == "candidates->reference"]
    empty = pairs[pairs.n_edges == 0]  # the A->I samples
    assert len(empty) and empty.dp.isna().all() and empty.empty_reason.str.contains("after").all()
    assert not pairs[pairs.n_edges > 0].dp.isna().any()
    assert not records[records.edge == "reference->last"].dp.isna().any()
    study = [dataclasses.replace(s, layout="study") for s in odyssey_samples]
    records = pd.DataFrame(knockout_sweep(omni, study, KnockoutParams(edges=edges, k=[2], only_correct=False)))
    cut = records[records.edge == "candidates->reference"]
    assert len(cut) and (cut.n_edges > 0).all() and not any(math.isnan(x) for x in cut.dp)


def _exp(tmp_path, text: str) -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(text)
    return path


GOOD = """
name = "t"
flow = "knockout_sweep"
[data]
dataset = "av-speakerbench"
n_synthetic = 8
limit = 3
[params]
edges = [["audio", "last"], ["video", "question"]]
k = [2]
only_correct = false
"""


@pytest.mark.parametrize("bad,field", [
    (GOOD.replace('flow = "knockout_sweep"', 'flow = "sweep"'), "flow"),
    (GOOD.replace("k = [2]", 'k = ["two"]'), "params.k"),
    (GOOD.replace("only_correct = false", "only_correct = false\nwindow = 3"), "params.window"),
    (GOOD.replace('dataset = "av-speakerbench"', 'dataset = "mmlu"'), "data.dataset"),
    (GOOD.replace("limit = 3", "limit = 0"), "data.limit"),
    (GOOD.replace('name = "t"', 'name = "a b"'), "name"),
])
def test_invalid_configs_name_their_field(tmp_path, bad, field):
    with pytest.raises(InputError, match=field.replace(".", r"\.")):
        load_experiment(_exp(tmp_path, bad))


def test_a_killed_run_resumes_without_loss_or_repeats(omni, tmp_path, monkeypatch):
    exp = load_experiment(_exp(tmp_path, GOOD))
    whole = pd.read_parquet(run_experiment(exp, tmp_path / "whole", model=omni) / "records.parquet")
    calls = {"n": 0}
    append = RecordStore.append

    def dying(self, records):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # killed while writing the 5th record
        append(self, records)

    monkeypatch.setattr(RecordStore, "append", dying)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(exp, tmp_path / "killed", model=omni)
    log = tmp_path / "killed" / "t" / "tiny-omni" / "records.jsonl"
    with open(log, "a") as f:
        f.write('{"sample_id": "torn')  # a torn line from a kill mid-write
    monkeypatch.setattr(RecordStore, "append", append)
    resumed = pd.read_parquet(run_experiment(exp, tmp_path / "killed", model=omni) / "records.parquet")
    key = ["sample_id", "condition"]
    assert not resumed.duplicated(key).any()
    assert len(resumed) == len(whole) and len(json.loads(log.read_text().splitlines()[0]))
    merged = whole.merge(resumed, on=key, suffixes=("", "_r"))
    assert len(merged) == len(whole)
    assert (merged["p_correct"] - merged["p_correct_r"]).abs().max() < 1e-7
    env = json.loads((tmp_path / "killed" / "t" / "tiny-omni" / "env.json").read_text())
    assert len(env) == 2 and {"torch", "transformers", "nnsight", "git_revision", "device"} <= set(env[0])


def test_shards_partition_the_samples(omni, tmp_path):
    exp = load_experiment(_exp(tmp_path, GOOD))
    for i in range(2):
        run_experiment(exp, tmp_path, shard=(i, 2), model=omni)
    out = tmp_path / "t" / "tiny-omni"
    shards = pd.read_parquet(out / "records.parquet")
    assert sorted(shards.sample_id.unique()) == sorted(s.id for s in data.read(
        "av-speakerbench", data.synthetic.ensure("av-speakerbench", n=8), limit=3))
    with pytest.raises(InputError, match="shard"):
        run_experiment(exp, tmp_path, shard=(2, 2), model=omni)


def test_every_experiment_file_is_valid():
    assert len(EXPERIMENTS) >= 8
    flows = {load_experiment(path).flow for path in EXPERIMENTS}
    assert flows == set(FLOWS)


# binding_knockout's default is the planted model trained on its questions (built in about 11 minutes):
# slow tier; the default tier runs it on tiny-omni over a planted set of those questions (below).
DEFAULTS = [pytest.param(path, id=path.stem, marks=[pytest.mark.slow] * (load_experiment(path).model in RECIPES))
            for path in EXPERIMENTS]


@pytest.mark.integration
@pytest.mark.parametrize("path", DEFAULTS)
def test_every_experiment_runs_on_the_embedded_default(path, tmp_path, request):
    exp = load_experiment(path)
    if exp.model in RECIPES:
        request.getfixturevalue("user_cache")
    for name in exp.inputs.values():  # the experiments whose records it reads, first
        result = CliRunner().invoke(app, ["run", str(path.parent / f"{name}.toml"), "--results", str(tmp_path)])
        assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["run", str(path), "--results", str(tmp_path), "--limit", "3"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / exp.name / slug(exp.model) / "records.parquet").exists()


@pytest.mark.integration
def test_the_binding_sweep_runs_on_a_set_of_binding_questions(tmp_path):
    """On a set without them (tiny-omni's planted set: pitch, beeps, colour, motion) it is an error."""
    path = Path(__file__).resolve().parents[1] / "experiments" / "binding_knockout.toml"
    root = data.planted.ensure("av-speakerbench", n=8, tasks=("binding",), variants=("fixed", "shuffled"))
    run = ["run", str(path), "--model", "tiny-omni", "--results", str(tmp_path)]
    result = CliRunner().invoke(app, [*run, "--data", str(root)])
    assert result.exit_code == 0, result.output
    records = pd.read_parquet(tmp_path / "binding_knockout" / "tiny-omni" / "records.parquet")
    assert set(records["category"]) == {"audio-visual binding"}
    assert set(records["sub_category"]) == {"fixed order", "shuffled"}
    refused = CliRunner().invoke(app, run + ["--results", str(tmp_path / "refused")])
    assert refused.exit_code != 0 and "holds no question that [data] select" in refused.output


@pytest.mark.integration
def test_cli_run_limits_and_reports(tmp_path):
    path = Path(__file__).resolve().parents[1] / "experiments" / "letter_lens.toml"
    result = CliRunner().invoke(app, ["run", str(path), "--limit", "1", "--results", str(tmp_path)])
    assert result.exit_code == 0, result.output
    records = pd.read_parquet(tmp_path / "letter_lens" / "tiny-omni" / "records.parquet")
    assert records.sample_id.nunique() == 1
    bad = CliRunner().invoke(app, ["run", str(tmp_path / "missing.toml")])
    assert bad.exit_code == 2 and "does not exist" in bad.output


def test_edge_knockout_of_a_rectangle_equals_the_group_knockout(omni, av_samples):
    from avmech import EdgeKnockout

    p = omni.prepare(av_samples[0])
    src, dst = p.tokens.positions("audio").tolist(), p.tokens.positions("question | last").tolist()
    pairs = [(q, k) for q in dst for k in src if k <= q]
    group = omni.run(p, [AttentionKnockout("audio", "question | last", [1, 2])]).logits
    edges = omni.run(p, [EdgeKnockout(pairs, [1, 2])]).logits
    assert (group - edges).abs().max() < 1e-6 and (group - omni.run(p).logits).abs().max() > 1e-4
    with pytest.raises(InputError, match="no key to attend to"):
        omni.run(p, [EdgeKnockout([(3, k) for k in range(4)], [0])])


def test_effective_pathway_keeps_the_necessary_edges(omni, av_samples):
    from avmech.flows.pathway import PathwayParams, effective_pathway, necessary

    params = KnockoutParams(edges=[["audio", "last"], ["video", "last"]], k=[2], only_correct=False)
    records = pd.DataFrame(knockout_sweep(omni, av_samples[:2], params))
    needed, excluded = necessary(records, 2, threshold=0.0)
    assert set(needed.values()) <= {True, False} and len(needed) == 2 * 2  # 2 edges x 2 tiling windows of 4 layers
    assert excluded == 0
    records.loc[records.index[-1], "dp"] = float("nan")  # a condition with nothing to measure: left out, counted
    assert necessary(records, 2, threshold=0.0)[1] == 1
    out = list(effective_pathway(omni, av_samples[:1], PathwayParams(k=2, threshold=0.0), sweep=records))
    r = out[0]
    assert r["sweep_records_excluded"] == 1 and r["applies"]
    p = omni.prepare(av_samples[0])
    needed, _ = necessary(records, 2, threshold=0.0)
    blocked = [AttentionKnockout(src, dst, range(a, b)) for (src, dst, a, b), keep in needed.items() if not keep]
    assert r["p_correct"] == pytest.approx(omni.run(p, blocked).p_correct, rel=1e-5)
    assert 0.0 <= r["fraction_kept"] <= 1.0 and r["n_blocked_windows"] == len(blocked)
    with pytest.raises(InputError, match="no knockout records"):
        necessary(pd.DataFrame([{"condition": "base", "sample_id": "s"}]), 7, 0.1)


def test_prepared_samples_hands_a_sample_it_cannot_prepare_to_the_handler(omni, av_samples, tmp_path):
    import dataclasses

    from avmech.errors import MediaError, ModelError
    from avmech.flows.common import on_sample_error, prepared_samples

    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    bad = dataclasses.replace(av_samples[0], video=tmp_path / "bad.mp4", id="bad")
    unanswered = dataclasses.replace(av_samples[0], answer=None, id="unanswered")
    samples = [bad, av_samples[1], unanswered]
    with pytest.raises(MediaError, match="bad.mp4"):
        list(prepared_samples(omni, samples, "t"))  # no handler: the error stands
    seen = []
    with on_sample_error(lambda s, e: seen.append((s.id, type(e)))):
        prepared = [s.id for s, _ in prepared_samples(omni, samples, "t")]
    assert prepared == [av_samples[1].id] and seen == [("bad", MediaError), ("unanswered", InputError)]

    def broken_model(s):
        raise ModelError("the model cannot trace anything")  # not about one sample: never skipped

    omni_prepare = omni.prepare
    try:
        omni.prepare = broken_model
        with on_sample_error(lambda s, e: None), pytest.raises(ModelError):
            list(prepared_samples(omni, [av_samples[1]], "t"))
    finally:
        omni.prepare = omni_prepare
