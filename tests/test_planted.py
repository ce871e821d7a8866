"""Known-answer tests: the flows on a model whose pathways were planted by training.

``planted-omni`` and ``planted-salmonn`` answer questions whose answer is in the sound only
(pitch, beeps) or in the frames only (colour, motion). So the answer must travel from that
modality's tokens to the last position, and the other modality carries nothing it needs:
each flow is checked against that, not against numbers it produced before. The sound's
tokens are the group ``audio_tokens``: in video-SALMONN 2+ the tokens of the padding
silence (``audio_pad``) come from a Whisper window that heard the tone, so they may carry it.
``planted-omni-interleaved`` answers AV-Odyssey items whose candidates come in the class order,
so the answer must travel from the reference, and the candidates carry nothing.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from avmech import ActivationPatch, AttentionKnockout, AttentionRead, Capture, TokenDrop, data
from avmech.data import planted
from avmech.errors import InputError
from avmech.models.planted import PLANTED_FILE
from avmech.models.planted_recipes import RECIPES, Recipe
from avmech.sample import LETTERS

MODALITIES = ("audio", "video")
GROUPS = {"audio": "audio_tokens", "video": "video"}
# planted-salmonn trains in about 6 minutes on 2 cores, too long for the default suite on top of
# planted-omni: its known-answer tests are slow (`make test-slow`); `make figures` builds it and
# checks its pathways in table_planted_check.
PLANTED = ("planted_omni", pytest.param("planted_salmonn", marks=pytest.mark.slow))


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


def test_interleaved_items_answer_with_the_candidate_that_matches_the_reference():
    """Option i names candidate i; in the fixed order candidate i is class i (the letter follows
    from the reference alone), shuffled they come in a random order; letters balanced per type."""
    from avmech.data.synthetic import ITEM_SECONDS, _item_png, _item_wav

    def item(kind, concept, value):
        return _item_png(concept, value) if kind == "image" else _item_wav(concept, value, ITEM_SECONDS)

    rows = planted.odyssey_rows(64, np.random.default_rng(0))
    letters, in_class_order = defaultdict(list), defaultdict(list)
    for row in rows:
        concept, direction, variant = planted.odyssey_type(row["question_type_id"])
        pool = planted.TASKS["count" if concept == "count" else "pitch"].classes
        kind, other = ("image", "audio") if direction == "A->I" else ("audio", "image")
        candidates = [row[f"{kind}_{k + 1}"] for k in range(4)]
        value = next(v for v in pool if item(other, concept, v) == row[f"{other}_1"])  # the reference's class
        expected = [item(kind, concept, v) for v in pool]
        assert candidates == expected if variant == "fixed" else sorted(candidates) == sorted(expected)
        assert candidates[LETTERS.index(row["answer"])] == item(kind, concept, value)
        assert row["options"] == [f"the {o} {kind}" for o in ("first", "second", "third", "fourth")]
        letters[row["question_type_id"]].append(row["answer"])
        in_class_order[variant].append(candidates == expected)
    assert len(letters) == 8 and all(sorted(v) == list("AABBCCDD") for v in letters.values())
    assert all(in_class_order["fixed"]) and np.mean(in_class_order["shuffled"]) < 0.25


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


def test_the_digest_covers_the_training_code_and_not_the_recipe_table(tmp_path, monkeypatch):
    """An edit of avmech.models.planted is a new model for every recipe; the table of recipes
    (planted_recipes.py) is not read: each recipe's fields are in its own digest."""
    from avmech.models import planted_recipes

    base = RECIPES["planted-omni"]
    before = base.digest()
    training = Path(planted_recipes.__file__).with_name("planted.py").read_text()
    (tmp_path / "planted.py").write_text(training)
    (tmp_path / "planted_recipes.py").write_text("RECIPES = {}\n")
    monkeypatch.setattr(planted_recipes, "__file__", str(tmp_path / "planted_recipes.py"))
    assert base.digest() == before
    (tmp_path / "planted.py").write_text(training.replace("AdamW", "Adam"))
    assert base.digest() != before


# ---- the known answers -----------------------------------------------------------------

# Where planted-salmonn's flows do not show the planted routes (measured and reported in the
# README, "Planted pathways"; see test_planted_salmonn_leans_on_padding_that_no_video_reaches).
# Measured on the build of the current recipe (2,000 questions, 1,200 steps, weight decay 0.1); the first
# recipe's build also failed on cutting the frames and on discarding them after their transfer.
# Strict: should one of them start to hold, it fails here, to be looked at again.
SALMONN_DIVERGES = {
    "test_cutting_a_modality_silences_its_tasks_and_spares_the_others[planted_salmonn-audio]":
        "cutting the sound's tokens lowers p on the frame tasks to x0.59: its padding tokens matter to them",
    "test_cutting_a_modality_silences_its_tasks_and_spares_the_others[planted_salmonn-video]":
        "built on an Intel Xeon, cutting the frames lowers p on the sound tasks to x0.71 (beeps x0.52, nearly all "
        "through frames -> sound tokens, x0.59, in layers 0 and 2; pitch x0.90); the AMD build measured x0.88 and "
        "passes: not strict (ON_THE_BAR)",
    "test_discarding_after_the_transfer_keeps_the_answer_and_before_it_destroys_it[planted_salmonn-audio]":
        "the sound is read in the last layer (cut there alone: x0.74; in layer 2 alone: x0.65)",
    "test_the_sweep_and_the_attention_readout_agree_on_where_video_moves[planted_salmonn]":
        "single-layer cuts of the frames matter most in layer 0 (x0.50), attention to them peaks in layer 2 (0.41)",
}


