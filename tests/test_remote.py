"""Remote execution: the same runs, records and errors through nnsight's remote path.

(a) Every primitive, and one flow of each kind, through the strict local simulation
(`SimulatedBackend`: serialised, deserialised and executed with avmech unimportable)
give the local numbers. (b) A loopback NDIF server (`tests/ndif_server.py`: nnsight's
client protocol, a subprocess without avmech) runs requests and `avmech run --backend
ndif`, and each failure a user meets has its error text checked.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import httpx
import nnsight
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import avmech
from avmech import (
    Ablate,
    ActivationPatch,
    AttentionKnockout,
    AttentionRead,
    Capture,
    EdgeKnockout,
    Intervention,
    LogitLens,
    TokenDrop,
    data,
)
from avmech.backends import NDIFBackend, RemoteError, SimulatedBackend, model_key, use
from avmech.models.serving import AVRemoteModel
from avmech.cli import app
from avmech.errors import InputError
from avmech.experiment import load_experiment
from avmech.flows import FLOWS

ROOT = Path(__file__).resolve().parents[1]
KEY = "1f0e4c2a-5b6d-4e8f-9a0b-1c2d3e4f5a6b"  # NDIF keys are UUIDs
SIM = SimulatedBackend()

# Primitives defined here travel by value, as a user's own would (the server has no tests/).
nnsight.register(sys.modules[__name__])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def _server_process(omni, tmp_path_factory):
    """The loopback server, started early (it loads torch and builds the model from its key in ~5 s)."""
    log = tmp_path_factory.mktemp("ndif-server") / "stderr.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "ndif_server.py"), "--serve", model_key(omni),
             "--api-key", KEY, "--inline-limit", str(4 << 20)],
            stdout=subprocess.PIPE, stderr=err, text=True,
        )
    proc.log = log
    yield proc
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(_server_process) -> str:
    started, _, _ = select.select([_server_process.stdout], [], [], 120)
    line = _server_process.stdout.readline() if started else "(no READY within 120 s)\n"
    if not line.startswith("READY"):
        pytest.fail(f"the loopback NDIF server did not start: {line}{_server_process.log.read_text()}")
    return f"http://127.0.0.1:{int(line.split()[1])}"


@pytest.fixture(scope="module")
def ndif(server) -> NDIFBackend:
    return NDIFBackend(host=server, api_key=KEY)


@pytest.fixture(scope="module")
def samples(_server_process):
    return data.read("av-speakerbench", data.synthetic.ensure("av-speakerbench", n=8), limit=2)


@pytest.fixture(scope="module")
def odyssey():
    return data.read("av-odyssey", data.synthetic.ensure("av-odyssey", n=8), limit=1)


def _same(a, b) -> None:
    """Two RunResults are the same numbers (exactly: the same trace on the same weights)."""
    assert torch.equal(a.logits, b.logits)
    for x, y in zip(a.readouts, b.readouts, strict=True):
        assert (x is None and y is None) or torch.equal(x, y)


def primitives(m, p, q) -> dict[str, list[Intervention]]:
    last = len(p) - 1
    return {
        "AttentionKnockout": [AttentionKnockout("audio | video", "last", [0, 1])],
        "AttentionKnockout-heads": [AttentionKnockout("video", "question | last", [1, 2], heads=(0, 2))],
        "EdgeKnockout": [EdgeKnockout([(last, k) for k in range(last // 2)], [1, 2])],
        "ActivationPatch": [ActivationPatch("resid_post.1", "last", q)],
        "Ablate": [Ablate("mlp_out.0", "audio | video", mode="mean"), Ablate("head_out.1.1", "question")],
        "Capture": [Capture("head_out.1.0", "question"), Capture("resid_pre.2", "all")],
        "LogitLens": [LogitLens(layers="all", positions="question | last", unembed="input")],
        "TokenDrop": [TokenDrop("audio | video", 0), LogitLens(layers=[1, m.n_layers - 1])],
        "AttentionRead": [AttentionRead("all", "last", ("audio", "video")), AttentionKnockout("audio", "last", [1])],
    }


# the sets that edit the run (AttentionRead reads one edited by a knockout)
EDITS = ("AttentionKnockout", "AttentionKnockout-heads", "EdgeKnockout", "ActivationPatch", "Ablate", "TokenDrop",
         "AttentionRead")


# ---- (a) strict local simulation ------------------------------------------------------------
@pytest.mark.parametrize("family", ["omni", "salmonn"])
def test_every_primitive_gives_local_numbers_through_simulation(family, request, samples):
    m = request.getfixturevalue(family)
    p, q = m.prepare(samples[0]), m.prepare(samples[1])
    base = m.run(p)
    for name, prims in primitives(m, p, q).items():
        local, simulated = m.run(p, prims), m.run(p, prims, backend=SIM)
        _same(local, simulated)
        assert (name not in EDITS) == torch.equal(local.logits, base.logits), name  # edits do edit


def test_simulation_refuses_what_a_server_could_not_import(omni, samples, monkeypatch):
    """With avmech sent by reference (not by value), the simulated server cannot import it."""
    import avmech.remote.transport

    p = omni.prepare(samples[0])
    monkeypatch.setattr(avmech.remote.transport, "ship_avmech", lambda: None)
    nnsight.register(avmech)  # (so that it can be unregistered whatever ran before)
    cloudpickle.unregister_pickle_by_value(avmech)
    try:
        with pytest.raises(ModuleNotFoundError, match="avmech"):
            omni.run(p, [AttentionKnockout("audio", "last", [0])], backend=SIM)
    finally:
        nnsight.register(avmech)


def _records(flow: str, m, samples, params: dict, monkeypatch, **inputs) -> list[pd.DataFrame]:
    """The flow's records run locally (nothing serialised), then through the simulation."""
    import avmech.remote.simulation

    sent = []
    serialize = avmech.remote.simulation.serialize
    monkeypatch.setattr(avmech.remote.simulation, "serialize", lambda *a, **kw: sent.append(a) or serialize(*a, **kw))
    out = []
    for backend in ("local", SIM):
        with use(backend):
            out.append(pd.DataFrame(FLOWS[flow].run(m, samples, FLOWS[flow].params.model_validate(params), **inputs)))
        assert bool(sent) == (backend is SIM)
    return out


