"""The affected-region sweep engine gives a full pass's answer while computing less."""

from __future__ import annotations

import pytest
import torch

from avmech import Ablate, AttentionKnockout, EdgeKnockout, LogitLens, TokenDrop, data


@pytest.fixture(scope="module", params=["omni", "omni_eager", "salmonn", "salmonn_eager", "qwen3_omni",
                                        "qwen3_omni_eager"])
def model(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def prepared(model):
    s = data.read("av-speakerbench", data.synthetic.ensure("av-speakerbench", n=8), limit=1)[0]
    return model.prepare(s)


def conditions(p):
    last = int(p.tokens.positions("last")[0])
    return [
        [AttentionKnockout("audio", "last", [2, 3])],                        # into last
        [AttentionKnockout("video | audio", "question", range(1, 4))],      # into question
        [AttentionKnockout("video", "audio", [1])],                          # between modalities
        [AttentionKnockout("last", "last", [3])],                            # a position's edge to itself
        [AttentionKnockout("audio", "question", [1]), AttentionKnockout("video", "last", [2, 3])],  # several
        [EdgeKnockout(((last, 3), (last, 5), (last - 1, 2)), [0, 1])],      # explicit edges
        [AttentionKnockout("user_header", "marker", [0])],                  # early region
        [],                                                                  # nothing
    ]


def test_region_engine_equals_full_passes(model, prepared):
    conds = conditions(prepared)
    fast = model.run_many(prepared, conds)
    base = model.run(prepared)
    for cond, r in zip(conds, fast):
        full = model.run(prepared, cond)
        assert (r.logits - full.logits).abs().max() < 1e-5, cond
        assert abs((r.p_correct - base.p_correct) / base.p_correct
                   - (full.p_correct - base.p_correct) / base.p_correct) < 1e-5


def test_other_primitives_fall_back_to_full_runs(model, prepared):
    conds = [
        [AttentionKnockout("audio", "last", [1], heads=(0,))],
        [TokenDrop("video", 1), AttentionKnockout("audio", "last", [2])],
        [Ablate("mlp_out.1", "question")],
        [LogitLens(layers=[1, 2])],
    ]
    for cond, r in zip(conds, model.run_many(prepared, conds)):
        full = model.run(prepared, cond)
        assert torch.equal(r.logits, full.logits)
    assert model.run_many(prepared, [conds[-1]])[0][0].shape == (2, 1, model.d_vocab)


def test_region_engine_computes_only_the_affected_rows(omni, prepared):
    """Count the positions the decoder layers process: a late knockout into the last
    position needs a few rows in a few layers beyond the clean pass."""
    p = omni.prepare(prepared.sample)
    rows = []
    hooks = [layer.register_forward_hook(lambda mod, args, out: rows.append(out.shape[0] * out.shape[1]))
             for layer in omni.llm_module.layers]
    try:
        conds = [[AttentionKnockout(src, "last", [layer])] for src in ("audio", "video", "question")
                 for layer in range(omni.n_layers)]
        omni.run_many(p, conds)
    finally:
        for h in hooks:
            h.remove()
    full_pass = len(p) * omni.n_layers
    assert sum(rows) <= full_pass + len(conds) * omni.n_layers  # one clean pass + one row per layer and condition
    assert sum(rows) < 0.15 * full_pass * len(conds)


@pytest.mark.slow
def test_study_sweep_on_the_bench_model_equals_full_passes():
    """The benchmark's whole sweep (5 edges x k=7 windows, ~1,000 tokens of bench-omni):
    every condition's dp within 1e-5 of a full pass."""
    import avmech
    from avmech import metrics
    from benchmarks.common import clip_sample
    from benchmarks.sweep import conditions

    m = avmech.load("bench-omni", seed=0)
    p = m.prepare(clip_sample(10))
    conds = conditions(m)
    base = m.run(p)
    for cond, fast in zip(conds, m.run_many(p, conds)):
        assert abs(metrics.dp(fast, base) - metrics.dp(m.run(p, cond), base)) < 1e-5, cond
