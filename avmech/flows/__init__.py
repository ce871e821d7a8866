"""The study's analyses, built from primitives: each a generator of tidy records.

=====================  ==============================================  ==================
flow                   question                                        params (inputs)
=====================  ==============================================  ==================
knockout_sweep         which edges, in which layers, carry the answer  `KnockoutParams`
attention_allocation   where the last position / question looks        `AttentionParams`
attention_spikes       video positions with spiking attention, masked  `SpikeParams`
norm_sinks             outlier-norm positions and their knockout       `AttentionParams`
letter_lens            from which layer the answer letter emerges      `LensParams`
token_discard          accuracy and prefill time after dropping        `DiscardParams` (sweep)
modality_reliance      what removing the sound or the frames costs     `ModalityParams`
effective_pathway      are the necessary edges sufficient              `PathwayParams` (sweep)
=====================  ==============================================  ==================

`FLOWS` maps each name to a `Flow`: the generator, its parameter model, and the names of
the record sets it reads from other experiments (an experiment file's ``[inputs]``
table binds each name to an experiment, see `avmech.experiment`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pydantic import BaseModel

from avmech.flows.attention import AttentionParams, attention_allocation, norm_sinks
from avmech.flows.discard import DiscardParams, token_discard
from avmech.flows.knockout import STUDY_EDGES, KnockoutParams, knockout_sweep
from avmech.flows.lens import LensParams, letter_lens
from avmech.flows.modality import ModalityParams, modality_reliance
from avmech.flows.pathway import PathwayParams, effective_pathway
from avmech.flows.spikes import SpikeParams, attention_spikes


@dataclass(frozen=True)
class Flow:
    """A flow: ``run(model, samples, params, **inputs)``, its parameter model, and the record
    sets it can read (``inputs``, each a `pandas.DataFrame` of another experiment's records)."""

    run: Callable[..., Iterator[dict]]
    params: type[BaseModel]
    inputs: tuple[str, ...] = ()

    def needs(self, params: BaseModel) -> frozenset[str]:
        """The inputs these parameters need: what the parameter model says (``inputs_needed``), else all."""
        needed = getattr(params, "inputs_needed", None)
        return frozenset(needed() if needed is not None else self.inputs)


FLOWS: dict[str, Flow] = {
    "knockout_sweep": Flow(knockout_sweep, KnockoutParams),
    "attention_allocation": Flow(attention_allocation, AttentionParams),
    "attention_spikes": Flow(attention_spikes, SpikeParams),
    "norm_sinks": Flow(norm_sinks, AttentionParams),
    "letter_lens": Flow(letter_lens, LensParams),
    "token_discard": Flow(token_discard, DiscardParams, inputs=("sweep",)),
    "modality_reliance": Flow(modality_reliance, ModalityParams),
    "effective_pathway": Flow(effective_pathway, PathwayParams, inputs=("sweep",)),
}

__all__ = ["FLOWS", "STUDY_EDGES", "Flow"] + list(FLOWS)
