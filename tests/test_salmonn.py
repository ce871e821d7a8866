"""video-SALMONN 2+ on the tiny model: released checkpoint layout, sequence layout, both
position modes, the audio branch, both input configurations and their TokenMaps.

Layouts and positions are checked against references written here from the rules (see
`avmech.models.salmonn`), not against the code that builds them."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import avmech
from avmech import media
from avmech.errors import InputError, ModelError
from avmech.models.salmonn_inputs import MediaPolicy

SECONDS, NATIVE_FPS = 3.3, 10  # 3.3 s is not a multiple of the 0.5 s audio window


def _clip(seconds: float = SECONDS, **kw) -> avmech.AVSample:
    rng = np.random.default_rng(0)
    frames = (rng.random((round(seconds * NATIVE_FPS), 56, 56, 3)) * 255).astype(np.uint8)
    wave = media.chirp(300, 900, seconds)
    return avmech.AVSample(video=frames, fps=NATIVE_FPS, audio=wave, sample_rate=16000,
                           question="Which way does the pitch move?", options=("up", "down"), answer=0, **kw)


def _odyssey(media_dir) -> avmech.AVSample:
    items = [avmech.Item("image", str(media_dir / f"img{i}.png"), tag=f"[img{i}]") for i in (1, 2)]
    items.append(avmech.Item("audio", str(media_dir / "tone.wav"), tag="[audio1]", role="reference"))
    return avmech.AVSample(question="Which image matches the audio [audio1] from [img1] [img2]?",
                           options=("the first image", "the second image"), answer=1, items=tuple(items),
                           prompt_format="av-odyssey")


def _ids(m) -> dict[str, int]:
    cfg = m.hf.config
    return dict(video=cfg.vl_config.video_token_id, image=cfg.vl_config.image_token_id, audio=cfg.audio_token_id,
                start=cfg.vl_config.vision_start_token_id, end=cfg.vl_config.vision_end_token_id)


def _check_token_map(m, p) -> None:
    """Roles agree with the token ids, position for position."""
    ids, t, tok = p.input_ids[0], p.tokens, _ids(m)
    assert len(t) == len(ids) and p.position_ids.shape == (3, 1, len(ids))
    for group, token in (("video", "video"), ("image", "image"), ("audio | audio_pad", "audio")):
        assert torch.equal(t.positions(group), torch.nonzero(ids == tok[token]).flatten()), group
    markers = torch.isin(ids, torch.tensor([tok["start"], tok["end"]]))
    assert torch.equal(t.positions("marker"), torch.nonzero(markers).flatten())
    assert t.positions("last").tolist() == [len(ids) - 1]
    assert m.tokenizer.decode(ids[-1:]) == "\n"
    assert ids[t.positions("option_letter")].tolist() == list(p.answer_ids)


# ---- sequence layout ------------------------------------------------------------------------
def test_sequence_layout_interleaves_each_grid_step_with_its_audio(salmonn):
    p = salmonn.prepare(_clip())
    t, ids = p.tokens, p.input_ids[0]
    _check_token_map(salmonn, p)
    # 33 frames at 10 fps (round(3.3 / 0.1) = 33, all native frames), padded to 34: T = 17 steps of 0.2 s
    n_steps, h, w = (int(x) for x in p.inputs["video_grid_thw"][0] // torch.tensor([1, 2, 2]))
    spg = 2 / (33 / SECONDS)
    assert n_steps == 17 and (h, w) == (2, 2)
    # audio: one 30 s chunk = 60 tokens; 2 per second cover 3.3 s with 7 tokens, the other 53 are padding
    assert p.inputs["input_features"].shape == (1, 128, 3000)
    assert len(t.group("video")) == 17 * 4
    assert len(t.group("audio")) == math.ceil(2 * SECONDS) == 7 and len(t.group("audio_pad")) == 53
    assert np.allclose(t.time[t.positions("audio | audio_pad")], np.arange(60) / 2)
    # step g: its 4 video tokens, then audio tokens [f_g, f_(g+1)), f_g = floor(2 g spg); the last step the rest
    f = [math.floor(2 * g * spg) for g in range(n_steps)] + [60]
    expected, k = [], 0
    for g in range(n_steps):
        expected += [("video", g)] * 4
        n = 60 - f[g] if g == n_steps - 1 else f[g + 1] - f[g]
        expected += [("audio" if k + j < 7 else "audio_pad", g) for j in range(n)]
        k += n
    start = int(t.positions("marker")[0]) + 1
    got = [(t.roles[i], int(t.chunk[i])) for i in range(start, start + len(expected))]
    assert got == expected
    assert ids[start - 1] == _ids(salmonn)["start"] and ids[start + len(expected)] == _ids(salmonn)["end"]
    assert salmonn.tokenizer.decode(ids[start + len(expected) + 1]) == "\n"
    video = t.positions("video").numpy()
    assert np.allclose(t.time[video], t.grid[video, 0] * spg)
    # the prompt is plain ChatML with the released system prompt
    text = salmonn.tokenizer.decode(ids[:start - 1])
    assert text == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    tail = t.positions("turn_end | assistant_header | last")
    assert salmonn.tokenizer.decode(ids[tail]) == "<|im_end|>\n<|im_start|>assistant\n" and tail[-1] == len(ids) - 1


def test_even_interleave_follows_the_released_data_pipeline(salmonn):
    """split_into_groups: each of the 17 steps gets 60 // 17 = 3 audio tokens, the first 60 % 17 = 9 one more."""
    salmonn.policy = replace(salmonn.policy, audio_interleave="even")
    try:
        p = salmonn.prepare(_clip())
    finally:
        salmonn.policy = replace(salmonn.policy, audio_interleave="time")
    t = p.tokens
    _check_token_map(salmonn, p)
    audio = t.positions("audio | audio_pad").numpy()
    assert np.bincount(t.chunk[audio]).tolist() == [4] * 9 + [3] * 8
    assert (t.roles[audio[6]], t.roles[audio[7]]) == ("audio", "audio_pad")  # 7 real tokens lead
    with pytest.raises(ModelError, match="audio_interleave 'spread' is unknown"):
        MediaPolicy(audio_interleave="spread")


