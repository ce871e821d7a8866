"""A knockout sweep where the model lives: server-side compute against the local engine.

The same sweep (5 edges x windows of k = 7, bench-omni, a 20 s clip) runs with the local
affected-region engine, and on the loopback NDIF server (`tests/ndif_server.py`, which
executes requests as NDIF does: sandboxed, one at a time) through `run_many`'s one
request per sample. Reported side by side: the decoder layer-positions each computes
(the clean pass plus every condition's region; one full forward per condition for the
naive way), and the server's execution time of the request against the local engine's
time, per condition (target: within 1.5x).

With ``AVMECH_NDIF_HOST`` set (a real NDIF server, e.g. ``tests/ndif_selfhost/setup.sh``;
``AVMECH_NDIF_API_KEY`` where it checks keys) the same sweep runs there instead: the round
trip against the local engine, and the largest difference of the conditions' logits
(such a server reports no execution time).
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import httpx

from avmech.backends import LocalBackend, NDIFBackend, model_key
from avmech.interventions.region import plan_regions
from avmech.interventions.run import plan_condition
from benchmarks.common import bench_model, prepared, row, timed
from benchmarks.sweep import conditions

KEY = "1f0e4c2a-5b6d-4e8f-9a0b-1c2d3e4f5a6b"
SERVER = Path(__file__).resolve().parents[1] / "tests" / "ndif_server.py"


def serve(key: str) -> tuple[subprocess.Popen, str]:
    """The loopback server, serving ``key``, and its address."""
    env = {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count() or 1)}
    proc = subprocess.Popen([sys.executable, str(SERVER), "--serve", key, "--api-key", KEY, "--inline-limit",
                             str(1 << 30)], stdout=subprocess.PIPE, text=True, env=env)
    ready, _, _ = select.select([proc.stdout], [], [], 600)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("READY"):
        proc.kill()
        raise RuntimeError(f"the loopback server did not start: {line!r}")
    return proc, f"http://127.0.0.1:{int(line.split()[1])}"


def main() -> None:
    m = bench_model()
    p = prepared(20)
    conds = conditions(m)
    n, depth = len(p), m.n_layers
    _, regions = plan_regions([plan_condition(m, p, c, LocalBackend()) for c in conds], n)
    engine_positions = n * depth + sum(r.cost(n, depth) for r in regions)
    local_s = timed(lambda: m.run_many(p, conds), repeats=1)
    if os.environ.get("AVMECH_NDIF_HOST"):
        return on_a_real_server(m, p, conds, local_s, engine_positions)
    proc, host = serve(model_key(m))
    try:
        remote = NDIFBackend(host=host, api_key=KEY)
        m.run_many(p, conds, backend=remote)  # warm-up: the server deploys and dispatches the model
        started = time.perf_counter()
        m.run_many(p, conds, backend=remote)
        round_trip = time.perf_counter() - started
        server_s = list(httpx.get(f"{host}/_stats").json()["seconds"].values())[-1]  # the measured request
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    print(f"\n## Remote knockout sweep ({len(conds)} conditions, {n} tokens, bench-omni): server vs local engine")
    print(row("positions", "naive", "local s", "server s", "round trip s", "server/local"))
    print(row(engine_positions, n * depth * len(conds), local_s, server_s, round_trip, server_s / local_s))
    print(f"per condition: local {1000 * local_s / len(conds):.1f} ms, server {1000 * server_s / len(conds):.1f} ms; "
          f"decoder layer-positions: the same engine both sides, {engine_positions:,} "
          f"({engine_positions / (n * depth * len(conds)):.1%} of one full forward per condition)")


if __name__ == "__main__":
    main()


def on_a_real_server(m, p, conds, local_s: float, engine_positions: int) -> None:
    """The sweep on the server at ``AVMECH_NDIF_HOST``: round trip and numbers against local."""
    remote = NDIFBackend(host=os.environ["AVMECH_NDIF_HOST"], api_key=os.environ.get("AVMECH_NDIF_API_KEY", ""))
    local = m.run_many(p, conds)
    m.run_many(p, conds, backend=remote)  # warm-up: the server may deploy the key first
    started = time.perf_counter()
    there = m.run_many(p, conds, backend=remote)
    round_trip = time.perf_counter() - started
    diff = max((a.logits - b.logits).abs().max().item() for a, b in zip(local, there, strict=True))
    print(f"\n## Remote knockout sweep ({len(conds)} conditions, {len(p)} tokens, bench-omni) on "
          f"{os.environ['AVMECH_NDIF_HOST']}: round trip vs local engine")
    print(row("positions", "local s", "round trip s", "trip/local", "max |dlogit|"))
    print(row(engine_positions, local_s, round_trip, round_trip / local_s, f"{diff:.1e}"))
