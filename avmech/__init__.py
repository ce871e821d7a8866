"""avmech: trace how sound and sight travel through audio-visual LLMs.

    m = avmech.load("tiny-omni", seed=0)
    p = m.prepare(avmech.AVSample(video="clip.mp4", question="Who speaks?", options=["a", "b"], answer=0))
    print(p.tokens)
"""

from avmech import data, flows, metrics
from avmech.errors import AVMechError, InputError, MediaError, ModelError, RemoteError
from avmech.interventions import (
    Ablate,
    ActivationPatch,
    AttentionKnockout,
    AttentionRead,
    Capture,
    EdgeKnockout,
    Intervention,
    LogitLens,
    RunContext,
    RunResult,
    Site,
    TokenDrop,
)
from avmech.models import AVModel, Prepared, load
from avmech.sample import AVSample, Item, PromptFormat
from avmech.tokens import Group, TokenMap

__all__ = [
    "AVMechError", "AVModel", "AVSample", "Ablate", "ActivationPatch", "AttentionKnockout", "AttentionRead", "Capture", "EdgeKnockout", "Group",
    "InputError", "Intervention", "Item", "LogitLens", "MediaError", "ModelError", "Prepared", "PromptFormat", "RemoteError", "RunContext", "RunResult", "Site",
    "TokenDrop", "TokenMap", "data", "flows", "load", "metrics",
]
