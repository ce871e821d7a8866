"""Primitives against independent references (hand-run decoder layers, plain transformers
forwards, hand-computed lens) and against invariants, on the tiny model of each family
(Qwen2.5-Omni, video-SALMONN 2+), eager and sdpa. The test bodies know no family."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import avmech
from avmech import (
    Ablate,
    ActivationPatch,
    AttentionKnockout,
    AttentionRead,
    Capture,
    Intervention,
    LogitLens,
    TokenDrop,
)
from avmech.errors import InputError, ModelError
from avmech.tokens import Group

ATOL = 1e-5


def _sample(seed: int = 0, seconds: float = 3.0, question: str = "Which tone did you hear?"):
    rng = np.random.default_rng(seed)
    frames = (rng.random((int(seconds * 4), 56, 56, 3)) * 255).astype(np.uint8)
    t = np.arange(int(16000 * seconds)) / 16000
    wave = (0.4 * np.sin(2 * np.pi * (300 + 200 * seed) * t)).astype(np.float32)
    return avmech.AVSample(video=frames, fps=4, audio=wave, sample_rate=16000, question=question,
                           options=("low", "high", "none"), answer=seed % 3)


# test id -> session fixture (tests/conftest.py)
MODELS = {"omni-sdpa": "omni", "omni-eager": "omni_eager", "salmonn-sdpa": "salmonn", "salmonn-eager": "salmonn_eager",
          "qwen3-omni-sdpa": "qwen3_omni", "qwen3-omni-eager": "qwen3_omni_eager"}


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    return request.getfixturevalue(MODELS[request.param])


@pytest.fixture(scope="module", params=[k for k in MODELS if k.endswith("eager")])
def eager_model(request):
    return request.getfixturevalue(MODELS[request.param])


@pytest.fixture(scope="module")
def prepared(model):
    return model.prepare(_sample(0))


# ---- an independent reference: the decoder layers run by hand -------------------------
def causal(n: int) -> torch.Tensor:
    mask = torch.full((n, n), torch.finfo(torch.float32).min).triu(1)
    return mask[None, None]


def manual_logits(m, p, masks=None, keep_after=None, keep=None, capture=None):
    """Last-position logits from running embed -> layers -> norm -> head by hand.

    ``masks[l]``: explicit [1, 1, n, n] mask for layer l (else causal);
    ``keep_after``/``keep``: after that layer, continue on positions ``keep`` only,
    with their original rotary positions. ``capture`` collects each layer's output."""
    llm = m.llm_module
    enc = m.encode(p)
    h = enc.inputs_embeds
    cos, sin = llm.rotary_emb(h, enc.position_ids)
    n = h.shape[1]
    alive = torch.arange(n)
    with torch.no_grad():
        for i, layer in enumerate(llm.layers):
            if keep_after is not None and i == keep_after + 1:
                h, cos, sin, n, alive = h[:, keep], cos[:, keep], sin[:, keep], len(keep), keep
            mask = (masks or {}).get(i, causal(n))
            h = layer(h, attention_mask=mask, position_embeddings=(cos, sin), use_cache=False)
            h = m.decoder.after_layer(i, h, alive, enc.extra)  # DeepStack (Qwen3-Omni); else unchanged
            if capture is not None:
                capture.append(h)
        return m.lm_head_module(llm.norm(h))[0, -1]


def blocked_mask(n, src, dst, heads=None, n_heads=None):
    mask = causal(n)
    if heads is not None:
        mask = mask.expand(1, n_heads, n, n).clone()
        for h in heads:
            mask[0, h, dst[:, None], src[None, :]] = torch.finfo(torch.float32).min
    else:
        mask[0, 0, dst[:, None], src[None, :]] = torch.finfo(torch.float32).min
    return mask


# ---- knockout ---------------------------------------------------------------------------
def test_base_run_equals_plain_forward(model, prepared):
    base = model.run(prepared)
    with torch.no_grad():
        ref = model.hf(**prepared.inputs).logits[0, -1]
    assert torch.allclose(base.logits, ref, atol=ATOL, rtol=0)
    assert torch.allclose(base.logits, manual_logits(model, prepared), atol=ATOL, rtol=0)