def test_positions_follow_each_mode(salmonn):
    official, aligned = (salmonn.prepare(_clip(), position_mode=mode) for mode in ("official", "aligned"))
    assert torch.equal(official.input_ids, aligned.input_ids)
    t, n = official.tokens, len(official)
    av = t.positions("video | audio | audio_pad")
    s0, end = int(av[0]), int(av[-1]) + 1
    spg, n_steps, cells = 2 / (33 / SECONDS), 17, 4

    # official: the first T x N block tokens, whatever their type, take the video grid (temporal step 2)
    ref = torch.zeros(3, n, dtype=torch.long)
    ref[:, :s0] = torch.arange(s0)
    for i in range(n_steps * cells):
        g, r, c = i // cells, i % cells // 2, i % 2
        ref[:, s0 + i] = torch.tensor([s0 + 2 * g, s0 + r, s0 + c])
    nxt = s0 + max(2 * (n_steps - 1), 1) + 1
    ref[:, s0 + n_steps * cells:] = torch.arange(n - s0 - n_steps * cells) + nxt
    assert torch.equal(official.position_ids[:, 0], ref)

    # aligned: video (s0 + floor(2 g spg), s0 + row, s0 + col), audio k (s0 + k, s0, s0 + k),
    # the text after at s0 + max_t + 1
    ref = torch.zeros(3, n, dtype=torch.long)
    ref[:, :s0] = torch.arange(s0)
    for i in t.positions("video").tolist():
        g, r, c = (int(x) for x in t.grid[i])
        ref[:, i] = torch.tensor([s0 + math.floor(2 * g * spg), s0 + r, s0 + c])
    for k, i in enumerate(t.positions("audio | audio_pad").tolist()):
        ref[:, i] = torch.tensor([s0 + k, s0, s0 + k])
    ref[:, end:] = torch.arange(n - end) + s0 + 59 + 1
    assert torch.equal(aligned.position_ids[:, 0], ref)
    assert not torch.equal(official.position_ids, aligned.position_ids)


def test_position_mode_is_chosen_at_load_by_attribute_or_per_call(salmonn):
    aligned = avmech.load("tiny-salmonn", seed=0, position_mode="aligned")
    p = salmonn.prepare(_clip(), position_mode="aligned")
    assert torch.equal(aligned.prepare(_clip()).position_ids, p.position_ids)
    salmonn.position_mode = "aligned"
    try:
        assert torch.equal(salmonn.prepare(_clip()).position_ids, p.position_ids)
    finally:
        salmonn.position_mode = "official"
    with pytest.raises(InputError, match="position_mode 'training' is unknown"):
        salmonn.prepare(_clip(), position_mode="training")
    with pytest.raises(InputError, match="position_mode"):
        avmech.load("tiny-salmonn", seed=0, position_mode="training")
    with pytest.raises(ModelError, match="applies to video-salmonn2\\+ only"):
        avmech.load("tiny-omni", seed=0, position_mode="aligned")


