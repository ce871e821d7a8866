"""What every flow shares: layer windows, sample records, and the flow contract.

A flow is a generator ``flow(model, samples, params, **inputs) -> records``: it walks the
samples, runs primitives, and yields one tidy record (a flat dict) per (sample,
condition) as soon as it is known, the records of one sample together, sample after
sample. Every record carries ``sample_id``, ``condition`` and the sample's task fields,
so that figure scripts can split by task without the samples. ``inputs`` are the records
of other experiments a flow reads (a knockout sweep, for the layer a discard setting
follows from): the experiment file names them, and the runner passes them.

A flow knows nothing of what is on disk: the experiment runner (`avmech.experiment`)
gives it the samples not yet finished and writes only the records not yet written, so
an interrupted run resumes without repeats. A flow that draws random numbers seeds them
per sample (`sample_rng`), so its records do not depend on which samples ran before.

Flows get their samples through `prepared_samples`. A sample it cannot prepare (a corrupt
clip: a `MediaError`, or an `InputError` about that one sample) is an error, unless the
caller installed a handler with `on_sample_error`: then the handler decides, returning to
skip the sample or raising to stop (the experiment runner logs skips to
``skipped.jsonl``; ``--strict`` stops).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Iterable, Iterator

import numpy as np
from pydantic import AfterValidator
from tqdm.auto import tqdm

from avmech.errors import AVMechError, InputError, MediaError
from avmech.metrics import dp
from avmech.sample import AVSample
from avmech.tokens import ROLES, check_expression

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


def sample_rng(seed: int, sample_id: str) -> np.random.Generator:
    """A generator seeded by ``seed`` and the sample alone: the same draws whichever samples ran before."""
    return np.random.default_rng([seed, zlib.crc32(sample_id.encode())])


def group_roles(p: Prepared, spec: str) -> str:
    """The roles a group covers in this sample, in `ROLES` order ("instruction+question+option_letter"):
    what an alias or expression meant, written into the records beside its name."""
    present = set(p.tokens.role[p.tokens.positions(spec).numpy()].tolist())
    return "+".join(ROLES[code] for code in sorted(present))


def answer_fields(r: RunResult, base: RunResult | None = None) -> dict[str, Any]:
    """p_correct, prediction and correctness; with a base run, also ``p_base`` and ``dp``.

    A run with non-finite logits is flagged (``finite`` false): no prediction, not
    correct, and NaN probabilities that every summary counts as excluded."""
    out = {"p_correct": r.p_correct, "pred": r.pred, "correct": bool(r.correct), "finite": r.finite}
    if base is not None:
        out["p_base"] = base.p_correct
        out["correct_base"] = bool(base.correct)
        out["finite"] = r.finite and base.finite
        out["dp"] = dp(r, base)
    return out


SampleErrorHandler = Callable[[AVSample, AVMechError], None]
_ON_SAMPLE_ERROR: contextvars.ContextVar[SampleErrorHandler | None] = contextvars.ContextVar(
    "avmech_on_sample_error", default=None)


@contextlib.contextmanager
def on_sample_error(handler: SampleErrorHandler) -> Iterator[None]:
    """Inside the block, `prepared_samples` hands a sample it cannot prepare to ``handler(sample, error)``:
    returning skips the sample, raising stops the flow."""
    token = _ON_SAMPLE_ERROR.set(handler)
    try:
        yield
    finally:
        _ON_SAMPLE_ERROR.reset(token)


def prepared_samples(m: AVModel, samples: Iterable[AVSample], desc: str) -> Iterator[tuple[AVSample, Prepared]]:
    """Prepare each sample, with a progress bar (rate and time left); see `on_sample_error` for failures."""
    samples = list(samples)
    for s in tqdm(samples, desc=desc, unit="sample", dynamic_ncols=True):
        try:
            if not s.options or s.answer is None:
                raise InputError(f"sample {s.id!r} has no options/answer: flows score the correct option letter")
            p = m.prepare(s)
        except (MediaError, InputError) as e:
            handler = _ON_SAMPLE_ERROR.get()
            if handler is None:
                raise
            handler(s, e)
            continue
        yield s, p


def _grammar(expr: str) -> str:
    try:
        return check_expression(expr)
    except InputError as e:
        raise ValueError(str(e)) from None


# A group expression in a flow's parameters, checked against the grammar when the file loads.
GroupExpr = Annotated[str, AfterValidator(_grammar)]


def has_group(p: Prepared, spec: str) -> bool:
    """Whether a group is present (non-empty) in this sample; an unknown name or a malformed
    expression is an error, never an absent group."""
    return len(p.tokens.group(check_expression(spec))) > 0
