"""The study's protocol, as the experiment files state it: each test checks one thing the study
measured and avmech must measure the same way (groups, layouts, subsets, sinks, discarding,
modality reliance, WorldSense's prompt, video-SALMONN 2+'s padding), on both families."""

from __future__ import annotations

import dataclasses
import inspect
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import avmech
from avmech import AttentionKnockout, TokenDrop
from avmech.errors import InputError
from avmech.experiment import DataSpec, in_order, load_experiment, load_samples
from avmech.flows import FLOWS, STUDY_EDGES
from avmech.flows.discard import DiscardParams, SweepRule, settle_layer, token_discard
from avmech.flows.knockout import Edge
from avmech.flows.modality import ModalityParams, modality_reliance
from avmech.flows.spikes import SpikeParams, attention_spikes, find_spikes
from avmech.metrics import parse_letter
from avmech.sample import PROMPT_FORMATS

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
FAMILIES = ("omni", "salmonn")
STUDY_SPEAKERBENCH = ["speaker recognition", "visual recognition"]


def experiment(name: str):
    return load_experiment(EXPERIMENTS / f"{name}.toml")


def samples_of(name: str, n: int = 3):
    exp = experiment(name)
    return load_samples(exp.data.model_copy(update={"limit": n}), exp.seed)


# ---- 1. groups: the study's question is the whole text block ------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_question_block_is_all_user_text_and_question_the_sentence(family, request):
    m = request.getfixturevalue(family)
    for name in ("av_video_knockout", "worldsense_discard"):
        t = m.prepare(samples_of(name, 1)[0]).tokens
        block = set(t.positions("question_block").tolist())
        assert block == set(t.positions("instruction | question | option_letter | option_text").tolist())
        after_media = range(int(t.positions("marker").max()) + 1, int(t.positions("turn_end").min()))
        assert set(after_media) <= block  # everything between the clip and the turn's end
        assert set(t.positions("question").tolist()) < block and set(t.positions("options").tolist()) < block


def test_the_study_sweep_uses_the_study_groups():
    exp = experiment("av_video_knockout")
    edges = [(e.src, e.dst) for e in exp.flow_params.edges]
    assert edges == STUDY_EDGES["av-video"]
    assert {"question", "audio"}.isdisjoint({g for edge in edges for g in edge})  # never the narrow roles
    drops = {d.group for s in experiment("token_discard").flow_params.settings for d in s.drops}
    assert drops == {"video", "audio_tokens", "question_block", "video | audio_tokens"}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", ["av_video_knockout", "av_video_window_ablation", "interleaved_knockout"])
def test_no_condition_of_the_study_sweeps_has_nothing_to_cut(family, name, request):
    m = request.getfixturevalue(family)
    params = experiment(name).flow_params
    assert not params.allow_empty  # a condition with nothing to cut would stop the run, never read as "no effect"
    for s in samples_of(name, 4):
        p = m.prepare(s)
        for edge in params.edges:
            n, why = edge.count(p)
            assert n > 0, f"{s.id}: {edge.label}: {why}"


# ---- 2. the interleaved layout ------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_an_a_to_i_sample_reads_candidates_question_reference_options(family, request):
    m = request.getfixturevalue(family)
    exp = experiment("interleaved_knockout")
    assert exp.data.layout == "study" and experiment("token_discard_interleaved").data.layout == "study"
    a_to_i = [s for s in samples_of("interleaved_knockout", 4) if s.meta["direction"] == "A->I"]
    t = m.prepare(a_to_i[0]).tokens
    order = [t.positions(g) for g in ("candidates", "question", "reference", "options")]
    assert all(a.max() < b.min() for a, b in zip(order, order[1:]))
    assert set(t.roles[i] for i in order[0].tolist()) >= {"image"} and "audio" in {t.roles[i] for i in order[2]}


# ---- 3. attention spikes on video tokens ----------------------------------------------------
def test_a_spike_is_far_above_its_layers_video_mean():
    attention = torch.full((3, 10), 0.01)
    attention[2, 4] = 0.5  # layer 2 only
    assert torch.nonzero(find_spikes(attention, ratio=5.0)).tolist() == [[2, 4]]  # 0.5 > 5 x 0.059
    assert not find_spikes(attention, ratio=50.0).any()


