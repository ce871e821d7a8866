"""Known-answer tests: the flows on a model whose pathways were planted by training.

``planted-omni`` answers questions whose answer is in the sound only (pitch, beeps) or in
the frames only (colour, motion). So the answer must travel from that modality's tokens
to the last position, and the other modality carries nothing it needs: each flow is
checked against that, not against numbers it produced before.
"""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest

from avmech import AttentionKnockout, AttentionRead, TokenDrop, data
from avmech.data import planted
from avmech.errors import InputError
from avmech.models.planted import PLANTED_FILE, RECIPES, Recipe

MODALITIES = ("audio", "video")


def modality(sample) -> str:
    """The stream that holds the answer, from the category the planted set writes."""
    return {"speaker recognition": "audio", "visual recognition": "video"}[sample.meta["category"]]


# ---- the planted data ------------------------------------------------------------------

def test_planted_sets_are_read_by_the_benchmark_readers(tmp_path):
    samples = data.read("av-speakerbench", planted.write("av-speakerbench", tmp_path / "sb", n=16, seed=3))
    assert len(samples) == 16
    by_task = defaultdict(list)
    for s in samples:
        by_task[s.meta["task_id"]].append(s)
    assert set(by_task) == {planted.task_label(t, v) for t in planted.TASKS for v in planted.VARIANTS}
    for s in samples:
        task, variant = s.meta["task_id"].split(" (")
        if variant == "fixed order)":
            assert s.options == planted.TASKS[task].classes  # option i is class i
    ws = data.read("worldsense", planted.write("worldsense", tmp_path / "ws", n=6, seed=3))
    assert {s.meta["task_domain"] for s in ws} <= {"Audio", "Visual", "Audio-Visual"}
    ody = data.read("av-odyssey", planted.write("av-odyssey", tmp_path / "ody", n=8, seed=3, variants=("fixed",)))
    assert ody and all(planted.odyssey_type(s.meta["question_type_id"])[2] == "fixed" for s in ody)


def test_the_answer_follows_from_its_modality_alone():
    rng = np.random.default_rng(0)
    for task, spec in planted.TASKS.items():
        for value in spec.classes:
            clip = planted.clip_for(task, value, rng)
            assert clip.answer(task) == value
    # the same colour, both directions, differ only in where the shape is
    a = planted.PlantedClip("square", ("red", "red"), "left to right", ("tone", "low"), seed=1).frames()
    b = planted.PlantedClip("square", ("red", "red"), "right to left", ("tone", "low"), seed=1).frames()
    assert np.array_equal(a[0], b[-1]) and not np.array_equal(a[0], b[0])
    assert (a[0] != planted.BACKGROUND).any(-1).mean() > 0.1  # the shape fills a merged patch of the ViT


def test_ensure_writes_the_trained_scope_once(tmp_path):
    root = planted.ensure("av-speakerbench", root=tmp_path, n=8)
    assert planted.ensure("av-speakerbench", root=tmp_path, n=8) == root
    tasks = {s.meta["task_id"] for s in data.read("av-speakerbench", root)}
    assert tasks == {planted.task_label(t, v) for t in planted.TRAINED for v in planted.TRAINED_VARIANTS}
    with pytest.raises(InputError, match="planted tasks"):
        planted.write("av-speakerbench", tmp_path / "x", tasks=("pitch", "smell"))


def test_a_changed_recipe_is_a_new_model():
    base = RECIPES["planted-omni"]
    assert Recipe(**{**base.__dict__, "steps": base.steps + 1}).digest() != base.digest()
    assert Recipe(**base.__dict__).digest() == base.digest()


# ---- the known answers -----------------------------------------------------------------

@pytest.fixture(scope="module")
def planted_runs(planted_omni):
    """Per sample of the experiments' planted set (seed 0): its modality, the plain run, and
    the runs with that modality's or the other one's edges into all later tokens cut."""
    samples = data.read("av-speakerbench", planted.ensure("av-speakerbench", n=40))
    out = []
    for s in samples:
        p = planted_omni.prepare(s)
        conditions = [[]] + [[AttentionKnockout(g, f"all - {g}", "all")] for g in MODALITIES]
        base, *cut = planted_omni.run_many(p, conditions)
        out.append({"sample": s, "p": p, "modality": modality(s), "base": base, "cut": dict(zip(MODALITIES, cut))})
    return out


