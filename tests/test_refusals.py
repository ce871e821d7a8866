"""Nothing silent: what would end in a quiet "no effect" or a bare NaN is refused, or flagged.

One test per case that used to run and report a number (or a raw traceback): knockouts
that cut nothing, user primitives indexing past the model, non-finite media and logits,
ill-typed sample fields, patches of the wrong shape, a kernel that ignores masks.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import avmech
from avmech import media
from avmech.errors import InputError, MediaError, ModelError
from avmech.interventions import AttentionKnockout, EdgeKnockout, Intervention

FAMILIES = ("omni", "salmonn", "qwen3_omni")


@pytest.fixture(scope="module")
def clip():
    return media.moving_shape_frames(8, 56, 56, "square", seed=3), media.chirp(300, 900, 2.0)


def _sample(clip, **kw):
    frames, wave = clip
    args = dict(video=frames, fps=4, audio=wave, sample_rate=16000, question="Which way?", options=("up", "down"),
                answer=0)
    return avmech.AVSample(**{**args, **kw})


class ScaleHead(Intervention):
    """The README's example primitive."""

    layer: int
    head: int
    factor: float

    def apply(self, ctx):
        ctx.head_output(self.layer, self.head)[:] *= self.factor


class ReadAt(Intervention):
    site: str
    stage = "read"

    def apply(self, ctx):
        return ctx.read(self.site)[0, -1].clone()


class Poison(Intervention):
    """An edit gone wrong: the residual stream becomes NaN."""

    def apply(self, ctx):
        ctx.write("resid_post.1", ctx.read("resid_post.1") * float("nan"))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_knockout_from_a_group_the_sample_lacks_is_refused(family, request, clip):
    m = request.getfixturevalue(family)
    p = m.prepare(_sample(clip, audio=None, sample_rate=None))  # video only: no audio
    with pytest.raises(InputError, match="src 'audio' selects no position"):
        m.run(p, [AttentionKnockout("audio", "last", [1])])
    with pytest.raises(InputError, match="selects no position"):
        m.run(p, [AttentionKnockout("item(99)", "last", [1])])
    with pytest.raises(InputError, match="selects no position"):
        m.run_many(p, [[AttentionKnockout("audio", "question", [1])]])


@pytest.mark.parametrize("family", FAMILIES)
def test_a_knockout_with_no_causal_edge_is_refused_unless_allowed(family, request, clip):
    m = request.getfixturevalue(family)
    p = m.prepare(_sample(clip))
    late_into_early = AttentionKnockout("last", "video", [1, 2])  # every key after every query
    with pytest.raises(InputError, match="cuts no attention edge"):
        m.run(p, [late_into_early])
    with pytest.raises(InputError, match="cuts no attention edge"):
        m.run_many(p, [[late_into_early]])
    allowed = late_into_early.replace(allow_empty=True)
    assert not any(allowed.edges_per_layer(avmech.RunContext(m, p)).values())
    assert torch.equal(m.run(p, [allowed]).logits, m.run(p).logits)
    with pytest.raises(InputError, match="negative positions"):
        EdgeKnockout([(5, -1)], [1])
    with pytest.raises(InputError, match="cuts no attention edge"):
        m.run(p, [EdgeKnockout([], [1])])
    # a drop before the window removes every edge it would cut
    with pytest.raises(InputError, match="cuts no attention edge"):
        m.run(p, [avmech.TokenDrop("audio", 0), AttentionKnockout("audio", "last", [2])])


