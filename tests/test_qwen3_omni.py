"""Qwen3-Omni adapter on the tiny model: layout on the real vocabulary, inputs equal to the
processor's own run, DeepStack (through encode, the decoder map and the region engine),
the mixture-of-experts map, loading, flows. The shared tests (test_primitives, test_region,
test_generate, test_prompt, test_refusals) run every primitive on this family too."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import avmech
from avmech import AttentionKnockout, AttentionRead, Capture, LogitLens, TokenDrop, data, media
from avmech.errors import InputError, ModelError
from avmech.models.decoders import Qwen3OmniDecoder
from avmech.models.qwen3_omni import Qwen3OmniModel
from avmech.models.qwen3_omni_tiny import qwen3_omni_config


def _av_sample(media_dir, **kw):
    return avmech.AVSample(video=str(media_dir / "clip.mp4"), question="Which way does the pitch move?",
                           options=("up", "down"), answer=0, **kw)


def _odyssey_sample(media_dir, **kw):
    items = [avmech.Item("image", str(media_dir / f"img{i}.png"), tag=f"[img{i}]") for i in range(1, 5)]
    items.append(avmech.Item("audio", str(media_dir / "tone.wav"), tag="[audio1]", role="reference"))
    return avmech.AVSample(question="Which image matches the audio [audio1] from [img1] [img2] [img3] [img4]?",
                           options=("the first image", "the second image", "the third image", "the fourth image"),
                           answer=2, items=tuple(items), prompt_format="av-odyssey", **kw)


@pytest.fixture(scope="module")
def deep(qwen3_omni):
    """The tiny model's shape with three DeepStack levels (after decoder layers 0, 1 and 2), as
    the release has, built here from the same processor (not an embedded model)."""
    from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

    torch.manual_seed(1)
    config = qwen3_omni_config(qwen3_omni.tokenizer, vision_depth=3, deepstack=(0, 1, 2))
    hf = Qwen3OmniMoeThinkerForConditionalGeneration(config).eval()
    return Qwen3OmniModel(hf, qwen3_omni.processor, "tiny-qwen3-omni-3-levels", media_policy=qwen3_omni.media_policy)


# ---- layout --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["av", "odyssey", "audio_only", "video_only"])
def test_token_map_agrees_with_input_ids(qwen3_omni, media_dir, kind):
    sample = {
        "av": _av_sample(media_dir),
        "odyssey": _odyssey_sample(media_dir),
        "audio_only": avmech.AVSample(audio=str(media_dir / "tone.wav"), question="Is it a tone?",
                                      options=("yes", "no"), answer=0),
        "video_only": _av_sample(media_dir, use_video_audio=False),
    }[kind]
    p = qwen3_omni.prepare(sample)
    ids, cfg = p.input_ids[0], qwen3_omni.hf.config
    assert (cfg.audio_token_id, cfg.image_token_id, cfg.video_token_id) == (151675, 151655, 151656)
    for role, token_id in (("audio", cfg.audio_token_id), ("video", cfg.video_token_id), ("image", cfg.image_token_id)):
        assert torch.equal(p.tokens.positions(role), torch.nonzero(ids == token_id).flatten()), role
    markers = torch.tensor([cfg.audio_start_token_id, cfg.audio_end_token_id, cfg.vision_start_token_id,
                            cfg.vision_end_token_id])
    assert markers.tolist() == [151669, 151670, 151652, 151653]
    assert torch.equal(p.tokens.positions("marker"), torch.nonzero(torch.isin(ids, markers)).flatten())
    assert p.tokens.positions("last").tolist() == [len(ids) - 1]
    assert ids[p.tokens.positions("option_letter")].tolist() == list(p.answer_ids)
    assert ids[:3].tolist() == [151644, 872, 198] and not len(p.tokens.group("system"))  # "<|im_start|>user\n" first
    assert p.position_ids.shape == (3, 1, len(ids))


def test_audio_in_video_interleaves_grid_step_by_grid_step(qwen3_omni, media_dir):
    """4.5 s at 8 fps: 8 frames at 1.78 fps, so a grid step lasts 1.125 s and sits at
    position 14.625 g; audio token k (13 per second) follows step g when 14.625 g <= k."""
    p = qwen3_omni.prepare(_av_sample(media_dir))
    t = p.tokens
    video, audio = t.positions("video").numpy(), t.positions("audio").numpy()
    spg = float(p.inputs["video_second_per_grid"][0])
    assert spg == pytest.approx(1.125) and abs(len(audio) - 4.5 * 13) <= 2
    step = t.grid[video, 0]
    assert (t.chunk[video] == step).all() and np.allclose(t.time[video], step * spg)
    k = np.arange(len(audio))
    assert (t.chunk[audio] == np.floor(k / (spg * 13))).all() and np.allclose(t.time[audio], k / 13)
    runs = [label.split()[0] for _, _, label in t.runs() if label.startswith(("video", "audio"))]
    assert runs == ["video", "audio"] * int(step.max() + 1)
    ids = p.input_ids[0].tolist()
    assert ids[video.min() - 2: video.min()] == [151652, 151669]  # <|vision_start|><|audio_start|>
    assert ids[audio.max() + 1: audio.max() + 3] == [151670, 151653]  # <|audio_end|><|vision_end|>


def test_prompt_text_matches_the_chat_template(qwen3_omni, media_dir):
    """No system turn unless the sample has a system prompt, as the released template renders it."""
    for sample in (_av_sample(media_dir), _odyssey_sample(media_dir), _av_sample(media_dir, system="Be brief.")):
        p = qwen3_omni.prepare(sample)
        conv = qwen3_omni.conversation(sample)
        assert [turn["role"] for turn in conv] == (["system"] if sample.system else []) + ["user"]
        assert qwen3_omni.processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False) == p.text
        assert p.text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n" if sample.system else "<|im_start|>user\n")


# ---- inputs and the encode path -------------------------------------------------------------
def test_inputs_and_logits_reproduce_the_processors_own_run(qwen3_omni, media_dir):
    """The processor's own path (template text, its media processing and interleaving, positions
    computed by the model itself) gives the same ids and logits; the encode path too."""
    m = qwen3_omni
    p = m.prepare(_av_sample(media_dir))
    frames, fps, _ = m._video_frames(p.sample)
    wave = media.load_wave(media_dir / "clip.mp4", None, recipe="librosa")
    videos_kwargs = {"size": m._video_size(len(frames)), "fps": fps, "do_sample_frames": False,
                     "cap_pixels_per_frame": False}
    out = m.processor(text=p.text, videos=[frames], audio=[wave], load_audio_from_video=True,
                      audio_from_video_indices=[0], return_tensors="pt", videos_kwargs=videos_kwargs)
    assert torch.equal(out["input_ids"], p.input_ids)
    with torch.no_grad():
        ref = m.hf(**out, use_audio_in_video=True).logits[0, -1]  # positions from the model's own get_rope_index
        got = m.hf(**p.inputs).logits[0, -1]
        enc = m.encode(p)
        via = m.hf(inputs_embeds=enc.inputs_embeds, position_ids=enc.position_ids,
                   attention_mask=p.inputs["attention_mask"], **enc.extra).logits[0, -1]
        bare = m.hf(inputs_embeds=enc.inputs_embeds, position_ids=enc.position_ids,
                    attention_mask=p.inputs["attention_mask"]).logits[0, -1]
    assert (got - ref).abs().max() < 1e-5 and (via - ref).abs().max() < 1e-5
    assert (m.run(p).logits - ref).abs().max() < 1e-5
    assert (bare - ref).abs().max() > 1e-3  # without the DeepStack features the model is another one
    assert set(enc.extra) == {"input_ids", "mm_encoder_outputs"} and set(enc.extra["mm_encoder_outputs"]) == {"video"}


@pytest.mark.parametrize("kind", ["odyssey", "audio_only"])
def test_the_encode_path_is_the_full_model_for_images_and_audio(qwen3_omni, media_dir, kind):
    m = qwen3_omni
    sample = _odyssey_sample(media_dir) if kind == "odyssey" else avmech.AVSample(
        audio=str(media_dir / "tone.wav"), question="Is it a tone?", options=("yes", "no"), answer=0)
    p = m.prepare(sample)
    enc = m.encode(p)
    with torch.no_grad():
        ref = m.hf(**p.inputs).logits[0, -1]
        via = m.hf(inputs_embeds=enc.inputs_embeds, position_ids=enc.position_ids,
                   attention_mask=p.inputs["attention_mask"], **enc.extra).logits[0, -1]
    assert (via - ref).abs().max() < 1e-5
    assert (set(enc.extra.get("mm_encoder_outputs", {})) == {"image"}) == (kind == "odyssey")


# ---- DeepStack -----------------------------------------------------------------------------
def test_deepstack_adds_between_resid_post_and_the_next_resid_pre_at_visual_positions(deep, media_dir):
    """``resid_post.i`` of a DeepStack layer is before the injection, ``resid_pre.(i+1)`` after it;
    they differ exactly at the visual positions, by what ``decoder.after_layer`` adds."""
    p = deep.prepare(_av_sample(media_dir))
    assert deep.decoder.injected_layers == (0, 1, 2)
    sites = [Capture(f"resid_{kind}.{i + (kind == 'pre')}", "all") for i in range(3) for kind in ("post", "pre")]
    r = deep.run(p, sites)
    visual = torch.isin(p.input_ids[0], torch.tensor([151655, 151656]))
    enc = deep.encode(p)
    for i in range(3):
        post, pre = r[2 * i], r[2 * i + 1]  # [pos, d]
        assert torch.equal(post[~visual], pre[~visual]) and (post[visual] - pre[visual]).abs().min() > 0
        added = deep.decoder.after_layer(i, post[None], torch.arange(len(p)), enc.extra)[0]
        assert (added - pre).abs().max() < 1e-6
    assert torch.equal(deep.decoder.after_layer(3, post[None], torch.arange(len(p)), enc.extra)[0], post)


def test_deepstack_joins_image_and_video_features_in_position_order_as_the_model_does(qwen3_omni):
    """A prompt with an image and a video (the processor's own inputs; avmech's samples hold one
    or the other): the positions and features `decoder.deepstack` adds are the ones the text
    model receives from the thinker."""
    from types import SimpleNamespace

    m, rng = qwen3_omni, np.random.default_rng(0)
    text = ("<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Q<|vision_start|><|image_pad|><|vision_end|>"
            "<|im_end|>\n<|im_start|>assistant\n")
    size = {"shortest_edge": 32 * 32 * 4, "longest_edge": 32 * 32 * 16}
    out = dict(m.processor(text=text, images=[rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)],
                           videos=[torch.from_numpy(rng.random((4, 3, 64, 64)).astype(np.float32) * 255)],
                           return_tensors="pt", images_kwargs={"size": size},
                           videos_kwargs={"size": size, "fps": 2.0, "do_sample_frames": False}))
    seen = {}
    hook = m.hf.model.language_model.register_forward_pre_hook(lambda mod, args, kw: seen.update(kw), with_kwargs=True)
    try:
        with torch.no_grad():
            m.hf(**out)
    finally:
        hook.remove()
    enc = m.encode_media(SimpleNamespace(inputs=out, position_ids=torch.zeros(3, 1, out["input_ids"].shape[1])))
    assert set(enc.extra["mm_encoder_outputs"]) == {"image", "video"}
    visual, features = m.decoder.deepstack(0, enc.extra)
    assert torch.equal(visual, seen["visual_pos_masks"][0])
    assert torch.equal(features, seen["deepstack_visual_embeds"][0])


def _knockouts_with_visual_rows(p):
    """Knockouts whose affected region holds image positions: into the reference audio,
    which the images follow (dataset layout), or into the third image (the region starts
    inside the visual positions), from each DeepStack layer on."""
    return [
        [AttentionKnockout("user_header", "reference", [0])],
        [AttentionKnockout("item(0)", "item(2)", [0, 1])],
        [AttentionKnockout("item(1)", "item(3)", [1])],
        [AttentionKnockout("reference", "candidates", [0, 1])],
        [AttentionKnockout("reference", "image", [1, 2])],
        [AttentionKnockout("question", "candidates", [2, 3])],
        [AttentionKnockout("reference", "last", range(0, 4))],
        [AttentionKnockout("candidates", "question", [0]), AttentionKnockout("reference", "last", [3])],
    ]


@pytest.mark.parametrize("which", ["tiny", "deep"])
def test_region_sweeps_with_visual_rows_equal_full_runs(qwen3_omni, deep, media_dir, which):
    m = {"tiny": qwen3_omni, "deep": deep}[which]
    p = m.prepare(_odyssey_sample(media_dir))
    t = p.tokens
    assert t.positions("reference").max() < t.positions("image").min()  # the images follow the first target
    conds = _knockouts_with_visual_rows(p)
    for cond, fast in zip(conds, m.run_many(p, conds)):
        assert (fast.logits - m.run(p, cond).logits).abs().max() < 1e-5, cond


def test_a_region_without_the_deepstack_addition_would_differ(deep, media_dir, monkeypatch):
    """The guard of the test above: leave the DeepStack rows out of the region and it fails."""
    p = deep.prepare(_odyssey_sample(media_dir))
    cond = [AttentionKnockout("reference", "candidates", [0, 1])]
    full = deep.run(p, cond)
    monkeypatch.setattr(Qwen3OmniDecoder, "after_layer", lambda self, index, hidden, positions, extra: hidden)
    assert (deep.run_many(p, [cond])[0].logits - full.logits).abs().max() > 1e-4


def test_blocking_edges_from_video_leaves_the_deepstack_stream_of_video(deep, media_dir):
    """Knocking every edge out of the video positions in every layer (video -> rest) does not
    take the DeepStack features out of the video positions' own residual stream."""
    p = deep.prepare(_av_sample(media_dir, use_video_audio=False))
    cut = deep.run(p, [AttentionKnockout("video", "all - video", "all"), Capture("resid_pre.1", "video"),
                       Capture("resid_post.0", "video")])
    assert (cut[1] - cut[2]).abs().min() > 0  # the injection after layer 0 is still there