def test_the_planted_model_answers_every_task(planted_omni_dir, planted_runs):
    report = json.loads((planted_omni_dir / PLANTED_FILE).read_text())
    assert report["recipe"]["digest"] == RECIPES["planted-omni"].digest()
    assert min(report["held_out_accuracy"].values()) >= 0.95
    by_task = defaultdict(list)
    for r in planted_runs:
        by_task[r["sample"].meta["task_id"]].append(r["base"].correct)
    assert set(by_task) == {planted.task_label(t, "fixed") for t in planted.TRAINED}
    assert {t: np.mean(c) for t, c in by_task.items()} == {t: pytest.approx(1.0, abs=0.05) for t in by_task}


@pytest.mark.parametrize("cut", MODALITIES)
def test_cutting_a_modality_silences_its_tasks_and_spares_the_others(planted_runs, cut):
    for answering in MODALITIES:
        rows = [r for r in planted_runs if r["modality"] == answering]
        base = np.mean([r["base"].p_correct for r in rows])
        after = np.mean([r["cut"][cut].p_correct for r in rows])
        if answering == cut:
            assert after <= 0.5 * base, f"cutting {cut} left p(correct) of {answering} tasks at {after / base:.0%}"
        else:
            assert after >= 0.8 * base, f"cutting {cut} moved p(correct) of {answering} tasks to {after / base:.0%}"


def transfer_profile(m, rows, group):
    """Per layer: mean p(correct) ratio with ``group``'s edges into later tokens cut in that layer
    alone, and in that layer and every later one."""
    n = m.n_layers
    single, onwards = [], []
    for r in rows:
        conditions = [[AttentionKnockout(group, f"all - {group}", [l])] for l in range(n)]
        conditions += [[AttentionKnockout(group, f"all - {group}", range(l, n))] for l in range(n)]
        res = m.run_many(r["p"], conditions)
        ratios = [x.p_correct / r["base"].p_correct for x in res]
        single.append(ratios[:n])
        onwards.append(ratios[n:])
    return np.mean(single, 0), np.mean(onwards, 0)


@pytest.mark.parametrize("group", MODALITIES)
def test_discarding_after_the_transfer_keeps_the_answer_and_before_it_destroys_it(planted_omni, planted_runs, group):
    rows = [r for r in planted_runs if r["modality"] == group]
    _, onwards = transfer_profile(planted_omni, rows, group)
    # the transfer is over after the last layer from which on cutting still moves p by more than 5%
    moving = [l for l in range(planted_omni.n_layers) if onwards[l] < 0.95]
    assert moving and moving[0] == 0, f"cutting {group} from layer 0 on should matter: {onwards}"
    done = moving[-1]
    assert done < planted_omni.n_layers - 1, f"{group} is still read in the last layer: {onwards}"
    base = np.mean([r["base"].correct for r in rows])
    late = np.mean([planted_omni.run(r["p"], [TokenDrop(group, after_layer=done)]).correct for r in rows])
    early = np.mean([planted_omni.run(r["p"], [TokenDrop(group, after_layer=-1)]).correct for r in rows])
    assert late >= base - 0.02, f"dropping {group} after layer {done} cost {base - late:.0%} accuracy"
    assert early <= 0.45, f"dropping {group} before layer 0 left {early:.0%} accuracy (chance: 25%)"


def test_the_sweep_and_the_attention_readout_agree_on_where_video_moves(planted_omni, planted_runs):
    rows = [r for r in planted_runs if r["modality"] == "video"]
    single, onwards = transfer_profile(planted_omni, rows, "video")
    read = AttentionRead("all", "last", ("video",))
    mass = np.mean([planted_omni.run(r["p"], [read])[0][:, :, 0, 0].mean(1).numpy() for r in rows], 0)
    assert int(np.argmin(single)) == int(np.argmax(mass)), (single, mass)
    # where cutting from a layer on changes nothing, the last position barely looks at the video
    idle = [l for l in range(planted_omni.n_layers) if onwards[l] > 0.98]
    assert idle and all(mass[l] < 0.5 * mass.max() for l in idle), (onwards, mass)


@pytest.mark.integration
def test_a_model_that_did_not_learn_is_refused_not_saved(tmp_path, monkeypatch):
    from avmech.errors import ModelError
    from avmech.models import planted as recipe

    monkeypatch.setitem(recipe.RECIPES, "planted-omni", Recipe(n_train=8, n_eval=8, steps=1, warmup=1))
    with pytest.raises(ModelError, match="did not learn its tasks"):
        recipe.build("planted-omni", tmp_path / "model")
    assert not (tmp_path / "model").exists()
