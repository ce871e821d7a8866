"""A loopback NDIF server for the tests: nnsight 0.8.1's client protocol, as NDIF answers it.

It answers what nnsight's ``RemoteBackend`` (0.8.1) expects of an NDIF deployment, with
the behaviour of the ``ndif`` 0.1.2 server where a client can see it:

- ``WS /subscribe``: sends ``{"session_id": ...}`` first; the status updates of that
  session's requests follow as `ResponseModel` JSON text frames, and COMPLETED as a
  binary frame, ``ResponseModel.pickle()`` whose ``data`` is the saved values
  (``torch.save``, zstd-compressed when the request was). A result past
  ``--inline-limit`` bytes is staged instead: ``data`` is the URL of ``GET /result/{id}``.
- ``POST /request``: multipart, form field ``data`` = the `RequestModel` JSON, file
  ``blob`` = the serialised request. The ``ndif-api-key`` header is checked as NDIF does:
  none -> HTTP 401 "Missing or invalid API key ...", not a UUID -> HTTP 400 "Invalid API
  key format: ...", another key -> HTTP 403 "Invalid API key.". The answer is RECEIVED and
  the request is queued.
- ``GET /response/{id}`` (the latest status) and ``GET /result/{id}`` (a staged result).

Models are built from their keys, as NDIF's actors build them: ``Remotable.from_model_key(
key, dispatch=True)`` (so this process imports avmech to *build* models, as a real server
must). A key it does not serve yet is deployed on demand as NDIF deploys it: sized first
from its meta build (a failure ends the request with NDIF's "Could not deploy this model.
<reason>"), then loaded with its weights (a failure ends it with NDIF's canned "Error
starting model. Please try again later. ...", the reason printed to the server's log).

Requests run one at a time on a worker thread, *sandboxed* as NDIF runs requests of keys
without its ``trusted`` tag: the request is first resolved against the key's **meta
model** (``Remotable.from_model_key(key)``, no weights: a model class without a meta
build fails here, as NDIF's runner fails with "no meta model for ..."), then deserialised
against the real model and executed, with the request's environment applied (the
attention kernel) and the traced function called by its name on the served envoy (NDIF's
runner sends the host a name, not a function). While a request is deserialised and runs, ``avmech`` is made
unimportable, so the request must carry every piece of avmech code it runs (by value).
An exception becomes an ERROR status carrying its traceback and message.

Requests over 1 MB are accepted as on a server with avmech's bridge (see
``tests/ndif_selfhost/ndif_bridge.py``: without it, ndif 0.1.2's API answers them HTTP 400
"There was an error parsing the body", since nnsight's ``.save`` on every object breaks
anyio's lazily defined classes when an upload spools to disk).

Usage::

    python tests/ndif_server.py --serve MODEL_KEY [--serve ...] [--api-key UUID] [--inline-limit BYTES]

prints ``READY <port>`` once it listens on 127.0.0.1. For the tests, ``POST /_control``
with ``{"fail_after": n}`` makes ``POST /request`` answer 503 after ``n`` more requests
(``null`` lifts it): a server that goes away in the middle of a sweep; ``GET /_stats``
gives each finished request's execution time in seconds (for benchmarks).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import queue
import socket
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field

import anyio.abc._sockets  # noqa: F401  before nnsight mounts `.save` (tests/ndif_selfhost/ndif_bridge.py, part 2)
import anyio.streams.file  # noqa: F401
import anyio.streams.tls  # noqa: F401
import torch
import uvicorn
import zstandard
from fastapi import FastAPI, File, Form, Header, HTTPException, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.responses import Response
from nnsight.intervention.envoy import Envoy
from nnsight.modeling.mixins.remotable import Remotable
from nnsight.schema.request import RequestModel
from nnsight.schema.response import ResponseModel, Status
from nnsight.tracing.tracer import _saves, dec, inc

MISSING_KEY = "Missing or invalid API key. Please visit https://login.ndif.us/ to create a new one."


class _Blocker:
    """A meta-path finder that makes avmech unimportable while a request runs."""

    def find_spec(self, name, path=None, target=None):
        if name == "avmech" or name.startswith("avmech."):
            raise ModuleNotFoundError(f"No module named {name!r} (requests must bring avmech by value)", name=name)
        return None


@contextlib.contextmanager
def without_avmech():
    """avmech hidden from imports (its modules out of ``sys.modules``) for the duration."""
    hidden = {n: sys.modules.pop(n) for n in [n for n in sys.modules if n == "avmech" or n.startswith("avmech.")]}
    blocker = _Blocker()
    sys.meta_path.insert(0, blocker)
    try:
        yield
    finally:
        sys.meta_path.remove(blocker)
        sys.modules.update(hidden)


@contextlib.contextmanager
def called_by_name(model: Remotable):
    """The traced function looked up by *name* on the served envoy, as NDIF's sandbox does:
    its runner process holds no real model, so it sends the host the name of the function
    the trace runs (``fn.__name__``, or the string nnsight defaults to, ``"__call__"``), and
    the host calls ``getattr(envoy, name)``. A trace whose function is ``"__call__"`` there
    gets the envoy's own ad-hoc call, which stands the trace down: nothing is served. (The
    request's envoys are rebuilt from its bytes, so the lookup is patched where every
    trace calls it, `Envoy.interleave`.)"""
    run = Envoy.interleave

    def interleave(self, fn, *args, **kwargs):
        return run(self, getattr(model, fn if isinstance(fn, str) else fn.__name__), *args, **kwargs)

    Envoy.interleave = interleave
    try:
        yield
    finally:
        Envoy.interleave = run


@dataclass
class Job:
    id: str
    request: RequestModel
    blob: bytes


@dataclass
class State:
    models: dict[str, Remotable]
    api_key: str
    inline_limit: int
    base_url: str = ""
    loop: asyncio.AbstractEventLoop | None = None
    meta: dict[str, Remotable] = field(default_factory=dict)
    sessions: dict[str, WebSocket] = field(default_factory=dict)
    responses: dict[str, ResponseModel] = field(default_factory=dict)
    results: dict[str, bytes] = field(default_factory=dict)
    jobs: queue.Queue = field(default_factory=queue.Queue)
    fail_after: int | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # each finished request's execution time


START_FAILED = "Error starting model. Please try again later. Sorry for the inconvenience."


class DeploymentError(RuntimeError):
    """A model key the server could not deploy: its answer to the request, verbatim."""


def deploy(state: State, key: str) -> Remotable:
    """The served model of ``key``, built on first use as NDIF deploys it: the controller
    sizes the key without weights (a failure there is a refusal with its reason), then a
    model actor loads it (a failure there is NDIF's canned answer, the reason in its log)."""
    if key not in state.models:
        try:
            Remotable.describe_checkpoint(key, "float32")
        except Exception as e:
            raise DeploymentError(f"Could not deploy this model. {type(e).__name__}: {e}") from e
        try:
            state.models[key] = Remotable.from_model_key(key, dispatch=True)
        except Exception as e:
            traceback.print_exc()  # the actor's log
            raise DeploymentError(START_FAILED) from e
    return state.models[key]


def meta_model(state: State, key: str) -> Remotable:
    """The key's meta model, as NDIF's sandbox runner builds it (no weights)."""
    if key not in state.meta:
        try:
            state.meta[key] = Remotable.from_model_key(key)
        except Exception as e:
            raise RuntimeError(f"runner: no meta model for {key!r} ({e!r}); module and tokenizer ids will "
                               "resolve to None, so the request cannot run sandboxed") from e
    if getattr(state.meta[key], "dispatched", False):
        raise RuntimeError(f"runner: the meta model of {key!r} holds weights: its class ignores dispatch=False")
    return state.meta[key]


def execute(state: State, job: Job) -> bytes:
    """Run one request sandboxed: resolved against the meta model, then run on the real one."""
    key = job.request.model_key
    model = deploy(state, key)
    skeleton = meta_model(state, key)
    with without_avmech(), called_by_name(model):
        # every Module:<path> the request names must exist in the meta tree (the runner's map)
        RequestModel.deserialize(job.blob, skeleton._remoteable_persistent_objects(), compress=job.request.compress)
        tracer = RequestModel.deserialize(job.blob, model._remoteable_persistent_objects(),
                                          compress=job.request.compress)
        model._remoteable_set_env(job.request.env)
        inc()
        try:
            with torch.no_grad():
                tracer.execute(tracer.info.code)
            saves = {k: v for k, v in tracer.info.frame.f_locals.items() if id(v) in _saves()}
        finally:
            dec()
        buffer = io.BytesIO()
        torch.save(saves, buffer, pickle_protocol=4)
    data = buffer.getvalue()
    return zstandard.ZstdCompressor(level=6).compress(data) if job.request.compress else data


def publish(state: State, job: Job, response: ResponseModel) -> None:
    """Record a status and push it to the job's websocket session (from the worker thread)."""
    state.responses[job.id] = response
    ws = state.sessions.get(job.request.session_id)
    if ws is None:
        return
    message = response.pickle() if isinstance(response.data, bytes) else response.model_dump_json()
    send = ws.send_bytes(message) if isinstance(message, bytes) else ws.send_text(message)
    try:
        asyncio.run_coroutine_threadsafe(send, state.loop).result(timeout=30)
    except Exception:  # the client went away (e.g. its own timeout): the job still completes
        pass


def worker(state: State) -> None:
    while True:
        job = state.jobs.get()
        publish(state, job, ResponseModel(id=job.id, status=Status.RUNNING, description="Your job has started running."))
        started = time.perf_counter()
        try:
            data = execute(state, job)
            state.seconds[job.id] = time.perf_counter() - started
        except DeploymentError as e:
            publish(state, job, ResponseModel(id=job.id, status=Status.ERROR, description=str(e)))
            continue
        except Exception as e:
            description = f"{traceback.format_exc()}\n{type(e).__name__}: {e}"
            publish(state, job, ResponseModel(id=job.id, status=Status.ERROR, description=description))
            continue
        if len(data) > state.inline_limit:
            state.results[job.id] = data
            data = f"{state.base_url}/result/{job.id}"
        publish(state, job, ResponseModel(id=job.id, status=Status.COMPLETED, description="Your job has been completed.",
                                          data=data))


def check_key(state: State, api_key: str) -> None:
    """NDIF's answers to a missing, malformed or unknown API key."""
    if not state.api_key:
        return
    if not api_key:
        raise HTTPException(status_code=401, detail=MISSING_KEY)
    try:
        uuid.UUID(api_key)
    except ValueError:
        raise HTTPException(status_code=400, detail=(
            f"Invalid API key format: '{api_key}'. API keys must be in the format: "
            "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx. You can obtain a valid API key from https://login.ndif.us")) from None
    if api_key != state.api_key:
        raise HTTPException(status_code=403, detail="Invalid API key.")


def app_for(state: State) -> FastAPI:
    app = FastAPI()

    @app.websocket("/subscribe")
    async def subscribe(ws: WebSocket) -> None:
        await ws.accept()
        state.loop = asyncio.get_running_loop()
        session = uuid.uuid4().hex
        state.sessions[session] = ws
        await ws.send_text(json.dumps({"session_id": session}))
        try:
            while True:
                await ws.receive_text()
        except WebSocketDisconnect:
            pass
        finally:
            state.sessions.pop(session, None)

    @app.post("/request")
    async def request(data: str = Form(...), blob: UploadFile = File(...),
                      api_key: str = Header("", alias="ndif-api-key")) -> dict:
        check_key(state, api_key)
        if state.fail_after is not None:
            if state.fail_after <= 0:
                raise HTTPException(status_code=503, detail="Service temporarily unavailable: the server is going down.")
            state.fail_after -= 1
        job = Job(uuid.uuid4().hex, RequestModel.model_validate_json(data), await blob.read())
        received = ResponseModel(id=job.id, status=Status.RECEIVED,
                                 description="Your job has been received and is waiting to be queued.")
        state.responses[job.id] = received
        state.jobs.put(job)
        return received.model_dump(mode="json")

    @app.get("/response/{job}")
    async def response(job: str) -> dict:
        if job not in state.responses:
            raise HTTPException(status_code=404, detail=f"no request {job}")
        return state.responses[job].model_dump(mode="json")

    @app.get("/result/{job}")
    async def result(job: str) -> Response:
        if job not in state.results:
            raise HTTPException(status_code=404, detail=f"no result for {job}")
        return Response(state.results.pop(job), media_type="application/octet-stream")

    @app.get("/_stats")
    async def stats() -> dict:
        return {"seconds": state.seconds}

    @app.post("/_control")
    async def control(settings: dict) -> dict:
        state.fail_after = settings.get("fail_after")
        return {"fail_after": state.fail_after}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="append", default=[], help="a model key deployed at start; repeat")
    parser.add_argument("--api-key", default="", help="the one key accepted, a UUID (none: any)")
    parser.add_argument("--inline-limit", type=int, default=1 << 20, help="results larger than this are staged")
    args = parser.parse_args()
    torch.set_num_threads(1)
    state = State({}, args.api_key, args.inline_limit)
    for key in args.serve:
        deploy(state, key)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    state.base_url = f"http://127.0.0.1:{port}"
    threading.Thread(target=worker, args=(state,), daemon=True).start()
    server = uvicorn.Server(uvicorn.Config(app_for(state), log_level="warning", ws_ping_interval=None))
    print(f"READY {port}", flush=True)
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
