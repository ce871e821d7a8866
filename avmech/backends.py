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
  by `check_portable` before anything is sent) and a portable run context: the
  `TokenMap`, the token-drop schedule and the model's shape (`ModelFacts`), never the
  local model, its processor or the sample. Masks are built on the server from index
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
offline): ``avmech.backends.AVRemoteModel:{"repo_id": "Qwen/Qwen2.5-Omni-7B",
"revision": null}``. `AVRemoteModel` is the envoy every `AVModel` already traces with;
a server deploying that key builds it with ``avmech.load(repo_id)``, so the module
paths a request refers to are the same on both sides. The repository id is the
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

import ast
import contextlib
import contextvars
import copy
import dataclasses
import enum
import functools
import inspect
import io
import json
import os
import sys
import textwrap
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator

import numpy as np
import torch
from nnsight.intervention.backends.local import LocalSimulationBackend
from nnsight.intervention.backends.remote import RemoteBackend
from nnsight.intervention.backends.remote import RemoteError as NNsightRemoteError
from nnsight.modeling.mixins.remotable import Remotable
from nnsight.schema.response import ResponseModel, Status

from avmech.errors import InputError, ModelError, RemoteError

if TYPE_CHECKING:
    from avmech.interventions.base import Intervention, RunContext
    from avmech.models.base import AVModel

MAX_REQUEST_BYTES = 2**30  # one request's serialised size (1 GiB): past it, something local was captured
CONNECT_TIMEOUT = 10.0  # seconds to open the status websocket


# ---- the model, as a server sees it ---------------------------------------------------
class AVRemoteModel(Remotable):
    """The nnsight envoy an `AVModel` traces with (``m.nn``), with a remote identity.

    Locally it is an ordinary envoy over the loaded module. A server deploying the key
    `model_key` builds it through `_remoteable_from_model_key` (``avmech.load``),
    so the module tree, and the ``Module:<path>`` ids a request refers to, match."""

    repo_id: str = ""

    def _remoteable_model_key(self) -> str:
        return _key_suffix(self.repo_id)

    @classmethod
    def _remoteable_from_model_key(cls, model_key: str, **kwargs: Any) -> AVRemoteModel:
        """Server side: load the model as avmech does (``dtype``, ``device_map`` ... pass through)."""
        import avmech

        data = {**json.loads(model_key), **kwargs}
        data.pop("revision", None)
        data.pop("dispatch", None)  # avmech loads real weights: there is no meta-only build
        if "torch_dtype" in data:
            data["dtype"] = data.pop("torch_dtype")
        return avmech.load(data.pop("repo_id"), **data).nn

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


def _key_suffix(repo_id: str) -> str:
    return json.dumps({"repo_id": repo_id, "revision": None})


def model_key(m: AVModel, repo_id: str | None = None) -> str:
    """The NDIF key of ``m``: `AVRemoteModel` and the repository id a server serves it under."""
    repo = repo_id or m.name
    if repo_id is None and (os.sep in repo or repo.startswith(".")) and Path(repo).exists():
        raise InputError(
            f"model {repo!r} is a local directory, which means nothing to an NDIF server: name the repository "
            "id the server serves it under (NDIFBackend(model='org/name'), or model = ... in the [ndif] table)"
        )
    return f"{AVRemoteModel.__module__}.{AVRemoteModel.__qualname__}:{_key_suffix(repo)}"


# ---- what a request carries -----------------------------------------------------------
@dataclass(frozen=True)
class ModelFacts:
    """What primitives may read from ``ctx.m`` on a server: the model's shape, no weights."""

    name: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_vocab: int
    attn_implementation: str

    @classmethod
    def of(cls, m: AVModel) -> ModelFacts:
        return cls(**{f.name: getattr(m, f.name) for f in dataclasses.fields(cls)})

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(
            f"ctx.m.{name} is not available in a remote run (the server has only the model): primitives may "
            f"read ctx.m's shape ({', '.join(f.name for f in dataclasses.fields(self))}) and ctx.nn"
        )


class _NotSent:
    """Stands in for ``ctx.p`` in a remote run: the sample stays on the client."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(
            f"ctx.p.{name} is not available in a remote run (the sample stays on the client): resolve what "
            "apply() needs in bind() or check() and keep it in the primitive's fields"
        )


def portable_context(ctx: RunContext) -> RunContext:
    """A copy of ``ctx`` that can travel: the model's shape instead of the model, no sample."""
    out = copy.copy(ctx)
    out.m = ModelFacts.of(ctx.m)
    out.p = _NotSent()
    return out