@pytest.mark.parametrize("src,dst,layers", [
    ("audio", "question", range(1, 3)),
    ("video | audio", "last", [0, 3]),
    ("last", "last", [2]),
    ("question", "options", range(0, 4)),
])
def test_knockout_equals_hand_built_mask(model, prepared, src, dst, layers):
    t = prepared.tokens
    n = len(prepared)
    mask = blocked_mask(n, t.positions(src), t.positions(dst))
    ref = manual_logits(model, prepared, masks={layer: mask for layer in layers})
    got = model.run(prepared, [AttentionKnockout(src, dst, layers)]).logits
    assert (got - ref).abs().max() < ATOL
    assert (got - model.run(prepared).logits).abs().max() > 1e-4  # the knockout did something


def test_knockout_in_every_layer_equals_a_plain_forward_with_a_4d_mask(model, prepared):
    t = prepared.tokens
    mask = blocked_mask(len(prepared), t.positions("audio"), t.positions("question | last"))
    enc = model.encode(prepared)
    with torch.no_grad():
        ref = model.hf(inputs_embeds=enc.inputs_embeds, position_ids=enc.position_ids, attention_mask=mask,
                       **enc.extra).logits[0, -1]
    got = model.run(prepared, [AttentionKnockout("audio", "question | last", "all")]).logits
    assert (got - ref).abs().max() < ATOL


def test_knockout_of_some_heads(model, prepared):
    t = prepared.tokens
    mask = blocked_mask(len(prepared), t.positions("video"), t.positions("last"), heads=(1, 3), n_heads=model.n_heads)
    ref = manual_logits(model, prepared, masks={2: mask})
    got = model.run(prepared, [AttentionKnockout("video", "last", [2], heads=(1, 3))]).logits
    assert (got - ref).abs().max() < ATOL


def test_empty_knockout_changes_nothing(model, prepared):
    """Allowed explicitly, a knockout of no edge is the unchanged model; unasked, it is refused."""
    base = model.run(prepared)
    empty = AttentionKnockout(Group("nothing", ()), "last", "all", allow_empty=True)
    got = model.run(prepared, [empty])
    assert (got.logits - base.logits).abs().max() < ATOL
    with pytest.raises(InputError, match="selects no position"):
        model.run(prepared, [AttentionKnockout(Group("nothing", ()), "last", "all")])


def test_knocking_out_every_earlier_key_of_last_changes_it(model, prepared):
    base = model.run(prepared)
    cut = model.run(prepared, [AttentionKnockout("all - last", "last", "all")])
    assert (cut.logits - base.logits).abs().max() > 1e-3


def test_knockout_validation(model, prepared):
    with pytest.raises(InputError, match="no key to attend to"):
        model.run(prepared, [AttentionKnockout("all", "last", [0])])
    with pytest.raises(InputError, match="outside this model's"):
        model.run(prepared, [AttentionKnockout("audio", "last", [model.n_layers])])
    with pytest.raises(InputError, match="selects no position"):
        model.run(prepared, [AttentionKnockout("audio", "image", [0])])
    with pytest.raises(InputError, match="unknown token group"):
        model.run(prepared, [AttentionKnockout("subtitles", "last", [0])])
    with pytest.raises(InputError, match="heads"):
        model.run(prepared, [AttentionKnockout("audio", "last", [0], heads=(99,))])


def test_flash_attention_is_refused(model, prepared, monkeypatch):
    monkeypatch.setattr(type(model), "attn_implementation", property(lambda self: "flash_attention_2"))
    with pytest.raises(ModelError, match="ignores"):
        model.run(prepared, [AttentionKnockout("audio", "last", [0])])