def test_drops_before_a_deepstack_layer_are_refused(qwen3_omni, deep, media_dir):
    p = deep.prepare(_av_sample(media_dir))
    for after in (-1, 0, 1):
        with pytest.raises(InputError, match=r"DeepStack.*drop after layer 2 or later"):
            deep.run(p, [TokenDrop("audio", after_layer=after)])
    assert deep.run(p, [TokenDrop("audio | video", after_layer=2)]).finite
    q = qwen3_omni.prepare(_av_sample(media_dir))
    with pytest.raises(InputError, match="DeepStack"):
        qwen3_omni.run(q, [TokenDrop("video", after_layer=-1)])


# ---- the decoder map -------------------------------------------------------------------------
def test_queries_and_keys_are_read_after_the_norms_and_the_rotary_embedding(qwen3_omni_eager, media_dir):
    m = qwen3_omni_eager
    p = m.prepare(_av_sample(media_dir))
    enc, layer = m.encode(p), m.nn.llm.layers[1]
    with torch.no_grad(), m.nn.trace(inputs_embeds=enc.inputs_embeds, position_ids=enc.position_ids, **enc.extra):
        x = m.decoder.attention(layer).inputs[1]["hidden_states"].save()
        q, k = (v.save() for v in m.decoder.qk(layer))
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import apply_rotary_pos_emb

    attn = m.decoder.attention(m.llm_module.layers[1])
    cos, sin = m.llm_module.rotary_emb(x, enc.position_ids)
    with torch.no_grad():
        shape = (*x.shape[:-1], -1, m.head_dim)
        q_ref, k_ref = apply_rotary_pos_emb(attn.q_norm(attn.q_proj(x).view(shape)).transpose(1, 2),
                                            attn.k_norm(attn.k_proj(x).view(shape)).transpose(1, 2), cos, sin)
    assert torch.allclose(q, q_ref, atol=1e-6) and torch.allclose(k, k_ref, atol=1e-6)


