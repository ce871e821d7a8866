"""A synthetic benchmark written in the three released formats: the demo data and the test data.

Every clip shows one coloured square or circle crossing a dark 64x64 frame (8 fps, 2 s)
while one sound plays: a rising, falling or steady tone, a train of 1-4 beeps, or a
steady tone at one of four pitch levels.  Questions ask about one of the two streams, so
the answer is either visual or auditory:

=========  =====================================  ========================  ===================
kind       question                               AV-SpeakerBench category  WorldSense task
=========  =====================================  ========================  ===================
colour     What colour is the moving shape?       visual recognition        Attribute Recognition
shape      Which shape moves across the screen?   visual recognition        Object Recognition
motion     Which way does the shape move?         visual recognition        Motion Understanding
contour    Is the tone rising or falling?         speaker recognition       Audio Change
count      How many beeps do you hear?            speaker recognition       Audio Counting
pitch      Is the tone high or low?               speaker recognition       Audio Recognition
=========  =====================================  ========================  ===================

(the tone source plays the "speaker", so the study's speaker/visual recognition split
exists).  Each question has four options and the correct letters are balanced (counts
differ by at most one).  Per benchmark, with ``n`` questions:

- ``"av-speakerbench"``: ``test.csv`` plus ``av/<video_id>.mp4`` (h264 + AAC),
  ``visual/<video_id>.mp4`` (silent) and ``audio/<video_id>.wav``; each clip carries one
  visual and one auditory question (``ceil(n / 2)`` clips), with ``start_time``/``end_time``.
- ``"av-odyssey"``: ``av_odyssey_part1.parquet`` (and ``part2`` once ``n >= 2``) with
  embedded png/wav bytes; audio<->image matching: the number of beeps against an image of
  as many bars (subfield Time) and a tone's pitch against the height of a line (Tone), both
  "A->I" (question_type_id 1, 3: audio reference first, then four image candidates) and
  "I->A" (2, 4: four audio candidates first, then the image reference).
- ``"worldsense"``: ``worldsense_qa.json`` and ``videos/<video_id>.mp4`` with 1-3 tasks per video.

``seconds`` sets how long the clips last (default 2 s; AV-Odyssey: its audio items,
default 1.2 s): long clips give prompts long enough for token discarding to save time on
the demo models. Everything follows from ``seed`` and ``seconds``: equal arguments write
byte-identical csv/json/parquet. :func:`ensure` writes a set once into the cache
(``$AVMECH_CACHE`` or ``~/.cache/avmech``, ``data/<name>-n<n>-seed<seed>[-<seconds>s]-v<VERSION>``)
and returns its root.
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
from PIL import Image

from avmech import media
from avmech.data.common import NAMES, build_once
from avmech.errors import InputError
from avmech.sample import LETTERS

VERSION = 1
SIZE, FPS, SECONDS = 64, 8, 2.0
ITEM_SECONDS = 1.2
SR = media.SAMPLE_RATE
BACKGROUND = (24, 24, 32)
PALETTE = {
    "red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240),
    "yellow": (240, 220, 40), "magenta": (220, 50, 220), "cyan": (40, 220, 220),
}
PITCH_HZ = {"very low": 150.0, "low": 300.0, "high": 1200.0, "very high": 2400.0}
CONTOURS = ("rising", "falling", "steady")
BEEP_HZ, BEEP_S, BEEP_GAP_S = 1000.0, 0.12, 0.3
ORDINALS = ("first", "second", "third", "fourth")


@dataclass(frozen=True)
class Kind:
    """One question kind: its text, option pool and task labels in AV-SpeakerBench and WorldSense."""

    question: str
    pool: tuple[str, ...]
    category: str
    sub_category: str
    task_id: str
    task_domain: str
    task_type: str


KINDS = {
    "colour": Kind("What colour is the moving shape?", tuple(PALETTE), "visual recognition", "appearance",
                   "Shape Colour", "Recognition", "Attribute Recognition"),
    "shape": Kind("Which shape moves across the screen?", ("square", "circle", "triangle", "star"),
                  "visual recognition", "appearance", "Shape Identity", "Recognition", "Object Recognition"),
    "motion": Kind("Which way does the shape move?",
                   ("left to right", "right to left", "top to bottom", "bottom to top"), "visual recognition",
                   "motion", "Motion Direction", "Understanding", "Motion Understanding"),
    "contour": Kind("Is the tone rising or falling?", (*CONTOURS, "there is no tone"), "speaker recognition", "pitch",
                    "Pitch Contour", "Understanding", "Audio Change"),
    "count": Kind("How many beeps do you hear?", ("1", "2", "3", "4"), "speaker recognition", "rhythm",
                  "Beep Counting", "Recognition", "Audio Counting"),
    "pitch": Kind("Is the tone high or low?", tuple(PITCH_HZ), "speaker recognition", "pitch", "Pitch Level",
                  "Recognition", "Audio Recognition"),
}
VISUAL_KINDS = ("colour", "shape", "motion")
AUDIO_KINDS = ("contour", "count", "pitch")


def beeps(count: int, seconds: float = ITEM_SECONDS) -> np.ndarray:
    """``count`` 1 kHz beeps of 0.12 s every 0.3 s from 0.15 s, in ``seconds`` of silence."""
    wave = np.zeros(round(seconds * SR), np.float32)
    beep = media.tone(BEEP_HZ, BEEP_S) * np.hanning(round(BEEP_S * SR)).astype(np.float32)
    for i in range(count):
        start = round((0.15 + i * BEEP_GAP_S) * SR)
        wave[start:start + len(beep)] = beep
    return wave


def sound(kind: str, value: str, seconds: float) -> np.ndarray:
    """The waveform whose answer to an auditory question ``kind`` is ``value``."""
    if kind == "contour":
        f0, f1 = {"rising": (300.0, 1200.0), "falling": (1200.0, 300.0), "steady": (600.0, 600.0)}[value]
        return media.chirp(f0, f1, seconds)
    if kind == "count":
        return beeps(int(value), seconds)
    return media.tone(PITCH_HZ[value], seconds)


@dataclass(frozen=True)
class Clip:
    """A shape of ``colour`` crossing the frame (path fixed by ``seed``) while a sound of ``audio_kind`` plays,
    for ``seconds``."""

    shape: str
    colour: str
    seed: int
    audio_kind: str
    audio_value: str
    seconds: float = SECONDS

    def frames(self) -> np.ndarray:
        n = round(self.seconds * FPS)
        return media.moving_shape_frames(n, SIZE, SIZE, self.shape, PALETTE[self.colour], BACKGROUND, self.seed)

    def audio(self) -> np.ndarray:
        return sound(self.audio_kind, self.audio_value, self.seconds)

    def answer(self, kind: str) -> str:
        """The correct option text for a question of ``kind`` about this clip."""
        if kind == "colour":
            return self.colour
        if kind == "shape":
            return self.shape
        if kind == "motion":
            frames = self.frames()
            xs = [np.nonzero((f != BACKGROUND).any(-1))[1].mean() for f in (frames[0], frames[-1])]
            return "left to right" if xs[1] > xs[0] else "right to left"
        if kind != self.audio_kind:
            raise ValueError(f"this clip plays a {self.audio_kind} sound, not one for {kind!r}")
        return self.audio_value

    def caption(self) -> str:
        heard = f"{self.audio_value} beeps sound" if self.audio_kind == "count" else f"a {self.audio_value} tone plays"
        return f"A {self.colour} {self.shape} moves {self.answer('motion')} while {heard}."


def _clip(rng: np.random.Generator, audio_kind: str, seconds: float) -> Clip:
    pool = {"contour": CONTOURS, "count": KINDS["count"].pool, "pitch": KINDS["pitch"].pool}[audio_kind]
    return Clip(
        shape=str(rng.choice(["square", "circle"])),
        colour=str(rng.choice(list(PALETTE))),
        seed=int(rng.integers(2**31)),
        audio_kind=audio_kind,
        audio_value=str(rng.choice(pool)),
        seconds=seconds,
    )


def _balanced(rng: np.random.Generator, n: int, k: int = 4) -> list[int]:
    """``n`` values in ``0..k-1``, each ``n // k`` or ``n // k + 1`` times, in random order."""
    return [int(v) for v in rng.permutation(np.resize(np.arange(k), n))]


