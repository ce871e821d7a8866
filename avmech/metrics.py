"""Metrics on run results: the study's relative probability change and friends.

``dp = (p_cond - p_base) / p_base`` on the correct option letter's probability (the
study's main metric); accuracy is the argmax over the option letters.
"""

from __future__ import annotations

from avmech.interventions.run import RunResult


def p_correct(result: RunResult) -> float:
    """Probability of the correct option letter at the last position."""
    return result.p_correct


def dp(cond: RunResult, base: RunResult) -> float:
    """Relative change of the correct letter's probability: ``(p_cond - p_base) / p_base``."""
    return (cond.p_correct - base.p_correct) / base.p_correct


def accuracy(results: list[RunResult]) -> float:
    """Fraction of results whose highest-logit option letter is the correct one."""
    if not results:
        raise ValueError("accuracy of no results")
    return sum(r.correct for r in results) / len(results)


def logit_diff(result: RunResult, a: int, b: int) -> float:
    """Logit of option ``a``'s letter minus option ``b``'s."""
    ids = result.answer_ids
    return float(result.logits[ids[a]] - result.logits[ids[b]])
