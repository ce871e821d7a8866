"""What a sample becomes, and what a run gives: the values every layer of avmech passes around.

::

    AVSample --(family adapter: prepare)--> Prepared   model inputs + TokenMap
             --(encoders, once)----------> Encoded    the LLM's inputs: embeddings, positions
             --(a trace with primitives)-> RunResult  last-position logits + readouts

They hold tensors and plain values only, so they can be tested without a model and, for
`Encoded` and `RunResult`, travel to and from an NDIF server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int

from avmech.sample import AVSample
from avmech.tokens import TokenMap


@dataclass(frozen=True, eq=False)
class Prepared:
    """A sample turned into model inputs, with the map of what each position is.

    ``inputs`` runs the whole model: ``m.hf(**p.inputs)``; it holds the explicit 3-D
    ``position_ids`` and a 2-D ``attention_mask``. ``answer_ids`` are the token ids of
    the option letters as the model would write them at the last position.
    """

    sample: AVSample
    inputs: dict[str, Any]
    tokens: TokenMap
    answer_ids: tuple[int, ...]
    text: str
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def input_ids(self) -> Int[torch.Tensor, "batch pos"]:
        return self.inputs["input_ids"]

    @property
    def position_ids(self) -> Int[torch.Tensor, "axis batch pos"]:
        return self.inputs["position_ids"]

    def __len__(self) -> int:
        return self.input_ids.shape[-1]

    def __repr__(self) -> str:
        return f"Prepared({self.sample.id or 'sample'!r}, {len(self)} positions)\n{self.tokens.summary()}"


@dataclass(frozen=True)
class Encoded:
    """The LLM's inputs after the encoders ran: what every later trace starts from.

    ``extra`` holds what a family's decoder takes besides the embeddings (Qwen3-Omni's
    DeepStack visual features and their positions), passed to every run as keywords."""

    inputs_embeds: Float[torch.Tensor, "batch pos d_model"]
    position_ids: Int[torch.Tensor, "axis batch pos"]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class RunResult:
    """What one run gives: the last position's logits, answer metrics and each readout.

    ``result[i]`` or ``result[primitive]`` is the readout of the i-th / that primitive
    (``None`` for edits)."""

    logits: Float[torch.Tensor, " d_vocab"]
    answer_ids: tuple[int, ...]
    answer: int | None
    interventions: tuple[Any, ...]
    readouts: tuple[Any, ...]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, int):
            return self.readouts[key]
        for i, r in zip(self.interventions, self.readouts):
            if i is key or i == key:
                return r
        raise KeyError(f"{key!r} was not part of this run")

    @property
    def finite(self) -> bool:
        """Whether the logits are all finite: a NaN or inf (an edit gone wrong, an overflow)
        leaves the run without a prediction, never an argmax of NaNs."""
        return bool(torch.isfinite(self.logits).all())

    @property
    def probs(self) -> Float[torch.Tensor, " d_vocab"]:
        return torch.softmax(self.logits.float(), dim=-1)

    @property
    def letter_probs(self) -> Float[torch.Tensor, " n_option"]:
        """Probability of each option letter at the last position (softmax over the whole vocabulary)."""
        return self.probs[list(self.answer_ids)]

    @property
    def p_correct(self) -> float:
        """Probability of the correct option's letter (NaN when the logits are not finite)."""
        if self.answer is None:
            raise ValueError("this sample has no answer: p_correct is undefined")
        return float(self.letter_probs[self.answer]) if self.finite else float("nan")

    @property
    def pred(self) -> int | None:
        """Index of the option whose letter has the highest logit; None when the logits are not finite."""
        if not self.answer_ids:
            raise ValueError("this sample has no options")
        return int(torch.argmax(self.logits[list(self.answer_ids)])) if self.finite else None

    @property
    def correct(self) -> bool:
        return self.answer is not None and self.pred is not None and self.pred == self.answer
