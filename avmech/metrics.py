"""Metrics on run results: the study's relative probability change and friends.

``dp = (p_cond - p_base) / p_base`` on the correct option letter's probability (the
study's main metric); accuracy is the argmax over the option letters, or, scored as the
benchmarks score a model, the letter read from its generated answer (`parse_letter`).
"""

from __future__ import annotations

import math
import re

from avmech.prepared import RunResult


def p_correct(result: RunResult) -> float:
    """Probability of the correct option letter at the last position."""
    return result.p_correct


def dp(cond: RunResult | float, base: RunResult | float) -> float:
    """Relative change of the correct letter's probability: ``(p_cond - p_base) / p_base``.

    Takes runs or their probabilities; NaN (never a number) when either run has non-finite
    logits or the base gives the correct letter no probability at all."""
    p1 = cond.p_correct if isinstance(cond, RunResult) else float(cond)
    p0 = base.p_correct if isinstance(base, RunResult) else float(base)
    if not (math.isfinite(p1) and math.isfinite(p0) and p0 > 0):
        return math.nan
    return (p1 - p0) / p0


def accuracy(results: list[RunResult]) -> float:
    """Fraction of results whose highest-logit option letter is the correct one (a run with
    non-finite logits has no prediction, so it counts as wrong)."""
    if not results:
        raise ValueError("accuracy of no results")
    return sum(r.correct for r in results) / len(results)


def logit_diff(result: RunResult, a: int, b: int) -> float:
    """Logit of option ``a``'s letter minus option ``b``'s."""
    ids = result.answer_ids
    return float(result.logits[ids[a]] - result.logits[ids[b]])


# Lead-ins a model writes before its letter, removed before the letter is looked for
# (the benchmarks' own scoring strips the same; longest first).
ANSWER_PREFIXES = (
    "The best answer is", "The correct answer is", "The best option is", "The correct option is",
    "The answer is", "The answer", "Best answer:", "Best option:", "Answer:",
)


def parse_letter(text: str, letters: str = "ABCD") -> int | None:
    """The option index of the first standalone letter of ``letters`` in a generated answer.

    Lead-ins such as "The best answer is" and "Answer:" are removed first (case-insensitive);
    a letter inside a word ("Based", "DAB") does not count. None when no letter stands alone:
    the answer is then scored wrong, never guessed."""
    rest = text
    for prefix in ANSWER_PREFIXES:
        rest = re.sub(re.escape(prefix), " ", rest, flags=re.IGNORECASE)
    found = re.search(rf"(?<![A-Za-z])([{re.escape(letters)}])(?![A-Za-z])", rest)
    return letters.index(found.group(1)) if found else None
