"""The planted tasks: synthetic questions whose answer can come from one known modality only.

The planted demo models (``planted-omni``, ``planted-salmonn``, `avmech.models.planted`) are
trained on these tasks (``TRAINED`` in ``TRAINED_VARIANTS``; ``planted-omni-shuffled`` on pitch
and colour in both variants, ``planted-omni-shuffled-binding``, ``-count`` and ``-heading`` on binding,
count and heading alone in both, ``planted-omni-interleaved-shuffled`` on the interleaved items in both), so
the route the answer takes is known before any flow runs: the flows are checked against it
(``tests/test_planted.py``), as interpretability methods are checked on models whose mechanism is known.

**Audio-visual video** (AV-SpeakerBench and WorldSense layouts). Every clip lasts 2 s:
one square or circle (a quarter of the frame wide) of one of four colours crosses a dark
64x64 frame (8 fps) in one of four directions while a sound plays. Each question has
four options:

=========  =========  ================================================  =============================================
task       answer in  question                                          options in the fixed order (class i is option i)
=========  =========  ================================================  =============================================
pitch      audio      Is the tone high or low?                          very low, low, high, very high (150 ... 2400 Hz)
count      audio      How many beeps do you hear?                       1, 2, 3, 4
colour     video      What colour is the moving shape?                  red, green, blue, yellow
motion     video      Which way does the shape move?                    left to right, right to left, top to bottom,
                                                                        bottom to top
heading    video      Which way does the shape move?                    right, left, down, up
binding    both       What colour is the shape while the tone sounds?   red, green, blue, yellow
=========  =========  ================================================  =============================================

The other stream is drawn at random and says nothing about the answer: in the audio
tasks the shape, its colour and its direction; in the video tasks the sound (a steady
tone of a random pitch, or 1-4 beeps). In ``binding`` the shape changes colour at 1 s
(two different colours) and a tone of a random pitch sounds during one of the two
halves, silence in the other: the answer needs the sound (when) and the frames (which
colour then). ``heading`` is ``motion`` with one-word options: with the options shuffled
the model has to read them, and a small model did not learn to tell the phrases apart
("left to right" and "right to left" share their words; README, "Planted pathways").

**Interleaved items** (AV-Odyssey layout, as in `avmech.data.synthetic`): the number of
beeps against images of as many bars, a tone's pitch against the height of a line, with
an audio reference and four image candidates ("A->I") or the reverse ("I->A"); the
answer is the candidate that matches the reference.

Each task comes in two **variants**: ``fixed`` (the options in the order above, so the
letter follows from the answering modality alone) and ``shuffled`` (the options in a random
order: the model must read them). In the interleaved items option i always names candidate
i (``"the first image"``, as in AV-Odyssey); ``fixed`` puts the candidates in the class order
too (candidate i is class i, so the letter follows from the reference alone and the
candidates carry nothing the answer needs) and ``shuffled`` in a random one (the model must
match the reference against the candidates: the candidates' route is exercised).
Samples cycle through the tasks and variants, answers balanced within each.

The sets are written in the released layouts, so the readers and experiment files serve
them as they serve the real benchmarks (``[data] root = "planted"``):

- ``"av-speakerbench"``: ``category`` is ``"speaker recognition"`` (audio tasks: the tone
  plays the speaker, as in the synthetic set), ``"visual recognition"`` (video tasks) or
  ``"audio-visual binding"``; ``sub_category`` the variant (``"fixed order"``,
  ``"shuffled"``); ``task_id`` ``"<task> (<variant>)"``.
- ``"worldsense"``: one task per video, ``task_domain`` the answering modality
  (``"Audio"``, ``"Visual"``, ``"Audio-Visual"``) and ``task_type`` ``"<task> (<variant>)"``.
- ``"av-odyssey"``: ``question_type_id`` 1-4 shuffled (the synthetic set's four tasks) and
  5-8 their fixed-order twins; ``question_id`` ``"<type>_<k>"``.

`ensure` writes a set once into the cache (``data/planted-<name>-n<n>-seed<seed>-<tasks and
variants>-v<VERSION>``), by default of the tasks the planted model is trained on.
Held-out sets and training sets differ by seed (the models train on seeds from
`avmech.models.planted`'s recipe; experiments read seed 0); the space of clips is small
(four values per attribute), so "held-out" means other draws of the same tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from avmech import media
from avmech.data.common import NAMES, build_once
from avmech.data.synthetic import (
    BACKGROUND,
    FPS,
    ITEM_SECONDS,
    ODYSSEY_SCHEMA,
    ODYSSEY_TASKS,
    ORDINALS,
    PALETTE,
    PITCH_HZ,
    SIZE,
    cache_root,
    _item_png,
    _item_wav,
    beeps,
)
from avmech.errors import InputError
from avmech.sample import LETTERS

VERSION = 2
SECONDS = 2.0
COLOURS = ("red", "green", "blue", "yellow")
DIRECTIONS = ("left to right", "right to left", "top to bottom", "bottom to top")
HEADINGS = ("right", "left", "down", "up")  # the directions in one word each, in the same order
PITCHES = tuple(PITCH_HZ)
COUNTS = ("1", "2", "3", "4")
VARIANTS = ("fixed", "shuffled")
# What the planted demo models are trained on (`avmech.models.planted`), and what `ensure` writes by default.
TRAINED = ("pitch", "count", "colour", "motion")
TRAINED_VARIANTS = ("fixed",)
VARIANT_NAMES = {"fixed": "fixed order", "shuffled": "shuffled"}
CATEGORIES = {"audio": "speaker recognition", "video": "visual recognition", "both": "audio-visual binding"}
DOMAINS = {"audio": "Audio", "video": "Visual", "both": "Audio-Visual"}


@dataclass(frozen=True)
class Task:
    """One planted question: its text, its classes in the fixed order, and the stream that answers it."""

    name: str
    modality: str  # "audio" | "video" | "both"
    question: str
    classes: tuple[str, ...]


TASKS = {
    "pitch": Task("pitch", "audio", "Is the tone high or low?", PITCHES),
    "count": Task("count", "audio", "How many beeps do you hear?", COUNTS),
    "colour": Task("colour", "video", "What colour is the moving shape?", COLOURS),
    "motion": Task("motion", "video", "Which way does the shape move?", DIRECTIONS),
    "binding": Task("binding", "both", "What colour is the shape while the tone sounds?", COLOURS),
    "heading": Task("heading", "video", "Which way does the shape move?", HEADINGS),
}
# AV-Odyssey question_type_id -> (concept, direction, variant): 1-4 as the synthetic set, 5-8 fixed order.
ODYSSEY_TYPES = {
    type_id + 4 * k: (concept, direction, variant)
    for (concept, direction), (type_id, *_) in ODYSSEY_TASKS.items()
    for k, variant in enumerate(("shuffled", "fixed"))
}


def task_label(task: str, variant: str) -> str:
    """``"pitch (fixed order)"``: the task field the records carry."""
    return f"{task} ({VARIANT_NAMES[variant]})"


def odyssey_type(question_type_id: int) -> tuple[str, str, str]:
    """(concept, direction, variant) of a planted AV-Odyssey question type."""
    return ODYSSEY_TYPES[int(question_type_id)]


@dataclass(frozen=True)
class PlantedClip:
    """2 s of a shape crossing the frame while a sound plays; everything a question asks is a field.

    ``colours``: the shape's colour in the first and the second second (equal except in
    ``binding``); ``sound``: ``("tone", pitch)``, ``("beeps", count)`` or
    ``("half", pitch, half)`` (a tone during ``half`` 0 or 1 only)."""

    shape: str
    colours: tuple[str, str]
    direction: str
    sound: tuple
    seed: int
    seconds: float = SECONDS

    def frames(self) -> np.ndarray:
        n = round(self.seconds * FPS)
        first = _moving(n, self.shape, self.colours[0], self.direction, self.seed)
        if self.colours[1] == self.colours[0]:
            return first
        second = _moving(n, self.shape, self.colours[1], self.direction, self.seed)
        late = np.arange(n) / FPS >= self.seconds / 2
        return np.where(late[:, None, None, None], second, first)

    def audio(self) -> np.ndarray:
        kind = self.sound[0]
        if kind == "tone":
            return media.tone(PITCH_HZ[self.sound[1]], self.seconds)
        if kind == "beeps":
            return beeps(int(self.sound[1]), self.seconds)
        wave = np.zeros(round(self.seconds * media.SAMPLE_RATE), np.float32)
        half = len(wave) // 2
        ramp = np.ones(half, np.float32)
        fade = round(0.01 * media.SAMPLE_RATE)
        ramp[:fade], ramp[-fade:] = np.linspace(0, 1, fade), np.linspace(1, 0, fade)
        start = self.sound[2] * half
        wave[start:start + half] = media.tone(PITCH_HZ[self.sound[1]], half / media.SAMPLE_RATE) * ramp
        return wave

    def answer(self, task: str) -> str:
        """The class a question of ``task`` has for this clip."""
        if task == "pitch":
            return self.sound[1]
        if task == "count":
            return str(self.sound[1])
        if task == "colour":
            return self.colours[0]
        if task == "motion":
            return self.direction
        if task == "heading":
            return HEADINGS[DIRECTIONS.index(self.direction)]
        return self.colours[self.sound[2]]


def _moving(n: int, shape: str, colour: str, direction: str, seed: int) -> np.ndarray:
    """Uint8 ``[n, SIZE, SIZE, 3]`` frames of ``shape`` (a quarter of the frame wide, so that it
    fills a merged patch of the vision encoder) crossing the frame in ``direction``, at an
    offset across its path that ``seed`` fixes."""
    r = SIZE // 8 * 2
    across = np.random.default_rng(seed).uniform(r, SIZE - 1 - r)
    along = np.linspace(r, SIZE - 1 - r, n)
    if direction in ("right to left", "bottom to top"):
        along = along[::-1]
    horizontal = direction in ("left to right", "right to left")
    cx, cy = (along, np.full(n, across)) if horizontal else (np.full(n, across), along)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    dx, dy = xx[None] - cx[:, None, None], yy[None] - cy[:, None, None]
    mask = dx**2 + dy**2 <= r**2 if shape == "circle" else (np.abs(dx) <= r) & (np.abs(dy) <= r)
    out = np.empty((n, SIZE, SIZE, 3), np.uint8)
    out[:] = np.asarray(BACKGROUND, np.uint8)
    out[mask] = np.asarray(PALETTE[colour], np.uint8)
    return out


def clip_for(task: str, value: str, rng: np.random.Generator) -> PlantedClip:
    """A clip whose answer to ``task`` is ``value``, everything else drawn from ``rng``."""
    shape = str(rng.choice(["square", "circle"]))
    colour = str(rng.choice(COLOURS))
    direction = str(rng.choice(DIRECTIONS))
    seed = int(rng.integers(2**31))
    if rng.random() < 0.5:
        sound: tuple = ("tone", str(rng.choice(PITCHES)))
    else:
        sound = ("beeps", int(rng.integers(1, 5)))
    colours = (colour, colour)
    if task == "pitch":
        sound = ("tone", value)
    elif task == "count":
        sound = ("beeps", int(value))
    elif task == "colour":
        colours = (value, value)
    elif task == "motion":
        direction = value
    elif task == "heading":
        direction = DIRECTIONS[HEADINGS.index(value)]
    else:  # binding: the colour during the tone is `value`, the other half another colour
        half = int(rng.integers(2))
        other = str(rng.choice([c for c in COLOURS if c != value]))
        colours = (value, other) if half == 0 else (other, value)
        sound = ("half", str(rng.choice(PITCHES)), half)
    return PlantedClip(shape, colours, direction, sound, seed)


def _options(rng: np.random.Generator, classes: tuple[str, ...], correct: str, variant: str,
             answer: int) -> tuple[list[str], int]:
    """The options and the correct index: the classes in order (fixed), or permuted with the correct
    one at ``answer`` (shuffled)."""
    if variant == "fixed":
        return list(classes), classes.index(correct)
    others = [c for c in rng.permutation(classes) if c != correct]
    return [*others[:answer], correct, *others[answer:]], answer


def questions(n: int, rng: np.random.Generator, tasks: tuple[str, ...] = tuple(TASKS),
              variants: tuple[str, ...] = VARIANTS):
    """``n`` (task, variant, clip, options, answer) in a cycle over tasks x variants; within each
    (task, variant) the classes (fixed) or the letters and classes (shuffled) are balanced."""
    combos = [(t, v) for t in tasks for v in variants]
    per = [math.ceil(n / len(combos))] * len(combos)
    draws = {c: (_balanced(rng, k), _balanced(rng, k)) for c, k in zip(combos, per)}
    out = []
    for i in range(n):
        task, variant = combos[i % len(combos)]
        classes, letters = draws[task, variant]
        k = i // len(combos)
        value = TASKS[task].classes[classes[k]]
        clip = clip_for(task, value, rng)
        options, answer = _options(rng, TASKS[task].classes, value, variant, letters[k])
        out.append((task, variant, clip, options, answer))
    return out


def _balanced(rng: np.random.Generator, n: int, k: int = 4) -> list[int]:
    return [int(v) for v in rng.permutation(np.resize(np.arange(k), n))]


def _speakerbench(root: Path, n: int, rng: np.random.Generator, scope: dict) -> None:
    rows = []
    for i, (task, variant, clip, options, answer) in enumerate(questions(n, rng, **scope)):
        vid = f"clip{i:05d}"
        _write_clip(root / "av" / f"{vid}.mp4", clip)
        _write_clip(root / "visual" / f"{vid}.mp4", clip, audio=False)
        (root / "audio").mkdir(exist_ok=True)
        media.write_audio(root / "audio" / f"{vid}.wav", clip.audio())
        modality = TASKS[task].modality
        rows.append({
            "question_id": f"q{i:05d}", "video_id": vid, "question": TASKS[task].question,
            "choices": str([f"{LETTERS[j]}. {o}" for j, o in enumerate(options)]), "answer": LETTERS[answer],
            "category": CATEGORIES[modality], "sub_category": VARIANT_NAMES[variant],
            "task_id": task_label(task, variant), "audio_visual_path": f"av/{vid}.mp4",
            "visual_path": f"visual/{vid}.mp4", "audio_path": f"audio/{vid}.wav",
            "start_time": "0.0", "end_time": f"{clip.seconds:.1f}",
        })
    pd.DataFrame(rows).to_csv(root / "test.csv", index=False)


def _worldsense(root: Path, n: int, rng: np.random.Generator, scope: dict) -> None:
    import json

    qa = {}
    for i, (task, variant, clip, options, answer) in enumerate(questions(n, rng, **scope)):
        vid = f"ws{i:05d}"
        _write_clip(root / "videos" / f"{vid}.mp4", clip)
        qa[vid] = {
            "duration": "<1min", "domain": "Synthetic", "sub_category": "Planted",
            "audio_class": ["beep" if clip.sound[0] == "beeps" else "tone"], "video_caption": "",
            "task0": {"question": TASKS[task].question, "candidates": [f"{LETTERS[j]}. {o}" for j, o in enumerate(options)],
                      "answer": LETTERS[answer], "task_domain": DOMAINS[TASKS[task].modality],
                      "task_type": task_label(task, variant)},
        }
    (root / "worldsense_qa.json").write_text(json.dumps(qa, indent=2) + "\n", encoding="utf-8")


def task_of(sample) -> str:
    """The planted task a sample of any of the three layouts asks: ``"pitch (fixed order)"``, or for
    AV-Odyssey ``"count A->I (fixed order)"``."""
    meta = sample.meta
    if "question_type_id" in meta:
        concept, direction, variant = odyssey_type(meta["question_type_id"])
        return f"{concept} {direction} ({VARIANT_NAMES[variant]})"
    return meta.get("task_id") or meta["task_type"]


def odyssey_rows(n: int, rng: np.random.Generator, seconds: float = ITEM_SECONDS,
                 variants: tuple[str, ...] = VARIANTS) -> list[dict]:
    """``n`` AV-Odyssey rows cycling over the planted types (1-8) of ``variants``, answers balanced per type."""
    types = sorted(t for t, (_, _, variant) in ODYSSEY_TYPES.items() if variant in variants)
    per = math.ceil(n / len(types))
    slots = {t: _balanced(rng, per) for t in types}
    rows, counters = [], {}
    for i in range(n):
        type_id = types[i % len(types)]
        concept, direction, variant = ODYSSEY_TYPES[type_id]
        _, subfield, data_type, question = ODYSSEY_TASKS[concept, direction]
        slot = slots[type_id][i // len(types)]
        counters[type_id] = counters.get(type_id, 0) + 1
        pool = TASKS["count" if concept == "count" else "pitch"].classes
        values = list(pool) if variant == "fixed" else [pool[j] for j in rng.permutation(len(pool))]
        reference = values[slot]
        if direction == "A->I":
            images, audios = [_item_png(concept, v) for v in values], [_item_wav(concept, reference, seconds)]
        else:
            images, audios = [_item_png(concept, reference)], [_item_wav(concept, v, seconds) for v in values]
        noun = "image" if direction == "A->I" else "audio"
        options, answer = [f"the {o} {noun}" for o in ORDINALS], slot
        row = {"question_id": f"{type_id}_{counters[type_id]}", "question_type_id": type_id,
               "data_type": data_type, "subfield": subfield, "question": question, "options": options,
               "answer": LETTERS[answer], "video_1": None}
        row.update({f"image_{k + 1}": images[k] if k < len(images) else None for k in range(4)})
        row.update({f"audio_{k + 1}": audios[k] if k < len(audios) else None for k in range(4)})
        rows.append(row)
    return rows


def _odyssey(root: Path, n: int, rng: np.random.Generator, scope: dict) -> None:
    rows = odyssey_rows(n, rng, variants=scope["variants"])
    cut = math.ceil(n / 2)
    for part, chunk in enumerate((rows[:cut], rows[cut:]), start=1):
        if chunk:
            pq.write_table(pa.Table.from_pylist(chunk, schema=ODYSSEY_SCHEMA), root / f"av_odyssey_part{part}.parquet")


def _write_clip(path: Path, clip: PlantedClip, audio: bool = True) -> None:
    """Lossless, so that a set written twice decodes to the same frames and a planted model's
    training is repeatable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    media.write_video(path, clip.frames(), FPS, audio=clip.audio() if audio else None, lossless=True)


