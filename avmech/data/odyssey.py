"""AV-Odyssey reader: questions over interleaved images and audio clips.

Two released layouts are accepted; ``meta["source_format"]`` says which one was read
(``"parts"`` wins when a root holds both):

``"parts"``, Hugging Face ``AV-Odyssey/AV_Odyssey_Bench``::

    root/av_odyssey_part1.parquet .. av_odyssey_partN.parquet
      question_id "1_1", question_type_id (task 1..26, int or str), data_type
      ("multi images, single audio", "single image, multi audios", ...), subfield
      (Timbre, Tone, Melody, Space, Time, Hallucination, Intricacy), question with
      placeholders [img1]..[img4] [audio1]..[audio4] [video1], options (4 strings without
      letters), answer (letter), image_1..image_4 audio_1..audio_4 video_1: raw bytes or
      {"bytes": ..., "path": ...} structs, null where unused

``"lmms-eval"``, Hugging Face ``AV-Odyssey/AV_Odyssey_Bench_LMMs_Eval``::

    root/av_odyssey.parquet   the same text columns, options prefixed "A: ...", and
                              image_path / audio_path / video_path: lists of paths
                              relative to root ([img2] is image_path[1])

Each placeholder in the question becomes an :class:`~avmech.sample.Item` in question
order, tagged with the placeholder.  Embedded bytes are written once to
``<media_dir>/<question_id>_<column>.<ext>`` (e.g. ``.avmech_media/1_1_image_2.png``;
``media_dir`` defaults to ``root/.avmech_media``, the extension is sniffed from the
bytes) and items refer to those paths.

Roles: when the question holds exactly one item of one kind and several of the other
(the audio<->image matching tasks), the single item is the ``"reference"`` and the others
``"candidate"`` s; otherwise every item is a candidate.  :func:`direction` names the
matching direction, ``"A->I"`` (audio reference, image candidates) or ``"I->A"``; it is
also ``meta["direction"]`` (``None`` for other tasks), so
``select={"direction": ["A->I", "I->A"]}`` keeps the study's tasks.

Problems with a ``[videoK]`` placeholder are skipped with one warning naming how many
and their task ids: avmech's items are images and audio clips only.  A file that is not
parquet, files without rows, or a ``question_id`` twice (in one file or across parts: a
sample's id is made from it) is an `InputError` naming the files, rows and the layout.
"""

from __future__ import annotations

import ast
import contextlib
import re
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from avmech.data.common import (
    answer_index,
    check_limit,
    check_split,
    duplicate_id,
    require,
    selected,
    strip_options,
    write_once,
)
from avmech.errors import InputError
from avmech.sample import AVSample, Item

NAME = "av-odyssey"
PART_PATTERN = "av_odyssey_part*.parquet"
LMMS_EVAL_FILE = "av_odyssey.parquet"
TEXT_COLUMNS = ("question_id", "question_type_id", "data_type", "subfield", "question", "options", "answer")
MEDIA_DIR = ".avmech_media"
LAYOUT = (
    f"either root/{PART_PATTERN} with columns {', '.join(TEXT_COLUMNS)}, image_1..4, audio_1..4, video_1 "
    f"(media bytes), or root/{LMMS_EVAL_FILE} with the same text columns and image_path/audio_path/"
    "video_path lists of paths relative to root"
)
_PLACEHOLDER = re.compile(r"\[(img|audio|video)(\d+)\]")
_KINDS = {"img": "image", "audio": "audio"}
_MAGIC = (
    (b"\x89PNG", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"GIF8", ".gif"), (b"BM", ".bmp"),
    (b"fLaC", ".flac"), (b"OggS", ".ogg"), (b"ID3", ".mp3"), (b"\xff\xfb", ".mp3"), (b"\xff\xf3", ".mp3"),
)


def _extension(data: bytes, name: str | None, kind: str) -> str:
    """The file extension of ``data``: sniffed from its first bytes, else ``name``'s, else the kind's default."""
    if data[:4] == b"RIFF":
        return {b"WAVE": ".wav", b"WEBP": ".webp"}.get(data[8:12], ".bin")
    if data[4:8] == b"ftyp":
        return ".mp4"
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    suffix = Path(name).suffix.lower() if name else ""
    return suffix or {"image": ".png", "audio": ".wav"}[kind]