def _equal_records(a: pd.DataFrame, b: pd.DataFrame, atol: float = 0.0) -> None:
    """Identical records, timings aside; ``atol`` for sweeps (locally: affected regions, remotely: full runs)."""
    assert list(a.columns) == list(b.columns) and len(a) == len(b) > 0
    for col in a.columns:
        if col.endswith("_ms"):
            continue
        if a[col].dtype.kind == "f":
            np.testing.assert_allclose(a[col], b[col], atol=atol, rtol=0, err_msg=col)
        else:
            assert a[col].equals(b[col]), col


FLOW_PARAMS = {
    "knockout_sweep": {"edges": [["audio", "question"], ["video", "last"]], "k": [3], "only_correct": False,
                       "random_control": True},
    "attention_allocation": {"queries": ["last"]},
    "norm_sinks": {"sink_z": 2.0},
    "attention_spikes": {"ratio": 1.01},
    "modality_reliance": {},
    "letter_lens": {},
    "token_discard": {"settings": [{"name": "av", "drops": [{"group": "audio | video", "after": 0.5}]}],
                      "repeats": 1, "generate": False},  # generation runs locally only
}


@pytest.mark.parametrize("flow", list(FLOW_PARAMS))
def test_each_flow_kind_gives_local_records_through_simulation(flow, omni, samples, monkeypatch):
    local, simulated = _records(flow, omni, samples[:1], FLOW_PARAMS[flow], monkeypatch)
    _equal_records(local, simulated, atol=1e-6 if flow == "knockout_sweep" else 0.0)


def test_pathway_flow_gives_local_records_through_simulation(omni, odyssey, monkeypatch):
    flow = FLOWS["knockout_sweep"]
    sweep = pd.DataFrame(flow.run(omni, odyssey, flow.params.model_validate(
        {"edges": [["candidates", "last"], ["options", "last"]], "k": [2], "only_correct": False})))
    _equal_records(*_records("effective_pathway", omni, odyssey, {"k": 2, "threshold": 0.0}, monkeypatch,
                             sweep=sweep))


# ---- refused before anything is sent -----------------------------------------------------
class HoldsModel(Intervention):
    model: object

    def apply(self, ctx):
        return None


class ReadsSample(Intervention):
    def apply(self, ctx):
        return ctx.p.input_ids


