"""Tests for avmech.data: the three readers on synthetic copies and on hand-written fixtures.

The hand-written fixtures are typed out from ``shared/DATASETS.md``, not produced by
:mod:`avmech.data.synthetic`, so the readers are checked against the documented layouts
independently of the writer.
"""

from __future__ import annotations

import ast
import io
import json
import os
import warnings
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from PIL import Image

from avmech import InputError, media
from avmech.data import NAMES, odyssey, read, synthetic
from avmech.data.common import answer_index, strip_option
from avmech.sample import LETTERS

N = 8


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """One synthetic copy of each benchmark with N questions (seed 0)."""
    base = tmp_path_factory.mktemp("synthetic")
    return {name: synthetic.write(name, base / name, n=N, seed=0) for name in NAMES}


def _png(color=(255, 0, 0), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), color, np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def _wav(freq: float, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, media.tone(freq, 0.3), media.SAMPLE_RATE, format=fmt)
    return buf.getvalue()


def _peak_hz(wave: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / media.SAMPLE_RATE)[np.argmax(spectrum)])


def _n_beeps(wave: np.ndarray) -> int:
    loud = np.convolve(np.abs(wave), np.ones(160) / 160, mode="same") > 0.1
    return int(np.sum(loud[1:] & ~loud[:-1]) + loud[0])


# ---- shared parsing ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "index", "expected"),
    [
        ("A. 2", 0, "2"), ("B: the dog", 1, "the dog"), ("C:left", 2, "left"), ("(D) nobody", 3, "nobody"),
        ("A) x y", 0, "x y"), ("  A .  spaced ", 0, "spaced"),
        ("A dog barks", 0, "A dog barks"), ("B. 3", 0, "B. 3"), ("the second image", 1, "the second image"),
    ],
)
def test_strip_option_removes_only_the_options_own_letter(text, index, expected):
    assert strip_option(text, index) == expected


def test_answer_index_reads_letter_forms_and_rejects_others():
    assert [answer_index(a, 4, "x") for a in ("A", "b", "(C)", "D.", "B. 3", " C ")] == [0, 1, 2, 3, 1, 2]
    for bad in ("E", "Apple", "", "1"):
        with pytest.raises(InputError, match="answer"):
            answer_index(bad, 4, "row 7")


# ---- AV-SpeakerBench -----------------------------------------------------------------
def test_speakerbench_synthetic_matches_its_csv(roots):
    root = roots["av-speakerbench"]
    rows = pd.read_csv(root / "test.csv", dtype=str).to_dict("records")
    samples = read("av-speakerbench", root)
    assert len(samples) == len(rows) == N
    for s, row in zip(samples, rows, strict=True):
        choices = ast.literal_eval(row["choices"])
        assert [f"{LETTERS[i]}. {o}" for i, o in enumerate(s.options)] == choices
        assert not any(o[:2] in ("A.", "B.", "C.", "D.") for o in s.options)
        assert LETTERS[s.answer] == row["answer"]
        assert s.id == f"av-speakerbench/{row['question_id']}" and s.prompt_format == "av-speakerbench"
        assert {k: s.meta[k] for k in ("category", "sub_category", "task_id", "video_id")} == {
            k: row[k] for k in ("category", "sub_category", "task_id", "video_id")
        }
        assert (s.meta["start_time"], s.meta["end_time"]) == (0.0, 2.0)
        assert s.video == root / row["audio_visual_path"] and s.video.is_file() and s.use_video_audio
    assert {s.meta["category"] for s in samples} == {"speaker recognition", "visual recognition"}
    assert len({s.id for s in samples}) == N


def test_speakerbench_modality_picks_the_stream(roots):
    root = roots["av-speakerbench"]
    visual = read("av-speakerbench", root, modality="visual", limit=2)
    audio = read("av-speakerbench", root, modality="audio", limit=2)
    assert [s.video.relative_to(root).parts[0] for s in visual] == ["visual", "visual"]
    assert not any(s.use_video_audio for s in visual)
    assert all(s.video is None and s.audio.suffix == ".wav" for s in audio)
    assert not media.probe(visual[0].video).has_audio
    with pytest.raises(InputError, match="modality"):
        read("av-speakerbench", root, modality="both")


