"""Where a trace runs: in this process, or on an NDIF server that holds the model.

Every avmech run is one nnsight trace of the LLM (`avmech.interventions.run`). A backend
says who executes it:

- ``"local"`` (`LocalBackend`): this process, on the model loaded here.
- ``"ndif"`` (`NDIFBackend`): an NDIF server (the public service or a self-hosted one),
  through nnsight's own remote execution (its ``RemoteBackend``); the results are the
  same numbers a local run gives.
- `SimulatedBackend`: nnsight's local simulation of remote execution, made strict: the
  request is serialised, avmech is made unimportable, the request is deserialised and
  executed exactly as a server would, and only what a server sends back returns. The
  cheapest proof that a primitive (or a whole experiment) is remote-safe.

Choose per call (``m.run(p, prims, backend="ndif")``), for a block of code, flows
included (``with avmech.backends.use("ndif"): ...``), or per experiment
(``backend = "ndif"`` in the file, or ``avmech run exp.toml --backend ndif``).

What travels
------------
The server has the model and nothing else: no avmech, no media, no processor. So the
encoders run here, once per sample (`AVModel.encode`), and a request carries

- the LLM's inputs as tensors: ``inputs_embeds`` (token embeddings with the audio and
  vision features scattered in), the explicit 3-D ``position_ids`` and the 2-D
  ``attention_mask``; never text for the server to tokenise again. The server's trace
  is then the local trace, operation for operation;
- the primitives (frozen dataclasses of plain values, group names and tensors; checked
  by `avmech.remote.portable.check_portable` before anything is sent) and a portable run
  context: the `TokenMap`, the token-drop schedule and the model's shape and decoder map
  (`avmech.decoder.ModelFacts`), never the local model, its processor or the sample. Masks are built on the server from index
  lists, so a knockout costs a few bytes, not an ``n x n`` mask;
- the trace body as source, and avmech's own code *by value*
  (``nnsight.register(avmech)``: cloudpickle ships the classes and functions a request
  uses), so a server runs today's primitives without avmech installed, whatever version
  it might have;
- the attention implementation the primitives were checked against (the request's
  ``env``), which the server switches its shared model to before running.

What comes back is the last position's logits and each readout (``torch.save``, zstd).

The model key
-------------
NDIF names a model by ``"import.path.Class:{json}"``: the wrapper class a server builds
the model with, and a repository id. avmech builds it itself (nnsight's
``to_model_key()`` asks the Hugging Face Hub, which fails for a local directory and
offline): ``avmech.models.serving.AVRemoteModel:{"repo_id": "Qwen/Qwen2.5-Omni-7B",
"revision": null}``. A server deploying that key builds the model with
``avmech.load(repo_id)`` (`avmech.models.serving`), whose envoy is the one every `AVModel`
already traces with, so the module paths a request refers to are the same on both sides. The repository id is the
model's name, or ``NDIFBackend(model=...)`` for a model loaded from a local directory
(whose path means nothing to a server); ``model_key=`` overrides the whole key.

Host and API key
----------------
Read at each request, first found wins: the backend's own field (an experiment's
``[ndif]`` table), the ``NDIF_HOST`` / ``NDIF_API_KEY`` environment variables, then
nnsight's configuration (``nnsight.CONFIG.API``, e.g. ``~/.config/nnsight/config.yaml``;
its default host is the public service, https://api.ndif.us).

Failures
--------
Each failure a user meets is a `RemoteError` naming the host, the problem and the fix:
an unreachable server, a rejected API key, a model the server does not serve, a request
past its ``timeout``, an exception on the server (its message shown). Runs fail whole,
so a flow's records on disk stay consistent and an interrupted experiment resumes
where it stopped (`avmech.store`).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator

from avmech.errors import InputError, RemoteError
from avmech.remote.simulation import Simulation
from avmech.remote.transport import Request


def model_key(m: Any, repo_id: str | None = None) -> str:
    """The NDIF key of ``m``: the class a server builds it with (`avmech.models.serving.AVRemoteModel`)
    and the repository id the server serves it under."""
    repo = repo_id or m.name
    if repo_id is None and (os.sep in repo or repo.startswith(".")) and Path(repo).exists():
        raise InputError(
            f"model {repo!r} is a local directory, which means nothing to an NDIF server: name the repository "
            "id the server serves it under (NDIFBackend(model='org/name'), or model = ... in the [ndif] table)"
        )
    return f"{m.nn.key_class}:{m.nn.key_suffix(repo)}"


@dataclass(frozen=True)
class Backend:
    """Where a run's trace executes; ``tracer_backend`` is what nnsight's trace gets."""

    remote: ClassVar[bool] = False

    def tracer_backend(self, m: Any):
        """The nnsight backend for a trace of ``m`` (None: nnsight's own, here)."""
        return None


@dataclass(frozen=True)
class LocalBackend(Backend):
    """This process, on the model loaded here."""


@dataclass(frozen=True)
class SimulatedBackend(Backend):
    """A remote run without a server: serialised, deserialised with avmech unimportable,
    executed as a server executes it, and only the saved values brought back."""

    remote: ClassVar[bool] = True

    def tracer_backend(self, m: Any):
        return Simulation(m.nn)


@dataclass(frozen=True)
class NDIFBackend(Backend):
    """An NDIF server. Unset fields come from NDIF_HOST / NDIF_API_KEY, then nnsight's config.

    ``model``: the repository id the server serves this model under (default: its name);
    ``model_key``: the whole NDIF key, overriding `model_key`; ``timeout``: seconds to
    wait for one request's result (None: as long as it takes); ``verbose``: nnsight's
    status display and payload sizes."""

    host: str | None = None
    api_key: str | None = field(default=None, repr=False)
    model: str | None = None
    model_key: str | None = None
    timeout: float | None = None
    verbose: bool = False

    remote: ClassVar[bool] = True

    def resolved_host(self) -> str:
        from nnsight import CONFIG

        host = (self.host or os.environ.get("NDIF_HOST") or CONFIG.API.HOST).rstrip("/")
        if not host.startswith(("http://", "https://")):
            raise InputError(f"NDIF host {host!r} must start with http:// or https:// (e.g. https://api.ndif.us)")
        return host

    def resolved_api_key(self) -> str:
        from nnsight import CONFIG

        return self.api_key or os.environ.get("NDIF_API_KEY") or CONFIG.API.APIKEY or ""

    def tracer_backend(self, m: Any):
        key = self.model_key or model_key(m, self.model)
        return Request(key, self.resolved_host(), self.resolved_api_key(), m.nn._remoteable_get_env(),
                       self.timeout, self.verbose)


_ACTIVE: contextvars.ContextVar[Backend] = contextvars.ContextVar("avmech_backend", default=LocalBackend())


def resolve(spec: str | Backend | None = None) -> Backend:
    """A backend from ``"local"``, ``"ndif"`` or a `Backend`; None: the one `use` set (else local)."""
    if spec is None:
        return _ACTIVE.get()
    if isinstance(spec, Backend):
        return spec
    if spec == "local":
        return LocalBackend()
    if spec == "ndif":
        return NDIFBackend()
    raise InputError(f"unknown backend {spec!r}: use 'local', 'ndif' or an avmech.backends.Backend")


@contextlib.contextmanager
def use(spec: str | Backend) -> Iterator[Backend]:
    """Run every trace inside the block (flows included) on ``spec`` unless a call names its own."""
    token = _ACTIVE.set(resolve(spec))
    try:
        yield _ACTIVE.get()
    finally:
        _ACTIVE.reset(token)


__all__ = ["Backend", "LocalBackend", "NDIFBackend", "RemoteError", "SimulatedBackend", "model_key", "resolve", "use"]
