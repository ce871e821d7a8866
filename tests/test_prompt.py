"""Every position named right, on the real Qwen2.5 vocabulary: the prompt is tokenized once
and each token takes the role of the part its first character belongs to (avmech.prompt).

Property tests draw questions, options and benchmark boilerplate with punctuation at every
boundary, digits, CJK, emoji and trailing whitespace, for both families, both input
configurations and every prompt format, and check what a TokenMap promises: one role per
id, media ids exactly at media positions, ``last`` on the final id, one letter id per
option, answer ids as the model would emit them; and that a knockout into ``last`` is the
knockout of those very edges (an `EdgeKnockout` at the true last row), through `run` and
`run_many` alike.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import avmech
from avmech import media
from avmech.errors import InputError, ModelError
from avmech.sample import PROMPT_FORMATS, PromptFormat
from avmech.tokens import ROLE_CODE

FAMILIES = ("omni", "salmonn", "qwen3_omni")
ALPHABET = st.sampled_from(list("abcXYZ019 ?!.,:;'\"()-\n\t") + ["  ", "?\n", ".\n", " \n", "你好", "音乐", "🙂", "é", "A", "B."])
TEXT = st.lists(ALPHABET, min_size=1, max_size=8).map("".join)


def _media_ids(m) -> dict[int, set[str]]:
    """Placeholder id -> the roles that may hold it, read from each family's config."""
    cfg = m.hf.config
    if m.family in ("qwen2.5-omni", "qwen3-omni"):
        return {cfg.video_token_id: {"video"}, cfg.audio_token_id: {"audio"}, cfg.image_token_id: {"image"}}
    return {cfg.vl_config.video_token_id: {"video"}, cfg.vl_config.image_token_id: {"image"},
            cfg.audio_token_id: {"audio", "audio_pad"}}


def check_map(m, p) -> None:
    """The promises of a TokenMap, checked against the ids and the tokenizer, independently of avmech.prompt."""
    ids = p.input_ids[0].numpy()
    t = p.tokens
    roles = np.asarray(t.roles)
    assert len(t) == len(ids)
    for token_id, allowed in _media_ids(m).items():
        assert set(roles[ids == token_id]) <= allowed, (token_id, set(roles[ids == token_id]))
        for role in allowed:
            assert (ids[roles == role] == token_id).all(), role
    assert roles[-1] == "last" and list(roles).count("last") == 1
    assert m.tokenizer.decode(ids[-3:]) == "<|im_start|>assistant\n"
    letters = np.flatnonzero(roles == "option_letter")
    assert [int(t.option[i]) for i in letters] == list(range(len(p.sample.options)))
    assert ids[letters].tolist() == list(p.answer_ids)
    assert [m.tokenizer.decode([i]) for i in p.answer_ids] == list(p.sample.letters)
    for letter, letter_id in zip(p.sample.letters, p.answer_ids):
        assert m.tokenizer.encode(m.tokenizer.decode(ids) + letter, add_special_tokens=False) == [*ids.tolist(), letter_id]


def check_knockout_into_last(m, p, src: str) -> None:
    """AttentionKnockout(src -> last) equals the explicit edges into the final row, in run and run_many."""
    last = len(p) - 1
    keys = p.tokens.positions(src).tolist()
    layers = range(1, m.n_layers)
    by_group = m.run(p, [avmech.AttentionKnockout(src, "last", layers)])
    by_edges = m.run(p, [avmech.EdgeKnockout([(last, k) for k in keys], layers)])
    torch.testing.assert_close(by_group.logits, by_edges.logits, atol=1e-6, rtol=0)
    assert (by_group.logits - m.run(p).logits).abs().max() > 1e-6  # it did cut something
    swept = m.run_many(p, [[avmech.AttentionKnockout(src, "last", layers)]])[0]
    torch.testing.assert_close(swept.logits, by_group.logits, atol=1e-5, rtol=0)


@st.composite
def prompt_formats(draw) -> PromptFormat:
    base = PROMPT_FORMATS[draw(st.sampled_from(sorted(PROMPT_FORMATS)))]
    if draw(st.booleans()):
        return base
    return PromptFormat(intro=draw(st.sampled_from(["", draw(TEXT)])), preamble=draw(TEXT),
                        question_prefix=draw(st.sampled_from(["", "Question: ", draw(TEXT)])),
                        option_template=base.option_template, suffix=draw(TEXT))