HAND_CSV = """question_id,video_id,question,choices,answer,category,sub_category,task_id,audio_visual_path,visual_path,audio_path,start_time,end_time
101,vidA,How many speakers are there?,"['A. 2', 'B. 3', 'C. 4', 'D. 5']",C,speaker recognition,counting,Speaker Counting,clips/vidA.mp4,silent/vidA.mp4,audio/vidA.wav,1.5,0:01:02.5
102,vidA,Who speaks first?,"['(A) the man', '(B) the woman', '(C) the child', '(D) nobody']",(B),speaker recognition,order,Speaker Order,clips/vidA.mp4,silent/vidA.mp4,audio/vidA.wav,,
103,vidB,Where is the speaker?,"['A: left', 'B: right', 'C: centre', 'D: off screen']",d,visual recognition,location,Speaker Location,clips/vidB.mp4,silent/vidB.mp4,audio/vidB.wav,3,4
104,vidB,What is the speaker wearing?,"['A) a hat', 'B) a scarf', 'C) glasses', 'D) a tie']",A,visual recognition,attire,Attire,clips/vidB.mp4,silent/vidB.mp4,audio/vidB.wav,3,4
"""


def _hand_speakerbench(root: Path, csv: str = HAND_CSV) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "test.csv").write_text(csv)
    for rel in ("clips/vidA.mp4", "clips/vidB.mp4", "silent/vidA.mp4", "audio/vidA.wav"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"media")
    return root


def test_speakerbench_reads_a_hand_written_csv(tmp_path):
    samples = read("av-speakerbench", _hand_speakerbench(tmp_path))
    assert [s.options for s in samples] == [
        ("2", "3", "4", "5"), ("the man", "the woman", "the child", "nobody"),
        ("left", "right", "centre", "off screen"), ("a hat", "a scarf", "glasses", "a tie"),
    ]
    assert [s.answer for s in samples] == [2, 1, 3, 0]
    assert [s.id for s in samples] == [f"av-speakerbench/{q}" for q in (101, 102, 103, 104)]
    assert samples[0].meta == {
        "category": "speaker recognition", "sub_category": "counting", "task_id": "Speaker Counting",
        "question_id": "101", "video_id": "vidA", "modality": "audio_visual", "start_time": 1.5, "end_time": 62.5,
    }
    assert samples[1].meta["start_time"] is None and samples[2].meta["end_time"] == 4.0
    assert samples[0].video == tmp_path / "clips/vidA.mp4"


def test_speakerbench_extracts_missing_media_from_chunk_zips(tmp_path):
    root = _hand_speakerbench(tmp_path)
    (root / "clips/vidB.mp4").unlink()
    with zipfile.ZipFile(root / "audiovisual_chunk_2.zip", "w") as z:
        z.writestr("clips/vidB.mp4", b"zipped B")
    samples = read("av-speakerbench", root)
    assert samples[3].video == root / "clips/vidB.mp4"
    assert (root / "clips/vidB.mp4").read_bytes() == b"zipped B"


def test_speakerbench_errors_name_the_missing_piece(tmp_path):
    with pytest.raises(InputError, match="test.csv.*does not exist"):
        read("av-speakerbench", tmp_path)
    header = HAND_CSV.splitlines()[0].replace(",choices,", ",")
    _hand_speakerbench(tmp_path / "a", header + "\n")
    with pytest.raises(InputError, match="no column 'choices'"):
        read("av-speakerbench", tmp_path / "a")
    root = _hand_speakerbench(tmp_path / "b")
    (root / "clips/vidB.mp4").unlink()
    with pytest.raises(InputError, match=r"103.*clips/vidB\.mp4.*does not exist"):
        read("av-speakerbench", root)
    assert len(read("av-speakerbench", root, limit=2)) == 2  # rows past the limit are not touched
    with pytest.raises(InputError, match=r"audio_path.*audio/vidB\.wav"):
        read("av-speakerbench", root, modality="audio")  # vidB.wav is missing
    _hand_speakerbench(tmp_path / "c", HAND_CSV.replace(",C,speaker", ",E,speaker"))
    with pytest.raises(InputError, match="101.*answer 'E'"):
        read("av-speakerbench", tmp_path / "c")