def test_mixture_flops_count_the_router_and_the_active_experts(qwen3_omni, media_dir):
    cfg = qwen3_omni.llm_module.config
    d, e, k, d_e = cfg.hidden_size, cfg.num_experts, cfg.num_experts_per_tok, cfg.moe_intermediate_size
    assert qwen3_omni.decoder.mlp_flops(qwen3_omni.llm_module) == 2 * d * e + k * 2 * 3 * d * d_e
    from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

    config = qwen3_omni_config(qwen3_omni.tokenizer)
    config.text_config.mlp_only_layers = [1]  # one dense layer among the mixtures
    with pytest.raises(ModelError, match="MLPs differ in cost"):
        Qwen3OmniModel(Qwen3OmniMoeThinkerForConditionalGeneration(config).eval(), qwen3_omni.processor, "mixed")


def test_generated_positions_count_on_from_the_exact_maximum():
    dec = Qwen3OmniDecoder()
    positions = torch.tensor([0.0, 1.0, 14.625, 15.625]).expand(3, 1, 4)
    assert dec.next_positions(positions, 2).flatten().tolist() == [18.625] * 3


# ---- flows and remote runs ---------------------------------------------------------------------
def test_the_flows_run_on_the_family(qwen3_omni):
    """Each kind of flow on the synthetic set: a sweep's dp equals single runs, the lens's last
    layer is the answer, attention mass sums to one, a discard equals its drop."""
    import pandas as pd

    from avmech.flows.attention import AttentionParams, attention_allocation
    from avmech.flows.discard import DiscardParams, token_discard
    from avmech.flows.knockout import KnockoutParams, knockout_sweep
    from avmech.flows.lens import LensParams, letter_lens

    m = qwen3_omni
    samples = data.read("av-speakerbench", data.synthetic.ensure("av-speakerbench", n=8), limit=2)
    p = m.prepare(samples[0])
    base = m.run(p)
    records = list(knockout_sweep(m, samples[:1], KnockoutParams(edges=[["video", "last"]], k=[2], only_correct=False)))
    conds = [r for r in records if r["condition"] != "base"]
    assert len(conds) == m.n_layers
    for r in conds:
        single = m.run(p, [AttentionKnockout(r["src"], r["dst"], range(r["start"], r["stop"]))])
        assert r["dp"] == pytest.approx(avmech.metrics.dp(single, base), abs=1e-6)
    lens = [r for r in letter_lens(m, samples[:1], LensParams()) if r["layer"] == m.n_layers - 1]
    assert lens[0]["p_layer"] == pytest.approx(lens[0]["p_correct"], abs=1e-6)
    mass = pd.DataFrame(attention_allocation(m, samples[:1], AttentionParams(queries=["last"])))
    assert ((mass.groupby("layer")["mass"].sum() - 1).abs() < 1e-5).all()
    params = DiscardParams(settings=[{"name": "av", "drops": [{"group": "audio | video", "after": 0.5}]}], repeats=1)
    _, cut = token_discard(m, samples[:1], params)
    assert cut["p_correct"] == pytest.approx(m.run(p, [TokenDrop("audio | video", 1)]).p_correct, abs=1e-7)