_LEAVES = (type(None), bool, int, float, complex, str, bytes, range, enum.Enum, torch.Tensor, torch.dtype,
           types.FunctionType, np.ndarray, np.generic)
_FACTS = frozenset(f.name for f in dataclasses.fields(ModelFacts))


def _local_object(value: Any, depth: int = 0) -> str | None:
    """The type name of the first thing in ``value`` that cannot travel to a server, or None."""
    from avmech.interventions.run import RunResult
    from avmech.models.base import Prepared
    from avmech.sample import AVSample

    if isinstance(value, _LEAVES):
        return None
    if isinstance(value, (torch.nn.Module, Path, Prepared, RunResult, AVSample)) or depth > 8:
        return type(value).__name__
    if isinstance(value, (tuple, list, set, frozenset)):
        return next((bad for v in value if (bad := _local_object(v, depth + 1))), None)
    if isinstance(value, dict):
        return next((bad for kv in value.items() for v in kv if (bad := _local_object(v, depth + 1))), None)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return next((bad for f in dataclasses.fields(value)
                     if (bad := _local_object(getattr(value, f.name), depth + 1))), None)
    return type(value).__name__


@functools.cache
def _reads_local_context(cls: type) -> str | None:
    """``ctx.p`` or ``ctx.m.<not a shape field>``, where the primitive's ``apply`` reads one itself
    (what its helpers read is caught on the server, with the same message)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls.apply)))
    except (OSError, TypeError, SyntaxError):
        return None
    args = tree.body[0].args.args if isinstance(tree.body[0], ast.FunctionDef) else []
    if len(args) < 2:
        return None
    ctx = args[1].arg

    def on_ctx(node: ast.AST, attr: str) -> bool:
        return (isinstance(node, ast.Attribute) and node.attr == attr and isinstance(node.value, ast.Name)
                and node.value.id == ctx)

    for node in ast.walk(tree):
        if on_ctx(node, "p"):
            return f"{ctx}.p"
        if isinstance(node, ast.Attribute) and on_ctx(node.value, "m") and node.attr not in _FACTS:
            return f"{ctx}.m.{node.attr}"
    return None


def check_portable(interventions: list[Intervention]) -> None:
    """Refuse, before anything is sent, primitives that need objects only this process has."""
    for i in interventions:
        name = type(i).__name__
        for f in dataclasses.fields(i):
            bad = _local_object(getattr(i, f.name))
            if bad:
                raise InputError(
                    f"{name}.{f.name} holds a {bad}, which cannot travel to an NDIF server (it has only the "
                    "model): give plain values, group names or tensors, or run with backend='local'"
                )
        read = _reads_local_context(type(i))
        if read:
            raise InputError(
                f"{name} reads {read} inside the trace, which a server does not have: keep what apply() needs in "
                "the primitive's fields (resolved in bind() or check()), or run with backend='local'"
            )


def _ship_avmech() -> None:
    """Send avmech's code by value with each request (the server need not have avmech)."""
    import nnsight

    import avmech

    nnsight.register(avmech)


