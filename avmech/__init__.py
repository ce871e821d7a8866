"""avmech: trace how sound and sight travel through audio-visual LLMs.

    m = avmech.load("tiny-omni", seed=0)
    p = m.prepare(avmech.AVSample(video="clip.mp4", question="Who speaks?", options=["a", "b"], answer=0))
    print(p.tokens)
"""

from avmech.errors import InputError, ModelError
from avmech.models import AVModel, Prepared, load
from avmech.sample import AVSample, Item, PromptFormat
from avmech.tokens import Group, TokenMap

__all__ = ["AVModel", "AVSample", "Group", "InputError", "Item", "ModelError", "Prepared", "PromptFormat", "TokenMap", "load"]