# ---- logit lens -------------------------------------------------------------------------
def test_lens_at_last_layer_equals_logits(model, prepared):
    r = model.run(prepared, [LogitLens(layers="all", positions="last")])
    lens = r[0]
    assert lens.shape == (model.n_layers, 1, model.d_vocab)
    assert (lens[-1, 0] - r.logits).abs().max() < ATOL


def test_lens_equals_hand_computed_projection(model, prepared):
    enc = model.encode(prepared)
    with torch.no_grad():
        hs = model.hf(inputs_embeds=enc.inputs_embeds, position_ids=enc.position_ids,
                      attention_mask=prepared.inputs["attention_mask"], output_hidden_states=True,
                      **enc.extra).hidden_states
        llm = model.llm_module
        q = prepared.tokens.positions("question")
        r = model.run(prepared, [
            LogitLens(layers=[1, 2], positions="question"),
            LogitLens(layers=[1], positions="question", norm=False, unembed="input"),
        ])
        for i, layer in enumerate([1, 2]):
            ref = model.lm_head_module(llm.norm(hs[layer + 1][0, q]))
            assert (r[0][i] - ref).abs().max() < ATOL
        raw = hs[2][0, q] @ llm.embed_tokens.weight.T
        assert (r[1][0] - raw).abs().max() < ATOL


def test_composition_knockout_plus_lens_equals_lens_of_knocked_out_run(model, prepared):
    cut = AttentionKnockout("audio | video", "last", [1, 2])
    together = model.run(prepared, [cut, LogitLens(layers="all", positions="last")])
    captured = model.run(prepared, [cut] + [Capture(f"resid_post.{i}", "last") for i in range(model.n_layers)])
    with torch.no_grad():
        for i in range(model.n_layers):
            ref = model.lm_head_module(model.llm_module.norm(captured[1 + i]))
            assert (together[1][i] - ref).abs().max() < ATOL
    assert (together.logits - captured.logits).abs().max() < ATOL


# ---- patching and ablation ----------------------------------------------------------------
@pytest.mark.parametrize("site", ["resid_pre.1", "resid_post.2", "attn_out.1", "mlp_out.3", "head_out.2.1"])
def test_patching_a_run_into_itself_changes_nothing(model, prepared, site):
    base = model.run(prepared)
    got = model.run(prepared, [ActivationPatch(site, "audio | question", source=prepared)])
    assert (got.logits - base.logits).abs().max() < ATOL


def test_patching_the_final_residual_reproduces_the_source(model, prepared):
    other = model.prepare(_sample(1, seconds=2.0, question="What did you hear?"))
    last = model.n_layers - 1
    got = model.run(prepared, [ActivationPatch(f"resid_post.{last}", "last", source=other)])
    assert (got.logits - model.run(other).logits).abs().max() < ATOL
    # a cached source run works the same, and a mismatched group size is refused
    cache = model.run(other, [Capture(f"resid_post.{last}", "last")])
    again = model.run(prepared, [ActivationPatch(f"resid_post.{last}", "last", source=cache)])
    assert torch.equal(again.logits, got.logits)
    with pytest.raises(InputError, match="equal size"):
        model.run(prepared, [ActivationPatch("resid_post.1", "question", source=other)])


def test_ablating_the_last_mlp_equals_hand_computation(model, prepared):
    last = model.n_layers - 1
    cap = model.run(prepared, [Capture(f"mlp_out.{last}", "last"), Capture(f"resid_post.{last}", "last")])
    with torch.no_grad():
        ref = model.lm_head_module(model.llm_module.norm(cap[1] - cap[0]))[0]
    got = model.run(prepared, [Ablate(f"mlp_out.{last}", "last", mode="zero")])
    assert (got.logits - ref).abs().max() < ATOL
    mean = model.run(prepared, [Ablate(f"mlp_out.{last}", "last", mode="mean")])
    assert (mean.logits - got.logits).abs().max() > 1e-4


