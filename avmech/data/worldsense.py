"""WorldSense reader: omni-modal questions over videos with sound.

Released layout (Hugging Face ``honglyhly/WorldSense``)::

    root/
      worldsense_qa.json            {video_id: {"duration": "<1min" | "1-2min" | ...,
                                                 "domain", "sub_category", "audio_class": [...],
                                                 "video_caption",
                                                 "task0": {"question", "candidates": ["A. ...", ...],
                                                           "answer": "B", "task_domain", "task_type"},
                                                 "task1": {...}, ...}}
      videos/<video_id>.mp4         h264 with AAC sound (flattened from worldsense_videos*.zip)
      [worldsense_videos*.zip]      the videos, if not yet extracted

One sample per ``task<k>`` key of each video, in file order (tasks by ``k``), with id
``worldsense/<video_id>/task<k>``, the candidates without their ``"A. "`` prefixes, the
video with its own sound track, the ``"worldsense"`` prompt preset and
``meta = {video_id, task, domain, sub_category, duration, audio_class, task_domain, task_type}``.
A missing ``videos/<video_id>.mp4`` that a ``worldsense_videos*.zip`` in the root holds
(by that path or by its unique file name) is extracted there when its question is read.
A key written twice in one object (a video id, or a ``task<k>`` of one video; JSON
readers would keep the last silently) and a file without questions are an `InputError`
naming them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from avmech.data.common import (
    ZippedMedia,
    answer_index,
    check_limit,
    check_split,
    duplicate_id,
    require,
    selected,
    strip_options,
)
from avmech.errors import InputError
from avmech.sample import AVSample

NAME = "worldsense"
QA_FILE = "worldsense_qa.json"
ZIP_PATTERN = "worldsense_videos*.zip"
VIDEO_FIELDS = ("domain", "sub_category", "duration")
TASK_FIELDS = ("question", "candidates", "answer", "task_domain", "task_type")
LAYOUT = (
    f"root/{QA_FILE} as {{video_id: {{{', '.join(VIDEO_FIELDS)}, 'task0': {{{', '.join(TASK_FIELDS)}}}, ...}}}} "
    "and root/videos/<video_id>.mp4"
)
_TASK = re.compile(r"task(\d+)")


class _Object(dict):
    """A JSON object that remembers the keys written twice in it (with both values)."""

    def __init__(self, pairs: list[tuple[str, Any]]):
        super().__init__()
        self.twice: list[tuple[str, Any, Any]] = []
        for key, value in pairs:
            if key in self:
                self.twice.append((key, self[key], value))
            self[key] = value


def _what(value: Any) -> str:
    """A value written twice, for the message: a task's question, a video's tasks."""
    if isinstance(value, dict) and "question" in value:
        return repr(value["question"])
    if isinstance(value, dict):
        return f"with tasks {sorted(k for k in value if _TASK.fullmatch(k))}"
    return repr(value)


def _check_twice(obj: _Object, where: str, id_field: str | None = None) -> None:
    """Refuse an object with a key written twice: an id (``id_field``: a sample's id is made from it) or a field."""
    if not obj.twice:
        return
    key, first, second = obj.twice[0]
    if id_field == "video id" or (id_field == "task key" and _TASK.fullmatch(key)):
        raise duplicate_id(id_field, key, f"{where}: the first ({_what(first)})", f"the second ({_what(second)})",
                           LAYOUT)
    raise InputError(f"{where} has the field {key!r} twice ({first!r} and {second!r}): keep one; expected {LAYOUT}")


def _check_keys(qa: _Object, where: str) -> None:
    """Refuse a key written twice in the file: a video id, a task key or a field (all videos, not just the read)."""
    _check_twice(qa, where, "video id")
    for video_id, video in qa.items():
        if isinstance(video, _Object):
            _check_twice(video, f"{where} video {video_id!r}", "task key")
            for key, task in video.items():
                if isinstance(task, _Object):
                    _check_twice(task, f"{where} video {video_id!r} {key}")


def read(
    root: str | Path,
    *,
    split: str | None = None,
    limit: int | None = None,
    select: Mapping[str, Any] | None = None,
) -> list[AVSample]:
    """The questions of ``root/worldsense_qa.json``, video by video.

    ``select`` keeps samples whose ``meta`` fields match (see
    :func:`avmech.data.common.selected`), e.g. ``{"task_domain": "Recognition"}``;
    ``limit`` then keeps the first ones.
    """
    check_split(split, NAME)
    check_limit(limit)
    root = Path(root)
    qa_path = root / QA_FILE
    if not qa_path.is_file():
        raise InputError(f"WorldSense file '{qa_path}' does not exist; expected {LAYOUT}")
    try:
        qa = json.loads(qa_path.read_text(encoding="utf-8"), object_pairs_hook=_Object)
    except json.JSONDecodeError as e:
        raise InputError(f"'{qa_path}' is not valid JSON ({e}); expected {LAYOUT}") from e
    if not isinstance(qa, dict):
        raise InputError(f"'{qa_path}' holds a {type(qa).__name__}, not an object keyed by video id; expected {LAYOUT}")
    if not qa:
        raise InputError(f"'{qa_path}' holds no videos; expected {LAYOUT}")
    _check_keys(qa, f"'{qa_path}'")
    zipped = ZippedMedia(root, ZIP_PATTERN)
    samples: list[AVSample] = []
    for video_id, video in qa.items():
        where = f"'{qa_path}' video {video_id!r}"
        if not isinstance(video, dict):
            raise InputError(f"{where} is a {type(video).__name__}, not an object; expected {LAYOUT}")
        require(video, VIDEO_FIELDS, where, LAYOUT, what="field")
        tasks = sorted((int(m.group(1)), key) for key in video if (m := _TASK.fullmatch(key)))
        for _, key in tasks:
            if limit is not None and len(samples) >= limit:
                return samples
            task, task_where = video[key], f"{where} {key}"
            if not isinstance(task, dict):
                raise InputError(f"{task_where} is a {type(task).__name__}, not an object; expected {LAYOUT}")
            require(task, TASK_FIELDS, task_where, LAYOUT, what="field")
            meta: dict[str, Any] = {
                "video_id": video_id,
                "task": key,
                **{k: video[k] for k in VIDEO_FIELDS},
                "audio_class": video.get("audio_class", []),
                "task_domain": task["task_domain"],
                "task_type": task["task_type"],
            }
            if not selected(meta, select, NAME):
                continue
            candidates = task["candidates"]
            if not isinstance(candidates, list) or not all(isinstance(c, str) for c in candidates) or not candidates:
                raise InputError(f"{task_where}: candidates {candidates!r} is not a non-empty list of strings")
            samples.append(
                AVSample(
                    question=task["question"],
                    options=strip_options(candidates),
                    answer=answer_index(task["answer"], len(candidates), task_where),
                    video=zipped.resolve(f"videos/{video_id}.mp4", task_where),
                    use_video_audio=True,
                    prompt_format=NAME,
                    id=f"{NAME}/{video_id}/{key}",
                    meta=meta,
                )
            )
    return samples
