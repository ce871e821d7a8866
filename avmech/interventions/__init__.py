"""Typed intervention primitives; see `avmech.interventions.base` for the protocol."""

from avmech.interventions.attention import AttentionRead
from avmech.interventions.base import Intervention, RunContext, Site
from avmech.interventions.drop import TokenDrop
from avmech.interventions.knockout import AttentionKnockout, EdgeKnockout, Knockout
from avmech.interventions.lens import LogitLens
from avmech.interventions.patching import Ablate, ActivationPatch, Capture
from avmech.interventions.run import RunResult

__all__ = [
    "Ablate", "ActivationPatch", "AttentionKnockout", "AttentionRead", "Capture", "EdgeKnockout", "Intervention", "Knockout",
    "LogitLens", "RunContext", "RunResult", "Site", "TokenDrop",
]