@pytest.fixture(scope="module", params=PLANTED)
def planted_model(request):
    return request.getfixturevalue(request.param)


# Where planted-omni-shuffled's flows do not show the planted routes (README, "Planted pathways").
HEADING_STREAMS = "test_each_stream_carries_its_tasks_and_binding_needs_both[planted-omni-shuffled-heading-heading]"
HEADING_OPTIONS = "test_shuffled_options_are_read_by_the_last_position[planted-omni-shuffled-heading-heading]"
HEADING_READ = ("test_the_sweep_and_the_attention_readout_agree_on_the_layers_that_read_the_options"
                "[planted-omni-shuffled-heading-heading]")
SHUFFLED_DIVERGES = {
    "test_the_sweep_and_the_attention_readout_agree_on_the_layers_that_read_the_options[planted-omni-shuffled-colour]":
        "over the 11 of 12 shuffled colour questions answered correctly, cutting options -> last in layer 0 / 1 / "
        "2 / 3 alone leaves p at x0.87 / 0.85 / 1.00 / 0.92 while the last position puts 0.32 / 0.22 / 0.02 / "
        "0.10 of its attention on the options: the questions differ in the layer that reads them (one in layer "
        "0, x0.00; two in layers 0 and 1, x0.54 / 0.03 and x0.58 / 0.05; one in layer 3, x0.08; seven lose "
        "nothing to any one layer's cut), which the mean attention does not show. Over all 12 it passed: the "
        "wrong answer (p 0.20) rose x1.84 with the layer-1 cut",
    "test_shuffled_options_are_read_by_the_last_position[planted-omni-shuffled-pitch]":
        "cutting options -> last leaves p at x0.56 (accuracy 58% of 12): the options also reach the last position "
        "through the tokens after them (options -> those tokens alone x0.26; every edge out of the options x0.10, "
        "accuracy 8%)",
    "test_shuffled_options_are_read_by_the_last_position[planted-omni-shuffled-colour]":
        "cutting options -> last leaves p at x0.66 (accuracy 58% of 12), options -> the tokens after them alone "
        "x0.85, and every edge out of the options x0.60 (6 of the 12 still right, by chance: on two sets of 50 "
        "shuffled colour questions that cut leaves 28% and 26% right, chance 25%)",
    # The motion model: built on a machine about 2 times slower than the build machine (the numbers first)
    # and on the Intel machine, which land on either side of these three bars (ON_THE_BAR).
    HEADING_STREAMS: "cutting the sound lowers p on the motion questions to x0.54 in the fixed order and x0.59 "
        "shuffled (accuracy 54% / 58%), all of it in layer 0 (x0.59 there, x1.00 from layer 1 on) and through the "
        "text after the media (sound -> question block x0.64, sound -> last x0.99), while the frames -> sound "
        "edges carry nothing (x1.00). The sound's content is not read (test_the_other_streams_content_is_not_read): "
        "removing the block of 51 sound tokens from layer 0's attention is what the text positions notice. The "
        "Intel build: x1.00 / 0.95, and passes",
    HEADING_OPTIONS: "cutting options -> last leaves p at x0.51 (accuracy 54%): the options also reach the last "
        "position through the tokens after them (options -> those tokens alone x0.61; every edge out of the "
        "options x0.22, accuracy 21%, chance 25%). The Intel build: x0.45 (accuracy 46%), and passes",
    HEADING_READ: "the earlier build passes (the cut matters in layers 1 and 2, where the attention is 0.50 and "
        "0.38). The Intel build: cutting options -> last in layer 1 / 2 alone leaves x0.54 / 0.83 while the last "
        "position puts 0.28 / 0.36 of its attention on the options: each of the 24 shuffled questions is read in "
        "one layer or none (11 lose everything to the layer-1 cut, x0.00, with 0.26-0.50 of the attention there; "
        "4 to layer 2's; 9 to neither), so the mean attention in layer 1 sits just under 0.3",
}

# Where planted-omni-interleaved-shuffled's flows do not show what was expected (README, "Planted pathways").
# Numbers of the Intel machine's build of the recipe as it is; "the earlier build" is the build machine's of
# the earlier recipe (1,400 steps, no weight decay; refused on the Intel machine, its shuffled beeps I->A at 80%).
AGREE = "test_the_sweep_and_the_attention_readout_agree_on_where_the_shuffled_candidates_reach_the_last_position"
SWEEP = "test_the_sweep_finds_where_the_shuffled_candidates_move_and_discarding_them_after_it_keeps_the_answer"
MATCHING_DIVERGES = {
    "test_the_reference_answers_in_either_order[A->I-fixed]":
        "in the class order A->I cutting reference -> last leaves p at x0.502, on the bar (every edge of the "
        "reference x0.25): the reference also reaches the last position through the tokens after it. The earlier "
        "build: x0.16, and passed (ON_THE_BAR)",
    "test_the_reference_answers_in_either_order[A->I-shuffled]":
        "the earlier build: on the shuffled A->I items cutting reference -> last left p at x0.54 (accuracy 50%) and "
        "every edge of the reference x0.41 (42%); the same recipe on the AMD machine x0.50 and x0.50, and passed; "
        "this build x0.43 and x0.12, and passes (ON_THE_BAR)",
    f"{SWEEP}[I->A]": "on the shuffled I->A items (20 of 24 answered correctly) cutting the audio candidates' "
                      "edges from layer 3 on leaves p at x0.97, under the 0.98 that calls the transfer over, so "
                      "the sweep finds them read in the last layer; dropping them after layer 2 keeps all 20 "
                      "answers (over all 24: 88%, 83% without the drop). The earlier build: x0.98, and passed "
                      "(ON_THE_BAR)",
    f"{AGREE}[A->I]": "cutting candidates -> last matters in layers 0 and 1 (x0.71, x0.68) while the last position "
                      "puts 0.24 / 0.29 / 0.21 / 0.27 of its attention on the image candidates in layers 0-3 (the "
                      "earlier build: x0.70, x0.79; 0.23 / 0.31 / 0.26 / 0.22)",
    f"{AGREE}[I->A]": "cutting candidates -> last matters in layers 0 and 1 (x0.41 / 0.71, layers 2-3: x0.90 / "
                      "0.97) while the last position puts 0.40-0.68 of its attention on the audio candidates in "
                      "every layer, 0.68 in layer 3, as planted-omni-interleaved does on the same clips with no "
                      "effect (the earlier build: layers 0-2, x0.66 / 0.68 / 0.59; 0.53-0.79)",
}


