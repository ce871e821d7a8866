"""Knockout sweeps: which attention edges carry the answer, and in which layers.

For each edge (source group -> target group) and each window of ``k`` consecutive
layers centred on every layer, block the edge in the window and record the relative
change of the correct letter's probability, ``dp = (p_knockout - p_base) / p_base``,
and whether the answer survives. By default only samples the model answers correctly
are swept (the study's protocol); their base run is always recorded (condition
``base``). Giving several ``k`` is the window-size ablation; ``random_control`` adds,
for every edge and window, a knockout of as many randomly drawn edges into the same
target rows (keys outside the source group), showing the effect is about *which*
edges, not how many.

The study's edges (`STUDY_EDGES`): audio-visual video -- its input is
``[system][video+audio][question+options]``, so the question is the whole text block
(``question_block``: instruction, question, option letters and texts) and the audio
every audio position (``audio_tokens``, video-SALMONN 2+'s padding silence included):
audio/video -> question block, audio/video/question block -> last, last -> last;
interleaved items -- candidates/reference/options -> last, candidates/question ->
reference, candidates -> options, correct vs incorrect options -> last. Each record
names the roles its groups covered in that sample (``src_roles``, ``dst_roles``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from avmech.errors import InputError
from avmech.flows.common import (
    GroupExpr,
    answer_fields,
    group_roles,
    prepared_samples,
    sample_fields,
    sample_rng,
    windows,
)
from avmech.interventions.knockout import AttentionKnockout, EdgeKnockout, group_edges
from avmech.sample import AVSample

if TYPE_CHECKING:
    from avmech.models.base import AVModel, Prepared

STUDY_EDGES = {
    "av-video": [
        ("audio_tokens", "question_block"), ("video", "question_block"), ("audio_tokens", "last"),
        ("video", "last"), ("question_block", "last"), ("last", "last"),
    ],
    "interleaved": [
        ("candidates", "last"), ("reference", "last"), ("options", "last"), ("candidates", "reference"),
        ("question", "reference"), ("candidates", "options"), ("correct", "last"), ("incorrect", "last"),
    ],
}


class Edge(BaseModel):
    """An attention edge family: keys in ``src``, queries in ``dst`` (TokenMap group expressions)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    src: GroupExpr
    dst: GroupExpr

    def count(self, p: Prepared) -> tuple[int, str]:
        """How many causal edges it has in ``p``, and, when none, why."""
        src, dst = p.tokens.group(self.src), p.tokens.group(self.dst)
        for name, g in (("src", src), ("dst", dst)):
            if not len(g):
                return 0, f"{name} {g.name!r} is absent from this sample"
        n = len(group_edges(src.tensor(), dst.tensor())[0])
        return n, "" if n else f"every {self.src!r} position comes after every {self.dst!r} position"

    @property
    def label(self) -> str:
        return f"{self.src}->{self.dst}"


class KnockoutParams(BaseModel):
    """Parameters of a knockout sweep (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    edges: list[Edge] = Field(min_length=1)
    k: list[int] = Field(default=[7], min_length=1)
    only_correct: bool = True
    random_control: bool = False
    seed: int = 0
    allow_empty: bool = Field(default=False, description=(
        "record an edge with nothing to cut in a sample (n_edges = 0, dp = NaN, empty_reason) instead of stopping"))

    @field_validator("edges", mode="before")
    @classmethod
    def _pairs(cls, value):
        return [{"src": e[0], "dst": e[1]} if isinstance(e, (list, tuple)) else e for e in value]

    @field_validator("k")
    @classmethod
    def _positive(cls, value):
        if any(x < 1 for x in value):
            raise ValueError("window sizes must be >= 1")
        return value


def random_pairs(p: Prepared, edge: Edge, rng: np.random.Generator) -> tuple[tuple[int, int], ...]:
    """As many random (query, key) edges into each ``dst`` row as ``edge`` blocks there,
    with keys drawn from that row's visible keys outside ``src`` and other than itself."""
    src = set(p.tokens.positions(edge.src).tolist())
    pairs = []
    for q in p.tokens.positions(edge.dst).tolist():
        count = sum(1 for s in src if s <= q)
        pool = [k for k in range(q) if k not in src]
        for k in rng.choice(pool, size=min(count, len(pool)), replace=False) if pool else ():
            pairs.append((q, int(k)))
    return tuple(pairs)


def knockout_sweep(m: AVModel, samples: Iterable[AVSample], params: KnockoutParams) -> Iterator[dict]:
    """Yield one record per (sample, condition): base, then edge x window (x control)."""
    for s, p in prepared_samples(m, samples, "knockout sweep"):
        fields = sample_fields(s)
        rng = sample_rng(params.seed, fields["sample_id"])
        base = m.run(p)
        yield {**fields, "condition": "base", **answer_fields(base)}
        if params.only_correct and not base.correct:
            continue
        for edge in params.edges:
            n_edges, reason = edge.count(p)
            if not n_edges and not params.allow_empty:
                raise InputError(
                    f"sample {fields['sample_id']!r}: the edge {edge.label} has nothing to cut ({reason}); set "
                    "allow_empty = true in the sweep's params to record such conditions as NaN, or drop the edge"
                )
            roles = {"src_roles": group_roles(p, edge.src), "dst_roles": group_roles(p, edge.dst)}
            for k in params.k:
                conds, meta = [], []
                for w in windows(m.n_layers, k):
                    for kind in ["edge", "random"] if params.random_control else ["edge"]:
                        info = {"condition": f"{edge.label}|k={k}|c={w.centre}|{kind}", "edge": edge.label,
                                "src": edge.src, "dst": edge.dst, **roles, "k": k, "centre": w.centre,
                                "start": w.start, "stop": w.stop, "control": kind, "n_edges": n_edges}
                        why = reason
                        if kind == "random" and n_edges:
                            pairs = random_pairs(p, edge, rng)
                            info["n_edges"] = len(pairs)
                            why = "no key outside the source group to draw random edges from"
                            prim = EdgeKnockout(pairs, w.layers) if pairs else None
                        else:
                            prim = AttentionKnockout(edge.src, edge.dst, w.layers) if n_edges else None
                        if prim is None:
                            yield {**fields, **info, "p_base": base.p_correct, "dp": math.nan, "empty_reason": why}
                            continue
                        conds.append([prim])
                        meta.append(info)
                for info, r in zip(meta, m.run_many(p, conds)):
                    yield {**fields, **info, **answer_fields(r, base)}