class ReadsLocalsInHelpers(Intervention):
    what: str

    def apply(self, ctx):
        return self.sample(ctx) if self.what == "sample" else self.model(ctx)

    def sample(self, ctx):
        return ctx.p.input_ids

    def model(self, ctx):
        return ctx.m.hf


def _named(m, name: str):
    """A shallow stand-in for ``m`` loaded under another name."""
    import copy

    other = copy.copy(m)
    other.name = name
    return other


def test_what_cannot_run_remotely_is_refused_before_sending(omni, samples):
    p = omni.prepare(samples[0])
    nowhere = NDIFBackend(host=f"http://127.0.0.1:{_free_port()}", api_key=KEY)  # sending would fail differently
    with pytest.raises(InputError, match=r"HoldsModel\.model holds a OmniModel.*cannot travel"):
        omni.run(p, [HoldsModel(omni)], backend=nowhere)
    with pytest.raises(InputError, match=r"HoldsModel\.model holds a Prepared"):
        omni.run(p, [HoldsModel(p)], backend=nowhere)
    with pytest.raises(InputError, match=r"ReadsSample reads ctx\.p inside the trace"):
        omni.run(p, [ReadsSample()], backend=nowhere)
    with pytest.raises(InputError, match="generate with backend='local'"):
        omni.generate(p, backend=nowhere)
    with pytest.raises(InputError, match="unknown backend 'cloud'"):
        omni.run(p, backend="cloud")
    with pytest.raises(InputError, match="local directory"):
        model_key(_named(omni, str(ROOT)))
    # what apply's helpers read is not seen before sending; the server says what is missing
    with pytest.raises(AttributeError, match=r"ctx\.p\.input_ids is not available in a remote run"):
        omni.run(p, [ReadsLocalsInHelpers("sample")], backend=SIM)
    with pytest.raises(AttributeError, match=r"ctx\.m\.hf is not available in a remote run.*n_heads"):
        omni.run(p, [ReadsLocalsInHelpers("model")], backend=SIM)


def test_host_key_and_model_key_resolution(omni, monkeypatch, tmp_path):
    monkeypatch.setattr(nnsight.CONFIG.API, "HOST", "https://config.example")
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", "config-key")
    monkeypatch.delenv("NDIF_HOST", raising=False)
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    assert (NDIFBackend().resolved_host(), NDIFBackend().resolved_api_key()) == ("https://config.example", "config-key")
    monkeypatch.setenv("NDIF_HOST", "http://env.example/")
    monkeypatch.setenv("NDIF_API_KEY", "env-key")
    assert (NDIFBackend().resolved_host(), NDIFBackend().resolved_api_key()) == ("http://env.example", "env-key")
    mine = NDIFBackend(host="http://mine.example", api_key="my-key")
    assert (mine.resolved_host(), mine.resolved_api_key()) == ("http://mine.example", "my-key")
    assert "my-key" not in repr(mine)
    with pytest.raises(InputError, match="must start with http"):
        NDIFBackend(host="api.ndif.us").resolved_host()
    assert model_key(omni) == 'avmech.models.serving.AVRemoteModel:{"repo_id": "tiny-omni", "revision": null}'
    assert model_key(_named(omni, str(ROOT)), "Qwen/Qwen2.5-Omni-7B").endswith('"Qwen/Qwen2.5-Omni-7B", "revision": null}')
    assert json.loads(omni.nn.to_model_key().split(":", 1)[1])["repo_id"] == "tiny-omni"
    exp_file = tmp_path / "exp.toml"
    exp_file.write_text((ROOT / "experiments" / "letter_lens.toml").read_text()
                        + '\n[ndif]\nhost = "http://table.example"\napi_key = "table-key"\ntimeout = 5\n')
    exp = load_experiment(exp_file, backend="ndif")
    assert exp.runner == NDIFBackend(host="http://table.example", api_key="table-key", timeout=5.0)
    assert "table-key" not in json.dumps(exp.model_dump(), default=str)  # config.json never holds the key
    exp_file.write_text(exp_file.read_text().replace("timeout = 5", "port = 5"))
    with pytest.raises(InputError, match=r"ndif\.port"):
        load_experiment(exp_file)