def _options(rng: np.random.Generator, correct: str, pool: tuple[str, ...], answer: int) -> list[str]:
    """Four options: ``correct`` at index ``answer``, three other ``pool`` entries in random order."""
    others = [pool[i] for i in rng.permutation(len(pool)) if pool[i] != correct][:3]
    return others[:answer] + [correct] + others[answer:]


def _write_clip(path: Path, clip: Clip, audio: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    media.write_video(path, clip.frames(), FPS, audio=clip.audio() if audio else None)


def _speakerbench(root: Path, n: int, rng: np.random.Generator, seconds: float | None) -> None:
    seconds = seconds or SECONDS
    answers, rows = _balanced(rng, n), []
    for k in range(math.ceil(n / 2)):
        clip, vid = _clip(rng, AUDIO_KINDS[k % 3], seconds), f"clip{k:04d}"
        _write_clip(root / "av" / f"{vid}.mp4", clip)
        _write_clip(root / "visual" / f"{vid}.mp4", clip, audio=False)
        (root / "audio").mkdir(exist_ok=True)
        media.write_audio(root / "audio" / f"{vid}.wav", clip.audio())
        for i, name in list(enumerate((VISUAL_KINDS[k % 3], clip.audio_kind), start=2 * k))[: n - 2 * k]:
            kind = KINDS[name]
            options = _options(rng, clip.answer(name), kind.pool, answers[i])
            rows.append({
                "question_id": f"q{i:04d}", "video_id": vid, "question": kind.question,
                "choices": str([f"{LETTERS[j]}. {o}" for j, o in enumerate(options)]),
                "answer": LETTERS[answers[i]],
                "category": kind.category, "sub_category": kind.sub_category, "task_id": kind.task_id,
                "audio_visual_path": f"av/{vid}.mp4", "visual_path": f"visual/{vid}.mp4",
                "audio_path": f"audio/{vid}.wav", "start_time": "0.0", "end_time": f"{seconds:.1f}",
            })
    pd.DataFrame(rows).to_csv(root / "test.csv", index=False)


def _worldsense(root: Path, n: int, rng: np.random.Generator, seconds: float | None) -> None:
    seconds = seconds or SECONDS
    answers, qa, i, k = _balanced(rng, n), {}, 0, 0
    while i < n:
        clip, vid = _clip(rng, AUDIO_KINDS[k % 3], seconds), f"ws{k:04d}"
        _write_clip(root / "videos" / f"{vid}.mp4", clip)
        n_tasks = min(n - i, 1 + int(rng.integers(3)))
        names = [str(x) for x in rng.permutation([*VISUAL_KINDS, clip.audio_kind])][:n_tasks]
        video = {
            "duration": "<1min", "domain": "Synthetic", "sub_category": "Shapes and Tones",
            "audio_class": ["beep" if clip.audio_kind == "count" else "tone"], "video_caption": clip.caption(),
        }
        for t, name in enumerate(names):
            kind = KINDS[name]
            options = _options(rng, clip.answer(name), kind.pool, answers[i])
            video[f"task{t}"] = {
                "question": kind.question, "candidates": [f"{LETTERS[j]}. {o}" for j, o in enumerate(options)],
                "answer": LETTERS[answers[i]], "task_domain": kind.task_domain, "task_type": kind.task_type,
            }
            i += 1
        qa[vid] = video
        k += 1
    (root / "worldsense_qa.json").write_text(json.dumps(qa, indent=2) + "\n", encoding="utf-8")


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _wav(wave: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def bars_image(count: int) -> np.ndarray:
    """A 64x64 image of ``count`` white vertical bars: the picture of ``count`` beeps."""
    image = np.full((SIZE, SIZE, 3), BACKGROUND, np.uint8)
    for x in np.linspace(0, SIZE, count + 2)[1:-1]:
        image[12:52, round(x) - 3:round(x) + 3] = 255
    return image


def line_image(level: str) -> np.ndarray:
    """A 64x64 image of a white horizontal line, higher for a higher pitch ``level``."""
    image = np.full((SIZE, SIZE, 3), BACKGROUND, np.uint8)
    row = {"very low": 52, "low": 38, "high": 24, "very high": 10}[level]
    image[row - 2:row + 2, 8:56] = 255
    return image


# (concept, direction) -> question_type_id, subfield, data_type, question
ODYSSEY_TASKS = {
    ("count", "A->I"): (1, "Time", "multi images, single audio",
                        "Which image shows as many bars as there are beeps in the audio [audio1]? "
                        "Choose from [img1] [img2] [img3] [img4]."),
    ("count", "I->A"): (2, "Time", "single image, multi audios",
                        "[audio1] [audio2] [audio3] [audio4] Which of these audios has as many beeps as "
                        "there are bars in the image [img1]?"),
    ("pitch", "A->I"): (3, "Tone", "multi images, single audio",
                        "The higher the tone, the higher the line. Which image matches the tone [audio1]? "
                        "Choose from [img1] [img2] [img3] [img4]."),
    ("pitch", "I->A"): (4, "Tone", "single image, multi audios",
                        "[audio1] [audio2] [audio3] [audio4] The higher the tone, the higher the line. "
                        "Which of these audios matches the line in the image [img1]?"),
}
ODYSSEY_SCHEMA = pa.schema([
    ("question_id", pa.string()), ("question_type_id", pa.int64()), ("data_type", pa.string()),
    ("subfield", pa.string()), ("question", pa.string()), ("options", pa.list_(pa.string())),
    ("answer", pa.string()), *((f"image_{k}", pa.binary()) for k in range(1, 5)), ("video_1", pa.binary()),
    *((f"audio_{k}", pa.binary()) for k in range(1, 5)),
])


def _item_png(concept: str, value: str) -> bytes:
    return _png(bars_image(int(value)) if concept == "count" else line_image(value))


def _item_wav(concept: str, value: str, seconds: float) -> bytes:
    return _wav(sound(concept, value, seconds))


def _odyssey(root: Path, n: int, rng: np.random.Generator, seconds: float | None) -> None:
    seconds = seconds or ITEM_SECONDS
    answers, slots, rows, counters = _balanced(rng, n), _balanced(rng, n), [], {}
    for i in range(n):
        concept, direction = ("count", "pitch")[(i // 2) % 2], ("A->I", "I->A")[i % 2]
        type_id, subfield, data_type, question = ODYSSEY_TASKS[concept, direction]
        counters[type_id] = counters.get(type_id, 0) + 1
        pool = KINDS[concept].pool
        values = [pool[j] for j in rng.permutation(len(pool))]
        reference = values[slots[i]]
        if direction == "A->I":
            images, audios = [_item_png(concept, v) for v in values], [_item_wav(concept, reference, seconds)]
        else:
            images, audios = [_item_png(concept, reference)], [_item_wav(concept, v, seconds) for v in values]
        noun = "image" if direction == "A->I" else "audio"
        ordinals = tuple(f"the {o} {noun}" for o in ORDINALS)
        row = {
            "question_id": f"{type_id}_{counters[type_id]}", "question_type_id": type_id, "data_type": data_type,
            "subfield": subfield, "question": question,
            "options": _options(rng, ordinals[slots[i]], ordinals, answers[i]), "answer": LETTERS[answers[i]],
            "video_1": None,
        }
        row.update({f"image_{k + 1}": images[k] if k < len(images) else None for k in range(4)})
        row.update({f"audio_{k + 1}": audios[k] if k < len(audios) else None for k in range(4)})
        rows.append(row)
    cut = math.ceil(n / 2)
    for part, chunk in enumerate((rows[:cut], rows[cut:]), start=1):
        if chunk:
            table = pa.Table.from_pylist(chunk, schema=ODYSSEY_SCHEMA)
            pq.write_table(table, root / f"av_odyssey_part{part}.parquet")


_WRITERS = {"av-speakerbench": _speakerbench, "av-odyssey": _odyssey, "worldsense": _worldsense}


def _check(name: str, n: int, seconds: float | None) -> None:
    if name not in NAMES:
        raise InputError(f"unknown benchmark {name!r}: use one of {list(NAMES)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"n={n!r} is not a positive number of questions")
    if seconds is not None and not (isinstance(seconds, int | float) and 1.2 <= seconds <= 60):
        raise InputError(f"seconds={seconds!r}: give clips of 1.2 to 60 s (four beeps take 1.2 s)")


def write(name: str, root: str | Path, n: int = 24, seed: int = 0, seconds: float | None = None) -> Path:
    """Write ``n`` synthetic questions of benchmark ``name`` in its released layout under ``root``,
    clips (AV-Odyssey: audio items) lasting ``seconds`` (None: the default, 2 s / 1.2 s)."""
    _check(name, n, seconds)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _WRITERS[name](root, n, np.random.default_rng([seed, NAMES.index(name)]), seconds)
    return root


def cache_root() -> Path:
    """Where :func:`ensure` keeps data sets: ``$AVMECH_CACHE/data`` (default ``~/.cache/avmech/data``)."""
    return Path(os.environ.get("AVMECH_CACHE", Path.home() / ".cache" / "avmech")) / "data"


def ensure(name: str, root: str | Path | None = None, n: int = 24, seed: int = 0, seconds: float | None = None) -> Path:
    """The root of the synthetic ``name`` set, written once under ``root`` (default :func:`cache_root`).

    The set goes to ``<root>/<name>-n<n>-seed<seed>[-<seconds>s]-v<VERSION>``, written in a
    temporary folder and renamed, so a crash or a concurrent writer never leaves a partial set.
    """
    _check(name, n, seconds)
    length = "" if seconds is None else f"-{seconds:g}s"
    path = Path(root if root is not None else cache_root()) / f"{name}-n{n}-seed{seed}{length}-v{VERSION}"
    return build_once(path, lambda folder: write(name, folder, n=n, seed=seed, seconds=seconds))
