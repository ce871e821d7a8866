"""The study's analyses, built from primitives: each a generator of tidy records.

=====================  ==============================================  =================
flow                   question                                        params
=====================  ==============================================  =================
knockout_sweep         which edges, in which layers, carry the answer  `KnockoutParams`
attention_allocation   where the last position / question looks        `AttentionParams`
attention_sinks        outlier-norm positions and their knockout       `AttentionParams`
letter_lens            from which layer the answer letter emerges      `LensParams`
token_discard          accuracy and prefill time after dropping        `DiscardParams`
effective_pathway      are the necessary edges sufficient              `PathwayParams`
=====================  ==============================================  =================
"""

from avmech.flows.attention import AttentionParams, attention_allocation, attention_sinks
from avmech.flows.discard import DiscardParams, token_discard
from avmech.flows.knockout import STUDY_EDGES, KnockoutParams, knockout_sweep
from avmech.flows.lens import LensParams, letter_lens
from avmech.flows.pathway import PathwayParams, effective_pathway

FLOWS = {
    "knockout_sweep": (knockout_sweep, KnockoutParams),
    "attention_allocation": (attention_allocation, AttentionParams),
    "attention_sinks": (attention_sinks, AttentionParams),
    "letter_lens": (letter_lens, LensParams),
    "token_discard": (token_discard, DiscardParams),
    "effective_pathway": (effective_pathway, PathwayParams),
}

__all__ = ["FLOWS", "STUDY_EDGES"] + [name for name in FLOWS]