# Divergences where builds of the same recipe on two kinds of CPU (whose floats round otherwise; README,
# "Planted pathways"), or of a recipe and the one before it, land on either side of the test's bar (near it or
# not): expected to fail, but a pass is not a surprise.
ON_THE_BAR = {"test_the_reference_answers_in_either_order[A->I-fixed]",
              "test_the_reference_answers_in_either_order[A->I-shuffled]", f"{SWEEP}[I->A]",
              "test_cutting_a_modality_silences_its_tasks_and_spares_the_others[planted_salmonn-video]",
              HEADING_STREAMS, HEADING_OPTIONS, HEADING_READ}


@pytest.fixture(autouse=True)
def _known_divergences(request):
    name = request.node.name
    reason = SALMONN_DIVERGES.get(name) or SHUFFLED_DIVERGES.get(name) or MATCHING_DIVERGES.get(name)
    if reason:
        request.applymarker(pytest.mark.xfail(strict=name not in ON_THE_BAR, reason=reason))


@pytest.fixture(scope="module")
def planted_runs(planted_model):
    """Per sample of the experiments' planted set (seed 0) of a task the model is trained on: its
    modality, the plain run, and the runs with that modality's or the other one's edges into all
    later tokens cut."""
    tasks = RECIPES[planted_model.name].tasks
    samples = data.read("av-speakerbench", planted.ensure("av-speakerbench", n=40, tasks=tasks))
    out = []
    for s in samples:
        p = planted_model.prepare(s)
        conditions = [[]] + [[AttentionKnockout(GROUPS[g], f"all - {GROUPS[g]}", "all")] for g in MODALITIES]
        base, *cut = planted_model.run_many(p, conditions)
        out.append({"sample": s, "p": p, "modality": modality(s), "base": base, "cut": dict(zip(MODALITIES, cut))})
    return out


def test_the_planted_model_answers_every_task(planted_fixture, planted_model, planted_runs):
    report = planted_report(planted_fixture(planted_model.name, folder=True))
    recipe = RECIPES[planted_model.name]
    assert report["recipe"]["digest"] == recipe.digest()
    assert min(report["held_out_accuracy"].values()) >= 0.95
    by_task = defaultdict(list)
    for r in planted_runs:
        by_task[r["sample"].meta["task_id"]].append(r["base"].correct)
    assert set(by_task) == {planted.task_label(t, "fixed") for t in recipe.tasks}
    assert {t: np.mean(c) for t, c in by_task.items()} == {t: pytest.approx(1.0, abs=0.05) for t in by_task}


@pytest.mark.parametrize("cut", MODALITIES)
def test_cutting_a_modality_silences_its_tasks_and_spares_the_others(planted_runs, cut):
    for answering in MODALITIES:
        rows = [r for r in planted_runs if r["modality"] == answering]
        ratio = p_ratio(rows, cut)
        if answering == cut:
            assert ratio <= 0.5, f"cutting {cut} left p(correct) of {answering} tasks at {ratio:.0%}"
        else:
            assert ratio >= 0.8, f"cutting {cut} moved p(correct) of {answering} tasks to {ratio:.0%}"


def planted_report(folder) -> dict:
    """What a planted build measured and saved beside its weights (``planted.json``: recipe, times, accuracies)."""
    return json.loads((folder / PLANTED_FILE).read_text())


def p_ratio(rows, cut: str) -> float:
    """Mean p(correct) with ``cut`` over mean p(correct) of the plain runs, over ``rows``."""
    return np.mean([r["cut"][cut].p_correct for r in rows]) / np.mean([r["base"].p_correct for r in rows])


def answered(rows) -> list[dict]:
    """The rows answered correctly, over which the study averages a ratio of p(correct) per sample
    (PAPER.md): where an answer is wrong p_base is near 0 and its ratio means nothing (one wrong answer of
    planted-omni-interleaved-shuffled's, p 0.001 raised to 0.7 by a cut, took a mean of 24 ratios to x30)."""
    kept = [r for r in rows if r["base"].correct]
    assert kept, "no row is answered correctly: nothing to average a ratio over"
    return kept


def attention_to_last(m, rows, group: str) -> np.ndarray:
    """Per layer: the share of the last position's attention (mean over heads) on ``group``, mean over the
    rows answered correctly."""
    read = AttentionRead("all", "last", (group,))
    return np.mean([m.run(r["p"], [read])[0][:, :, 0, 0].mean(1).numpy() for r in answered(rows)], 0)


def transfer_profile(m, rows, group):
    """Per layer, over the rows answered correctly: mean p(correct) ratio with ``group``'s edges (a
    modality's group, or any group) into later tokens cut in that layer alone, and in that layer and every
    later one."""
    n, group = m.n_layers, GROUPS.get(group, group)
    single, onwards = [], []
    for r in answered(rows):
        conditions = [[AttentionKnockout(group, f"all - {group}", [l])] for l in range(n)]
        conditions += [[AttentionKnockout(group, f"all - {group}", range(l, n))] for l in range(n)]
        res = m.run_many(r["p"], conditions)
        ratios = [x.p_correct / r["base"].p_correct for x in res]
        single.append(ratios[:n])
        onwards.append(ratios[n:])
    return np.mean(single, 0), np.mean(onwards, 0)