def test_a_server_builds_the_model_from_its_key(omni_eager):
    """What a server deploying the key does (``dispatch=True``): the same module paths (the ids
    a request refers to), then the client's attention kernel switched on."""
    served = AVRemoteModel.from_model_key(model_key(omni_eager), dispatch=True)
    assert served.dispatched and served._module.config._attn_implementation == "sdpa"
    assert served._module is not omni_eager.hf
    assert served._remoteable_persistent_objects().keys() == omni_eager.nn._remoteable_persistent_objects().keys()
    served._remoteable_set_env(omni_eager.nn._remoteable_get_env())
    assert served._module.config._attn_implementation == "eager"


@pytest.mark.parametrize("family", ["omni", "salmonn", "qwen3_omni"])
def test_a_server_sizes_a_model_without_its_weights_and_loads_them_when_it_runs(family, request, samples, tmp_path):
    """NDIF builds a key without ``dispatch`` to size a model and to map a sandboxed request's
    modules: the architecture alone, on the meta device, from the config files (here a copy of
    the checkpoint with its weight files taken away). Running it dispatches: the weights load
    and the numbers are the local model's."""
    import shutil

    from nnsight.modeling.mixins.remotable import Remotable

    m = request.getfixturevalue(family)
    weights = avmech.models.registry.embedded_path(m.name, 0)
    bare = tmp_path / "bare"
    shutil.copytree(weights, bare, ignore=shutil.ignore_patterns("*.safetensors"))
    key = model_key(m, repo_id=str(bare))
    skeleton = Remotable.from_model_key(key)
    assert not skeleton.dispatched and {p.device.type for p in skeleton._module.parameters()} == {"meta"}
    assert skeleton._remoteable_persistent_objects().keys() == m.nn._remoteable_persistent_objects().keys()
    size = sum(t.numel() for t in [*m.hf.parameters(), *m.hf.buffers()])
    assert Remotable.estimate_bytes(key, "float32") == 4 * size
    with pytest.raises(Exception, match="safetensors|weight"):
        skeleton.dispatch()  # no weights there: dispatching is what reads them
    full = Remotable.from_model_key(model_key(m, repo_id=str(weights)))
    assert not full.dispatched
    p = m.prepare(samples[0])
    enc = m.encode(p)
    with torch.no_grad(), full.trace(inputs_embeds=enc.inputs_embeds, position_ids=enc.position_ids,
                                     attention_mask=p.inputs["attention_mask"], **enc.extra):
        logits = full.lm_head.output[0, -1].save()
    with torch.no_grad():
        reference = m.hf(inputs_embeds=enc.inputs_embeds, position_ids=enc.position_ids,
                         attention_mask=p.inputs["attention_mask"], **enc.extra).logits[0, -1]
    assert full.dispatched and torch.equal(logits, reference)


# ---- (b) a loopback NDIF server --------------------------------------------------------------
@pytest.mark.parametrize("family", ["omni", "omni_eager"])
def test_runs_on_the_server_equal_local_runs(family, request, ndif, samples, monkeypatch):
    """Every primitive at once; the attention kernel travels with the request (the server
    switches its one model between sdpa and eager, whose numbers differ in the last bits).
    Results come back both ways: inline on the websocket, and staged at /result/{id}."""
    from nnsight.intervention.backends.remote import RemoteBackend

    fetched = []
    download = RemoteBackend.download_result
    monkeypatch.setattr(RemoteBackend, "download_result", lambda self, data: fetched.append(type(data)) or
                        download(self, data))
    m = request.getfixturevalue(family)
    p, q = m.prepare(samples[0]), m.prepare(samples[1])
    prims = [i for group in primitives(m, p, q).values() for i in group if not isinstance(i, TokenDrop)]
    _same(m.run(p, prims), m.run(p, prims, backend=ndif))  # > 4 MB (lens over the whole vocabulary): staged
    drop = primitives(m, p, q)["TokenDrop"]
    _same(m.run(p, drop), m.run(p, drop, backend=ndif))
    sweep = [[AttentionKnockout("audio", "question", range(c, c + 2))] for c in range(m.n_layers - 1)]
    for here, there in zip(m.run_many(p, sweep), m.run_many(p, sweep, backend=ndif), strict=True):
        torch.testing.assert_close(here.logits, there.logits, atol=1e-6, rtol=0)  # locally: affected regions only
    assert set(fetched) == {bytes, str}  # small results inline, the large one staged