def test_speakerbench_refuses_a_question_id_twice_and_empty_or_garbage_files(tmp_path):
    _hand_speakerbench(tmp_path / "d", HAND_CSV.replace("\n103,vidB,", "\n101,vidB,"))
    twice = (r"test\.csv' row 1 \('How many speakers are there\?'\) and row 3 \('Where is the speaker\?'.*"
             r"same question_id '101'")
    with pytest.raises(InputError, match=twice):
        read("av-speakerbench", tmp_path / "d")
    with pytest.raises(InputError, match=twice):
        read("av-speakerbench", tmp_path / "d", limit=1)  # the clash is found past the limit too
    for name, text, problem in [
        ("empty", "", "is empty"),
        ("header", HAND_CSV.splitlines()[0] + "\n", "has a header but no question rows"),
        ("garbage", b"\xe2\x28\xa1 \x00\xff", "is not a CSV table"),
    ]:
        root = tmp_path / name
        root.mkdir()
        (root / "test.csv").write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(InputError, match=rf"{name}/test\.csv' {problem}.*expected root/<split>\.csv"):
            read("av-speakerbench", root)


# ---- AV-Odyssey ----------------------------------------------------------------------
def _parts_table(root: Path) -> list[dict]:
    return [r for p in sorted(root.glob("av_odyssey_part*.parquet")) for r in pq.read_table(p).to_pylist()]


