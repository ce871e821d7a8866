"""What the three benchmark readers share: option letters, answers, splits, filters, zipped media.

All three benchmarks are multiple choice with one letter answer, but they write options
differently: AV-SpeakerBench ``"A. 2"``, LMMs-Eval's AV-Odyssey ``"A: 2"``, WorldSense
``"A. 2"``, the original AV-Odyssey bare ``"2"``.  :func:`strip_option` removes any of the
forms ``"A. "``, ``"A: "``, ``"A:"``, ``"(A) "`` and ``"A) "`` when the letter is the
option's own (the first option's ``A``, the second's ``B``, ...), so a bare option that
merely starts with a capital ("A dog barks") is left alone.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from avmech.errors import InputError
from avmech.sample import LETTERS

NAMES = ("av-speakerbench", "av-odyssey", "worldsense")

_PREFIX = re.compile(r"\s*(?:\(([A-Z])\)|([A-Z])\s*[.:)])\s*")
_ANSWER = re.compile(r"\s*\(?([A-Z])(?![A-Za-z])")


def strip_option(text: str, index: int) -> str:
    """``text`` without a leading letter prefix naming option ``index`` ("A. 2" at 0 -> "2")."""
    text = str(text)
    m = _PREFIX.match(text)
    if m and (m.group(1) or m.group(2)) == LETTERS[index:index + 1]:
        return text[m.end():].strip()
    return text.strip()


def strip_options(options: Iterable[str]) -> tuple[str, ...]:
    return tuple(strip_option(text, i) for i, text in enumerate(options))


def answer_index(answer: Any, n_options: int, where: str) -> int:
    """The index of a letter answer ("B", "b", "(B)", "B.", "B. 3" -> 1) among ``n_options``."""
    m = _ANSWER.match(str(answer).upper())
    if m is None or LETTERS.find(m.group(1)) not in range(n_options):
        raise InputError(
            f"{where}: answer {answer!r} is not one of the letters {', '.join(LETTERS[:n_options])} "
            f"of its {n_options} options"
        )
    return LETTERS.index(m.group(1))


def check_split(split: str | None, benchmark: str) -> None:
    """Every benchmark here releases one split, ``"test"``; ``None`` means it."""
    if split not in (None, "test"):
        raise InputError(f"{benchmark} has only the split 'test', not {split!r}: pass split=None or 'test'")


def check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise InputError(f"limit={limit!r} is not a count: pass a non-negative int or None")


def require(present: Iterable[str], needed: Iterable[str], where: str, layout: str, what: str = "column") -> None:
    """Raise if a ``what`` (column, field) of ``needed`` is missing from ``present``, naming it and the layout."""
    present = set(present)
    missing = [k for k in needed if k not in present]
    if missing:
        plural = "s" if len(missing) > 1 else ""
        raise InputError(f"{where} has no {what}{plural} {', '.join(map(repr, missing))}; expected {layout}")


def duplicate_id(field: str, value: Any, first: str, second: str, layout: str) -> InputError:
    """The refusal of a data set in which two questions share ``field`` (the sample id's source)."""
    return InputError(
        f"{first} and {second} have the same {field} {value!r}: a sample's id is made from it, so their records "
        f"would clash; give one of them another {field} (expected {layout})"
    )


def selected(meta: Mapping[str, Any], select: Mapping[str, Any] | None, where: str) -> bool:
    """Whether ``meta`` passes ``select``: each key's value equals the wanted one, or is in the wanted list.

    Values compare as stripped, case-folded strings, so ``question_type_id`` 1 matches "1"
    and "Speaker Recognition" matches "speaker recognition".
    """
    if not select:
        return True
    unknown = [k for k in select if k not in meta]
    if unknown:
        raise InputError(f"select names {unknown}, which {where} samples lack: use one of {sorted(meta)}")

    def norm(value: Any) -> str:
        return str(value).strip().casefold()

    for key, wanted in select.items():
        allowed = list(wanted) if isinstance(wanted, list | tuple | set | frozenset) else [wanted]
        if norm(meta[key]) not in {norm(w) for w in allowed}:
            return False
    return True


def write_once(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` unless an equally long file is there; atomic, so readers never see half."""
    if path.is_file() and path.stat().st_size == len(data):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


class ZippedMedia:
    """Media files that may still sit inside the release's zip archives (``root/<pattern>``).

    :meth:`resolve` returns ``root/<relative path>`` and, when that file is missing but an
    archive holds it (same relative path, or failing that the same unique file name), first
    extracts that one member there.  Archives are only listed on the first miss.
    """

    def __init__(self, root: Path, pattern: str) -> None:
        self.root, self.pattern = root, pattern
        self._members: dict[str, tuple[Path, str]] | None = None
        self._names: dict[str, list[tuple[Path, str]]] = {}

    def _index(self) -> dict[str, tuple[Path, str]]:
        if self._members is None:
            self._members = {}
            for archive in sorted(self.root.glob(self.pattern)):
                with zipfile.ZipFile(archive) as z:
                    for name in z.namelist():
                        if not name.endswith("/"):
                            self._members.setdefault(name, (archive, name))
                            self._names.setdefault(Path(name).name, []).append((archive, name))
        return self._members

    def resolve(self, relative: str, where: str) -> Path:
        target = self.root / relative
        if target.is_file():
            return target
        members = self._index()
        hit = members.get(Path(relative).as_posix())
        if hit is None and len(self._names.get(target.name, [])) == 1:
            hit = self._names[target.name][0]
        if hit is None:
            raise InputError(
                f"{where}: media file '{target}' does not exist, nor is it in any {self.pattern} there; "
                "check the root directory"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-")
        try:
            with os.fdopen(fd, "wb") as out, zipfile.ZipFile(hit[0]) as z, z.open(hit[1]) as src:
                shutil.copyfileobj(src, out)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return target


def build_once(path: Path, write) -> Path:
    """The folder ``path``, written by ``write(folder)`` unless it exists: in a temporary folder renamed when
    complete, so a crash or a concurrent writer never leaves a partial set."""
    if path.is_dir():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
    try:
        write(tmp)
        try:
            os.replace(tmp, path)
        except OSError:  # another process finished first
            if not path.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return path