DISCARD = """
name = "token_discard"
flow = "token_discard"
[data]
dataset = "av-speakerbench"
[params]
repeats = 3
generate = false
settings = [
  { name = "video", drops = [{ group = "video", after = 0.72 }] },
  { name = "audio", drops = [{ group = "audio_tokens", after = 0.72 }] },
  { name = "question", drops = [{ group = "question_block", after = 0.81 }] },
  { name = "all", drops = [{ group = "video | audio_tokens", after = 0.72 }, { group = "question_block", after = 0.81 }] },
]
"""


def test_cli_on_the_server_equals_local_and_resumes(server, monkeypatch, tmp_path):
    """`avmech run --backend ndif`: cut short by the server going away, resumed, then the
    same records as `--backend local`."""
    monkeypatch.setenv("NDIF_HOST", server)
    monkeypatch.setenv("NDIF_API_KEY", KEY)
    discard = tmp_path / "token_discard.toml"
    discard.write_text(DISCARD)
    args = ["run", str(discard), "--limit", "1", "--results"]
    local = CliRunner().invoke(app, args + [str(tmp_path / "local"), "--backend", "local"])
    assert local.exit_code == 0, local.output
    httpx.post(f"{server}/_control", json={"fail_after": 10})
    cut = CliRunner().invoke(app, args + [str(tmp_path / "ndif"), "--backend", "ndif"])
    assert cut.exit_code == 3, cut.output
    assert "refused the request (HTTP 503: Service temporarily unavailable" in cut.output
    assert "run the same command again to resume" in cut.output
    log = tmp_path / "ndif" / "token_discard" / "tiny-omni" / "records.jsonl"
    assert [json.loads(line)["condition"] for line in log.read_text().splitlines()] == ["full", "discard|video"]
    httpx.post(f"{server}/_control", json={"fail_after": None})
    resumed = CliRunner().invoke(app, args + [str(tmp_path / "ndif"), "--backend", "ndif"])
    assert resumed.exit_code == 0, resumed.output
    a, b = (pd.read_parquet(tmp_path / d / "token_discard" / "tiny-omni" / "records.parquet") for d in ("local", "ndif"))
    assert len(b) == 5 and not b.duplicated(["sample_id", "condition"]).any()
    _equal_records(a, b)
    assert json.loads((log.parent / "config.json").read_text())["backend"] == "ndif"


def test_a_request_over_one_megabyte_is_accepted(server):
    """A 7B sample's request is about 13 MB. ndif 0.1.2's API without the bridge's part 2
    (measured) answers any body over 1 MB with HTTP 400 "There was an error parsing the body";
    so does this server without the same fix. A random blob is RECEIVED (and fails later)."""
    envelope = {"model_key": "x", "session_id": "", "compress": False}
    answer = httpx.post(f"{server}/request", data={"data": json.dumps(envelope)}, headers={"ndif-api-key": KEY},
                        files={"blob": ("request", os.urandom(3 << 20), "application/octet-stream")})
    assert answer.status_code == 200 and answer.json()["status"] == "RECEIVED", answer.text


