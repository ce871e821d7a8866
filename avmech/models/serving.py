"""The model an NDIF server builds for an avmech key.

A key ``avmech.models.serving.AVRemoteModel:{"repo_id": "Qwen/Qwen2.5-Omni-7B", ...}``
names this class; the server calls `AVRemoteModel._remoteable_from_model_key` with it,
which loads the model exactly as ``avmech.load(repo_id)`` does (``dtype``,
``device_map`` ... pass through), so the module tree, and the ``Module:<path>`` ids a
request refers to, match the client's. Its server workers need avmech (and transformers
5.x) installed to *load* a model; requests bring their own avmech code to *run*.
"""

from __future__ import annotations

import json
from typing import Any

from avmech.models.envoy import AVEnvoy
from avmech.models.registry import load


class AVRemoteModel(AVEnvoy):
    """The class in avmech's NDIF keys (see the module docstring)."""

    @classmethod
    def _remoteable_from_model_key(cls, model_key: str, **kwargs: Any) -> AVEnvoy:
        data = {**json.loads(model_key), **kwargs}
        data.pop("revision", None)
        data.pop("dispatch", None)  # avmech loads real weights: there is no meta-only build
        if "torch_dtype" in data:
            data["dtype"] = data.pop("torch_dtype")
        return load(data.pop("repo_id"), **data).nn
