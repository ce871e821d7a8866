"""The nnsight envoy every `AVModel` traces with, and its remote identity.

Locally it is an ordinary nnsight envoy over the loaded module, with the standard names
bound as aliases (``llm``, ``ln_final``, ``lm_head``, ...). It also knows how an NDIF
server names and builds the same model: the key class (`avmech.models.serving`, which
builds the model exactly as `avmech.load` does, so module paths match on both sides,
first without weights, then dispatching them) and the attention kernel the client
checked its primitives against, which the server switches its shared model to before
running a request.
"""

from __future__ import annotations

import json
import warnings

from nnsight.modeling.mixins.remotable import Remotable

from avmech.errors import ModelError

# The class a server builds a model with, named in every NDIF key of an avmech model.
KEY_CLASS = "avmech.models.serving.AVRemoteModel"


class AVEnvoy(Remotable):
    """An nnsight envoy with a remote identity: ``repo_id`` names the model on a server.

    Built over a loaded module it is ready to run; built over a structure-only (meta)
    module by a server (`avmech.models.serving`), it loads the real weights, through
    nnsight's ``Meta.dispatch`` (`Remotable` is a ``Meta``), the first time it runs."""

    repo_id: str = ""
    key_class: str = KEY_CLASS

    def __init__(self, *args, **kwargs):
        with warnings.catch_warnings():  # e.g. a BERT-style `.output` submodule, served as `.E_output` by nnsight
            warnings.filterwarnings("ignore", message=".*has a submodule named 'output'", category=UserWarning)
            super().__init__(*args, **kwargs)

    def trace(self, *args, fn=None, **kwargs):
        """A trace that runs `_forward`, a method of this class, rather than nnsight's default
        (the name ``"__call__"``): NDIF's sandbox runner sends the server the *name* of what a
        trace runs and the server looks it up on its envoy, where ``__call__`` is nnsight's
        ad-hoc module call, which stands the trace down (every read then fails out of
        order). nnsight's own transformers wrapper traces its ``_call`` for the same reason.
        ``Remotable.trace``, not ``super()``: inside a session nnsight recompiles the
        functions a trace calls from their source, which loses ``super()``'s class cell."""
        return Remotable.trace(self, *args, fn=self._forward if fn is None else fn, **kwargs)

    def _forward(self, *args, **kwargs):
        """The wrapped module's own call (its hooks fire), what a trace runs."""
        return self._module(*args, **kwargs)

    @staticmethod
    def key_suffix(repo_id: str) -> str:
        """The JSON half of an NDIF model key: the repository id (and no revision)."""
        return json.dumps({"repo_id": repo_id, "revision": None})

    def _remoteable_model_key(self) -> str:
        return self.key_suffix(self.repo_id)

    def _remoteable_get_env(self) -> dict:
        return {"attn_implementation": self._module.config._attn_implementation}

    def _remoteable_set_env(self, env: dict | None) -> None:
        """Server side: run the kernel the client checked its primitives against."""
        wanted = (env or {}).get("attn_implementation")
        if wanted is None or wanted == self._module.config._attn_implementation:
            return
        self._module.set_attn_implementation(wanted)
        if self._module.config._attn_implementation != wanted:
            raise ModelError(f"{type(self._module).__name__} cannot switch its attention kernel to {wanted!r}")
