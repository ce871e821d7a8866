"""Qwen2.5-Omni adapter on the tiny model: layout, TokenMap, inputs, loading, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import avmech
from avmech import media
from avmech.cli import app
from avmech.errors import InputError, ModelError


def _av_sample(media_dir, **kw):
    return avmech.AVSample(
        video=str(media_dir / "clip.mp4"), question="Which way does the pitch move?",
        options=("up", "down"), answer=0, **kw,
    )


def _odyssey_sample(media_dir):
    items = [
        avmech.Item("image", str(media_dir / f"img{i}.png"), tag=f"[img{i}]") for i in range(1, 5)
    ] + [avmech.Item("audio", str(media_dir / "tone.wav"), tag="[audio1]", role="reference")]
    return avmech.AVSample(
        question="Which image matches the audio [audio1] from [img1] [img2] [img3] [img4]?",
        options=("the first image", "the second image", "the third image", "the fourth image"),
        answer=2, items=tuple(items), prompt_format="av-odyssey",
    )


def test_interleaving_follows_the_processor_rules_chunk_by_chunk(omni, media_dir):
    p = omni.prepare(_av_sample(media_dir))
    t = p.tokens
    video, audio = t.positions("video").numpy(), t.positions("audio").numpy()
    spg = float(p.inputs["video_second_per_grid"][0])
    n_audio = int(omni.hf.model.audio_tower._get_feat_extract_output_lengths(
        p.inputs["feature_attention_mask"].sum(-1))[1])
    # 25 audio positions per second of sound: 4.5 s -> about 112
    assert len(audio) == n_audio and abs(n_audio - 4.5 * 25) <= 2
    # every audio token k sits in chunk k // 50 (2 s), every video step g in chunk floor(g * spg / 2)
    assert (t.chunk[audio] == np.arange(n_audio) // 50).all()
    assert (t.chunk[video] == np.floor(t.grid[video, 0] * spg * 25 / 50)).all()
    assert np.allclose(t.time[audio], np.arange(n_audio) / 25)
    assert np.allclose(t.time[video], t.grid[video, 0] * spg)
    # chunk by chunk: [V_j][A_j] and chunks in order, between <vision_bos><audio_bos> and the eos pair
    runs = [(a, b, label) for a, b, label in t.runs() if label.startswith(("video", "audio"))]
    kinds = [label.split()[0] for _, _, label in runs]
    chunks = [int(label.split()[2]) for _, _, label in runs]
    # chunks in order, each at most one video run then one audio run ([V_j][A_j]);
    # the sound outlasts the last 2-frame step here, so the last chunk is audio only
    assert chunks == sorted(chunks) and len(set(chunks)) >= 3
    for j in set(chunks):
        assert [k for k, c in zip(kinds, chunks) if c == j] in (["video", "audio"], ["audio"]), j
    ids = p.input_ids[0]
    tok = omni.tokenizer
    first, last = runs[0][0], runs[-1][1]
    assert ids[first - 2: first].tolist() == tok.convert_tokens_to_ids([tok.vision_bos_token, tok.audio_bos_token])
    assert ids[last: last + 2].tolist() == tok.convert_tokens_to_ids([tok.audio_eos_token, tok.vision_eos_token])


@pytest.mark.parametrize("kind", ["av", "odyssey", "audio_only", "video_only"])
def test_token_map_agrees_with_input_ids(omni, media_dir, kind):
    sample = {
        "av": _av_sample(media_dir),
        "odyssey": _odyssey_sample(media_dir),
        "audio_only": avmech.AVSample(audio=str(media_dir / "tone.wav"), question="Is it a tone?", options=("yes", "no"), answer=0),
        "video_only": _av_sample(media_dir, use_video_audio=False),
    }[kind]
    p = omni.prepare(sample)
    ids = p.input_ids[0]
    cfg = omni.hf.config
    for role, token_id in (("audio", cfg.audio_token_id), ("video", cfg.video_token_id), ("image", cfg.image_token_id)):
        assert torch.equal(p.tokens.positions(role), torch.nonzero(ids == token_id).flatten()), role
    markers = {cfg.audio_start_token_id, cfg.audio_end_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id}
    assert torch.equal(p.tokens.positions("marker"), torch.nonzero(torch.isin(ids, torch.tensor(list(markers)))).flatten())
    assert len(p.tokens) == len(ids)
    assert p.tokens.positions("last").tolist() == [len(ids) - 1]
    letters = p.tokens.positions("option_letter")
    assert ids[letters].tolist() == list(p.answer_ids)
    assert p.inputs["position_ids"].shape == (3, 1, len(ids))


def test_interleaved_items_carry_roles_and_order(omni, media_dir):
    p = omni.prepare(_odyssey_sample(media_dir))
    t = p.tokens
    # an item's group holds its content tokens and its own begin/end markers
    assert torch.equal(t.positions("reference - marker"), t.positions("audio"))
    assert torch.equal(t.positions("candidates - marker"), t.positions("image"))
    assert len(t.group("reference & marker")) == 2 and len(t.group("candidates & marker")) == 8
    # items appear in question order: reference audio first, then img1..img4
    order = [int(t.item[i]) for i in np.flatnonzero(t.item >= 0)]
    assert list(dict.fromkeys(order)) == [4, 0, 1, 2, 3]
    assert len(t.select("options", option=2)) and set(t.positions("correct").tolist()) == set(
        t.select("options", option=2).positions)
    assert len(t.group("options - correct")) == len(t.group("options")) - len(t.group("correct"))


def test_prompt_text_matches_the_released_chat_template(omni, media_dir):
    """The embedded model carries Qwen2.5-Omni's released template: with no system message
    it inserts "You are a helpful assistant.", which is also avmech's default."""
    for sample in (_av_sample(media_dir), _odyssey_sample(media_dir), _av_sample(media_dir, system="Be brief.")):
        p = omni.prepare(sample)
        conv = omni.conversation(sample)
        assert [turn["role"] for turn in conv] == (["system"] if sample.system else []) + ["user"]
        rendered = omni.processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        assert rendered == p.text
        assert p.text.startswith(f"<|im_start|>system\n{sample.system or 'You are a helpful assistant.'}<|im_end|>")


