"""Experiments as data: one TOML file names a model, a data set, a flow and its parameters.

::

    name = "av_video_knockout"
    flow = "knockout_sweep"
    model = "tiny-omni"                  # or "Qwen/Qwen2.5-Omni-7B", a directory
    backend = "local"                    # or "ndif": traces run on an NDIF server
    seed = 0

    [data]
    dataset = "av-speakerbench"          # av-speakerbench | av-odyssey | worldsense
    root = "synthetic"                   # the embedded demo set, or a local copy
    limit = 8

    [params]                             # validated by the flow's own parameter model
    edges = [["audio", "question"], ["video", "last"]]
    k = [7]

    [ndif]                               # optional; only read with backend = "ndif"
    host = "https://api.ndif.us"         # else NDIF_HOST, else nnsight's config
    model = "Qwen/Qwen2.5-Omni-7B"       # the repository id the server serves (default: model)
    timeout = 600                        # seconds to wait for one run's result

(the API key: ``api_key`` in the table, better ``NDIF_API_KEY`` or nnsight's config; it
is never written to the results). Loading validates every field (an unknown or
ill-typed field is an error naming it). `run_experiment` writes
``results/<name>/<model>/`` (see `avmech.store`) and resumes where an interrupted run
stopped.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from avmech.backends import Backend, LocalBackend, NDIFBackend, use
from avmech.errors import InputError
from avmech.flows import FLOWS
from avmech.store import RecordStore, slug


class DataSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    dataset: Literal["av-speakerbench", "av-odyssey", "worldsense"]
    root: str = "synthetic"
    split: str | None = None
    limit: int | None = Field(default=None, ge=1)
    n_synthetic: int = Field(default=8, ge=1)


class NDIFSpec(BaseModel):
    """The ``[ndif]`` table: the server, and what it serves the model as (`avmech.backends.NDIFBackend`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    host: str | None = None
    api_key: SecretStr | None = None
    model: str | None = None
    model_key: str | None = None
    timeout: float | None = Field(default=None, gt=0)

    def backend(self) -> NDIFBackend:
        key = self.api_key.get_secret_value() if self.api_key is not None else None
        return NDIFBackend(host=self.host, api_key=key, model=self.model, model_key=self.model_key,
                           timeout=self.timeout)


class Experiment(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    flow: Literal[tuple(FLOWS)]  # type: ignore[valid-type]
    model: str = "tiny-omni"
    backend: Literal["local", "ndif"] = "local"
    ndif: NDIFSpec = Field(default_factory=NDIFSpec)
    seed: int = 0
    data: DataSpec
    params: dict[str, Any] = Field(default_factory=dict)
    description: str = ""

    @property
    def flow_params(self) -> BaseModel:
        return FLOWS[self.flow][1].model_validate(self.params)

    @property
    def runner(self) -> Backend:
        """Where this experiment's traces run."""
        return self.ndif.backend() if self.backend == "ndif" else LocalBackend()


def _explain(e: ValidationError, source: str, prefix: str = "") -> str:
    lines = []
    for err in e.errors():
        loc = prefix + ".".join(str(x) for x in err["loc"]) or "(top level)"
        lines.append(f"  {loc}: {err['msg']}")
    return f"invalid experiment {source}:\n" + "\n".join(lines)


def load_experiment(path: str | Path, **overrides: Any) -> Experiment:
    """Read and validate an experiment file; ``overrides`` (model=, data fields, ...) win."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"experiment file {path} does not exist: see experiments/ for the study's files")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"experiment {path} is not valid TOML: {e}") from e
    data_over = {k: overrides.pop(k) for k in ("root", "limit", "split") if overrides.get(k) is not None}
    raw.update({k: v for k, v in overrides.items() if v is not None})
    if data_over:
        raw["data"] = {**raw.get("data", {}), **data_over}
    try:
        exp = Experiment.model_validate(raw)
    except ValidationError as e:
        raise InputError(_explain(e, str(path))) from None
    try:
        exp.flow_params  # noqa: B018 - validates the flow's parameters
    except ValidationError as e:
        raise InputError(_explain(e, str(path), prefix="params.")) from None
    return exp


def load_samples(spec: DataSpec, seed: int = 0) -> list:
    """The samples of a data spec: the embedded synthetic set, or a local copy of the benchmark."""
    from avmech import data

    root = spec.root
    if root == "synthetic":
        root = data.synthetic.ensure(spec.dataset, n=spec.n_synthetic, seed=seed)
    return list(data.read(spec.dataset, root, split=spec.split, limit=spec.limit))


def results_dir(exp: Experiment, results: str | Path = "results") -> Path:
    return Path(results) / exp.name / slug(exp.model)


def run_experiment(
    exp: Experiment,
    results: str | Path = "results",
    shard: tuple[int, int] | None = None,
    model=None,
) -> Path:
    """Run (or resume) an experiment; returns its results directory."""
    import avmech

    if shard is not None and not 0 <= shard[0] < shard[1]:
        raise InputError(f"shard {shard[0]}/{shard[1]}: write i/n with 0 <= i < n")
    store = RecordStore(results_dir(exp, results), shard)
    store.write_meta(exp.model_dump())
    # On an NDIF server the LLM runs there: load only what runs here (processor, encoders, embeddings).
    decoder = "server" if exp.backend == "ndif" else "local"
    m = model if model is not None else avmech.load(exp.model, seed=exp.seed, decoder=decoder)
    samples = load_samples(exp.data, exp.seed)
    if shard is not None:
        samples = samples[shard[0]::shard[1]]
    fn, _ = FLOWS[exp.flow]
    params = exp.flow_params
    if "results_root" in type(params).model_fields:  # flows that read other experiments' results
        params = params.model_copy(update={"results_root": str(results)})
    done = frozenset(store.done())
    with use(exp.runner):
        for record in fn(m, samples, params, done):
            store.append([{"experiment": exp.name, "model": exp.model, "dataset": exp.data.dataset, **record}])
    store.finalize()
    return store.dir