# ---- token dropping ------------------------------------------------------------------------
def test_dropping_nothing_changes_nothing_and_is_refused_unless_meant(model, prepared):
    base = model.run(prepared)
    got = model.run(prepared, [TokenDrop(Group("nothing", ()), after_layer=1, allow_empty=True)])
    assert (got.logits - base.logits).abs().max() < ATOL
    with pytest.raises(InputError, match=r"TokenDrop\(.*nothing.*\) removes nothing: .*allow_empty=True"):
        model.run(prepared, [TokenDrop(Group("nothing", ()), after_layer=1)])


def test_dropping_after_the_last_layer_changes_nothing(model, prepared):
    base = model.run(prepared)
    got = model.run(prepared, [TokenDrop("audio | video", after_layer=model.n_layers - 1)])
    assert (got.logits - base.logits).abs().max() < ATOL


@pytest.mark.parametrize("after", [-1, 0, 2])
def test_drop_equals_hand_run_on_the_shortened_sequence(model, prepared, after):
    if any(i > after for i in model.decoder.injected_layers):  # DeepStack runs at full length after them
        with pytest.raises(InputError, match="DeepStack"):
            model.run(prepared, [TokenDrop("audio | video", after_layer=after)])
        return
    t = prepared.tokens
    dropped = t.positions("audio | video")
    keep = torch.tensor([i for i in range(len(prepared)) if i not in set(dropped.tolist())])
    ref = manual_logits(model, prepared, keep_after=after, keep=keep)
    got = model.run(prepared, [TokenDrop("audio | video", after_layer=after)])
    assert (got.logits - ref).abs().max() < ATOL
    assert (got.logits - model.run(prepared).logits).abs().max() > 1e-4


def test_two_drops_and_a_knockout_compose(model, prepared):
    t = prepared.tokens
    n = len(prepared)
    video, audio = set(t.positions("video").tolist()), set(t.positions("audio").tolist())
    keep1 = torch.tensor([i for i in range(n) if i not in video])
    keep2 = torch.tensor([i for i in keep1.tolist() if i not in audio])
    # reference: drop video after 0, audio after 1, and block question -> last in layer 3
    llm, enc = model.llm_module, model.encode(prepared)
    h = enc.inputs_embeds
    cos0, sin0 = cos, sin = llm.rotary_emb(h, enc.position_ids)
    with torch.no_grad():
        for i, layer in enumerate(llm.layers):
            if i == 1:
                h, cos, sin = h[:, keep1], cos0[:, keep1], sin0[:, keep1]
            if i == 2:
                local = torch.tensor([keep1.tolist().index(x) for x in keep2.tolist()])
                h, cos, sin = h[:, local], cos0[:, keep2], sin0[:, keep2]
            m = causal(h.shape[1])
            if i == 3:
                pos = keep2.tolist()
                q = torch.tensor([pos.index(x) for x in t.positions("last").tolist()])
                k = torch.tensor([pos.index(x) for x in t.positions("question").tolist()])
                m[0, 0, q[:, None], k[None, :]] = torch.finfo(torch.float32).min
            h = layer(h, attention_mask=m, position_embeddings=(cos, sin), use_cache=False)
            h = model.decoder.after_layer(i, h, keep1 if i == 1 else keep2 if i > 1 else torch.arange(n), enc.extra)
        ref = model.lm_head_module(llm.norm(h))[0, -1]
    got = model.run(prepared, [
        TokenDrop("video", after_layer=0), TokenDrop("audio", after_layer=1),
        AttentionKnockout("question", "last", [3]),
    ])
    assert (got.logits - ref).abs().max() < ATOL


def test_drop_validation(model, prepared):
    with pytest.raises(InputError, match="last position"):
        model.run(prepared, [TokenDrop("all", after_layer=0)])
    with pytest.raises(InputError, match="after_layer"):
        model.run(prepared, [TokenDrop("audio", after_layer=model.n_layers)])


# ---- attention readout ----------------------------------------------------------------------
def test_attention_read_rows_sum_to_one(model, prepared):
    r = model.run(prepared, [AttentionRead(layers="all", queries="question | last",
                                           keys_by_group=("video", "audio"))])
    mass = r[0]
    assert mass.shape == (model.n_layers, model.n_heads, len(prepared.tokens.group("question | last")), 3)
    assert torch.allclose(mass.sum(-1), torch.ones(mass.shape[:-1]), atol=1e-5)