# ---- backends ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Backend:
    """Where a run's trace executes; ``tracer_backend`` is what nnsight's trace gets."""

    remote: ClassVar[bool] = False

    def tracer_backend(self, m: AVModel):
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

    def tracer_backend(self, m: AVModel):
        return _Simulation(m.nn)


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

    def tracer_backend(self, m: AVModel):
        key = self.model_key or model_key(m, self.model)
        return _Request(key, self.resolved_host(), self.resolved_api_key(), m.nn._remoteable_get_env(),
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


# ---- nnsight backends: the request, and its strict local simulation -----------------------
def _serialize(tracer, compress: bool) -> bytes:
    from nnsight.ndif import pull_env
    from nnsight.schema.request import RequestModel

    _ship_avmech()
    pull_env()
    blob = RequestModel.serialize(tracer, compress)
    if len(blob) > MAX_REQUEST_BYTES:
        raise InputError(
            f"this run's request is {len(blob) / 2**20:.0f} MB, past the {MAX_REQUEST_BYTES / 2**20:.0f} MB limit: "
            "the trace captured a large local object (a model, a dataset?); keep primitives to plain values"
        )
    return blob


class _Request(RemoteBackend):
    """nnsight's blocking `RemoteBackend`, with a deadline and errors that say what to do."""

    def __init__(self, key: str, host: str, api_key: str, env: dict, timeout: float | None, verbose: bool):
        super().__init__(key, host=host, api_key=api_key, env=env, verbose=verbose)
        self.timeout = timeout
        self.display.enabled = verbose  # avmech's flows show their own progress
        self.job: str | None = None

    def _serialize(self, tracer) -> bytes:
        return _serialize(tracer, self.compress)

    def _post(self, request, blob: bytes) -> ResponseModel:
        import httpx

        try:
            return super()._post(request, blob)
        except NNsightRemoteError as e:
            cause = e.__cause__
            if isinstance(cause, httpx.HTTPStatusError):
                code = cause.response.status_code
                detail = str(e).removeprefix("Failed to send request: ")
                if code in (401, 403):
                    raise RemoteError(
                        f"the NDIF server at {self.host} rejected the API key (HTTP {code}: {detail}); set the key "
                        "in the experiment's [ndif] table (api_key), NDIF_API_KEY, or nnsight's config "
                        "(keys for the public service: https://login.ndif.us)"
                    ) from None
                raise RemoteError(f"the NDIF server at {self.host} refused the request (HTTP {code}): {detail}") from None
            raise RemoteError(self._unreachable(cause or e)) from None

    def _unreachable(self, error: BaseException) -> str:
        return (
            f"cannot reach the NDIF server at {self.host} ({type(error).__name__}: {error}); check the host "
            "(the [ndif] table's host, NDIF_HOST, or nnsight's config) and that the server is running"
        )

    def send(self, request, blob: bytes):
        response = self._post(request, blob)
        if response.status == Status.ERROR:  # refused before it ran
            raise RemoteError(
                f"the NDIF server at {self.host} did not accept request {response.id} for model key "
                f"{self.model_key}:\n{response.description.strip()}\n(if it does not serve this model: name the "
                "repository id it serves ([ndif] model) or its whole model key ([ndif] model_key))"
            )
        return self.handle(response)

    def note(self, response: ResponseModel) -> bool:
        self.job = response.id or self.job
        if response.status == Status.ERROR:
            raise RemoteError(
                f"request {response.id} failed on the NDIF server at {self.host} (model key {self.model_key}):\n"
                f"{response.description.strip()}"
            )
        return super().note(response)

    def request(self, request, tracer):
        import websocket

        blob = self._serialize(tracer)
        headers = {"ndif-api-key": self.api_key} if self.api_key else None
        try:
            connection = websocket.create_connection(f"{self.ws_host}/subscribe", header=headers,
                                                     timeout=CONNECT_TIMEOUT)
        except websocket.WebSocketBadStatusException as e:
            hint = ("a wrong API key ([ndif] api_key, NDIF_API_KEY, nnsight's config), or no NDIF server at this host"
                    if e.status_code in (401, 403) else "is it an NDIF server? check [ndif] host or NDIF_HOST")
            raise RemoteError(f"{self.host} refused the status websocket (/subscribe) with HTTP {e.status_code}: "
                              f"{hint}") from None
        except (OSError, websocket.WebSocketException) as e:
            raise RemoteError(self._unreachable(e)) from None
        try:
            request.session_id = json.loads(connection.recv())["session_id"]
            self.send(request, blob)
            deadline = None if self.timeout is None else time.monotonic() + self.timeout
            while True:
                connection.settimeout(None if deadline is None else max(deadline - time.monotonic(), 1e-3))
                try:
                    message = connection.recv()
                except websocket.WebSocketTimeoutException:
                    raise RemoteError(
                        f"request {self.job} got no result from {self.host} within {self.timeout:g} s (it may "
                        "still be queued or running there): raise the timeout ([ndif] timeout) or try later"
                    ) from None
                except (OSError, websocket.WebSocketException) as e:
                    raise RemoteError(f"lost the connection to {self.host} while request {self.job} ran "
                                      f"({type(e).__name__}: {e}); rerun to retry") from None
                response = self.parse(message)
                result = self.handle(response)
                if response.status == Status.COMPLETED:
                    return result
        finally:
            connection.close()


class _Simulation(LocalSimulationBackend):
    """nnsight's local simulation, executed as a server executes a request.

    nnsight's own simulation checks that a request deserialises with local modules
    hidden, then runs the *local* objects. This one also keeps avmech unimportable (its
    editable install would otherwise stay reachable), runs the deserialised request,
    and brings back only the saved values, through ``torch.save`` as a result travels."""

    def __call__(self, tracer) -> None:
        import linecache

        from nnsight.schema.request import RequestModel
        from nnsight.tracing.tracer import _saves, save
        from nnsight.tracing.util import push

        blob = _serialize(tracer, compress=False)
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