def _direction(pairs: list[tuple[str, str]]) -> str | None:
    refs = [kind for kind, role in pairs if role == "reference"]
    cands = {kind for kind, role in pairs if role == "candidate"}
    if refs == ["audio"] and cands == {"image"}:
        return "A->I"
    if refs == ["image"] and cands == {"audio"}:
        return "I->A"
    return None


def direction(sample: AVSample) -> str | None:
    """``"A->I"`` for one audio reference among image candidates, ``"I->A"`` for the reverse, else None."""
    return _direction([(it.kind, it.role) for it in sample.items])


def _roles(kinds: list[str]) -> list[str]:
    """The single item of one kind is the reference when there are several of the other kind."""
    for single, several in (("image", "audio"), ("audio", "image")):
        if kinds.count(single) == 1 and kinds.count(several) >= 2:
            return ["reference" if k == single else "candidate" for k in kinds]
    return ["candidate"] * len(kinds)


def _part_number(path: Path) -> tuple[int, str]:
    digits = re.findall(r"\d+", path.name)
    return (int(digits[-1]) if digits else 0, path.name)


def _rows(root: Path) -> tuple[str, Iterator[dict[str, Any]]]:
    """Which layout ``root`` holds, and its rows as dicts (``_file`` added) streamed in order."""
    parts = sorted(root.glob(PART_PATTERN), key=_part_number)
    if parts:
        fmt, files = "parts", parts
    elif (root / LMMS_EVAL_FILE).is_file():
        fmt, files = "lmms-eval", [root / LMMS_EVAL_FILE]
    else:
        raise InputError(f"no AV-Odyssey files in '{root}'; expected {LAYOUT}")
    for f in files:
        with _reading(f):
            require(pq.read_schema(f).names, TEXT_COLUMNS, f"'{f}'", LAYOUT)
    _check_ids(files)

    def rows() -> Iterator[dict[str, Any]]:
        for f in files:
            with _reading(f):
                for batch in pq.ParquetFile(f).iter_batches(batch_size=64):
                    for row in batch.to_pylist():
                        yield {**row, "_file": f.name}

    return fmt, rows()


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn pyarrow's failure to read ``path`` into an `InputError` naming the file and the layout."""
    try:
        yield
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"'{path}' is not a readable parquet file ({e}); expected {LAYOUT}") from None


def _check_ids(files: list[Path]) -> None:
    """Every question_id once over all ``files``, and at least one question."""
    seen: dict[str, str] = {}
    for f in files:
        with _reading(f):
            table = pq.read_table(f, columns=["question_id", "question"])
        for row, (qid, question) in enumerate(zip(*(table.column(c).to_pylist() for c in table.column_names)), 1):
            here = f"'{f}' row {row} ({question!r})"
            if str(qid) in seen:
                raise duplicate_id("question_id", qid, seen[str(qid)], here, LAYOUT)
            seen[str(qid)] = here
    if not seen:
        raise InputError(f"{', '.join(repr(str(f)) for f in files)} hold no questions; expected {LAYOUT}")


def _options(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError) as e:
            raise InputError(f"{where}: options {value!r} is neither a list nor a list literal") from e
    if not isinstance(value, list | tuple) or not value:
        raise InputError(f"{where}: options {value!r} is not a non-empty list of strings")
    return [str(v) for v in value]


def _type_id(value: Any) -> Any:
    text = str(value).strip()
    return int(text) if text.isdigit() else value


def _check_column(row: dict[str, Any], tag: str, column: str, where: str) -> None:
    if column not in row:
        raise InputError(f"{where}: the question places {tag} but the file has no column {column!r}; expected {LAYOUT}")