def test_attention_read_equals_eager_weights(eager_model):
    p = eager_model.prepare(_sample(0))
    groups = ("system", "video", "audio", "question", "options")
    reader = AttentionRead(layers=[0, 2], queries="question | last", keys_by_group=groups)
    r = eager_model.run(p, [reader])
    enc = eager_model.encode(p)
    with torch.no_grad():
        att = eager_model.hf(inputs_embeds=enc.inputs_embeds, position_ids=enc.position_ids,
                             attention_mask=p.inputs["attention_mask"], output_attentions=True, **enc.extra).attentions
    rows = p.tokens.positions("question | last")
    members = torch.zeros(len(groups) + 1, len(p))
    for i, g in enumerate(groups):
        members[i, p.tokens.positions(g)] = 1
    members[-1] = 1 - members[:-1].sum(0)
    for i, layer in enumerate([0, 2]):
        ref = att[layer][0][:, rows] @ members.T
        assert torch.allclose(r[0][i], ref, atol=1e-5)
    assert reader.group_names(avmech.RunContext(eager_model, p))[-1] == "other"


def test_attention_read_sees_a_composed_knockout(model, prepared):
    r = model.run(prepared, [
        AttentionKnockout("audio", "last", [1]),
        AttentionRead(layers=[1], queries="last", keys_by_group=("audio",)),
    ])
    assert r[1][0, :, 0, 0].abs().max() < 1e-6  # no mass left on the knocked-out keys


# ---- extending ---------------------------------------------------------------------------------
class ScaleHead(Intervention):
    layer: int
    head: int
    factor: float

    def apply(self, ctx):
        ctx.head_output(self.layer, self.head)[:] *= self.factor


def test_a_new_primitive_in_a_few_lines(model, prepared):
    base = model.run(prepared)
    assert (model.run(prepared, [ScaleHead(1, 2, 1.0)]).logits - base.logits).abs().max() < ATOL
    zero = model.run(prepared, [ScaleHead(1, 2, 0.0)]).logits
    ablated = model.run(prepared, [Ablate("head_out.1.2", "all")]).logits
    assert (zero - ablated).abs().max() < ATOL and (zero - base.logits).abs().max() > 1e-5
    with pytest.raises(Exception):
        ScaleHead(1, 2, 1.0).factor = 2.0  # frozen


def test_metrics_and_run_many(model, prepared):
    base = model.run(prepared)
    conditions = [[], [AttentionKnockout("audio", "last", [1, 2])], [TokenDrop("video", after_layer=1)]]
    results = model.run_many(prepared, conditions)
    assert torch.equal(results[0].logits, base.logits)
    assert avmech.metrics.dp(results[0], base) == 0.0
    cut = results[1]
    assert avmech.metrics.dp(cut, base) == pytest.approx((cut.p_correct - base.p_correct) / base.p_correct)
    probs = torch.softmax(base.logits, -1)[list(prepared.answer_ids)]
    assert base.p_correct == pytest.approx(float(probs[prepared.sample.answer]))
    assert base.pred == int(torch.argmax(base.logits[list(prepared.answer_ids)]))
    assert avmech.metrics.accuracy([base]) == float(base.correct)
    ids = prepared.answer_ids
    assert avmech.metrics.logit_diff(base, 0, 1) == pytest.approx(float(base.logits[ids[0]] - base.logits[ids[1]]))


def test_a_list_of_groups_is_their_union(model, prepared):
    t = prepared.tokens
    assert t.group(["audio", "video"]).positions == t.group("audio | video").positions
    a = model.run(prepared, [TokenDrop(["audio", "video"], after_layer=1)])
    b = model.run(prepared, [TokenDrop("audio | video", after_layer=1)])
    assert torch.equal(a.logits, b.logits)
