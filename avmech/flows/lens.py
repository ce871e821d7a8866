"""Logit lens of the answer letters: from which layer on does the model "know" the answer?

At the last position, each layer's residual stream is read through the final norm and
the unembedding (`LogitLens`); the record keeps, per layer, the probability of the
correct letter (softmax over the whole vocabulary), its rank among the option letters,
and the letter the layer would pick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Iterator, Literal

import torch
from pydantic import BaseModel, ConfigDict

from avmech.flows.common import answer_fields, prepared_samples, sample_fields
from avmech.interventions.lens import LogitLens
from avmech.sample import AVSample

if TYPE_CHECKING:
    from avmech.models.base import AVModel


class LensParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    norm: bool = True
    unembed: Literal["output", "input"] = "output"
    only_correct: bool = False


def letter_lens(m: AVModel, samples: Iterable[AVSample], params: LensParams) -> Iterator[dict]:
    """One record per (sample, layer)."""
    for s, p in prepared_samples(m, samples, "logit lens"):
        fields = sample_fields(s)
        r = m.run(p, [LogitLens(layers="all", positions="last", norm=params.norm, unembed=params.unembed)])
        if params.only_correct and not r.correct:
            continue
        probs = torch.softmax(r[0][:, 0].float(), dim=-1)[:, list(p.answer_ids)]  # [layer, option]
        for layer in range(m.n_layers):
            row = probs[layer]
            yield {**fields, "condition": f"lens|L{layer}", "layer": layer,
                   "p_layer": float(row[s.answer]), "pred_layer": int(row.argmax()),
                   "rank_layer": int((row > row[s.answer]).sum()),
                   **{f"p_{letter}": float(row[i]) for i, letter in enumerate(s.letters)},
                   **answer_fields(r)}
