"""A remote run without a server: nnsight's local simulation, made strict.

nnsight's own simulation checks that a request deserialises with local modules hidden,
then runs the *local* objects. `Simulation` also keeps avmech unimportable (its editable
install would otherwise stay reachable), runs the deserialised request, and brings back
only the saved values, through ``torch.save`` as a result travels: the cheapest proof
that a primitive, or a whole experiment, is remote-safe.
"""

from __future__ import annotations

import io
import sys

import torch
from nnsight.intervention.backends.local import LocalSimulationBackend

from avmech.remote.transport import serialize


class Simulation(LocalSimulationBackend):
    """nnsight's local simulation, executed as a server executes a request (see the module docstring)."""

    def __call__(self, tracer) -> None:
        import linecache

        from nnsight.schema.request import RequestModel
        from nnsight.tracing.tracer import _saves, save
        from nnsight.tracing.util import push

        blob = serialize(tracer, compress=False)
        persistent = self.model._remoteable_persistent_objects()
        filename = tracer.info.frame.f_code.co_filename
        saved_line = linecache.cache.get(filename)
        hidden = self._hide_local_modules()
        try:
            restored = RequestModel.deserialize(blob, persistent, compress=False)
            restored.execute(restored.info.code)
            saves = {k: v for k, v in restored.info.frame.f_locals.items() if id(v) in _saves()}
            buffer = io.BytesIO()
            torch.save(saves, buffer)
        finally:
            self._restore(hidden)
            if saved_line is not None:
                linecache.cache[filename] = saved_line
            else:
                linecache.cache.pop(filename, None)
        result = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
        for value in result.values():
            save(value)
        push(tracer.info.frame, result)

    def _hide_local_modules(self) -> dict:
        hidden = super()._hide_local_modules()
        for name in [n for n in sys.modules if n == "avmech" or n.startswith("avmech.")]:
            hidden["modules"][name] = sys.modules.pop(name)
        hidden["blocker"] = _Blocker("avmech")
        sys.meta_path.insert(0, hidden["blocker"])
        return hidden

    def _restore(self, hidden: dict) -> None:
        sys.meta_path.remove(hidden["blocker"])
        super()._restore(hidden)


class _Blocker:
    """A meta-path finder that makes a package unimportable, as on a server without it."""

    def __init__(self, package: str):
        self.package = package

    def find_spec(self, name: str, path=None, target=None):
        if name == self.package or name.startswith(self.package + "."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden: a server need not have it)", name=name)
        return None
