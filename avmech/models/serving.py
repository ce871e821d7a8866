"""The model an NDIF server builds for an avmech key.

A key ``avmech.models.serving.AVRemoteModel:{"repo_id": "Qwen/Qwen2.5-Omni-7B", ...}``
names this class, and a server builds it through ``Remotable.from_model_key`` in three
situations, as NDIF does:

- to size a model before deploying it, and to give a sandboxed request's runner its
  module map: ``from_model_key(key)`` (no ``dispatch``) builds the architecture alone
  on the meta device, from the config files; no weight file is opened;
- to serve it: ``from_model_key(key, dispatch=True, dtype="bfloat16", device=0)`` builds
  the same skeleton and loads the weights (``device``: a GPU index; ``device_map`` /
  ``max_memory`` for several GPUs, Qwen-Omni families only);
- a skeleton that runs loads its weights then (nnsight's ``dispatch``).

Either way the model is built as ``avmech.load(repo_id)`` builds it, so the module tree,
and the ``Module:<path>`` ids a request refers to, match the client's. Its server needs
avmech (and transformers 5.x) installed to *build* a model; requests bring their own
avmech code to *run*. ``trust_remote_code`` is ignored: avmech builds every family from
transformers' own classes.
"""

from __future__ import annotations

import json
from typing import Any

from torch import nn

from avmech.models.envoy import AVEnvoy
from avmech.models.registry import load

# Where a model goes, as a server asks: not part of its structure (ignored by the meta build).
PLACEMENT = ("device", "device_map", "max_memory")


def load_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A server's build options as `avmech.load` takes them."""
    opts = {k: v for k, v in kwargs.items() if k not in ("dispatch", "trust_remote_code", "revision")}
    if "torch_dtype" in opts:
        opts["dtype"] = opts.pop("torch_dtype")
    if isinstance(opts.get("device"), int):
        opts["device"] = f"cuda:{opts['device']}"
    return opts


class AVRemoteModel(AVEnvoy):
    """The class in avmech's NDIF keys (see the module docstring)."""

    @classmethod
    def _remoteable_from_model_key(cls, model_key: str, **kwargs: Any) -> AVRemoteModel:
        repo = json.loads(model_key)["repo_id"]
        opts = load_options(kwargs)
        skeleton = load(repo, **{k: v for k, v in opts.items() if k not in PLACEMENT}, device="meta")
        envoy = cls(skeleton.hf, rename=skeleton.aliases)
        envoy.repo_id = repo
        envoy.dispatched, envoy.args, envoy.kwargs = False, (repo,), opts  # what `dispatch` loads
        if kwargs.get("dispatch"):
            envoy.dispatch()
        return envoy

    def _load(self, repo_id: str, **opts: Any) -> nn.Module:
        """The weights, as `avmech.load` reads them (nnsight's ``dispatch`` swaps them into this envoy)."""
        return load(repo_id, **opts).hf