def _embedded(row: dict[str, Any], tag: str, column: str, kind: str, media_dir: Path, where: str) -> Path:
    """Write the bytes of ``row[column]`` once under ``media_dir`` and return the file."""
    _check_column(row, tag, column, where)
    value = row[column]
    name = None
    if isinstance(value, dict):
        value, name = value.get("bytes"), value.get("path")
    if not value:
        raise InputError(f"{where}: the question places {tag} but {column} holds no bytes")
    safe = re.sub(r"[^\w.-]", "_", str(row["question_id"]))
    path = media_dir / f"{safe}_{column}{_extension(value, name, kind)}"
    try:
        return write_once(path, value)
    except OSError as e:
        raise InputError(
            f"cannot write AV-Odyssey media to '{media_dir}' ({e}): pass media_dir= a writable folder"
        ) from e


def _listed(row: dict[str, Any], root: Path, tag: str, column: str, k: int, where: str) -> Path:
    """The ``k``-th path of the list in ``row[column]``, relative to ``root``."""
    _check_column(row, tag, column, where)
    paths = row[column] or []
    if len(paths) < k:
        raise InputError(f"{where}: the question places {tag} but {column} lists {len(paths)} path(s)")
    path = root / paths[k - 1]
    if not path.is_file():
        raise InputError(
            f"{where}: media file '{path}' for {tag} does not exist; extract the release's media under '{root}'"
        )
    return path


def read(
    root: str | Path,
    *,
    split: str | None = None,
    limit: int | None = None,
    select: Mapping[str, Any] | None = None,
    media_dir: str | Path | None = None,
) -> list[AVSample]:
    """The image/audio problems of ``root`` in file order (parts in numeric order).

    ``select`` keeps samples whose ``meta`` fields match (see
    :func:`avmech.data.common.selected`), e.g. ``{"direction": "A->I"}`` or
    ``{"question_type_id": [1, 2]}``; ``limit`` then keeps the first ones.
    ``media_dir`` is where embedded media are written (default ``root/.avmech_media``).
    """
    check_split(split, NAME)
    check_limit(limit)
    root = Path(root)
    fmt, rows = _rows(root)
    media_dir = Path(media_dir) if media_dir is not None else root / MEDIA_DIR
    samples: list[AVSample] = []
    skipped: dict[Any, int] = {}
    for row in rows:
        if limit is not None and len(samples) >= limit:
            break
        where = f"'{row['_file']}' question_id {row['question_id']!r}"
        question = str(row["question"])
        seen: dict[str, tuple[str, int]] = {}
        for m in _PLACEHOLDER.finditer(question):
            seen.setdefault(m.group(0), (m.group(1), int(m.group(2))))
        type_id = _type_id(row["question_type_id"])
        if any(kind == "video" for kind, _ in seen.values()):
            skipped[type_id] = skipped.get(type_id, 0) + 1
            continue
        kinds = [_KINDS[kind] for kind, _ in seen.values()]
        roles = _roles(kinds)
        meta: dict[str, Any] = {
            "question_id": str(row["question_id"]),
            "question_type_id": type_id,
            "data_type": row["data_type"],
            "subfield": row["subfield"],
            "direction": _direction(list(zip(kinds, roles, strict=True))),
            "source_format": fmt,
        }
        if not selected(meta, select, NAME):
            continue
        items = []
        for (tag, (_, k)), kind, role in zip(seen.items(), kinds, roles, strict=True):
            if fmt == "parts":
                data = _embedded(row, tag, f"{kind}_{k}", kind, media_dir, where)
            else:
                data = _listed(row, root, tag, f"{kind}_path", k, where)
            items.append(Item(kind=kind, data=data, tag=tag, role=role))
        options = _options(row["options"], where)
        samples.append(
            AVSample(
                question=question,
                options=strip_options(options),
                answer=answer_index(row["answer"], len(options), where),
                items=tuple(items),
                prompt_format=NAME,
                id=f"{NAME}/{row['question_id']}",
                meta=meta,
            )
        )
    if skipped:
        warnings.warn(
            f"AV-Odyssey: skipped {sum(skipped.values())} problem(s) with video items (question_type_id "
            f"{sorted(skipped, key=str)}); avmech's interleaved items are images and audio clips only",
            stacklevel=2,
        )
    return samples