_WRITERS = {"av-speakerbench": _speakerbench, "av-odyssey": _odyssey, "worldsense": _worldsense}


def write(name: str, root: str | Path, n: int = 24, seed: int = 0, tasks: tuple[str, ...] = tuple(TASKS),
          variants: tuple[str, ...] = VARIANTS) -> Path:
    """Write ``n`` planted questions of benchmark ``name`` (of ``tasks`` in ``variants``; AV-Odyssey:
    its types in ``variants``) in its released layout under ``root``."""
    if name not in NAMES:
        raise InputError(f"unknown benchmark {name!r}: use one of {list(NAMES)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"n={n!r} is not a positive number of questions")
    bad = sorted(set(tasks) - set(TASKS)) + sorted(set(variants) - set(VARIANTS))
    if bad or not tasks or not variants:
        raise InputError(f"planted tasks {tasks!r} / variants {variants!r}: use some of {list(TASKS)} / {list(VARIANTS)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    scope = {"tasks": tuple(tasks), "variants": tuple(variants)}
    _WRITERS[name](root, n, np.random.default_rng([seed, NAMES.index(name), 16]), scope)
    return root


def ensure(name: str, root: str | Path | None = None, n: int = 24, seed: int = 0, tasks: tuple[str, ...] = TRAINED,
           variants: tuple[str, ...] = TRAINED_VARIANTS) -> Path:
    """The root of the planted ``name`` set (by default of the tasks the planted models are trained on),
    written once under ``root`` (default ``$AVMECH_CACHE/data``)."""
    if name not in NAMES:
        raise InputError(f"unknown benchmark {name!r}: use one of {list(NAMES)}")
    scope = "-".join((*tasks, *variants))
    path = Path(root if root is not None else cache_root()) / f"planted-{name}-n{n}-seed{seed}-{scope}-v{VERSION}"
    return build_once(path, lambda folder: write(name, folder, n=n, seed=seed, tasks=tasks, variants=variants))