# ---- the network -------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["official", "aligned"])
def test_whole_model_equals_llm_on_encoded_embeddings(salmonn, mode):
    p = salmonn.prepare(_clip(), position_mode=mode)
    enc = salmonn.encode(p)
    with torch.no_grad():
        whole = salmonn.hf(**p.inputs).logits
        llm = salmonn.hf(inputs_embeds=enc.inputs_embeds, position_ids=enc.position_ids,
                         attention_mask=p.inputs["attention_mask"]).logits
    assert torch.equal(whole, llm)
    with pytest.raises(ModelError, match="position_ids"):
        salmonn.hf(**{k: v for k, v in p.inputs.items() if k != "position_ids"})
    with pytest.raises(ModelError, match="audio placeholders but no audio input"):
        salmonn.hf(**{k: v for k, v in p.inputs.items() if k != "input_features"})


def test_greedy_generation_continues_positions_after_the_largest(salmonn):
    """As the released inference (rope deltas): new token i sits at max(position ids) + 1 + i."""
    p = salmonn.prepare(_clip())
    g = salmonn.generate(p, max_new_tokens=4)
    enc = salmonn.encode(p)
    embeds, pos, ids = enc.inputs_embeds, enc.position_ids, []
    with torch.no_grad():
        for _ in range(len(g.ids)):
            ids.append(int(salmonn.hf(inputs_embeds=embeds, position_ids=pos).logits[0, -1].argmax()))
            embeds = torch.cat([embeds, salmonn.llm_module.embed_tokens(torch.tensor([ids[-1:]]))], dim=1)
            pos = torch.cat([pos, torch.full((3, 1, 1), int(pos.max()) + 1)], dim=2)
    assert list(g.ids) == ids


def test_audio_tokens_follow_the_released_recipe(salmonn):
    """Whisper frames cut by F.unfold into 0.5 s windows, one Q-Former query each, then Linear."""
    audio = salmonn.hf.audio
    wave = media.chirp(200, 2000, 31.0)  # just over one chunk: two chunks, 120 tokens, 62 of them real
    p = salmonn.prepare(avmech.AVSample(audio=wave, sample_rate=16000, question="What is it?"))
    feats = p.inputs["input_features"]
    assert feats.shape == (2, 128, 3000)
    assert len(p.tokens.group("audio")) == 62 and len(p.tokens.group("audio_pad")) == 58
    with torch.no_grad():
        frames = audio.whisper(feats).last_hidden_state  # [2, 1500, C]
        b, n, c = frames.shape
        windows = F.unfold(frames.transpose(1, 2).unsqueeze(2), kernel_size=(1, 25), stride=(1, 25))
        windows = windows.view(b, c, 25, -1).permute(0, 3, 2, 1).reshape(-1, 25, c)
        q = audio.qformer(query_embeds=audio.q_tokens.expand(len(windows), -1, -1), encoder_hidden_states=windows)
        ref = audio.audio_proj(q.last_hidden_state).reshape(-1, audio.audio_proj.out_features)
        got = audio(feats)
        embeds = salmonn.encode(p).inputs_embeds[0]
    assert ref.shape == (120, salmonn.d_model) and torch.equal(got, ref)
    assert torch.equal(embeds[p.tokens.positions("audio | audio_pad")], ref)


# ---- released checkpoint layout ---------------------------------------------------------------
def test_released_layout_round_trips_logits_exactly(salmonn, tmp_path):
    salmonn.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "qwen2_5_vl" and config["hidden_size"] == 64
    assert config["audio_token_id"] == _ids(salmonn)["audio"]
    assert config["audio_config"]["qformer_config"]["encoder_width"] == config["audio_config"]["d_model"]
    keys = set(load_file(str(tmp_path / "model.safetensors")))
    for key in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "visual.merger.mlp.0.weight",
                "lm_head.weight", "audio.conv1.weight", "audio.embed_positions.weight", "audio.layers.1.fc2.bias",
                "audio.layer_norm.weight", "audio.qformer.bert.embeddings.LayerNorm.weight",
                "audio.qformer.bert.embeddings.position_ids",
                "audio.qformer.bert.encoder.layer.0.attention.self.query.weight",
                "audio.qformer.bert.encoder.layer.1.crossattention.self.key.weight", "audio.q_tokens",
                "audio.audio_proj.weight"):
        assert key in keys, key
    assert {k.split(".")[0] for k in keys} == {"model", "visual", "lm_head", "audio"}
    again = avmech.load(str(tmp_path), dtype=torch.float32)
    p = salmonn.prepare(_clip())
    with torch.no_grad():
        assert torch.equal(salmonn.hf(**p.inputs).logits, again.hf(**again.prepare(p.sample).inputs).logits)
    assert all(torch.equal(a, b) for a, b in zip(salmonn.hf.state_dict().values(), again.hf.state_dict().values()))