@pytest.mark.parametrize("family", FAMILIES)
def test_spikes_are_masked_only_in_the_layers_where_they_spike(family, request):
    m = request.getfixturevalue(family)
    s = samples_of("attention_spikes", 1)[0]
    (r,) = attention_spikes(m, [s], SpikeParams(ratio=1.01))  # random weights spike barely: a low ratio finds some
    assert r["n_spikes"] > 0 and r["spike_layers"]
    p = m.prepare(s)
    from avmech.flows.spikes import key_attention

    positions, attention = key_attention(m, p, "video", "last")
    spikes = find_spikes(attention, 1.01)
    masks = [AttentionKnockout(avmech.tokens.Group("s", tuple(positions[spikes[layer]].tolist())), "last", [layer])
             for layer in range(m.n_layers) if spikes[layer].any()]
    assert r["p_correct_masked"] == pytest.approx(m.run(p, masks).p_correct, rel=1e-5)
    assert r["spike_layers"] == ";".join(f"{layer}:{int(spikes[layer].sum())}" for layer in range(m.n_layers)
                                         if spikes[layer].any())
    (none,) = attention_spikes(m, [s], SpikeParams(ratio=1000.0))
    assert none["n_spikes"] == 0 and "p_correct_masked" not in none  # nothing masked: no masked answer


def test_the_norm_variant_keeps_its_own_name():
    assert experiment("attention_spikes").flow == "attention_spikes"
    assert experiment("norm_sinks").flow == "norm_sinks" and "attention_sinks" not in FLOWS


# ---- 4. token discarding -----------------------------------------------------------------
def sweep_records(edge: str, dps: dict[tuple[int, int], list[float]]) -> pd.DataFrame:
    rows = [{"sample_id": "base", "condition": "base"}]
    for (start, stop), values in dps.items():
        for i, dp in enumerate(values):
            rows.append({"sample_id": f"s{i}", "condition": f"{edge}|{start}", "edge": edge, "k": 7,
                         "control": "edge", "start": start, "stop": stop, "dp": dp})
    return pd.DataFrame(rows)


def test_the_layer_follows_from_the_sweep():
    # windows [0,7) and [3,10) move p by 20%; [6,13) by 4% (below 5%), [9,16) by 1%: L = 10 - 1 = 9
    sweep = sweep_records("video->last", {(0, 7): [-0.2, -0.2], (3, 10): [-0.3, -0.1], (6, 13): [-0.04, -0.04],
                                          (9, 16): [0.01, math.nan]})
    layer = settle_layer(sweep, ["video->last"], SweepRule(k=7, threshold=0.05))
    assert layer.layer == 9 and "1 records without a finite dp left out" in layer.source
    assert settle_layer(sweep, ["video->last"], SweepRule(k=7, threshold=0.5)).layer == -1  # nothing moves p
    with pytest.raises(InputError, match="audio->last"):
        settle_layer(sweep, ["audio->last"], SweepRule())


def test_discard_experiments_declare_the_sweep_they_read(tmp_path):
    for name, sweep in (("token_discard", "av_video_knockout"), ("token_discard_interleaved", "interleaved_knockout"),
                        ("worldsense_discard", "av_video_knockout")):
        exp = experiment(name)
        assert exp.inputs == {"sweep": sweep} and FLOWS[exp.flow].needs(exp.flow_params) == {"sweep"}
        assert [e.name for e in in_order([exp, experiment(sweep)])] == [sweep, name]
    text = (EXPERIMENTS / "token_discard.toml").read_text()
    (tmp_path / "t.toml").write_text(text.replace('[inputs]\nsweep = "av_video_knockout"\n', ""))
    with pytest.raises(InputError, match=r"\[inputs\]"):
        load_experiment(tmp_path / "t.toml")
    (tmp_path / "u.toml").write_text(text.replace("[inputs]", "[inputs]\nother = \"letter_lens\""))
    with pytest.raises(InputError, match="inputs"):
        load_experiment(tmp_path / "u.toml")


def test_a_sweep_derived_drop_is_applied_after_that_layer(omni):
    s = samples_of("token_discard", 1)[0]
    sweep = sweep_records("video->last", {(0, 2): [-0.3], (1, 3): [0.0]})
    params = DiscardParams(settings=[{"name": "v", "drops": [{"group": "video", "after": "sweep",
                                                               "edges": ["video->last"]}]}],
                           repeats=1, generate=False)
    full, cut = token_discard(omni, [s], params, sweep=sweep)
    assert cut["drops"] == "video@1" and cut["layer_source"].startswith("sweep k=7")
    assert cut["p_correct"] == pytest.approx(omni.run(omni.prepare(s), [TokenDrop("video", 1)]).p_correct, rel=1e-5)


