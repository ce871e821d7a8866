"""Benchmark readers and the synthetic benchmark: every question as an :class:`~avmech.AVSample`.

    import avmech.data
    samples = avmech.data.read("av-speakerbench", "/data/AV-SpeakerBench", limit=100)
    demo = avmech.data.read("av-odyssey", avmech.data.synthetic.ensure("av-odyssey"))

``read(name, root)`` takes a local copy of a benchmark in its released layout (each
module's docstring shows it): ``"av-speakerbench"`` (:mod:`.speakerbench`),
``"av-odyssey"`` (:mod:`.odyssey`) or ``"worldsense"`` (:mod:`.worldsense`).  Every
sample has its options without letter prefixes, ``answer`` the index of the correct one,
``prompt_format`` the benchmark's preset, a stable ``id`` ``"<name>/<question id>"`` and
its task/category fields in ``meta``.  :mod:`.synthetic` writes small sets in the same
layouts: the embedded demo data and the test data; :mod:`.planted` the tasks the planted
demo models are trained on.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from avmech.data import odyssey, planted, speakerbench, synthetic, worldsense
from avmech.data.common import NAMES
from avmech.errors import InputError
from avmech.sample import AVSample

_READERS = {"av-speakerbench": speakerbench.read, "av-odyssey": odyssey.read, "worldsense": worldsense.read}


def read(
    name: str,
    root: str | Path,
    *,
    split: str | None = None,
    limit: int | None = None,
    select: Mapping[str, Any] | None = None,
    **options: Any,
) -> list[AVSample]:
    """The questions of benchmark ``name`` stored under ``root``, in file order.

    split: the released split; each benchmark has one, ``"test"`` (``None`` means it).
        For AV-SpeakerBench it names the csv (``root/<split>.csv``).
    select: keep samples whose ``meta`` fields match, a value or a list of accepted
        values per field (compared as case-folded strings), e.g.
        ``{"category": ["speaker recognition", "visual recognition"]}`` or
        ``{"direction": "A->I"}``; applied before ``limit``.
    limit: keep the first ``limit`` (selected) samples; only their media are extracted.
    options: benchmark-specific, ``modality=`` for AV-SpeakerBench
        (``"audio_visual"``, ``"visual"``, ``"audio"``), ``media_dir=`` for AV-Odyssey.
    """
    if name not in _READERS:
        raise InputError(f"unknown benchmark {name!r}: use one of {list(NAMES)}")
    return _READERS[name](root, split=split, limit=limit, select=select, **options)


__all__ = ["NAMES", "odyssey", "planted", "read", "speakerbench", "synthetic", "worldsense"]