def test_inputs_reproduce_the_processors_own_run(omni, media_dir):
    sample = _av_sample(media_dir)
    p = omni.prepare(sample)
    frames, _, fps, size = _released_frames(omni, media_dir / "clip.mp4")
    # the processor's own path: template text, its media processing, positions computed by the model
    out = omni.processor(
        text=p.text, videos=[frames], audio=[media.read_audio(media_dir / "clip.mp4")],
        load_audio_from_video=True, audio_from_video_indices=[0], return_tensors="pt",
        videos_kwargs={"size": size, "fps": fps, "do_sample_frames": False, "cap_pixels_per_frame": False},
    )
    with torch.no_grad():
        ref = omni.hf(**out, use_audio_in_video=True).logits
        got = omni.hf(**p.inputs).logits
        enc = omni.encode(p)
        via_embeds = omni.hf(inputs_embeds=enc.inputs_embeds, position_ids=enc.position_ids,
                             attention_mask=p.inputs["attention_mask"]).logits
    assert torch.equal(out["input_ids"], p.input_ids)
    assert torch.allclose(got, ref, atol=1e-6, rtol=0)
    assert torch.allclose(via_embeds, got, atol=1e-6, rtol=0)
    # positions are 3-D and time-aligned: audio and video of the same second share temporal ids
    assert not torch.equal(p.position_ids[0], p.position_ids[1])