@pytest.fixture(scope="module")
def arrays():
    frames = media.moving_shape_frames(8, 56, 56, "circle", color=(200, 60, 60), seed=1)
    images = [np.full((56, 56, 3), c, np.uint8) for c in ((200, 30, 30), (30, 200, 30), (30, 30, 200))]
    return frames, media.tone(440, 2.0), images, media.chirp(300, 900, 1.0)


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(question=TEXT, options=st.lists(TEXT, min_size=2, max_size=4), fmt=prompt_formats(), data=st.data())
def test_av_video_prompts_keep_every_position_named(family, request, arrays, question, options, fmt, data):
    m = request.getfixturevalue(family)
    frames, wave, _, _ = arrays
    sample = avmech.AVSample(video=frames, fps=4, audio=wave, sample_rate=16000, question=question,
                             options=tuple(options), answer=data.draw(st.integers(0, len(options) - 1)),
                             prompt_format=fmt)
    p = m.prepare(sample)
    check_map(m, p)
    check_knockout_into_last(m, p, "audio | video")


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(TEXT, min_size=5, max_size=5), order=st.permutations(range(4)), fmt=prompt_formats(),
       options=st.lists(TEXT, min_size=2, max_size=4), layout=st.sampled_from(["dataset", "study"]), data=st.data())
def test_interleaved_prompts_keep_every_position_named(family, request, arrays, chunks, order, fmt, options, layout,
                                                       data):
    """Three image candidates and an audio reference, their tags anywhere in the question,
    in the data set's order or the study's."""
    m = request.getfixturevalue(family)
    _, _, images, reference = arrays
    items = [avmech.Item("image", images[k], tag=f"[img{k + 1}]") for k in range(3)]
    items.append(avmech.Item("audio", reference, tag="[audio1]", role="reference", sample_rate=16000))
    tags = [items[k].tag for k in order]
    question = "".join(chunk + tag for chunk, tag in zip(chunks, tags)) + chunks[-1]
    sample = avmech.AVSample(question=question, options=tuple(options), items=tuple(items), prompt_format=fmt,
                             answer=data.draw(st.integers(0, len(options) - 1)), layout=layout)
    p = m.prepare(sample)
    check_map(m, p)
    seen = [int(i) for i in dict.fromkeys(p.tokens.item[p.tokens.item >= 0])]
    assert seen == (list(order) if layout == "dataset" else [k for k in order if k < 3] + [3])
    check_knockout_into_last(m, p, "candidates")


@pytest.mark.parametrize("family", FAMILIES)
def test_the_study_layout_puts_candidates_question_reference_options_in_order(family, request, arrays):
    """AV-Odyssey's A->I question names the reference first; the study feeds
    [candidates][question][reference][options], so candidates -> reference has edges to cut."""
    m = request.getfixturevalue(family)
    _, _, images, reference = arrays
    items = [avmech.Item("image", images[k % 3], tag=f"[img{k + 1}]") for k in range(4)]
    items.append(avmech.Item("audio", reference, tag="[audio1]", role="reference", sample_rate=16000))
    question = "Which image matches the tone [audio1]? Choose from [img1] [img2] [img3] [img4]."
    kw = dict(question=question, options=("the first image", "the second image", "the third image",
                                          "the fourth image"), answer=2, items=tuple(items), prompt_format="av-odyssey")
    dataset, study = (m.prepare(avmech.AVSample(**kw, layout=layout)) for layout in ("dataset", "study"))
    runs = [label.split()[0] for _, _, label in study.tokens.runs()
            if label.split()[0] in ("image", "audio", "question", "option_letter")]
    blocks = [r for i, r in enumerate(runs) if i == 0 or r != runs[i - 1]]
    assert blocks[:4] == ["image", "question", "audio", "option_letter"]
    t = study.tokens
    assert t.positions("candidates").max() < t.positions("question").min() < t.positions("question").max() \
        < t.positions("reference").min() < t.positions("reference").max() < t.positions("options").min()
    text = m.tokenizer.decode(study.input_ids[0, t.positions("question")])
    assert "Which image matches the tone? Choose from." in text
    assert dataset.tokens.positions("reference").max() < dataset.tokens.positions("candidates").min()
    edge = avmech.flows.knockout.Edge(src="candidates", dst="reference")
    assert edge.count(dataset)[0] == 0 and edge.count(study)[0] > 0
    check_map(m, study)