def test_a_run_that_wrote_nothing_says_so(server, monkeypatch, tmp_path):
    monkeypatch.setenv("NDIF_HOST", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("NDIF_API_KEY", KEY)
    discard = tmp_path / "token_discard.toml"
    discard.write_text(DISCARD)
    out = CliRunner().invoke(app, ["run", str(discard), "--limit", "1", "--results", str(tmp_path), "--backend", "ndif"])
    assert out.exit_code == 3 and "cannot reach the NDIF server" in out.output
    assert f"no record was written to '{tmp_path / 'token_discard' / 'tiny-omni'}'" in out.output


@pytest.mark.parametrize("key, answer", [
    ("", r"HTTP 401: Missing or invalid API key"),
    ("not-a-uuid", r"HTTP 400: Invalid API key format: 'not-a-uuid'"),
    ("00000000-0000-0000-0000-000000000000", r"HTTP 403: Invalid API key\."),
])
def test_api_keys_refused_as_ndif_refuses_them(omni, server, samples, tmp_path, monkeypatch, key, answer):
    """Missing, malformed and unknown keys: one line naming the cause and where keys are set."""
    p = omni.prepare(samples[0])
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", None, raising=False)
    with pytest.raises(RemoteError, match=rf"rejected the API key \({answer}.*NDIF_API_KEY"):
        omni.run(p, backend=NDIFBackend(host=server, api_key=key or None))
    monkeypatch.setenv("NDIF_HOST", server)
    monkeypatch.setenv("NDIF_API_KEY", key)
    result = CliRunner().invoke(app, ["run", str(ROOT / "experiments" / "letter_lens.toml"), "--backend", "ndif",
                                      "--limit", "1", "--results", str(tmp_path)])
    assert result.exit_code == 3 and f"error: the NDIF server at {server} rejected the API key" in result.output
    assert [line[:6] for line in result.output.splitlines() if "rejected the API key" in line] == ["error:"]


def test_a_model_the_server_cannot_deploy(omni, ndif, samples):
    """A real server tries to deploy an unserved key on demand and answers "Could not deploy
    this model. <why>": one line naming the key, the reason and the fix."""
    p = omni.prepare(samples[0])
    other = NDIFBackend(host=ndif.host, api_key=KEY, model="Qwen/Qwen2.5-Omni-7B")
    with pytest.raises(RemoteError, match=r'does not serve model key .*"Qwen/Qwen2.5-Omni-7B".*could not deploy it '
                                          r"\(.*neither a local directory nor downloadable.*\[ndif\] model") as err:
        omni.run(p, backend=other)
    assert "\n" not in str(err.value) and "Could not deploy this model" in err.value.detail


def test_a_model_the_server_sizes_but_cannot_load(omni, ndif, samples, tmp_path):
    """A key whose meta build works (config files) but whose weights do not load: NDIF answers
    its canned "Error starting model ..." (the reason goes to its log), and avmech says the key
    was accepted, the load failed there, and where the reason is."""
    import shutil

    bare = tmp_path / "no-weights"
    shutil.copytree(avmech.models.registry.embedded_path("tiny-omni", 0), bare,
                    ignore=shutil.ignore_patterns("*.safetensors"))
    other = NDIFBackend(host=ndif.host, api_key=KEY, model_key=model_key(omni, repo_id=str(bare)))
    with pytest.raises(RemoteError, match=r"accepted model key .*no-weights.* but could not load it "
                                          r"\(Error starting model\..*server's logs") as err:
        omni.run(omni.prepare(samples[0]), backend=other)
    assert "\n" not in str(err.value)


def test_an_unreachable_server(omni, server, samples):
    p = omni.prepare(samples[0])
    host = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(RemoteError, match=rf"cannot reach the NDIF server at {host} \(ConnectionRefusedError.*NDIF_HOST"):
        omni.run(p, backend=NDIFBackend(host=host, api_key=KEY))
    with pytest.raises(RemoteError, match=r"refused the status websocket \(/subscribe\) with HTTP 40\d: .*NDIF server"):
        omni.run(p, backend=NDIFBackend(host=f"{server}/not-ndif", api_key=KEY))  # a web server, not NDIF


class Fails(Intervention):
    def apply(self, ctx):
        raise ValueError("this primitive fails on the server")


class Sleeps(Intervention):
    seconds: float

    def apply(self, ctx):
        time.sleep(self.seconds)


class ImportsAvmech(Intervention):
    def apply(self, ctx):
        import avmech  # noqa: F401


def test_a_server_side_exception_shows_its_message(omni, ndif, samples):
    p = omni.prepare(samples[0])
    with pytest.raises(RemoteError, match=r"(?s)request \w+ failed on the NDIF server at .*"
                                          r"ValueError: this primitive fails on the server"):
        omni.run(p, [Fails()], backend=ndif)
    with pytest.raises(RemoteError, match="No module named 'avmech'"):  # the server really has no avmech
        omni.run(p, [ImportsAvmech()], backend=ndif)


def test_a_request_past_its_timeout(omni, ndif, samples):
    impatient = NDIFBackend(host=ndif.host, api_key=KEY, timeout=0.3)
    t0 = time.monotonic()
    with pytest.raises(RemoteError, match=r"request \w+ got no result from .* within 0\.3 s.*raise the timeout"):
        omni.run(omni.prepare(samples[0]), [Sleeps(1.5)], backend=impatient)
    assert time.monotonic() - t0 < 1.5


def test_a_client_without_the_decoder_runs_on_the_server(omni, ndif, samples, salmonn):
    """decoder='server' keeps the encoders, the embeddings and one layer here; its runs on the
    server equal a full local model's, and a local run is refused with the fix."""
    light = avmech.load("tiny-omni", seed=0, decoder="server")
    assert light.decoder_on_server and len(light.llm_module.layers) == 1 and light.n_layers == omni.n_layers
    full_params = sum(t.numel() for t in omni.hf.parameters())
    assert sum(t.numel() for t in light.hf.parameters()) < full_params
    p, q = light.prepare(samples[0]), omni.prepare(samples[0])
    assert torch.equal(light.encode(p).inputs_embeds, omni.encode(q).inputs_embeds)
    prims = [AttentionKnockout("audio | video", "last", [1, 2]), LogitLens(layers="all")]
    _same(omni.run(q, prims), light.run(p, prims, backend=ndif))
    with pytest.raises(avmech.ModelError, match="backend='ndif'"):
        light.run(p)
    thin = avmech.load("tiny-salmonn", seed=0, decoder="server")
    assert len(thin.llm_module.layers) == 1 and thin.n_layers == salmonn.n_layers
    with pytest.raises(avmech.ModelError, match="decoder='server'"):
        thin.run_many(thin.prepare(samples[0]), [[AttentionKnockout("audio", "last", [1])]])


def test_a_remote_sweep_computes_only_affected_regions_where_the_model_is(omni, samples):
    """Server side, a sweep runs the affected-region engine: the decoder computes exactly the
    layer-positions the local engine computes (a clean pass plus each region), far fewer than
    one full forward per condition, and only the conditions' logits come back."""
    from avmech.interventions.region import plan_regions
    from avmech.interventions.run import plan_condition

    p = omni.prepare(samples[0])
    conds = [[AttentionKnockout(src, dst, range(c, min(c + 2, omni.n_layers)))]
             for src, dst in (("audio", "question"), ("video", "last")) for c in range(omni.n_layers)]
    computed = []
    hooks = [omni.decoder.mlp(layer).register_forward_hook(lambda mod, args, out: computed.append(out.shape[:2].numel()))
             for layer in omni.llm_module.layers]
    try:
        counts = {}
        for backend in ("local", SIM):
            computed.clear()
            omni.run_many(p, conds, backend=backend)
            counts[backend if isinstance(backend, str) else "server"] = sum(computed)
    finally:
        for hook in hooks:
            hook.remove()
    n, depth = len(p), omni.n_layers
    _, regions = plan_regions([plan_condition(omni, p, c, avmech.backends.LocalBackend()) for c in conds], n)
    expected = n * depth + sum(r.cost(n, depth) for r in regions)  # the clean pass and the regions
    assert counts["server"] == counts["local"] == expected
    assert expected < 0.6 * n * depth * len(conds)  # against one full forward per condition


@pytest.mark.parametrize("family", ["omni", "salmonn"])
def test_a_remote_sweep_is_one_request(family, request, samples, monkeypatch):
    """run_many sends every condition in one nnsight session, the affected-region engine
    included: the sample's embeddings travel once; the numbers are the local engine's exactly,
    and one full run's per condition within float error (strict simulation)."""
    from avmech.backends import SimulatedBackend
    from avmech.remote.transport import Request as _Request

    m = request.getfixturevalue(family)
    p = m.prepare(samples[0])
    conds = [[AttentionKnockout("audio", "question", [c])] for c in range(m.n_layers)]
    conds.append([LogitLens(layers=[1]), Ablate("mlp_out.0", "question")])
    there = m.run_many(p, conds, backend=SimulatedBackend())
    for here, r in zip(m.run_many(p, conds), there, strict=True):
        _same(here, r)
    for cond, r in zip(conds, there, strict=True):
        torch.testing.assert_close(m.run(p, cond).logits, r.logits, atol=1e-5, rtol=0)
    sent = []
    serialize = _Request._serialize
    monkeypatch.setattr(_Request, "_serialize", lambda self, tracer: sent.append(1) or serialize(self, tracer))
    with pytest.raises(RemoteError):  # no server on this port: what matters is how many requests were made
        m.run_many(p, conds, backend=NDIFBackend(host=f"http://127.0.0.1:{_free_port()}", api_key=KEY))
    assert len(sent) == 1