@pytest.mark.parametrize("family", FAMILIES)
def test_user_primitives_cannot_index_past_the_model(family, request, clip):
    m = request.getfixturevalue(family)
    p = m.prepare(_sample(clip))
    for head in (m.n_heads, -1):
        with pytest.raises(InputError, match=f"head {head} is outside this model's heads 0..{m.n_heads - 1}"):
            m.run(p, [ScaleHead(1, head, 0.0)])
    with pytest.raises(InputError, match=f"layer {m.n_layers + 5} is outside"):
        m.run(p, [ScaleHead(m.n_layers + 5, 0, 0.0)])
    with pytest.raises(InputError, match="is not int"):
        ScaleHead("1", 0, 0.0)
    with pytest.raises(InputError, match="is not float"):
        ScaleHead(1, 0, "0")
    # sites are accepted as the strings the primitives take
    got = m.run(p, [ReadAt("resid_post.1")])[0]
    assert got.shape == (m.d_model,)
    assert not torch.equal(m.run(p, [ScaleHead(1, 0, 0.0)]).logits, m.run(p).logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_non_finite_media_are_refused_and_non_finite_logits_have_no_prediction(family, request, clip):
    m = request.getfixturevalue(family)
    frames, wave = clip
    bad = wave.copy()
    bad[100] = np.nan
    with pytest.raises(MediaError, match="NaN or infinite"):
        m.prepare(_sample(clip, audio=bad))
    p = m.prepare(_sample(clip, answer=0))
    r = m.run(p, [Poison()])
    assert not r.finite and r.pred is None and r.correct is False and math.isnan(r.p_correct)
    assert math.isnan(avmech.metrics.dp(r, m.run(p)))
    assert avmech.metrics.accuracy([r]) == 0.0


def test_ill_typed_sample_fields_name_the_fix(clip):
    with pytest.raises(InputError, match=r"answer='a' is not an option index.*answer=0"):
        _sample(clip, answer="a")
    for answer in (True, 1.0):
        with pytest.raises(InputError, match="is not an option index"):
            _sample(clip, answer=answer)
    with pytest.raises(InputError, match="sample_rate=-5 must be a positive number"):
        _sample(clip, sample_rate=-5)
    with pytest.raises(InputError, match="fps=-4 must be a positive number"):
        _sample(clip, fps=-4)
    with pytest.raises(InputError, match="options are text"):
        _sample(clip, options=("up", 3))
    with pytest.raises(InputError, match="sample_rate=-1"):
        avmech.Item("audio", clip[1], tag="[audio1]", sample_rate=-1)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_patch_of_the_wrong_shape_is_refused(family, request, clip):
    m = request.getfixturevalue(family)
    p = m.prepare(_sample(clip))
    with pytest.raises(InputError, match=rf"takes \[positions, {m.d_model}\]"):
        m.run(p, [avmech.ActivationPatch("resid_post.1", "last", torch.zeros(1, m.d_model + 1))])
    with pytest.raises(InputError, match=rf"takes \[positions, {m.head_dim}\]"):
        m.run(p, [avmech.ActivationPatch("head_out.1.0", "last", torch.zeros(1, m.d_model))])
    with pytest.raises(InputError, match="NaN"):
        m.run(p, [avmech.ActivationPatch("resid_post.1", "last", torch.full((1, m.d_model), float("nan")))])


@pytest.mark.integration
def test_a_mask_ignoring_kernel_on_the_text_config_alone_is_refused(clip):
    m = avmech.load("tiny-omni", seed=0)
    p = m.prepare(_sample(clip))
    m.hf.config.get_text_config()._attn_implementation = "flash_attention_2"  # the layers read this one
    assert m.hf.config._attn_implementation == "sdpa"
    with pytest.raises(ModelError, match="'flash_attention_2' kernel of the decoder layers ignores"):
        m.run(p, [AttentionKnockout("audio", "last", [1])])


@pytest.mark.parametrize("params, field", [
    ("edges = [['audoi', 'question']]", "params.edges.0.src"),
    ("edges = [['audio', 'question |']]", "params.edges.0.dst"),
])
def test_a_typo_in_an_experiment_group_stops_the_run_naming_the_field(tmp_path, params, field):
    from typer.testing import CliRunner

    from avmech.cli import app

    path = tmp_path / "typo.toml"
    path.write_text(f"name = 'typo'\nflow = 'knockout_sweep'\n[data]\ndataset = 'av-speakerbench'\n[params]\n{params}\n")
    result = CliRunner().invoke(app, ["run", str(path), "--results", str(tmp_path / "results")])
    assert result.exit_code == 2 and field in result.output
    assert not (tmp_path / "results").exists()