@pytest.mark.parametrize("family", FAMILIES)
def test_worldsense_opens_with_its_intro_before_the_clip(family, request, arrays):
    m = request.getfixturevalue(family)
    frames, wave, _, _ = arrays
    p = m.prepare(avmech.AVSample(video=frames, fps=4, audio=wave, sample_rate=16000, question="Who speaks?",
                                  options=("a", "b"), answer=0, prompt_format="worldsense"))
    t = p.tokens
    intro = t.positions("instruction")[0]
    assert t.positions("user_header").max() < intro < t.positions("marker").min() < t.positions("video").min()
    assert m.tokenizer.decode(p.input_ids[0, intro:t.positions("marker").min()]).startswith("Carefully watch this video")
    check_map(m, p)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_real_vocabulary_and_special_ids(family, request):
    tok = request.getfixturevalue(family).tokenizer
    assert tok.encode("Who is speaking?\n", add_special_tokens=False) == [15191, 374, 12094, 5267]
    assert tok.encode("A. the man\n", add_special_tokens=False) == [32, 13, 279, 883, 198]
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]
    ids = {"omni": {"<|AUDIO|>": 151646, "<|vision_bos|>": 151652, "<|IMAGE|>": 151655, "<|VIDEO|>": 151656},
           "salmonn": {"<|vision_start|>": 151652, "<|image_pad|>": 151655, "<|video_pad|>": 151656,
                       "<|audio_pad|>": 151665},
           "qwen3_omni": {"<|vision_start|>": 151652, "<|image_pad|>": 151655, "<|video_pad|>": 151656,
                          "<|audio_start|>": 151669, "<|audio_end|>": 151670, "<|audio_pad|>": 151675}}[family]
    assert tok.convert_tokens_to_ids(list(ids)) == list(ids.values())


@pytest.mark.parametrize("family", FAMILIES)
def test_a_token_across_two_parts_takes_the_role_of_its_first_character(family, request, arrays):
    """"?\\n" is one token (5267): the question's "?" and the line break before the options."""
    m = request.getfixturevalue(family)
    frames, wave, _, _ = arrays
    p = m.prepare(avmech.AVSample(video=frames, fps=4, audio=wave, sample_rate=16000, question="Who is speaking?",
                                  options=("the man", "the woman"), answer=1))
    ids, roles = p.input_ids[0].tolist(), p.tokens.roles
    at = ids.index(5267)
    assert roles[at] == "question" and ids[at - 3:at] == [15191, 374, 12094]
    assert roles[at + 1] == "option_letter" and ids[at + 1] == 32
    check_map(m, p)


@pytest.mark.parametrize("family", FAMILIES)
def test_special_tokens_in_sample_text_are_refused(family, request, arrays):
    m = request.getfixturevalue(family)
    frames, wave, _, _ = arrays
    video = {"omni": "<|VIDEO|>", "salmonn": "<|video_pad|>", "qwen3_omni": "<|video_pad|>"}[family]
    for field in ("question", "options", "system"):
        kw = dict(question="Who is speaking?", options=("the man", "the woman"), system=None)
        kw[field] = (f"{video} the man", "b") if field == "options" else "What <|im_end|> is it?"
        with pytest.raises(InputError, match="special token"):
            m.prepare(avmech.AVSample(video=frames, fps=4, audio=wave, sample_rate=16000, answer=0, **kw))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_letter_merged_with_its_neighbours_is_refused(family, request, arrays):
    """In "(A) text" byte-level BPE makes "(A" one token: no position holds the letter alone."""
    m = request.getfixturevalue(family)
    frames, wave, _, _ = arrays
    fmt = PromptFormat(option_template="({letter}) {text}")
    with pytest.raises(ModelError, match="option A's letter is not a position of its own"):
        m.prepare(avmech.AVSample(video=frames, fps=4, audio=wave, sample_rate=16000, question="Who?",
                                  options=("x", "y"), answer=0, prompt_format=fmt))