def test_discard_latency_includes_the_encoders_run_afresh(omni, monkeypatch):
    s = samples_of("token_discard", 1)[0]
    calls = []
    encode_media = omni.encode_media

    def slow(p):
        calls.append(1)
        time.sleep(0.03)
        return encode_media(p)

    monkeypatch.setattr(omni, "encode_media", slow)
    params = DiscardParams(settings=[{"name": "a", "drops": [{"group": "audio_tokens", "after": 1}]}],
                           repeats=2, generate=False)
    full, cut = token_discard(omni, [s], params)
    assert len(calls) == 2 + 2 * 2  # every timed prefill ran the encoders: full x2, then (full, setting) x2
    for r in (full, cut):
        assert r["prefill_ms"] - r["llm_ms"] >= 30
    assert cut["full_prefill_ms"] - cut["full_llm_ms"] >= 30


def test_a_setting_that_removes_nothing_is_flagged_not_measured(omni):
    s = samples_of("token_discard", 1)[0]
    params = DiscardParams(settings=[{"name": "image", "drops": [{"group": "image", "after": 1}]},
                                     {"name": "late", "drops": [{"group": "video", "after": omni.n_layers - 1}]},
                                     {"name": "half", "drops": [{"group": "image", "after": 1},
                                                                {"group": "video", "after": 1}]}],
                           repeats=1, generate=False)
    _, image, late, half = token_discard(omni, [s], params)
    for r in (image, late):
        assert r["applies"] is False and r["skip_reason"] and "p_correct" not in r and "prefill_ms" not in r
    assert "absent" in image["not_applied"] and "after the last layer" in late["not_applied"]
    assert half["applies"] and half["drops"] == "video@1" and "image: absent" in half["not_applied"]


@pytest.mark.parametrize("text,expected", [
    ("B", 1), ("The best answer is: C.", 2), ("(A) the man", 0), ("Answer: D", 3), ("the answer is d", None),
    ("Based on it", None), ("", None),
])
def test_a_generated_answer_is_read_for_its_first_standalone_letter(text, expected):
    assert parse_letter(text, "ABCD") == expected


# ---- 5. the study's subsets ---------------------------------------------------------------
def test_experiments_select_the_study_subsets(tmp_path):
    for path in sorted(EXPERIMENTS.glob("*.toml")):
        exp = load_experiment(path)
        if exp.name == "binding_knockout":  # not the study's: the planted questions that need both streams
            assert exp.data.select == {"category": ["audio-visual binding"]} and exp.data.root == "planted"
            continue
        if exp.data.dataset == "av-speakerbench":
            assert exp.data.select == {"category": STUDY_SPEAKERBENCH}, path.stem
        if exp.data.dataset == "av-odyssey":
            assert exp.data.select == {"direction": ["A->I", "I->A"]} and exp.data.layout == "study", path.stem
    root = avmech.data.synthetic.write("av-speakerbench", tmp_path / "sb", n=6)
    table = pd.read_csv(root / "test.csv", dtype=str)
    table.loc[0, "category"] = "speaker counting"  # a task the study does not report
    table.to_csv(root / "test.csv", index=False)
    spec = DataSpec(dataset="av-speakerbench", root=str(root), select={"category": STUDY_SPEAKERBENCH})
    kept = load_samples(spec)
    assert len(kept) == 5 and {s.meta["category"] for s in kept} == set(STUDY_SPEAKERBENCH)


# ---- 7. modality reliance -------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_reliance_removes_the_sound_or_the_frames(family, request):
    m = request.getfixturevalue(family)
    s = samples_of("modality_reliance", 1)[0]
    both, no_audio, no_video = modality_reliance(m, [s], ModalityParams())
    p = m.prepare(s)
    silent = m.prepare(dataclasses.replace(s, use_video_audio=False))
    sound = m.prepare(dataclasses.replace(s, video=None, audio=s.video, use_video_audio=False))
    assert not len(silent.tokens.group("audio_tokens")) and not len(sound.tokens.group("video"))
    assert (both["n_tokens"], no_audio["n_tokens"], no_video["n_tokens"]) == (len(p), len(silent), len(sound))
    assert len(silent) <= len(p) - len(p.tokens.group("audio_tokens")) and len(sound) < len(p)
    assert no_audio["p_correct"] == pytest.approx(m.run(silent).p_correct, rel=1e-5)
    assert no_video["p_correct"] == pytest.approx(m.run(sound).p_correct, rel=1e-5)
    assert no_audio["dp"] == pytest.approx(avmech.metrics.dp(no_audio["p_correct"], both["p_correct"]))
    flag = list(modality_reliance(m, [dataclasses.replace(s, use_video_audio=False)], ModalityParams()))[1]
    assert flag["applies"] is False and "no 'audio_tokens'" in flag["skip_reason"] and "p_correct" not in flag


