"""The NDIF protocol as a client speaks it: one serialised request, its status, its result.

nnsight's `RemoteBackend` posts a request (``POST /request``: the RequestModel JSON and the
serialised trace), follows its status on the websocket ``/subscribe`` and downloads the
saved values. `Request` is that backend with a deadline and errors that say what to do:
an unreachable server, a rejected API key, a model the server does not serve, a request
past its timeout, an exception on the server. avmech's own code travels by value with
every request (`ship_avmech`), so a server runs today's primitives without avmech
installed.
"""

from __future__ import annotations

import json
import sys
import time

from nnsight.intervention.backends.remote import RemoteBackend
from nnsight.intervention.backends.remote import RemoteError as NNsightRemoteError
from nnsight.schema.response import ResponseModel, Status

from avmech.errors import InputError, RemoteError

MAX_REQUEST_BYTES = 2**30  # one request's serialised size (1 GiB): past it, something local was captured
CONNECT_TIMEOUT = 10.0  # seconds to open the status websocket


def ship_avmech() -> None:
    """Send avmech's code by value with each request (the server need not have avmech)."""
    import nnsight

    nnsight.register(sys.modules[__name__.partition(".")[0]])  # the avmech package, already imported


def serialize(tracer, compress: bool) -> bytes:
    from nnsight.ndif import pull_env
    from nnsight.schema.request import RequestModel

    ship_avmech()
    pull_env()
    blob = RequestModel.serialize(tracer, compress)
    if len(blob) > MAX_REQUEST_BYTES:
        raise InputError(
            f"this run's request is {len(blob) / 2**20:.0f} MB, past the {MAX_REQUEST_BYTES / 2**20:.0f} MB limit: "
            "the trace captured a large local object (a model, a dataset?); keep primitives to plain values"
        )
    return blob


def first_line(text: str, limit: int = 300) -> str:
    """The first non-empty line of a server's message, cut to ``limit`` characters."""
    line = next((x.strip() for x in text.splitlines() if x.strip()), "")
    return line if len(line) <= limit else line[:limit].rstrip() + "..."


def last_line(text: str, limit: int = 300) -> str:
    """The last non-empty line (a traceback's exception), cut to ``limit`` characters."""
    return first_line("\n".join(reversed(text.splitlines())), limit)


class Request(RemoteBackend):
    """nnsight's blocking `RemoteBackend`, with a deadline and errors that say what to do."""

    def __init__(self, key: str, host: str, api_key: str, env: dict, timeout: float | None, verbose: bool):
        super().__init__(key, host=host, api_key=api_key, env=env, verbose=verbose)
        self.timeout = timeout
        self.display.enabled = verbose  # avmech's flows show their own progress
        self.job: str | None = None

    def _serialize(self, tracer) -> bytes:
        return serialize(tracer, self.compress)

    def _post(self, request, blob: bytes) -> ResponseModel:
        import httpx

        try:
            return super()._post(request, blob)
        except NNsightRemoteError as e:
            cause = e.__cause__
            if isinstance(cause, httpx.HTTPStatusError):
                code = cause.response.status_code
                detail = str(e).removeprefix("Failed to send request: ")
                if code in (401, 403) or (code == 400 and "api key" in detail.lower()):
                    raise RemoteError(
                        f"the NDIF server at {self.host} rejected the API key (HTTP {code}: {first_line(detail)}); "
                        "set the key in the experiment's [ndif] table (api_key), NDIF_API_KEY, or nnsight's config "
                        "(keys for the public service: https://login.ndif.us)"
                    ) from None
                raise RemoteError(f"the NDIF server at {self.host} refused the request (HTTP {code}: "
                                  f"{first_line(detail)})", detail=detail) from None
            raise RemoteError(self._unreachable(cause or e)) from None

    def _unreachable(self, error: BaseException) -> str:
        return (
            f"cannot reach the NDIF server at {self.host} ({type(error).__name__}: {error}); check the host "
            "(the [ndif] table's host, NDIF_HOST, or nnsight's config) and that the server is running"
        )

    def _failed(self, response: ResponseModel) -> RemoteError:
        """The one-line error for a request the server answered with ERROR (its whole text as ``detail``)."""
        text = (response.description or "").strip()
        if "could not deploy this model" in text.lower():
            return RemoteError(
                f"the NDIF server at {self.host} does not serve model key {self.model_key} and could not deploy it "
                f"({first_line(text.split('Could not deploy this model.', 1)[-1])}): name the repository id it "
                "serves ([ndif] model), its whole key ([ndif] model_key), or deploy the key on your own server "
                "(README: Self-hosting NDIF)", detail=text)
        if text.startswith(("Error starting model", "Error provisioning model")):
            return RemoteError(
                f"the NDIF server at {self.host} accepted model key {self.model_key} but could not load it "
                f"({first_line(text)}): its reason is in the server's logs; ask its operators, or on your own "
                "server check that its workers can read the checkpoint's weights and import avmech", detail=text)
        return RemoteError(f"request {response.id} failed on the NDIF server at {self.host} (model key "
                           f"{self.model_key}): {last_line(text)} (--debug shows the server's traceback)", detail=text)

    def send(self, request, blob: bytes):
        response = self._post(request, blob)
        if response.status == Status.ERROR:  # refused before it ran
            raise self._failed(response)
        return self.handle(response)

    def note(self, response: ResponseModel) -> bool:
        self.job = response.id or self.job
        if response.status == Status.ERROR:
            raise self._failed(response)
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