@pytest.mark.parametrize("group", MODALITIES)
def test_discarding_after_the_transfer_keeps_the_answer_and_before_it_destroys_it(planted_model, planted_runs, group):
    rows = [r for r in planted_runs if r["modality"] == group]
    check_discarding_after_the_transfer(planted_model, rows, group)


def check_discarding_after_the_transfer(m, rows, group):
    """The transfer of ``group`` is over before the last layer; dropping it after the transfer keeps
    accuracy within 2 points, dropping it before layer 0 leaves chance."""
    _, onwards = transfer_profile(m, rows, group)
    # The transfer is over after the last layer from which on cutting still moves p by more than 2%.
    # (At 5%, a build whose cut from layer 2 on left p x0.966 called the transfer over after layer 1,
    # and dropping the tokens from layer 2 on flipped one answer in 20: a cut that moves p by a few
    # percent can flip a borderline answer, so the tolerance matches the 2 points asked of accuracy.)
    moving = [l for l in range(m.n_layers) if onwards[l] < 0.98]
    assert moving and moving[0] == 0, f"cutting {group} from layer 0 on should matter: {onwards}"
    done = moving[-1]
    assert done < m.n_layers - 1, f"{group} is still read in the last layer: {onwards}"
    base = np.mean([r["base"].correct for r in rows])
    group = GROUPS.get(group, group)
    late = np.mean([m.run(r["p"], [TokenDrop(group, after_layer=done)]).correct for r in rows])
    early = np.mean([m.run(r["p"], [TokenDrop(group, after_layer=-1)]).correct for r in rows])
    assert late >= base - 0.02, f"dropping {group} after layer {done} cost {base - late:.0%} accuracy"
    assert early <= 0.45, f"dropping {group} before layer 0 left {early:.0%} accuracy (chance: 25%)"


def test_the_sweep_and_the_attention_readout_agree_on_where_video_moves(planted_model, planted_runs):
    m, rows = planted_model, [r for r in planted_runs if r["modality"] == "video"]
    single, onwards = transfer_profile(m, rows, "video")
    mass = attention_to_last(m, rows, "video")
    assert int(np.argmin(single)) == int(np.argmax(mass)), (single, mass)
    # where cutting from a layer on changes nothing, the last position barely looks at the video
    idle = [l for l in range(m.n_layers) if onwards[l] > 0.98]
    assert idle and all(mass[l] < 0.5 * mass.max() for l in idle), (onwards, mass)


@pytest.mark.slow
def test_planted_salmonn_leans_on_padding_that_no_video_reaches(planted_salmonn):
    """What its flows show instead: on the frame tasks, cutting every edge out of the 55 tokens
    of the sound's padding silence (audio_pad) lowers p(correct) to x0.55, though cutting the
    frames' edges into the sound's tokens changes nothing, so no frame information passes through
    them: the text positions lean on the padding as such (the renormalised attention loses
    the mass it put there), and an edge cut there is not a cut pathway."""
    samples = data.read("av-speakerbench", planted.ensure("av-speakerbench", n=40))
    ratios = []
    for s in samples:
        if modality(s) != "video":
            continue
        base, into_audio, out_of_pad = planted_salmonn.run_many(planted_salmonn.prepare(s), [
            [], [AttentionKnockout("video", "audio_tokens", "all")],
            [AttentionKnockout("audio_pad", "all - audio_pad", "all")]])
        ratios.append((into_audio.p_correct / base.p_correct, out_of_pad.p_correct / base.p_correct))
    into_audio, out_of_pad = np.mean(ratios, 0)
    # the padding alone moves p by more than the 20% a stream that carries nothing is allowed
    assert into_audio > 0.95 and out_of_pad < 0.8, (into_audio, out_of_pad)