def test_odyssey_synthetic_items_roles_and_answers(roots):
    root = roots["av-odyssey"]
    rows = _parts_table(root)
    assert len(list(root.glob("av_odyssey_part*.parquet"))) == 2
    samples = read("av-odyssey", root)
    assert len(samples) == len(rows) == N
    for s, row in zip(samples, rows, strict=True):
        assert s.options == tuple(row["options"]) and LETTERS[s.answer] == row["answer"]
        assert s.meta == {
            "question_id": row["question_id"], "question_type_id": row["question_type_id"],
            "data_type": row["data_type"], "subfield": row["subfield"],
            "direction": odyssey.direction(s), "source_format": "parts",
        }
        tags = [it.tag for it in s.items]
        assert tags == sorted(tags, key=s.question.index)  # question order
        assert [p for p in s.question_parts() if not isinstance(p, str)] == list(s.items)
        refs = [it for it in s.items if it.role == "reference"]
        assert len(refs) == 1 and len(s.items) == 5
        assert all(it.kind != refs[0].kind for it in s.items if it.role == "candidate")
        assert odyssey.direction(s) == ("A->I" if refs[0].kind == "audio" else "I->A")
        for it in s.items:
            column = f"{it.kind}_{it.tag.strip('[]').removeprefix('img').removeprefix('audio')}"
            assert Path(it.data).read_bytes() == row[column]
            assert Path(it.data).suffix == (".png" if it.kind == "image" else ".wav")
    assert Counter(odyssey.direction(s) for s in samples) == {"A->I": N // 2, "I->A": N // 2}
    assert [s.id for s in read("av-odyssey", root, select={"direction": "I->A"})] == [
        s.id for s in samples if s.meta["direction"] == "I->A"
    ]


def test_odyssey_media_are_written_once(tmp_path):
    root = synthetic.write("av-odyssey", tmp_path, n=2)
    first = read("av-odyssey", root)
    path = Path(first[0].items[0].data)
    os.utime(path, ns=(1, 1))
    second = read("av-odyssey", root, media_dir=None)
    assert [it.data for it in second[0].items] == [it.data for it in first[0].items]
    assert path.stat().st_mtime_ns == 1
    other = read("av-odyssey", root, media_dir=tmp_path / "elsewhere")
    assert Path(other[0].items[0].data).parent == tmp_path / "elsewhere"


def _to_lmms_eval(parts_root: Path, out: Path) -> Path:
    """The LMMs-Eval layout of a parts copy: media as files, options "A: ...", type ids as strings."""
    rows = []
    for r in _parts_table(parts_root):
        lists = {}
        for kind, ext in (("image", "png"), ("audio", "wav")):
            lists[f"{kind}_path"] = []
            for k in range(1, 5):
                if r[f"{kind}_{k}"] is not None:
                    rel = f"media/{kind}/{r['question_id']}-{k}.{ext}"
                    (out / rel).parent.mkdir(parents=True, exist_ok=True)
                    (out / rel).write_bytes(r[f"{kind}_{k}"])
                    lists[f"{kind}_path"].append(rel)
        rows.append({
            **{k: r[k] for k in ("question_id", "data_type", "subfield", "question", "answer")},
            "question_type_id": str(r["question_type_id"]),
            "options": [f"{LETTERS[i]}: {o}" for i, o in enumerate(r["options"])],
            **lists, "video_path": [],
        })
    pq.write_table(pa.Table.from_pylist(rows), out / "av_odyssey.parquet")
    return out


def test_odyssey_lmms_eval_layout_reads_like_the_parts(roots, tmp_path):
    parts = read("av-odyssey", roots["av-odyssey"])
    lmms = read("av-odyssey", _to_lmms_eval(roots["av-odyssey"], tmp_path))
    assert {s.meta["source_format"] for s in lmms} == {"lmms-eval"}
    assert [s.meta["question_type_id"] for s in lmms] == [s.meta["question_type_id"] for s in parts]
    for a, b in zip(parts, lmms, strict=True):
        assert (a.id, a.question, a.options, a.answer, a.meta["direction"]) == (
            b.id, b.question, b.options, b.answer, b.meta["direction"])
        assert [(it.kind, it.tag, it.role, Path(it.data).read_bytes()) for it in a.items] == [
            (it.kind, it.tag, it.role, Path(it.data).read_bytes()) for it in b.items
        ]
        assert all(Path(it.data).is_relative_to(tmp_path / "media") for it in b.items)


def _media(data: bytes, path: str) -> dict:
    return {"bytes": data, "path": path}


def _hand_odyssey(root: Path, extra: dict | None = None) -> Path:
    """Three problems typed from DATASETS.md: struct media, a video problem, a 1+1 problem."""
    base = {f"{kind}_{k}": None for kind in ("image", "audio") for k in range(1, 5)} | {"video_1": None}
    rows = [
        base | {
            "question_id": "5_3", "question_type_id": "5", "data_type": "single image, multi audios",
            "subfield": "Timbre", "answer": "B",
            "question": "Which audio matches the instrument in [img1]? [audio1] [audio2] [audio3] [audio4]",
            "options": ["the first audio", "the second audio", "the third audio", "the fourth audio"],
            "image_1": _media(_png(fmt="JPEG"), "piano.jpeg"),
            **{f"audio_{k}": _media(_wav(200.0 * k), f"a{k}.mp3") for k in range(1, 4)},  # the bytes say wav
            "audio_4": _media(_wav(800.0, "FLAC"), None),
        },
        base | {
            "question_id": "20_1", "question_type_id": "20", "data_type": "single video, single audio",
            "subfield": "Time", "answer": "A", "question": "Does [audio1] fit the video [video1]?",
            "options": ["yes", "no", "partly", "unsure"],
            "audio_1": _media(_wav(300.0), "b.wav"), "video_1": _media(b"\x00\x00\x00\x18ftypmp42", "v.mp4"),
        },
        base | {
            "question_id": "9_2", "question_type_id": "9", "data_type": "single image, single audio",
            "subfield": "Space", "answer": "D", "question": "Is [audio1] made by [img1]?",
            "options": ["no", "only partly", "it is silent", "yes"],
            "audio_1": _media(_wav(500.0), "c.wav"), "image_1": _media(_png((0, 0, 255)), "d.png"),
        } | (extra or {}),
    ]
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "av_odyssey_part1.parquet")
    return root


def test_odyssey_reads_hand_written_struct_media_and_skips_video(tmp_path):
    with pytest.warns(UserWarning, match=r"skipped 1 problem.*video.*\[20\]"):
        samples = read("av-odyssey", _hand_odyssey(tmp_path))
    assert [s.id for s in samples] == ["av-odyssey/5_3", "av-odyssey/9_2"]
    first, last = samples
    assert first.answer == 1 and first.options[0] == "the first audio"
    assert first.meta["question_type_id"] == 5 and first.meta["direction"] == "I->A"
    assert [(it.tag, it.kind, it.role) for it in first.items] == [
        ("[img1]", "image", "reference"), *((f"[audio{k}]", "audio", "candidate") for k in range(1, 5))
    ]
    assert [Path(it.data).name for it in first.items] == [
        "5_3_image_1.jpg", "5_3_audio_1.wav", "5_3_audio_2.wav", "5_3_audio_3.wav", "5_3_audio_4.flac"]
    assert Path(first.items[2].data).read_bytes() == _wav(400.0)
    assert last.answer == 3 and odyssey.direction(last) is None and last.meta["direction"] is None
    assert [(it.tag, it.role) for it in last.items] == [("[audio1]", "candidate"), ("[img1]", "candidate")]