# ---- 8. WorldSense in its official prompt ----------------------------------------------------
def test_worldsense_reads_in_the_official_prompt(omni):
    s = samples_of("worldsense_discard", 1)[0]
    assert s.prompt_format == "worldsense" and experiment("worldsense_discard").flow == "token_discard"
    fmt = PROMPT_FORMATS["worldsense"]
    # VLMEvalKit's WorldSense: SYS, the clip, FRAMES_TMPL_AUDIO, then "Question: ...\n<candidates>\nAnswer: "
    assert fmt.intro == ("Carefully watch this video and pay attention to every detail. Based on your observations, "
                         "select the best option that accurately addresses the question.")
    text = omni.prepare(s).text
    options = "\n".join(f"{letter}. {o}" for letter, o in zip("ABCD", s.options))
    assert (f"{fmt.intro}<|vision_bos|><|VIDEO|><|vision_eos|>\nThese are the frames of a video and the corresponding "
            "audio. Select the best answer to the following multiple-choice question based on the video. Respond "
            f"with only the letter (A, B, C, or D) of the correct option.\nQuestion: {s.question}\n{options}\n"
            "Answer: <|im_end|>") in text


# ---- 9. video-SALMONN 2+'s padding silence counts as audio ------------------------------------
def test_salmonn_padding_counts_as_audio_in_knockout_and_discard(salmonn):
    s = samples_of("av_video_knockout", 1)[0]
    p = salmonn.prepare(s)
    t = p.tokens
    pads = set(t.positions("audio_pad").tolist())
    assert pads and set(t.positions("audio_tokens").tolist()) == set(t.positions("audio").tolist()) | pads
    n_all, _ = Edge(src="audio_tokens", dst="question_block").count(p)
    n_audio, _ = Edge(src="audio", dst="question_block").count(p)
    assert n_all == n_audio + len(pads) * len(t.positions("question_block"))
    params = DiscardParams(settings=[{"name": "a", "drops": [{"group": "audio_tokens", "after": 1}]}],
                           repeats=1, generate=False)
    _, cut = token_discard(salmonn, [s], params)
    assert cut["n_kept_last_layer"] == len(p) - len(t.positions("audio")) - len(pads)


# ---- 10. the demo's discard prompts are long enough to save time -------------------------------
def test_the_demo_discard_clips_are_long(omni):
    for name in ("token_discard", "worldsense_discard"):
        exp = experiment(name)
        assert exp.data.synthetic_seconds >= 20
        assert len(omni.prepare(samples_of(name, 1)[0])) > 600  # 2 s clips give about 150 tokens


# ---- the runner, not the flows, knows what is done --------------------------------------------
def test_flows_take_no_record_of_what_is_done():
    for name, flow in FLOWS.items():
        params = inspect.signature(flow.run).parameters
        assert "done" not in params and list(params)[:3] == ["m", "samples", "params"], name
        assert set(params) - {"m", "samples", "params"} == set(flow.inputs), name


def test_experiments_run_after_the_experiments_they_read():
    exps = [load_experiment(p) for p in sorted(EXPERIMENTS.glob("*.toml"))]
    order = [e.name for e in in_order(exps)]
    for e in exps:
        for upstream in e.inputs.values():
            assert order.index(upstream) < order.index(e.name)
    a, b = experiment("effective_pathway"), experiment("av_video_knockout")
    cyclic = [a, b.model_copy(update={"inputs": {"sweep": "effective_pathway"}})]
    with pytest.raises(InputError, match="cycle"):
        in_order(cyclic)


def test_the_random_control_draws_per_sample(omni):
    from avmech.flows.knockout import KnockoutParams, knockout_sweep

    samples = samples_of("av_video_window_ablation", 2)
    params = KnockoutParams(edges=[["audio_tokens", "question_block"]], k=[1], only_correct=False,
                            random_control=True)
    alone = pd.DataFrame(knockout_sweep(omni, samples[1:], params))
    after = pd.DataFrame(knockout_sweep(omni, samples, params))
    after = after[after["sample_id"] == samples[1].id].reset_index(drop=True)
    np.testing.assert_allclose(alone["p_correct"], after["p_correct"])  # the same draws, whatever ran before