@pytest.mark.integration
def test_a_model_that_did_not_learn_is_refused_not_saved(tmp_path, monkeypatch):
    from avmech.errors import ModelError
    from avmech.models import planted as recipe

    monkeypatch.setitem(recipe.RECIPES, "planted-omni", Recipe(n_train=8, n_eval=8, steps=1, warmup=1))
    with pytest.raises(ModelError, match="did not learn its tasks"):
        recipe.build("planted-omni", tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_a_text_lookup_is_the_correct_option_then_the_options_answered_with_its_letter(omni, tmp_path):
    """The warm-up of the shuffled recipe, on the real tokenizer: the correct option's text, then the
    prompt from its first letter on, then that option's letter; no media."""
    from avmech.models.planted import _examples

    samples = data.read("av-speakerbench", planted.write("av-speakerbench", tmp_path / "q", n=4, seed=2,
                                                         tasks=("motion",), variants=("shuffled",)))
    examples, lookups = _examples(omni, samples, "test")
    tok = omni.processor.tokenizer
    embed = omni.hf.get_input_embeddings()
    for s, e, lookup in zip(samples, examples, lookups):
        ids = [int((embed.weight == x).all(1).nonzero()[0, 0]) for x in lookup.embeds]  # back to the ids
        text = tok.decode(ids)
        options = "".join(f"{LETTERS[k]}. {o}\n" for k, o in enumerate(s.options))
        assert text.startswith(f"{s.options[s.answer]}\n{options}"), text
        assert text.endswith("assistant\n" + LETTERS[s.answer]) and ids[-1] == e.answer_id
        p = omni.prepare(s)
        assert not set(ids) & set(p.input_ids[0, p.tokens.positions("av")].tolist())
        assert lookup.task == s.meta["task_id"].replace(" (", " lookup (")
        assert lookup.positions.shape == (3, len(ids)) and (lookup.positions[0] == torch.arange(len(ids))).all()


def test_a_qformer_gain_on_a_family_without_a_qformer_is_refused(omni):
    from avmech.errors import ModelError
    from avmech.models.planted import _gain

    with pytest.raises(ModelError, match="do not fit the qwen2.5-omni family"):
        _gain(omni, Recipe(qformer_gain=64.0))


@pytest.mark.integration
def test_the_qformer_gain_lets_the_tone_through_video_salmonn_random_encoder(tmp_path):
    """Why planted-salmonn's recipe scales its Q-Former: at random weights the constant queries
    drown what a window heard, and a tone's pitch barely moves the audio tokens."""
    from avmech.models.planted import _gain, _random_model

    recipe = RECIPES["planted-salmonn"]
    m = _random_model(recipe, "planted-salmonn", tmp_path / "random", 0)
    samples = data.read("av-speakerbench", planted.write("av-speakerbench", tmp_path / "q", n=16, seed=5,
                                                         tasks=("pitch",)))

    def spread() -> float:
        """How far the mean audio tokens of each pitch lie from their overall mean, relative to their size."""
        x = np.stack([m.encode(p).inputs_embeds[0, p.tokens.positions("audio")].detach().flatten().numpy()
                      for p in map(m.prepare, samples)])
        y = np.array([s.answer for s in samples])
        means = np.stack([x[y == c].mean(0) for c in np.unique(y)])
        return float(np.linalg.norm(means - x.mean(0), axis=1).mean() / np.linalg.norm(x, axis=1).mean())

    before = spread()
    _gain(m, recipe)
    after = spread()
    assert before < 0.05 and after > 0.2, (before, after)


@pytest.mark.integration
def test_the_video_gain_scales_the_frames_tokens_and_nothing_else(tmp_path):
    """``video_gain`` multiplies what the vision encoder hands the LLM: the frames' tokens come out
    exactly that many times larger, the sound's and the text's as they were."""
    from avmech.models.planted import _gain, _random_model

    m = _random_model(Recipe(), "planted-omni", tmp_path / "random", 0)
    sample = data.read("av-speakerbench", planted.write("av-speakerbench", tmp_path / "q", n=1, seed=5,
                                                       tasks=("colour",)))[0]
    p = m.prepare(sample)
    before = m.encode(p).inputs_embeds[0].detach()
    _gain(m, Recipe(audio_gain=1.0, video_gain=4.0))
    after = m.encode(m.prepare(sample)).inputs_embeds[0].detach()  # a fresh Prepared: encode caches on it
    frames = torch.zeros(len(before), dtype=torch.bool)
    frames[p.tokens.positions("video")] = True
    assert frames.sum() > 0 and before[frames].abs().max() > 0
    torch.testing.assert_close(after[frames], 4.0 * before[frames])
    torch.testing.assert_close(after[~frames], before[~frames], rtol=0, atol=0)


def test_a_planted_set_written_twice_is_the_same_bytes(tmp_path):
    """A planted model's training must be repeatable: libx264's lossy encoding was not (a rewrite of
    the same clips decoded to other frames about half the time), the lossless writer is."""
    import time

    first = planted.write("av-speakerbench", tmp_path / "a", n=8, seed=1, tasks=planted.TRAINED)
    time.sleep(1)
    second = planted.write("av-speakerbench", tmp_path / "b", n=8, seed=1, tasks=planted.TRAINED)
    files = sorted(p.relative_to(first) for p in first.rglob("*.mp4"))
    assert len(files) == 16
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)