def test_odyssey_reads_a_hand_written_lmms_eval_file(tmp_path):
    for k in range(1, 5):
        (tmp_path / f"img/{k}.png").parent.mkdir(exist_ok=True)
        (tmp_path / f"img/{k}.png").write_bytes(_png((60 * k, 0, 0)))
    (tmp_path / "aud").mkdir()
    (tmp_path / "aud/x.wav").write_bytes(_wav(440.0))
    row = {
        "question_id": "1_1", "question_type_id": 1, "data_type": "multi images, single audio", "subfield": "Timbre",
        "question": "Select the instrument represented in images that corresponds to the audio [audio1] from "
                    "[img1] [img2] [img3] [img4].",
        "options": ["A: the second image", "B: the third image", "C: the first image", "D: the fourth image"],
        "answer": "D", "image_path": [f"img/{k}.png" for k in range(1, 5)], "audio_path": ["aud/x.wav"],
        "video_path": [],
    }
    pq.write_table(pa.Table.from_pylist([row]), tmp_path / "av_odyssey.parquet")
    (s,) = read("av-odyssey", tmp_path)
    assert s.options == ("the second image", "the third image", "the first image", "the fourth image")
    assert s.answer == 3 and s.meta["source_format"] == "lmms-eval" and odyssey.direction(s) == "A->I"
    assert [str(Path(it.data).relative_to(tmp_path)) for it in s.items] == ["aud/x.wav", *row["image_path"]]
    assert [it.role for it in s.items] == ["reference"] + ["candidate"] * 4