def _released_frames(omni, clip):
    """qwen-omni-utils' route, step by step: frames decoded (PyAV, as torchvision's reader), taken at
    linspace(0, T - 1, n).round(), resized on uint8 by torchvision's antialiased bicubic resize to
    smart_resize's multiple of 28, as floats; with the sample rate and the processor's size bounds."""
    import av
    from torchvision.transforms.functional import InterpolationMode, resize

    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    pol = omni.policy
    with av.open(str(clip)) as c:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
        native_fps = float(c.streams.video[0].average_rate)
    n = max(2, int(min(max(len(decoded) / native_fps * 2, 4), len(decoded)) // 2 * 2))
    taken = decoded[np.linspace(0, len(decoded) - 1, n).round().astype(int)]
    frames = torch.from_numpy(taken).permute(0, 3, 1, 2)
    max_pixels = max(min(pol["video_max_pixels"], pol["video_total_pixels"] / n * 2), int(pol["video_min_pixels"] * 1.05))
    h, w = smart_resize(frames.shape[2], frames.shape[3], 28, pol["video_min_pixels"], max_pixels)
    frames = resize(frames, [h, w], interpolation=InterpolationMode.BICUBIC, antialias=True).float()
    size = {"shortest_edge": pol["video_min_pixels"], "longest_edge": int(max_pixels)}
    return frames, taken, n / len(decoded) * native_fps, size


def test_media_are_made_as_qwen_omni_utils_makes_them(omni, media_dir, tmp_path):
    """The released route (`_released_frames`; images resized by PIL's bicubic first; the sound
    by librosa.load): avmech's tensors equal that route's exactly."""
    from PIL import Image

    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    pol = omni.policy
    clip = tmp_path / "odd.mp4"  # 50 x 90 px: not a multiple of 28, so the frames are resized
    media.write_video(clip, media.moving_shape_frames(30, 50, 90, "circle", seed=2), fps=10,
                      audio=np.stack([media.tone(300, 3.0), media.chirp(200, 900, 3.0)], axis=1))
    frames, taken, _, size = _released_frames(omni, clip)
    kw = dict(size=size, do_sample_frames=False, cap_pixels_per_frame=False, return_tensors="pt")
    reference = omni.processor.video_processor(videos=[frames], **kw)
    p = omni.prepare(avmech.AVSample(video=str(clip), question="Which shape?", options=("a", "b"), answer=0))
    assert torch.equal(p.inputs["pixel_values_videos"], reference["pixel_values_videos"])
    # the processor alone, resizing the raw frames itself, differs (the gap avmech used to have)
    raw = omni.processor.video_processor(videos=[taken], **kw)
    assert raw["pixel_values_videos"].shape == reference["pixel_values_videos"].shape
    assert not torch.equal(raw["pixel_values_videos"], reference["pixel_values_videos"])

    image = np.random.default_rng(0).integers(0, 255, (50, 77, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "odd.png")
    ih, iw = smart_resize(50, 77, 28, pol["image_min_pixels"], pol["image_max_pixels"])
    pil = np.asarray(Image.fromarray(image).resize((iw, ih), Image.Resampling.BICUBIC))
    isize = {"shortest_edge": pol["image_min_pixels"], "longest_edge": pol["image_max_pixels"]}
    reference = omni.processor.image_processor(images=[pil], size=isize, return_tensors="pt")["pixel_values"]
    sample = avmech.AVSample(question="What is in [img1]?", options=("a", "b"), answer=0,
                             items=(avmech.Item("image", str(tmp_path / "odd.png"), tag="[img1]"),))
    assert torch.equal(omni.prepare(sample).inputs["pixel_values"], reference)

    wave = media.read_audio(clip, recipe="librosa")
    features = omni.processor.feature_extractor(wave, sampling_rate=16000, return_tensors="pt")["input_features"]
    assert torch.equal(p.inputs["input_features"][..., : features.shape[-1]], features[..., : p.inputs["input_features"].shape[-1]])


def test_prepare_is_deterministic(omni, media_dir):
    a, b = omni.prepare(_av_sample(media_dir)), omni.prepare(_av_sample(media_dir))
    for key, value in a.inputs.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b.inputs[key]), key
    assert (a.tokens.role == b.tokens.role).all() and np.array_equal(a.tokens.time, b.tokens.time, equal_nan=True)


def test_array_inputs_match_file_inputs(omni, media_dir):
    clip = media.read_video(media_dir / "clip.mp4")
    wave = media.read_audio(media_dir / "clip.mp4")
    from_arrays = avmech.AVSample(video=clip.frames, fps=clip.fps, audio=wave, sample_rate=16000,
                                  question="Which way does the pitch move?", options=("up", "down"), answer=0)
    a, b = omni.prepare(from_arrays), omni.prepare(_av_sample(media_dir))
    assert torch.equal(a.input_ids, b.input_ids)
    assert torch.equal(a.inputs["pixel_values_videos"], b.inputs["pixel_values_videos"])


def test_checkpoint_round_trip(omni, media_dir, tmp_path):
    omni.save_pretrained(tmp_path)
    again = avmech.load(str(tmp_path), dtype=torch.float32)
    p = omni.prepare(_av_sample(media_dir))
    with torch.no_grad():
        assert torch.equal(omni.hf(**p.inputs).logits, again.hf(**again.prepare(p.sample).inputs).logits)


def test_standard_names_resolve(omni):
    assert omni.paths["llm"].endswith("language_model")
    assert omni.nn.llm.layers[0].self_attn is not None and omni.nn.ln_final is not None
    assert omni.nn.audio_encoder is not None and omni.nn.vision_encoder is not None
    assert (omni.n_layers, omni.d_model) == (4, 64)


def test_bad_inputs_raise_clear_errors(omni, media_dir, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        omni.prepare(avmech.AVSample(video=str(tmp_path / "nope.mp4"), question="q"))
    with pytest.raises(InputError, match="no audio track"):
        omni.prepare(avmech.AVSample(video=str(media_dir / "silent.mp4"), question="q"))
    with pytest.raises(InputError, match="longer than this model's audio limit"):
        omni.prepare(avmech.AVSample(audio=np.zeros(16000 * 31, np.float32), sample_rate=16000, question="q"))
    with pytest.raises(InputError, match="not among the 2 options"):
        avmech.AVSample(question="q", options=("a", "b"), answer=2)
    with pytest.raises(InputError, match="without options"):
        avmech.AVSample(question="q", answer=0)
    with pytest.raises(ModelError, match="unknown model"):
        avmech.load("no-such-model")
    with pytest.raises(InputError, match="no placeholder"):
        avmech.AVSample(question="q", items=(avmech.Item("audio", "x.wav", tag="[audio1]"),))
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    with pytest.raises(media.MediaError, match="bad.wav"):
        omni.prepare(avmech.AVSample(audio=str(bad), question="q"))
    with pytest.raises(InputError, match="unknown token group"):
        omni.prepare(_av_sample(media_dir)).tokens.positions("subtitles")


def test_silent_video_works_without_its_sound(omni, media_dir):
    p = omni.prepare(avmech.AVSample(video=str(media_dir / "silent.mp4"), question="q", use_video_audio=False))
    assert len(p.tokens.positions("video")) and not len(p.tokens.positions("audio"))


def test_group_algebra(omni, media_dir):
    t = omni.prepare(_av_sample(media_dir)).tokens
    av = t.group("audio | video")
    assert len(av) == len(t.group("audio")) + len(t.group("video"))
    assert t.group("(audio | video) & audio").positions == t.group("audio").positions
    early = t.select("video", time=(0, 2))
    assert 0 < len(early) < len(t.group("video")) and (t.time[list(early.positions)] < 2).all()
    assert t.group("chunk(0) & audio").positions == t.select("audio", chunk=0).positions
    with pytest.raises(InputError, match="selects no position"):
        t.nonempty("image")


@pytest.mark.integration
def test_cli_inspect_prints_the_layout(media_dir):
    result = CliRunner().invoke(app, ["inspect", str(media_dir / "clip.mp4"), "--question", "Who?", "-o", "a", "-o", "b"])
    assert result.exit_code == 0, result.output
    assert "audio chunk 0" in result.output and "video chunk 1" in result.output and "last" in result.output
    bad = CliRunner().invoke(app, ["inspect", str(media_dir / "silent.mp4"), "--question", "Who?"])
    assert bad.exit_code == 2 and "no audio track" in bad.output


def test_the_released_full_checkpoint_layout_loads_the_thinker_only(omni, media_dir, tmp_path):
    """Qwen/Qwen2.5-Omni-* ship the whole model (model_type qwen2_5_omni, weights under
    thinker.*, the talker's beside them, a speaker dictionary); avmech reads the thinker
    alone. A thinker-only copy (the same config, thinker.* weights only, no spk_dict.pt)
    loads too, and a checkpoint missing a thinker weight is refused, naming it."""
    import json

    from safetensors.torch import load_file, save_file
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

    full = Qwen2_5OmniForConditionalGeneration(
        Qwen2_5OmniConfig(thinker_config=omni.hf.config.to_dict(), enable_audio_output=False))
    full.thinker.load_state_dict(omni.hf.state_dict())
    p = omni.prepare(_av_sample(media_dir))
    for variant in ("released", "thinker-only"):
        d = tmp_path / variant
        full.save_pretrained(d)
        omni.processor.save_pretrained(d)
        (d / "avmech_media.json").write_text(json.dumps(omni.media_policy))
        weights = d / "model.safetensors"
        if variant == "released":  # the talker's weights sit beside the thinker's, with a speaker dictionary
            save_file({**load_file(weights), "talker.codec_head.weight": torch.zeros(4, 4)}, weights,
                      metadata={"format": "pt"})
            torch.save({}, d / "spk_dict.pt")
        assert json.loads((d / "config.json").read_text())["model_type"] == "qwen2_5_omni"
        again = avmech.load(str(d), dtype=torch.float32)
        assert type(again.hf).__name__ == "Qwen2_5OmniThinkerForConditionalGeneration"
        assert torch.equal(omni.run(p).logits, again.run(again.prepare(p.sample)).logits), variant
    tensors = load_file(weights)
    del tensors["thinker.model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(ModelError, match=r"lacks 1 thinker weight.*layers\.1\.mlp\.up_proj"):
        avmech.load(str(d), dtype=torch.float32)


