"""A real NDIF server, when one is configured: the study's experiments run there give the
records a local run gives.

Set ``AVMECH_NDIF_HOST`` (``http://127.0.0.1:8001`` for a self-hosted ``ndif``, see the
README's "Self-hosting NDIF") and, where the server checks keys, ``AVMECH_NDIF_API_KEY``,
then run ``pytest -m ndif``. The server must serve (or be able to deploy) avmech's key for
``AVMECH_NDIF_MODEL`` (default ``tiny-omni``: its workers build the embedded model from the
same seed, so the weights are the ones loaded here). ``AVMECH_NDIF_ATOL`` (default 1e-5)
bounds the differences of float columns: a GPU server's kernels are not this CPU's.

Each experiment runs twice on the server: as nnsight sends requests, and declared
untrusted (``"trusted": false`` in the request's envelope, what a key without NDIF's
``trusted`` tag gets), which a deployment through ndif's sandboxing actor runs in its
sandbox (a runner process resolving the request against the meta model).
``tests/ndif_selfhost/setup.sh`` starts such a server on this machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import json

import pandas as pd
import pytest
from nnsight.schema.request import RequestModel
from typer.testing import CliRunner

from avmech.cli import app
from test_remote import _equal_records

pytestmark = pytest.mark.ndif
HOST = os.environ.get("AVMECH_NDIF_HOST")
MODEL = os.environ.get("AVMECH_NDIF_MODEL", "tiny-omni")
ATOL = float(os.environ.get("AVMECH_NDIF_ATOL", "1e-5"))
EXPERIMENTS = Path(__file__).parents[1] / "experiments"


@pytest.fixture(scope="module")
def server():
    if not HOST:
        pytest.skip("AVMECH_NDIF_HOST is not set: no NDIF server to test against")
    return HOST


def _run(experiment: str, backend: str, results: Path, monkeypatch) -> pd.DataFrame:
    if backend == "ndif":
        monkeypatch.setenv("NDIF_HOST", HOST)
        if os.environ.get("AVMECH_NDIF_API_KEY"):
            monkeypatch.setenv("NDIF_API_KEY", os.environ["AVMECH_NDIF_API_KEY"])
    out = CliRunner().invoke(app, ["run", str(EXPERIMENTS / f"{experiment}.toml"), "--model", MODEL,
                                   "--limit", "2", "--backend", backend, "--results", str(results)])
    assert out.exit_code == 0, out.output
    return pd.read_parquet(results / experiment / MODEL / "records.parquet")


@pytest.mark.parametrize("untrusted", [False, True], ids=["as-sent", "untrusted"])
@pytest.mark.parametrize("experiment", ["av_video_knockout", "letter_lens", "interleaved_knockout"])
def test_an_experiment_on_the_server_gives_the_local_records(server, experiment, untrusted, tmp_path, monkeypatch):
    """A knockout sweep (the affected-region engine on the server), a lens readout and the
    interleaved configuration: every record equal to the local run's, timings aside."""
    local = _run(experiment, "local", tmp_path / "local", monkeypatch)
    if untrusted:
        envelope = RequestModel.metadata
        monkeypatch.setattr(RequestModel, "metadata", lambda self: json.dumps({**json.loads(envelope(self)),
                                                                               "trusted": False}))
    remote = _run(experiment, "ndif", tmp_path / "ndif", monkeypatch)
    _equal_records(local, remote, atol=ATOL)
