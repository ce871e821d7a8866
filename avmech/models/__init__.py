"""Model families behind one interface: `AVModel`, loaded by `load` (see `avmech.models.registry`)."""

from avmech.models.base import AVModel, Family
from avmech.models.omni import OmniModel
from avmech.models.qwen3_omni import Qwen3OmniModel
from avmech.models.registry import FAMILIES, embedded, load
from avmech.models.salmonn import SalmonnModel
from avmech.prepared import Encoded, Prepared

__all__ = ["FAMILIES", "AVModel", "Encoded", "Family", "OmniModel", "Prepared", "Qwen3OmniModel", "SalmonnModel", "embedded", "load"]
