"""AV-SpeakerBench reader: one audio-visual clip per four-choice question.

Released layout (Hugging Face ``plnguyen2908/AV-SpeakerBench``), every value a string::

    root/
      test.csv                      question_id, video_id, question, choices, answer,
                                    category, sub_category, task_id,
                                    audio_visual_path, visual_path, audio_path
                                    [, start_time, end_time]
      <media paths named in test.csv, relative to root>
      [audiovisual_chunk_*.zip]     the same media, if not yet extracted

``choices`` is a Python list literal of letter-prefixed options,
``"['A. 2', 'B. 3', 'C. 4', 'D. 5']"``, and ``answer`` its letter (``"C"``).  Each row
becomes an :class:`~avmech.sample.AVSample` with the options unprefixed (``"4"``), the
answer as an index (2), the ``"av-speakerbench"`` prompt preset and
``meta = {category, sub_category, task_id, question_id, video_id, modality}`` plus
``start_time`` / ``end_time`` in seconds where those columns exist (the release is not
known to ship them; they are carried, not applied).

``modality`` picks the input: ``"audio_visual"`` (default) the mp4 with its own sound,
``"visual"`` the silent video, ``"audio"`` the audio track.  A media file that is missing
but sits inside an ``audiovisual_chunk_*.zip`` in the root (same relative path, or the
same unique file name) is extracted there when its row is read, so ``limit=`` extracts
only what it returns.  A file that is empty or not a table, without data rows, or with a
``question_id`` twice (a sample's id is made from it) is an `InputError` naming the file,
the rows and the layout.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from avmech.data.common import (
    ZippedMedia,
    answer_index,
    check_limit,
    duplicate_id,
    require,
    selected,
    strip_options,
)
from avmech.errors import InputError
from avmech.sample import AVSample

NAME = "av-speakerbench"
MODALITIES = {"audio_visual": "audio_visual_path", "visual": "visual_path", "audio": "audio_path"}
COLUMNS = ("question_id", "video_id", "question", "choices", "answer", "category", "sub_category", "task_id")
ZIP_PATTERN = "audiovisual_chunk_*.zip"
LAYOUT = (
    "root/<split>.csv (split 'test') with columns "
    + ", ".join((*COLUMNS, *MODALITIES.values()))
    + " [, start_time, end_time], media paths relative to root"
)


def _choices(text: str, where: str) -> list[str]:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as e:
        raise InputError(
            f"{where}: choices {text!r} is not a Python list literal such as \"['A. 2', 'B. 3']\" ({e})"
        ) from e
    if not isinstance(value, list | tuple) or not value or not all(isinstance(c, str) for c in value):
        raise InputError(f"{where}: choices {text!r} is not a non-empty list of strings")
    return list(value)


def _seconds(text: str, column: str, where: str) -> float | None:
    """A time cell as seconds: "" -> None, "12.5" -> 12.5, "1:02.5" / "0:01:02.5" -> 62.5."""
    text = text.strip()
    if not text:
        return None
    try:
        parts = [float(p) for p in text.split(":")]
    except ValueError:
        parts = []
    if not 1 <= len(parts) <= 3:
        raise InputError(f"{where}: {column} {text!r} is neither seconds nor [hh:]mm:ss")
    return sum(p * 60**k for k, p in enumerate(reversed(parts)))


def _table(csv: Path) -> pd.DataFrame:
    """The csv as strings, or an `InputError` naming the file and the layout."""
    try:
        return pd.read_csv(csv, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise InputError(f"'{csv}' is empty; expected {LAYOUT}") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InputError(f"'{csv}' is not a CSV table ({type(e).__name__}: {e}); expected {LAYOUT}") from None


def read(
    root: str | Path,
    *,
    split: str | None = None,
    limit: int | None = None,
    select: Mapping[str, Any] | None = None,
    modality: str = "audio_visual",
) -> list[AVSample]:
    """The questions of ``root/<split>.csv`` (default ``test.csv``) in file order.

    ``select`` keeps samples whose ``meta`` fields match (see
    :func:`avmech.data.common.selected`), e.g. ``{"category": ["speaker recognition"]}``;
    ``limit`` then keeps the first ones.
    """
    check_limit(limit)
    if modality not in MODALITIES:
        raise InputError(f"unknown modality {modality!r}: use one of {sorted(MODALITIES)}")
    root = Path(root)
    csv = root / f"{split or 'test'}.csv"
    if not csv.is_file():
        raise InputError(f"AV-SpeakerBench file '{csv}' does not exist; expected {LAYOUT}")
    table = _table(csv)
    path_column = MODALITIES[modality]
    require(table.columns, (*COLUMNS, path_column), f"'{csv}'", LAYOUT)
    if table.empty:
        raise InputError(f"'{csv}' has a header but no question rows; expected {LAYOUT}")
    twice = table["question_id"].duplicated(keep=False)
    if twice.any():
        first = table.loc[twice, "question_id"].iloc[0]
        a, b = (i + 1 for i in table.index[table["question_id"] == first][:2])
        raise duplicate_id("question_id", first, f"'{csv}' row {a} ({table.at[a - 1, 'question']!r})",
                           f"row {b} ({table.at[b - 1, 'question']!r}, rows counted from 1 below the header)", LAYOUT)
    times = [c for c in ("start_time", "end_time") if c in table.columns]
    zipped = ZippedMedia(root, ZIP_PATTERN)
    samples: list[AVSample] = []
    for row in table.to_dict("records"):
        if limit is not None and len(samples) >= limit:
            break
        where = f"'{csv}' question_id {row['question_id']!r}"
        meta: dict[str, Any] = {k: row[k] for k in ("category", "sub_category", "task_id", "question_id", "video_id")}
        meta["modality"] = modality
        meta.update({c: _seconds(row[c], c, where) for c in times})
        if not selected(meta, select, NAME):
            continue
        choices = _choices(row["choices"], where)
        if not row[path_column].strip():
            raise InputError(f"{where}: {path_column} is empty; expected {LAYOUT}")
        path = zipped.resolve(row[path_column].strip(), f"{where} {path_column}")
        media: dict[str, Any] = (
            {"audio": path} if modality == "audio" else {"video": path, "use_video_audio": modality == "audio_visual"}
        )
        samples.append(
            AVSample(
                question=row["question"],
                options=strip_options(choices),
                answer=answer_index(row["answer"], len(choices), where),
                prompt_format=NAME,
                id=f"{NAME}/{row['question_id']}",
                meta=meta,
                **media,
            )
        )
    return samples
