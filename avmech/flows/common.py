"""What every flow shares: layer windows, sample records, and resumable iteration.

A flow is a generator ``flow(model, samples, params, done) -> records``: it walks the
samples, runs primitives, and yields one tidy record (a flat dict) per (sample,
condition) as soon as it is known, skipping the pairs in ``done`` (already on disk from
an interrupted run). Every record carries ``sample_id``, ``condition`` and the sample's
task fields, so that figure scripts can split by task without the samples.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from tqdm.auto import tqdm

from avmech.errors import InputError
from avmech.sample import AVSample

if TYPE_CHECKING:
    from avmech.interventions.run import RunResult
    from avmech.models.base import AVModel, Prepared

TASK_FIELDS = ("task", "category", "sub_category", "task_id", "task_type", "task_domain", "subfield",
               "question_type_id", "data_type", "direction")


@dataclass(frozen=True)
class Window:
    """Layers [start, stop) centred on ``centre`` (clipped at the model's ends)."""

    centre: int
    start: int
    stop: int

    @property
    def layers(self) -> range:
        return range(self.start, self.stop)


def windows(n_layers: int, k: int) -> list[Window]:
    """Windows of ``k`` consecutive layers centred on every layer, clipped to the model.

    Centred windows (as in the study's figures) reach every layer; near the ends they
    are shorter than ``k``, which the records show through ``start``/``stop``. A ``k``
    beyond the model's depth is cut to the depth (small demo models)."""
    if k < 1:
        raise InputError(f"window size k={k} must be at least 1")
    k = min(k, n_layers)
    half = (k - 1) // 2
    return [Window(c, max(0, c - half), min(n_layers, c - half + k)) for c in range(n_layers)]


def sample_fields(s: AVSample) -> dict[str, Any]:
    """The record columns that identify a sample and its task."""
    stable = hashlib.sha1(repr((s.question, s.options, s.video, s.audio)).encode()).hexdigest()[:10]
    out: dict[str, Any] = {"sample_id": s.id or f"sample-{stable}"}  # stable across runs, for resuming
    for key in TASK_FIELDS:
        if key in s.meta:
            out[key] = s.meta[key]
    return out


def answer_fields(r: RunResult, base: RunResult | None = None) -> dict[str, Any]:
    """p_correct, prediction and correctness; with a base run, also ``p_base`` and ``dp``."""
    out = {"p_correct": r.p_correct, "pred": r.pred, "correct": bool(r.correct)}
    if base is not None:
        out["p_base"] = base.p_correct
        out["correct_base"] = bool(base.correct)
        out["dp"] = (r.p_correct - base.p_correct) / base.p_correct
    return out


def prepared_samples(m: AVModel, samples: Iterable[AVSample], desc: str) -> Iterator[tuple[AVSample, Prepared]]:
    """Prepare each sample, with a progress bar (rate and time left)."""
    samples = list(samples)
    for s in tqdm(samples, desc=desc, unit="sample", dynamic_ncols=True):
        if not s.options or s.answer is None:
            raise InputError(f"sample {s.id!r} has no options/answer: flows score the correct option letter")
        yield s, m.prepare(s)


def has_group(p: Prepared, spec: str) -> bool:
    """Whether a group exists (non-empty) in this sample: edges over absent groups are skipped."""
    try:
        return len(p.tokens.group(spec)) > 0
    except InputError:
        return False