def test_a_build_trains_on_the_recipes_threads_and_gives_the_callers_back(monkeypatch, tmp_path):
    """make sets OMP_NUM_THREADS=1 and the tests run on one thread; a training run's floats depend
    on the thread count, so every build runs on the recipe's."""
    import torch

    from avmech.models import planted as recipe

    seen = []
    monkeypatch.setattr(recipe, "_build", lambda *args: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    recipe.build("planted-omni", tmp_path / "model")
    assert seen == [RECIPES["planted-omni"].threads] and torch.get_num_threads() == before


def test_a_recipe_of_a_family_without_a_planted_writer_is_refused(tmp_path):
    from avmech.errors import ModelError
    from avmech.models.planted import _random_model

    with pytest.raises(ModelError, match="no planted recipe for the 'qwen3-omni' family"):
        _random_model(Recipe(family="qwen3-omni"), "x", tmp_path / "random", 0)


# ---- the interleaved configuration (planted-omni-interleaved) ----------------------------
# It trains in about 3 minutes on 2 cores, beyond the default suite's 15: slow tier, like planted-salmonn
# (`make figures` builds it and checks its pathways in table_planted_check).

DIRECTIONS = ("A->I", "I->A")
INTERLEAVED_CUTS = {
    "reference": AttentionKnockout("reference", "all - reference", "all"),
    "reference->last": AttentionKnockout("reference", "last", "all"),
    "candidates": AttentionKnockout("candidates", "all - candidates", "all"),
    "candidates->last": AttentionKnockout("candidates", "last", "all"),
}


@pytest.fixture(scope="module")
def interleaved_runs(planted_omni_interleaved):
    """Per sample of the experiments' planted AV-Odyssey set (seed 0), in the study's layout as
    ``interleaved_knockout`` feeds it: its direction, the plain run and the runs with each of
    ``INTERLEAVED_CUTS``."""
    from dataclasses import replace

    m, out = planted_omni_interleaved, []
    for s in data.read("av-odyssey", planted.ensure("av-odyssey", n=40)):
        p = m.prepare(replace(s, layout="study"))
        base, *cut = m.run_many(p, [[]] + [[c] for c in INTERLEAVED_CUTS.values()])
        out.append({"sample": s, "p": p, "direction": planted.odyssey_type(s.meta["question_type_id"])[1],
                    "base": base, "cut": dict(zip(INTERLEAVED_CUTS, cut))})
    return out


def ratios(rows, direction: str) -> dict[str, float]:
    """Per cut: `p_ratio` over the questions of one direction."""
    rows = [r for r in rows if r["direction"] == direction]
    return {cut: p_ratio(rows, cut) for cut in INTERLEAVED_CUTS}


@pytest.mark.slow
def test_planted_omni_interleaved_answers_every_item_task(planted_omni_interleaved_dir, interleaved_runs):
    report = planted_report(planted_omni_interleaved_dir)
    assert report["recipe"]["digest"] == RECIPES["planted-omni-interleaved"].digest()
    accuracy = report["held_out_accuracy"]
    assert set(accuracy) == {f"{c} {d} (fixed order)" for c in ("count", "pitch") for d in DIRECTIONS}
    assert min(accuracy.values()) >= 0.95
    assert np.mean([r["base"].correct for r in interleaved_runs]) >= 0.95


@pytest.mark.slow
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_cutting_the_reference_silences_the_interleaved_items_and_cutting_the_candidates_does_not(
        interleaved_runs, direction):
    """The candidates come in the class order (candidate i is class i), so the letter follows from
    the reference alone: cutting its edges, or only those into the last position, must lower
    p(correct) by at least half; cutting the candidates' edges (or only those into the last
    position) may move it by at most 20%."""
    ratio = ratios(interleaved_runs, direction)
    assert ratio["reference"] <= 0.5 and ratio["reference->last"] <= 0.5, ratio
    assert ratio["candidates"] >= 0.8 and ratio["candidates->last"] >= 0.8, ratio


@pytest.mark.slow
def test_discarding_the_reference_after_its_transfer_keeps_the_answer_and_before_it_destroys_it(
        planted_omni_interleaved, interleaved_runs):
    check_discarding_after_the_transfer(planted_omni_interleaved, interleaved_runs, "reference")


@pytest.mark.slow
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_the_sweep_and_the_attention_readout_agree_on_where_the_reference_moves(
        planted_omni_interleaved, interleaved_runs, direction):
    m, rows = planted_omni_interleaved, [r for r in interleaved_runs if r["direction"] == direction]
    single, _ = transfer_profile(m, rows, "reference")
    mass = attention_to_last(m, rows, "reference")
    assert int(np.argmin(single)) == int(np.argmax(mass)), (single, mass)


# ---- shuffled options and the task that needs both streams (planted-omni-shuffled, -binding, -count, -heading)
# Each trains in 10 minutes or more on 2 cores: slow tier. Binding, count and motion have a model each:
# trained beside each other, or beside pitch and colour, their shuffled variants were not learned on every
# batch order; motion's with its options one word each (`heading`) only (README, "Planted pathways").

SHUFFLED = ("planted-omni-shuffled", "planted-omni-shuffled-binding", "planted-omni-shuffled-count",
            "planted-omni-shuffled-heading")
SHUFFLED_MODELS = [pytest.param(name, marks=pytest.mark.slow, id=name) for name in SHUFFLED]
SHUFFLED_CASES = [pytest.param(name, task, marks=pytest.mark.slow, id=f"{name}-{task}")
                  for name in SHUFFLED for task in RECIPES[name].tasks]
SHUFFLED_CUTS = {
    "audio": AttentionKnockout("audio_tokens", "all - audio_tokens", "all"),
    "video": AttentionKnockout("video", "all - video", "all"),
    "options->last": AttentionKnockout("options", "last", "all"),
}


@pytest.fixture(scope="module")
def shuffled_model(request, planted_fixture):
    """The shuffled-options model ``request.param`` names (parametrize indirectly)."""
    return planted_fixture(request.param)


@pytest.fixture(scope="module")
def shuffled_runs(shuffled_model):
    """Per sample of the experiments' planted set of the model's tasks and variants (seed 0, 48 questions):
    its task, its variant, the plain run and the runs with each of ``SHUFFLED_CUTS``."""
    m, recipe, out = shuffled_model, RECIPES[shuffled_model.name], []
    for s in data.read("av-speakerbench", planted.ensure("av-speakerbench", n=48, tasks=recipe.tasks,
                                                         variants=recipe.variants)):
        p = m.prepare(s)
        base, *cut = m.run_many(p, [[]] + [[c] for c in SHUFFLED_CUTS.values()])
        out.append({"sample": s, "p": p, "task": s.meta["task_id"].split(" (")[0],
                    "shuffled": s.meta["sub_category"] == "shuffled", "base": base, "cut": dict(zip(SHUFFLED_CUTS, cut))})
    return out


@pytest.mark.parametrize("shuffled_model", SHUFFLED_MODELS, indirect=True)
def test_a_shuffled_options_model_answers_every_task(planted_fixture, shuffled_model, shuffled_runs):
    name = shuffled_model.name
    report = planted_report(planted_fixture(name, folder=True))
    assert report["recipe"]["digest"] == RECIPES[name].digest()
    accuracy = report["held_out_accuracy"]
    assert set(accuracy) == {planted.task_label(t, v) for t in RECIPES[name].tasks for v in planted.VARIANTS}
    for task, value in accuracy.items():  # the bars: 95% in the fixed order, 90% shuffled or binding
        assert value >= (0.95 if "fixed" in task and "binding" not in task else 0.9), (task, value)
    assert np.mean([r["base"].correct for r in shuffled_runs]) >= 0.9


@pytest.mark.parametrize("name", SHUFFLED_MODELS)
def test_the_text_lookups_are_still_answered(planted_fixture, name):
    """The text lookups the recipe trains on first (the correct option's text, then the options, no media)
    are still answered after the media questions: at least 90% held out, in every task and order."""
    report = planted_report(planted_fixture(name, folder=True))
    assert min(report["held_out_lookup_accuracy"].values()) >= 0.9, report["held_out_lookup_accuracy"]


@pytest.mark.parametrize("shuffled_model, task", SHUFFLED_CASES, indirect=["shuffled_model"])
def test_shuffled_options_are_read_by_the_last_position(shuffled_model, shuffled_runs, task):
    """With the options shuffled the letter is found by reading them: cutting the options' edges into
    the last position must lower p(correct) by at least half. (In the fixed order it may, or not: the
    model, trained on both orders, reads them there too: x0.20-0.50, README.)"""
    rows = [r for r in shuffled_runs if r["task"] == task and r["shuffled"]]
    assert rows and p_ratio(rows, "options->last") <= 0.5


@pytest.mark.parametrize("shuffled_model, task", SHUFFLED_CASES, indirect=["shuffled_model"])
def test_each_stream_carries_its_tasks_and_binding_needs_both(shuffled_runs, task):
    rows = [r for r in shuffled_runs if r["task"] == task]
    answering = planted.TASKS[task].modality  # "audio", "video" or "both"
    for stream in MODALITIES:
        ratio = p_ratio(rows, stream)
        if answering in (stream, "both"):
            assert ratio <= 0.5, f"cutting {stream} left p(correct) of {task} at x{ratio:.2f}"
        else:
            assert ratio >= 0.8, f"cutting {stream} moved p(correct) of {task} to x{ratio:.2f}"


# Where do the two streams meet in a binding question? Not at the last position: the sweep
# (binding_knockout, table_planted_check) finds video -> last at 0% in every window. Measured on the
# Intel build: the sound's tokens read the frames in layer 1 (that layer alone: x0.37 fixed order, x0.17
# shuffled; any other layer x1.00), and carry the bound colour on (README, "Planted pathways").
@pytest.mark.slow
@pytest.mark.parametrize("shuffled_model", ["planted-omni-shuffled-binding"], indirect=True)
def test_in_a_binding_question_the_sounds_tokens_read_the_frames(shuffled_model):
    m, recipe = shuffled_model, RECIPES[shuffled_model.name]
    cuts = {"video->audio": AttentionKnockout("video", "audio_tokens", "all"),
            "video->rest": AttentionKnockout("video", "all - video - audio_tokens", "all")}
    cuts |= {layer: AttentionKnockout("video", "audio_tokens", [layer]) for layer in range(m.n_layers)}
    rows = []
    for s in data.read("av-speakerbench", planted.ensure("av-speakerbench", n=48, tasks=recipe.tasks,
                                                         variants=recipe.variants)):
        base, *cut = m.run_many(m.prepare(s), [[]] + [[c] for c in cuts.values()])
        rows.append({"order": s.meta["sub_category"], "base": base, "cut": dict(zip(cuts, cut))})
    for order in ("fixed order", "shuffled"):
        mine = [r for r in rows if r["order"] == order]
        assert p_ratio(mine, "video->audio") <= 0.5, order  # the frames reach the answer through the sound
        assert p_ratio(mine, "video->rest") >= 0.8, order  # and not through any other token
        moving = {layer for layer in range(m.n_layers) if p_ratio(mine, layer) < 0.9}
        assert moving == {1}, (order, [round(p_ratio(mine, layer), 2) for layer in range(m.n_layers)])


# Knockout removes a block of attention as well as what the block holds; patching in another clip's
# stream keeps the block and swaps what it holds. Where cutting the uninformative stream lowers p
# (SHUFFLED_DIVERGES), this tells a stream that is read from one that is only attended to. Measured on
# the motion model only (the others' builds were not rerun for it).
CONTENT_CASES = [pytest.param("planted-omni-shuffled-heading", "heading", marks=pytest.mark.slow,
                              id="planted-omni-shuffled-heading-heading")]


@pytest.mark.parametrize("shuffled_model, task", CONTENT_CASES, indirect=["shuffled_model"])
def test_the_other_streams_content_is_not_read(shuffled_model, shuffled_runs, task):
    """The stream that says nothing about the answer, patched in at the embeddings (``resid_pre.0``) from
    three other clips of the set (another random sound, or other frames), leaves p(correct) within 2% on
    average and 10% on every question, although the patch changed what those positions hold."""
    m, rows = shuffled_model, [r for r in shuffled_runs if r["task"] == task]
    group = GROUPS[next(g for g in MODALITIES if g != planted.TASKS[task].modality)]
    held = [m.run(r["p"], [Capture("resid_pre.0", group)]).readouts[0] for r in rows]
    ratios, changed = [], []
    for i, r in enumerate(rows):
        for k in (1, 5, 11):
            j = (i + k) % len(rows)
            changed.append(not torch.equal(held[i], held[j]))
            patched = m.run(r["p"], [ActivationPatch("resid_pre.0", group, held[j])])
            ratios.append(patched.p_correct / r["base"].p_correct)
    assert np.mean(changed) >= 0.5, "the other clips' stream was mostly the same: the patch swapped nothing"
    assert abs(np.mean(ratios) - 1) <= 0.02 and min(ratios) >= 0.9, (np.mean(ratios), min(ratios))


@pytest.mark.parametrize("shuffled_model, task", SHUFFLED_CASES, indirect=["shuffled_model"])
def test_the_sweep_and_the_attention_readout_agree_on_the_layers_that_read_the_options(
        shuffled_model, shuffled_runs, task):
    """On the shuffled questions, the layers where cutting options -> last alone lowers p(correct) by
    more than 10% are those where the last position puts at least 30% of its attention on the options."""
    check_read_where_it_matters(shuffled_model,
                                [r for r in shuffled_runs if r["task"] == task and r["shuffled"]], "options")


def check_read_where_it_matters(m, rows, group: str) -> None:
    """The layers where cutting ``group`` -> last alone lowers p(correct) by more than 10% are exactly
    those where the last position puts at least 30% of its attention on ``group`` (over the rows answered
    correctly)."""
    rows = answered(rows)
    cuts = [[AttentionKnockout(group, "last", [layer])] for layer in range(m.n_layers)]
    single = np.mean([[x.p_correct / r["base"].p_correct for x in m.run_many(r["p"], cuts)] for r in rows], 0)
    mass = attention_to_last(m, rows, group)
    moving = {layer for layer in range(m.n_layers) if single[layer] < 0.9}
    assert moving and moving == {layer for layer in range(m.n_layers) if mass[layer] >= 0.3}, (single, mass)


# ---- interleaved items with shuffled candidates (planted-omni-interleaved-shuffled) ------------
# It trains in about 10 minutes on 2 cores: slow tier.

ORDERS = ("fixed", "shuffled")
MATCHING_CUTS = INTERLEAVED_CUTS | {"candidates->reference": AttentionKnockout("candidates", "reference", "all")}


@pytest.fixture(scope="module")
def matching_runs(planted_omni_interleaved_shuffled):
    """Per sample of the experiments' planted AV-Odyssey set of both orders (seed 0, 96 questions, 12 per
    type), in the study's layout: its direction, the candidates' order, the plain run and the runs with
    each of ``MATCHING_CUTS``."""
    from dataclasses import replace

    m, out = planted_omni_interleaved_shuffled, []
    for s in data.read("av-odyssey", planted.ensure("av-odyssey", n=96, variants=ORDERS)):
        p = m.prepare(replace(s, layout="study"))
        base, *cut = m.run_many(p, [[]] + [[c] for c in MATCHING_CUTS.values()])
        _, direction, order = planted.odyssey_type(s.meta["question_type_id"])
        out.append({"sample": s, "p": p, "direction": direction, "order": order, "base": base,
                    "cut": dict(zip(MATCHING_CUTS, cut))})
    return out


def matching(rows, direction: str, order: str) -> list[dict]:
    return [r for r in rows if r["direction"] == direction and r["order"] == order]


@pytest.mark.slow
def test_planted_omni_interleaved_shuffled_answers_every_item_task(planted_omni_interleaved_shuffled_dir,
                                                                   matching_runs):
    report = planted_report(planted_omni_interleaved_shuffled_dir)
    assert report["recipe"]["digest"] == RECIPES["planted-omni-interleaved-shuffled"].digest()
    accuracy = report["held_out_accuracy"]
    assert set(accuracy) == {f"{c} {d} ({planted.VARIANT_NAMES[o]})" for c in ("count", "pitch") for d in DIRECTIONS
                             for o in ORDERS}
    for task, value in accuracy.items():  # the bars: 95% in the class order, 90% shuffled
        assert value >= (0.95 if "fixed" in task else 0.9), (task, value)
    for order in ORDERS:
        assert np.mean([r["base"].correct for r in matching_runs if r["order"] == order]) >= 0.9, order


@pytest.mark.slow
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_the_reference_answers_in_either_order(matching_runs, direction, order):
    """The reference holds the class the answer must match, in either order: cutting its edges, or
    only those into the last position, lowers p(correct) by at least half."""
    ratio = {cut: p_ratio(matching(matching_runs, direction, order), cut) for cut in MATCHING_CUTS}
    assert ratio["reference"] <= 0.5 and ratio["reference->last"] <= 0.5, ratio


@pytest.mark.slow
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_shuffled_candidates_carry_the_answer(matching_runs, direction):
    """Shuffled, the letter is that of the candidate that matches the reference: cutting the candidates'
    edges lowers p(correct) by at least half (planted-omni-interleaved, trained on the class order
    alone, does not read them: x1.00)."""
    ratio = p_ratio(matching(matching_runs, direction, "shuffled"), "candidates")
    assert ratio <= 0.5, f"cutting the shuffled candidates left p(correct) at x{ratio:.2f}"


@pytest.mark.slow
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_the_sweep_finds_where_the_shuffled_candidates_move_and_discarding_them_after_it_keeps_the_answer(
        planted_omni_interleaved_shuffled, matching_runs, direction):
    """The candidates' route is visible in the sweep: cutting their edges from layer 0 on matters, the
    transfer is over before the last layer, and dropping them after it keeps the answer (before it: chance)."""
    rows = matching(matching_runs, direction, "shuffled")
    check_discarding_after_the_transfer(planted_omni_interleaved_shuffled, rows, "candidates")


@pytest.mark.slow
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_the_sweep_and_the_attention_readout_agree_on_where_the_shuffled_candidates_reach_the_last_position(
        planted_omni_interleaved_shuffled, matching_runs, direction):
    """On the shuffled items, the layers where cutting candidates -> last alone lowers p(correct) by more
    than 10% are those where the last position puts at least 30% of its attention on the candidates."""
    check_read_where_it_matters(planted_omni_interleaved_shuffled,
                                matching(matching_runs, direction, "shuffled"), "candidates")