def test_a_renamed_missing_or_extra_weight_fails_loudly(salmonn, tmp_path):
    salmonn.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    state = load_file(str(weights))
    query = "audio.qformer.bert.encoder.layer.0.attention.self.query.weight"

    def broken(change):
        save_file(change(dict(state)), str(weights))
        return pytest.raises(ModelError, match="released layout")

    def rename(s):
        s[query.replace(".self.", ".attention.")] = s.pop(query)
        return s

    with broken(rename) as err:
        avmech.load(str(tmp_path))
    assert query in str(err.value) and "attention.attention.query" in str(err.value)
    with broken(lambda s: {k: v for k, v in s.items() if k != "visual.merger.mlp.0.bias"}) as err:
        avmech.load(str(tmp_path))
    assert "1 weight(s) missing: 'visual.merger.mlp.0.bias'" in str(err.value)
    with broken(lambda s: {**s, "audio.qformer.cls.predictions.bias": torch.zeros(3)}) as err:
        avmech.load(str(tmp_path))
    assert "1 unexpected tensor(s): 'audio.qformer.cls.predictions.bias'" in str(err.value)


@pytest.mark.integration
def test_tied_embeddings_load_without_an_lm_head_tensor(tmp_path):
    """The 3B ties its unembedding to the embeddings: the released file has no lm_head.weight."""
    from avmech.models.salmonn_checkpoint import write_released
    from avmech.models.salmonn_modeling import VideoSalmonn2Plus
    from avmech.models.salmonn_tiny import build_salmonn_processor, salmonn_config

    processor = build_salmonn_processor()
    config = salmonn_config(processor.tokenizer)
    config.vl_config.tie_word_embeddings = True
    hf = VideoSalmonn2Plus(config).eval()
    write_released(hf, tmp_path)
    processor.save_pretrained(tmp_path)
    assert "lm_head.weight" not in load_file(str(tmp_path / "model.safetensors"))
    m = avmech.load(str(tmp_path), dtype=torch.float32)
    assert m.lm_head_module.weight is m.llm_module.embed_tokens.weight
    p = m.prepare(_clip(seconds=1.0))
    with torch.no_grad():
        assert torch.equal(hf(**p.inputs).logits, m.hf(**p.inputs).logits)


@pytest.mark.integration
def test_the_tiny_model_is_deterministic_from_its_seed(tmp_path):
    from avmech.models.salmonn_tiny import save_salmonn

    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        save_salmonn("tiny-salmonn", tmp_path / name, seed=seed)
    a, b, c = (load_file(str(tmp_path / name / "model.safetensors")) for name in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["audio.q_tokens"], c["audio.q_tokens"])


# ---- both input configurations -------------------------------------------------------------------
def test_audio_only_and_video_only_variants(salmonn, media_dir):
    audio_only = salmonn.prepare(avmech.AVSample(audio=str(media_dir / "tone.wav"), question="Is it a tone?",
                                                 options=("yes", "no"), answer=0))
    video_only = salmonn.prepare(avmech.AVSample(video=_clip().video, fps=NATIVE_FPS, question="q",
                                                 options=("a", "b"), answer=0))
    for p in (audio_only, video_only):
        _check_token_map(salmonn, p)
    assert len(audio_only.tokens.group("audio")) == 3 and len(audio_only.tokens.group("audio_pad")) == 57
    assert not len(video_only.tokens.group("audio | audio_pad")) and "input_features" not in video_only.inputs
    # audio alone: official positions are plain 0..n-1; aligned give audio token k (s0 + k, s0 + k, s0)
    n = len(audio_only)
    assert torch.equal(audio_only.position_ids[:, 0], torch.arange(n).expand(3, n))
    aligned = salmonn.prepare(audio_only.sample, position_mode="aligned").position_ids[:, 0]
    audio = audio_only.tokens.positions("audio | audio_pad")
    s0, k = int(audio[0]), torch.arange(60)
    assert torch.equal(aligned[:, audio], torch.stack([s0 + k, s0 + k, torch.full_like(k, s0)]))
    after = int(audio[-1]) + 1  # the text continues at the largest temporal id + 1
    assert torch.equal(aligned[:, after:], s0 + 60 + torch.arange(n - after).expand(3, -1))