def test_odyssey_errors_name_the_missing_piece(tmp_path):
    with pytest.raises(InputError, match=r"av_odyssey_part\*\.parquet.*av_odyssey\.parquet"):
        read("av-odyssey", tmp_path)
    root = _hand_odyssey(tmp_path / "a")
    table = pq.read_table(root / "av_odyssey_part1.parquet").drop_columns(["options"])
    pq.write_table(table, root / "av_odyssey_part1.parquet")
    with pytest.raises(InputError, match="no column 'options'"):
        read("av-odyssey", root)
    root = _hand_odyssey(tmp_path / "b", {"question": "Is [audio1] made by [img1] or [img2]?"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError, match=r"9_2.*\[img2\].*image_2"):
            read("av-odyssey", root)
    with pytest.raises(InputError, match="split"):
        read("av-odyssey", root, split="train")



def test_odyssey_refuses_a_question_id_twice_and_garbage_or_empty_files(tmp_path):
    root = _hand_odyssey(tmp_path / "a")
    table = pq.read_table(root / "av_odyssey_part1.parquet")
    pq.write_table(table.slice(2, 1), root / "av_odyssey_part2.parquet")  # 9_2 again, in another part
    with pytest.raises(InputError, match=r"part1\.parquet' row 3 \('Is \[audio1\] made by \[img1\]\?'\) and "
                                         r"'.*part2\.parquet' row 1 .*same question_id '9_2'"):
        read("av-odyssey", root, limit=1)
    (root / "av_odyssey_part2.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match=r"part2\.parquet' is not a readable parquet file.*expected either"):
        read("av-odyssey", root)
    pq.write_table(table.slice(0, 0), root / "av_odyssey_part1.parquet")
    (root / "av_odyssey_part2.parquet").unlink()
    with pytest.raises(InputError, match=r"part1\.parquet' hold no questions; expected either"):
        read("av-odyssey", root)


# ---- WorldSense ----------------------------------------------------------------------
def test_worldsense_synthetic_matches_its_json(roots):
    root = roots["worldsense"]
    qa = json.loads((root / "worldsense_qa.json").read_text())
    tasks = [(vid, key, task) for vid, v in qa.items() for key, task in v.items() if key.startswith("task")]
    samples = read("worldsense", root)
    assert len(samples) == len(tasks) == N
    for s, (vid, key, task) in zip(samples, tasks, strict=True):
        assert [f"{LETTERS[i]}. {o}" for i, o in enumerate(s.options)] == task["candidates"]
        assert LETTERS[s.answer] == task["answer"] and s.id == f"worldsense/{vid}/{key}"
        assert s.video == root / "videos" / f"{vid}.mp4" and s.video.is_file()
        assert s.prompt_format == "worldsense"
        kind = next(k for k in synthetic.KINDS.values() if k.question == s.question)
        assert (s.meta["task_domain"], s.meta["task_type"]) == (kind.task_domain, kind.task_type)
        fields = ("video_id", "task", "domain", "sub_category", "duration", "audio_class", "task_domain", "task_type")
        assert s.meta == {
            "video_id": vid, "task": key,
            **{k: qa[vid][k] for k in ("domain", "sub_category", "duration", "audio_class")},
            "task_domain": task["task_domain"], "task_type": task["task_type"],
        }
        assert tuple(s.meta) == fields


HAND_QA = {
    "vid_xyz": {
        "duration": "1-2min", "domain": "Sports", "sub_category": "Football", "audio_class": ["speech", "crowd"],
        "video_caption": "A referee blows a whistle.",
        "task1": {"question": "Who speaks after the whistle?",
                  "candidates": ["A. the referee", "B. a player", "C. the coach", "D. nobody"], "answer": "D",
                  "task_domain": "Reasoning", "task_type": "Speaker Reasoning"},
        "task0": {"question": "What sound starts the game?",
                  "candidates": ["A. whistle", "B. drum", "C. bell", "D. horn"], "answer": "A",
                  "task_domain": "Recognition", "task_type": "Audio Recognition"},
    },
    "vid2": {
        "duration": "<1min", "domain": "Music", "sub_category": "Concert", "audio_class": ["music"],
        "video_caption": "", "task0": {"question": "How many drums?", "candidates": ["A. 1", "B. 2", "C. 3", "D. 4"],
                                       "answer": "C", "task_domain": "Recognition", "task_type": "Audio Counting"},
    },
}


def test_worldsense_reads_a_hand_written_json_and_zipped_videos(tmp_path):
    (tmp_path / "worldsense_qa.json").write_text(json.dumps(HAND_QA))
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos/vid_xyz.mp4").write_bytes(b"video")
    with zipfile.ZipFile(tmp_path / "worldsense_videos_2.zip", "w") as z:
        z.writestr("worldsense_videos/vid2.mp4", b"zipped")
    samples = read("worldsense", tmp_path)
    assert [s.id for s in samples] == ["worldsense/vid_xyz/task0", "worldsense/vid_xyz/task1", "worldsense/vid2/task0"]
    assert [s.options[0] for s in samples] == ["whistle", "the referee", "1"]
    assert [s.answer for s in samples] == [0, 3, 2]
    assert samples[1].meta == {
        "video_id": "vid_xyz", "task": "task1", "domain": "Sports", "sub_category": "Football", "duration": "1-2min",
        "audio_class": ["speech", "crowd"], "task_domain": "Reasoning", "task_type": "Speaker Reasoning",
    }
    assert (tmp_path / "videos/vid2.mp4").read_bytes() == b"zipped" and samples[2].video == tmp_path / "videos/vid2.mp4"


def test_worldsense_errors_name_the_missing_piece(tmp_path):
    with pytest.raises(InputError, match="worldsense_qa.json.*does not exist"):
        read("worldsense", tmp_path)
    broken = json.loads(json.dumps(HAND_QA))
    del broken["vid2"]["task0"]["candidates"]
    (tmp_path / "worldsense_qa.json").write_text(json.dumps(broken))
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos/vid_xyz.mp4").write_bytes(b"video")
    with pytest.raises(InputError, match=r"vid2.*task0.*no field 'candidates'"):
        read("worldsense", tmp_path)
    (tmp_path / "worldsense_qa.json").write_text(json.dumps(HAND_QA))
    with pytest.raises(InputError, match=r"videos/vid2\.mp4.*does not exist"):
        read("worldsense", tmp_path)



def test_worldsense_refuses_a_key_written_twice(tmp_path):
    text = json.dumps(HAND_QA)
    path = tmp_path / "worldsense_qa.json"
    path.write_text(text[:-1] + ', "vid2": ' + json.dumps(HAND_QA["vid2"]) + "}")  # JSON would keep the last
    with pytest.raises(InputError, match=r"worldsense_qa\.json': the first \(with tasks \['task0'\]\) and the second "
                                         r"\(with tasks \['task0'\]\) have the same video id 'vid2'"):
        read("worldsense", tmp_path, limit=1)
    path.write_text(text.replace('"task1": ', '"task0": ', 1))
    with pytest.raises(InputError, match=r"video 'vid_xyz': the first \('Who speaks after the whistle\?'\) and the "
                                         r"second \('What sound starts the game\?'\) have the same task key 'task0'"):
        read("worldsense", tmp_path)
    path.write_text(text.replace('"answer": "D"', '"answer": "D", "answer": "A"', 1))
    with pytest.raises(InputError, match=r"video 'vid_xyz' task1 has the field 'answer' twice \('D' and 'A'\)"):
        read("worldsense", tmp_path)
    path.write_text("{}")
    with pytest.raises(InputError, match=r"worldsense_qa\.json' holds no videos; expected root/worldsense_qa\.json"):
        read("worldsense", tmp_path)


# ---- read() --------------------------------------------------------------------------
def test_read_dispatch_select_and_limit(roots):
    with pytest.raises(InputError, match="unknown benchmark 'mmau'.*av-speakerbench"):
        read("mmau", roots["worldsense"])
    root = roots["av-speakerbench"]
    speaker = read("av-speakerbench", root, select={"category": "Speaker Recognition"})
    assert len(speaker) == N // 2 and {s.meta["category"] for s in speaker} == {"speaker recognition"}
    assert [s.id for s in read("av-speakerbench", root, select={"category": ["speaker recognition"]}, limit=2)] == [
        s.id for s in speaker[:2]
    ]
    assert read("worldsense", roots["worldsense"], limit=0) == []
    with pytest.raises(InputError, match="select names.*colour"):
        read("worldsense", roots["worldsense"], select={"colour": "red"})
    with pytest.raises(InputError, match="limit"):
        read("av-odyssey", roots["av-odyssey"], limit=-1)


# ---- the synthetic benchmark ---------------------------------------------------------
def _measured(task_id: str, clip: Path) -> str:
    """The answer to an AV-SpeakerBench-style synthetic question, measured from the decoded clip."""
    frames = media.read_video(clip).frames.astype(int)
    mask = np.abs(frames - synthetic.BACKGROUND).sum(-1) > 150
    wave = media.read_audio(clip)  # the mp4's own AAC track
    if task_id == "Shape Colour":
        mean = frames[mask].mean(0)
        return min(synthetic.PALETTE, key=lambda c: np.abs(mean - synthetic.PALETTE[c]).sum())
    if task_id == "Shape Identity":
        ys, xs = np.nonzero(mask[len(mask) // 2])
        return "square" if len(xs) / ((np.ptp(xs) + 1) * (np.ptp(ys) + 1)) > 0.9 else "circle"
    if task_id == "Motion Direction":
        start, end = (np.nonzero(mask[i])[1].mean() for i in (0, -1))
        return "left to right" if end > start else "right to left"
    if task_id == "Beep Counting":
        return str(_n_beeps(wave))
    if task_id == "Pitch Level":
        return min(synthetic.PITCH_HZ, key=lambda p: abs(synthetic.PITCH_HZ[p] - _peak_hz(wave)))
    head, tail = _peak_hz(wave[:8000]), _peak_hz(wave[-8000:])
    return "steady" if abs(head - tail) < 50 else "rising" if tail > head else "falling"


def test_synthetic_clips_show_and_sound_every_answer(tmp_path):
    audio = [(kind, v) for kind, pool in (("contour", synthetic.CONTOURS), ("count", "1234"),
                                          ("pitch", tuple(synthetic.PITCH_HZ))) for v in pool]
    visual = [("square", "red", 1), ("circle", "cyan", 2), ("square", "blue", 3), ("circle", "yellow", 4),
              ("square", "green", 5), ("circle", "magenta", 6)]
    for i, (kind, value) in enumerate(audio):
        shape, colour, seed = visual[i % len(visual)]
        clip = synthetic.Clip(shape, colour, seed, kind, value)
        media.write_video(tmp_path / f"{i}.mp4", clip.frames(), synthetic.FPS, audio=clip.audio())
        for name in (*synthetic.VISUAL_KINDS, kind):
            assert _measured(synthetic.KINDS[name].task_id, tmp_path / f"{i}.mp4") == clip.answer(name), (name, clip)
    assert list(synthetic.PITCH_HZ.values()) == sorted(synthetic.PITCH_HZ.values())  # "very low" .. "very high"
    assert {synthetic.Clip("square", "red", s, "count", "1").answer("motion") for s in range(6)} == {
        "left to right", "right to left"}


def test_synthetic_answers_are_balanced_and_in_the_media(roots):
    samples = read("av-speakerbench", roots["av-speakerbench"])
    assert Counter(s.answer for s in samples) == {0: N // 4, 1: N // 4, 2: N // 4, 3: N // 4}
    for s in samples:
        assert _measured(s.meta["task_id"], s.video) == s.options[s.answer], s.id


def test_synthetic_odyssey_reference_matches_the_correct_candidate(roots):
    ordinals = {f"the {o} {kind}": i for i, o in enumerate(synthetic.ORDINALS) for kind in ("image", "audio")}
    for s in read("av-odyssey", roots["av-odyssey"]):
        ref = next(it for it in s.items if it.role == "reference")
        cands = [it for it in s.items if it.role == "candidate"]
        correct = cands[ordinals[s.options[s.answer]]]
        audio, image = (ref, correct) if ref.kind == "audio" else (correct, ref)
        wave = media.read_audio(audio.data)
        pixels = np.array(Image.open(image.data))[..., 0] > 128
        if s.meta["subfield"] == "Time":
            assert _n_beeps(wave) == np.sum(pixels[32, 1:] & ~pixels[32, :-1])
        else:
            level = min(synthetic.PITCH_HZ, key=lambda p: abs(synthetic.PITCH_HZ[p] - _peak_hz(wave)))
            assert np.array_equal(pixels, synthetic.line_image(level)[..., 0] > 128)


def test_synthetic_is_deterministic(tmp_path):
    files = {
        "av-speakerbench": "test.csv", "av-odyssey": "av_odyssey_part1.parquet", "worldsense": "worldsense_qa.json",
    }
    for name, file in files.items():
        a, b, c = (synthetic.write(name, tmp_path / f"{name}-{tag}", n=4, seed=seed)
                   for tag, seed in (("a", 0), ("b", 0), ("c", 1)))
        assert (a / file).read_bytes() == (b / file).read_bytes(), name
        assert (a / file).read_bytes() != (c / file).read_bytes(), name
    with pytest.raises(InputError, match="n=0"):
        synthetic.write("worldsense", tmp_path / "x", n=0)


def test_ensure_writes_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AVMECH_CACHE", str(tmp_path))
    root = synthetic.ensure("worldsense", n=3, seed=2)
    assert root == tmp_path / "data" / f"worldsense-n3-seed2-v{synthetic.VERSION}"
    os.utime(root / "worldsense_qa.json", ns=(1, 1))
    monkeypatch.setattr(synthetic, "write", lambda *a, **k: pytest.fail("ensure rewrote a cached set"))
    assert synthetic.ensure("worldsense", n=3, seed=2) == root
    assert (root / "worldsense_qa.json").stat().st_mtime_ns == 1
    assert [p.name for p in (tmp_path / "data").iterdir()] == [root.name]  # no temporary folder left
    assert len(read("worldsense", root)) == 3
    monkeypatch.undo()
    assert synthetic.ensure("av-odyssey", tmp_path / "own", n=2).parent == tmp_path / "own"


def test_synthetic_clips_last_as_long_as_asked_and_keep_their_answers(tmp_path):
    root = synthetic.ensure("av-speakerbench", tmp_path, n=2, seconds=12)
    assert root.name == f"av-speakerbench-n2-seed0-12s-v{synthetic.VERSION}"
    for s in read("av-speakerbench", root):
        info = media.probe(s.video)
        assert info.duration_s == pytest.approx(12, abs=0.2) and s.meta["end_time"] == 12
        assert _measured(s.meta["task_id"], s.video) == s.options[s.answer], s.id
    items = read("av-odyssey", synthetic.ensure("av-odyssey", tmp_path, n=2, seconds=5))
    audio = next(it for it in items[0].items if it.kind == "audio")
    assert len(media.read_audio(audio.data)) == pytest.approx(5 * synthetic.SR, abs=10)
    with pytest.raises(InputError, match="seconds=0.5"):
        synthetic.write("worldsense", tmp_path / "x", n=2, seconds=0.5)
