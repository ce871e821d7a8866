"""A loopback NDIF server for the tests: nnsight 0.8.1's client protocol, one process, no avmech.

It answers what nnsight's ``RemoteBackend`` (0.8.1) expects of an NDIF deployment:

- ``WS /subscribe``: sends ``{"session_id": ...}`` first; the status updates of that
  session's requests follow as `ResponseModel` JSON text frames, and COMPLETED as a
  binary frame, ``ResponseModel.pickle()`` whose ``data`` is the saved values
  (``torch.save``, zstd-compressed when the request was). A result past
  ``--inline-limit`` bytes is staged instead: ``data`` is the URL of ``GET /result/{id}``.
- ``POST /request``: multipart, form field ``data`` = the `RequestModel` JSON, file
  ``blob`` = the serialised request. The ``ndif-api-key`` header is checked (HTTP 401
  with NDIF's own message); a model key this server does not serve gets an ERROR
  status; otherwise the answer is RECEIVED and the request is queued.
- ``GET /response/{id}`` (the latest status, for non-blocking clients) and
  ``GET /result/{id}`` (a staged result).

Requests run one at a time on a worker thread, as NDIF's per-model processor runs them:
`RequestModel.deserialize` against the served model's persistent objects, the request's
environment applied (``_remoteable_set_env``: the attention kernel), the tracer executed
under ``torch.no_grad``, and the saved values returned. An exception becomes an ERROR
status carrying its traceback and message.

The process keeps only the standard library and site-packages on ``sys.path`` and makes
``avmech`` unimportable, so a request must carry every piece of avmech code it runs.
The model is built from its checkpoint with transformers alone.

Usage::

    python tests/ndif_server.py --serve KEY=CHECKPOINT_DIR [--api-key KEY] [--inline-limit BYTES]

prints ``READY <port>`` once it listens on 127.0.0.1. For the tests, ``POST /_control``
with ``{"fail_after": n}`` makes ``POST /request`` answer 503 after ``n`` more requests
(``null`` lifts it): a server that goes away in the middle of a sweep.
"""

from __future__ import annotations

import sys

# Only what a server has: the standard library and installed packages, never avmech.
sys.path[:] = [p for p in sys.path if p and ("site-packages" in p or p.startswith(sys.base_prefix))]


class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name == "avmech" or name.startswith("avmech."):
            raise ModuleNotFoundError(f"No module named {name!r} (this server does not have avmech)", name=name)
        return None


sys.meta_path.insert(0, _Blocker())

import argparse  # noqa: E402
import asyncio  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import queue  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402
import uuid  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402
import uvicorn  # noqa: E402
import zstandard  # noqa: E402
from fastapi import FastAPI, File, Form, Header, HTTPException, UploadFile, WebSocket, WebSocketDisconnect  # noqa: E402
from fastapi.responses import Response  # noqa: E402
from nnsight.modeling.mixins.remotable import Remotable  # noqa: E402
from nnsight.schema.request import RequestModel  # noqa: E402
from nnsight.schema.response import ResponseModel, Status  # noqa: E402
from nnsight.tracing.tracer import _saves, dec, inc  # noqa: E402

BAD_KEY = "Missing or invalid API key. Please visit https://login.ndif.us/ to create a new one."


class Served(Remotable):
    """A served model: nnsight's envoy over a checkpoint built by transformers."""

    def _remoteable_set_env(self, env: dict | None) -> None:
        wanted = (env or {}).get("attn_implementation")
        if wanted and wanted != self._module.config._attn_implementation:
            self._module.set_attn_implementation(wanted)


def load(path: str) -> Served:
    config = json.loads(open(f"{path}/config.json").read())
    cls = getattr(transformers, config["architectures"][0])
    return Served(cls.from_pretrained(path, attn_implementation="sdpa").eval())


@dataclass
class Job:
    id: str
    request: RequestModel
    blob: bytes


@dataclass
class State:
    models: dict[str, Served]
    api_key: str
    inline_limit: int
    base_url: str = ""
    loop: asyncio.AbstractEventLoop | None = None
    sessions: dict[str, WebSocket] = field(default_factory=dict)
    responses: dict[str, ResponseModel] = field(default_factory=dict)
    results: dict[str, bytes] = field(default_factory=dict)
    jobs: queue.Queue = field(default_factory=queue.Queue)
    fail_after: int | None = None


def execute(model: Served, job: Job) -> bytes:
    """Run one request on ``model``; its saved values, serialised as a result travels."""
    tracer = RequestModel.deserialize(job.blob, model._remoteable_persistent_objects(), compress=job.request.compress)
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
        try:
            data = execute(state.models[job.request.model_key], job)
        except Exception as e:
            description = f"{traceback.format_exc()}\n{type(e).__name__}: {e}"
            publish(state, job, ResponseModel(id=job.id, status=Status.ERROR, description=description))
            continue
        if len(data) > state.inline_limit:
            state.results[job.id] = data
            data = f"{state.base_url}/result/{job.id}"
        publish(state, job, ResponseModel(id=job.id, status=Status.COMPLETED, description="Your job has been completed.",
                                          data=data))


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
        if state.api_key and api_key != state.api_key:
            raise HTTPException(status_code=401, detail=BAD_KEY)
        if state.fail_after is not None:
            if state.fail_after <= 0:
                raise HTTPException(status_code=503, detail="Service temporarily unavailable: the server is going down.")
            state.fail_after -= 1
        job = Job(uuid.uuid4().hex, RequestModel.model_validate_json(data), await blob.read())
        if job.request.model_key not in state.models:
            served = ", ".join(state.models)
            return ResponseModel(id=job.id, status=Status.ERROR, description=(
                f"Model {job.request.model_key} is not served by this NDIF server (it serves: {served})."
            )).model_dump(mode="json")
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

    @app.post("/_control")
    async def control(settings: dict) -> dict:
        state.fail_after = settings.get("fail_after")
        return {"fail_after": state.fail_after}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="append", required=True, help="MODEL_KEY=CHECKPOINT_DIR; repeat")
    parser.add_argument("--api-key", default="", help="the one key accepted (none: any)")
    parser.add_argument("--inline-limit", type=int, default=1 << 20, help="results larger than this are staged")
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = {key: load(path) for key, path in (s.split("=", 1) for s in args.serve)}
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    state = State(models, args.api_key, args.inline_limit, base_url=f"http://127.0.0.1:{port}")
    threading.Thread(target=worker, args=(state,), daemon=True).start()
    server = uvicorn.Server(uvicorn.Config(app_for(state), log_level="warning", ws_ping_interval=None))
    print(f"READY {port}", flush=True)
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