def test_interleaved_items(salmonn, media_dir):
    p = salmonn.prepare(_odyssey(media_dir))
    t = p.tokens
    _check_token_map(salmonn, p)
    # each item is its tokens between its own <|vision_start|> and <|vision_end|>, in question order
    assert torch.equal(t.positions("reference - marker"), t.positions("audio | audio_pad"))
    assert torch.equal(t.positions("candidates - marker"), t.positions("image"))
    assert len(t.group("reference & marker")) == 2 and len(t.group("candidates & marker")) == 4
    order = [int(t.item[i]) for i in np.flatnonzero(t.item >= 0)]
    assert list(dict.fromkeys(order)) == [2, 0, 1]
    assert len(t.group("audio")) == 3 and len(t.group("audio_pad")) == 57  # 1.5 s, padded to 30 s
    # images take their grid (s0, s0 + row, s0 + col) in both modes; the audio item counts as text
    for mode in ("official", "aligned"):
        pos = salmonn.prepare(p.sample, position_mode=mode).position_ids[:, 0]
        for item in (0, 1):
            cells = t.select("image", item=item).positions
            s0 = int(pos[0, cells[0] - 1]) + 1
            grid = torch.tensor(t.grid[list(cells)]).T
            assert torch.equal(pos[:, list(cells)], grid + s0), (mode, item)
        audio = t.positions("audio | audio_pad")
        assert torch.equal(pos[:, audio], pos[0, audio[0]] + torch.arange(60).expand(3, -1))
    base = salmonn.run(p)
    cut = salmonn.run(p, [avmech.AttentionKnockout("reference", "last", [1, 2])])
    assert (cut.logits - base.logits).abs().max() > 1e-4


def test_file_inputs_match_array_inputs(salmonn, media_dir):
    clip, wave = media.read_video(media_dir / "clip.mp4"), media.read_audio(media_dir / "clip.mp4", recipe="ffmpeg")
    from_file = salmonn.prepare(avmech.AVSample(video=str(media_dir / "clip.mp4"), question="q"))
    from_arrays = salmonn.prepare(avmech.AVSample(video=clip.frames, fps=clip.fps, question="q",
                                                  audio=wave, sample_rate=16000))
    for key in ("input_ids", "position_ids", "pixel_values_videos", "input_features"):
        assert torch.equal(from_file.inputs[key], from_arrays.inputs[key]), key
    assert len(from_file.tokens.group("audio")) == math.ceil(2 * len(wave) / 16000)  # the track's own sound


def test_bad_inputs_raise_clear_errors(salmonn, media_dir, tmp_path):
    with pytest.raises(InputError, match="no audio track"):
        salmonn.prepare(avmech.AVSample(video=str(media_dir / "silent.mp4"), question="q"))
    silent = salmonn.prepare(avmech.AVSample(video=str(media_dir / "silent.mp4"), question="q", use_video_audio=False))
    assert len(silent.tokens.group("video")) and not len(silent.tokens.group("audio"))
    with pytest.raises(InputError, match="does not exist"):
        salmonn.prepare(avmech.AVSample(video=str(tmp_path / "nope.mp4"), question="q"))
    with pytest.raises(ModelError, match="unknown video-SALMONN 2\\+ media policy keys \\['fps'\\]"):
        MediaPolicy.from_dict({"fps": 2})


def test_frame_sampling_and_sizing_rules():
    pol = MediaPolicy()
    # 2 s at 30 fps: round(2 / 0.1) = 20 frames, evenly by linspace, truncated to native indices
    idx, fps = pol.frame_indices(60, 30.0)
    assert idx.tolist() == [math.floor(i * 59 / 19) for i in range(20)] and fps == 20 / 2.0
    # 1 s at 30 fps: 10 frames, raised to the minimum of 16
    assert len(pol.frame_indices(30, 30.0)[0]) == 16
    # 3 s at 4 fps: 30 wanted, but only 12 distinct native frames exist: the rate is theirs
    idx, fps = pol.frame_indices(12, 4.0)
    assert idx.tolist() == list(range(12)) and fps == 4.0
    # 100 s at 25 fps: 1000 wanted, capped at 768
    assert len(pol.frame_indices(2500, 25.0)[0]) == 768
    # short clips get a larger per-frame budget, 0.95 x 768 / frames times the base
    assert pol.frame_max_pixels(33) == math.floor(0.95 * 768 / 33 * 61250)
    assert pol.frame_max_pixels(768) == 61250
    assert MediaPolicy(boost_short_clips=False).frame_max_pixels(33) == 61250