def test_runs_through_the_remote_simulation_give_the_local_numbers(qwen3_omni, media_dir):
    """The DeepStack inputs (the encoders' outputs and the ids) travel with the request."""
    from avmech.backends import SimulatedBackend

    m = qwen3_omni
    p = m.prepare(_odyssey_sample(media_dir))
    prims = [AttentionKnockout("reference", "candidates", [0, 1]), LogitLens([0, 3], "last"),
             AttentionRead([1], "last", ("image", "audio"))]
    local, remote = m.run(p, prims), m.run(p, prims, backend=SimulatedBackend())
    assert torch.equal(local.logits, remote.logits)
    assert all(torch.equal(a, b) for a, b in zip(local.readouts[1:], remote.readouts[1:]))


# ---- loading -----------------------------------------------------------------------------------
def test_the_released_full_checkpoint_layout_loads_the_thinker_only(qwen3_omni, media_dir, tmp_path):
    """Qwen/Qwen3-Omni-30B-A3B-* ship the whole model (model_type qwen3_omni_moe, the thinker's
    weights under thinker.*, the talker's beside them); avmech reads the thinker alone. A
    thinker-only copy loads too; a missing thinker weight is refused, naming it; and
    decoder="server" keeps one decoder layer but knows the served depth."""
    from safetensors.torch import load_file, save_file
    from transformers import Qwen3OmniMoeConfig, Qwen3OmniMoeForConditionalGeneration

    full = Qwen3OmniMoeForConditionalGeneration(
        Qwen3OmniMoeConfig(thinker_config=qwen3_omni.hf.config.to_dict(), enable_audio_output=False))
    full.thinker.load_state_dict(qwen3_omni.hf.state_dict())
    p = qwen3_omni.prepare(_av_sample(media_dir))
    for variant in ("released", "thinker-only"):
        d = tmp_path / variant
        (full if variant == "released" else qwen3_omni.hf).save_pretrained(d)
        qwen3_omni.processor.save_pretrained(d)
        (d / "avmech_media.json").write_text(json.dumps(qwen3_omni.media_policy))
        weights = d / "model.safetensors"
        if variant == "released":
            save_file({**load_file(weights), "talker.codec_head.weight": torch.zeros(4, 4)}, weights,
                      metadata={"format": "pt"})
            assert json.loads((d / "config.json").read_text())["model_type"] == "qwen3_omni_moe"
            assert any(key.startswith("thinker.") for key in load_file(weights))
        again = avmech.load(str(d), dtype=torch.float32)
        assert type(again) is Qwen3OmniModel and again.family == "qwen3-omni"
        assert torch.equal(qwen3_omni.run(p).logits, again.run(again.prepare(p.sample)).logits), variant
    served = avmech.load(str(d), dtype=torch.float32, decoder="server")
    assert served.n_layers == qwen3_omni.n_layers and len(served.llm_module.layers) == 1
    tensors = load_file(weights)
    name = next(key for key in tensors if "layers.1.self_attn.q_norm" in key)
    del tensors[name]
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(ModelError, match=r"lacks 1 thinker weight.*layers\.1\.self_attn\.q_norm"):
        avmech.load(str(d), dtype=torch.float32)


def test_the_registry_knows_the_family(qwen3_omni):
    assert "tiny-qwen3-omni" in avmech.models.embedded()
    assert [f.name for f in avmech.models.FAMILIES if f.recognises({"model_type": "qwen3_omni_moe"})] == ["qwen3-omni"]
    assert qwen3_omni.hf.config.vision_config.deepstack_visual_indexes == [0]
    assert qwen3_omni.decoder.injected_layers == (0,)
