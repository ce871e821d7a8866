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
ill-typed field is an error naming it; a name or model that would not name one folder
inside the results folder, such as ``..``, too).

`run_experiment` writes ``results/<name>/<model>/`` (see `avmech.store`) and resumes
where an interrupted run stopped. In order, and refusing at the first problem: the
folder's `fingerprint` must equal the run's (else ``new_folder=True`` picks
``<folder>-2``, ``-3``, ... and logs where), no other run may be writing there (else
``wait=True`` waits for it), the model and the samples load; only then is anything
written. A sample that cannot be prepared (a corrupt clip: a `MediaError` or an
`InputError` of that one sample) is skipped and logged to ``skipped.jsonl``; with
``strict=True`` it stops the run instead. `execute` does the same and returns a
`RunSummary` (records, skipped samples), which the command line prints.
"""

from __future__ import annotations

import dataclasses

import importlib.metadata
import json
import logging
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from avmech.backends import Backend, LocalBackend, NDIFBackend, use
from avmech.errors import AVMechError, InputError
from avmech.flows import FLOWS
from avmech.flows.common import on_sample_error, sample_fields
from avmech.store import RecordStore, RunLock, folder_name, mismatch, slug

log = logging.getLogger(__name__)


class DataSpec(BaseModel):
    """The ``[data]`` table: which benchmark, where, and how its prompts are laid out
    (``layout = "study"`` feeds interleaved items as the study did, see `avmech.AVSample`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    dataset: Literal["av-speakerbench", "av-odyssey", "worldsense"]
    root: str = "synthetic"
    split: str | None = None
    limit: int | None = Field(default=None, ge=1)
    n_synthetic: int = Field(default=8, ge=1)
    layout: Literal["dataset", "study"] = "dataset"


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

    @field_validator("name")
    @classmethod
    def _name_is_one_folder(cls, name: str) -> str:
        return folder_name(name, "name")

    @field_validator("model")
    @classmethod
    def _model_is_one_folder(cls, model: str) -> str:
        folder_name(model, "model", slug(model))
        return model

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
    samples = data.read(spec.dataset, root, split=spec.split, limit=spec.limit)
    return [dataclasses.replace(s, layout=spec.layout) for s in samples]


def results_dir(exp: Experiment, results: str | Path = "results") -> Path:
    """``results/<name>/<model slug>``; a name or model that would leave it is an `InputError`."""
    return Path(results) / folder_name(exp.name, "name") / folder_name(exp.model, "model", slug(exp.model))


def fingerprint(exp: Experiment, revision: str | None = None) -> dict[str, Any]:
    """What an experiment's records depend on: a folder holds the records of one fingerprint.

    The model and its revision (the checkpoint's commit, when known), and on an NDIF
    server the name it serves the model by; the data set (all of `DataSpec` but
    ``limit``: a larger limit extends the same samples), the flow and its resolved
    parameters, the seed, the backend and avmech's version. Not the shard, the
    description, the server's host or timeout: they do not change a record.
    """
    served = [exp.ndif.model, exp.ndif.model_key] if exp.backend == "ndif" else None
    return {
        "model": exp.model,
        "revision": revision,
        "served_as": served,
        "data": exp.data.model_dump(exclude={"limit"}),
        "flow": exp.flow,
        "params": exp.flow_params.model_dump(mode="json"),
        "seed": exp.seed,
        "backend": exp.backend,
        "avmech": importlib.metadata.version("avmech"),
    }


def _recorded(directory: Path) -> dict[str, Any] | None:
    """The fingerprint a folder's records were written with (None: a new or empty folder).

    Folders written before fingerprints existed are read from their ``config.json``.
    """
    store = RecordStore(directory)
    found = store.fingerprint()
    if found is not None or not directory.is_dir():
        return found
    config = directory / "config.json"
    if config.exists():
        try:
            old = Experiment.model_validate(json.loads(config.read_text()))
        except ValueError as e:  # invalid JSON, or a configuration this avmech does not read
            raise InputError(f"'{config}' is not an experiment configuration ({e}): move the folder away") from None
        return fingerprint(old)  # its avmech version is not known: taken as this one
    if store.records():
        raise InputError(f"results folder '{directory}' holds records but no fingerprint.json or config.json: cannot "
                         "tell which configuration wrote them; move it away")
    return None


def _folder(base: Path, fp: dict[str, Any], new_folder: bool, compare: tuple[str, ...]) -> Path:
    """``base``, or with ``new_folder`` the first of ``base-2``, ``base-3``, ... free or made with ``fp``."""
    directory, k = base, 1
    while (found := _recorded(directory)) is not None and any(found.get(f) != fp[f] for f in compare):
        if not new_folder:
            raise mismatch(directory, {f: found.get(f) for f in compare}, {f: fp[f] for f in compare})
        k += 1
        directory = base.with_name(f"{base.name}-{k}")
    return directory


def _revision(m) -> str | None:
    """The commit of a hub checkpoint (transformers records it on the config), else None."""
    return getattr(getattr(m.hf, "config", None), "_commit_hash", None)


@dataclass(frozen=True)
class RunSummary:
    """What a run did: its folder, the records there, and the samples it skipped."""

    directory: Path
    records: int
    new: int
    skipped: tuple[str, ...]
    skipped_log: Path

    def __str__(self) -> str:
        see = f" (see {self.skipped_log})" if self.skipped else ""
        return f"{self.records} records ({self.new} new), {len(self.skipped)} samples skipped{see}"


def execute(
    exp: Experiment,
    results: str | Path = "results",
    shard: tuple[int, int] | None = None,
    model=None,
    *,
    wait: bool = False,
    new_folder: bool = False,
    strict: bool = False,
) -> RunSummary:
    """Run (or resume) an experiment; returns what it did (see the module docstring)."""
    import avmech

    if shard is not None and not 0 <= shard[0] < shard[1]:
        raise InputError(f"shard {shard[0]}/{shard[1]}: write i/n with 0 <= i < n")
    base = results_dir(exp, results)
    without_revision = tuple(f for f in fingerprint(exp) if f != "revision")
    planned = _folder(base, fingerprint(exp), new_folder, without_revision)  # refuse before loading anything
    if not wait and (busy := RunLock(planned, shard).busy()) is not None:
        raise busy
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
    fp = fingerprint(exp, _revision(m))
    store = RecordStore(_folder(base, fp, new_folder, tuple(fp)), shard)
    if store.dir != base:
        log.warning("'%s' holds another configuration: writing to '%s'", base, store.dir)
    skipped: list[str] = []

    def skip(sample, error: AVMechError) -> None:
        sample_id = sample_fields(sample)["sample_id"]
        if strict:
            error.add_note(f"while preparing sample {sample_id!r} (without --strict it is skipped)")
            raise error
        store.skip(sample_id, error)
        skipped.append(sample_id)
        log.warning("skipped sample %s: %s", sample_id, error)

    new = 0
    with store.locked(wait):
        store.write_meta(exp.model_dump(), fp)
        done = frozenset(store.done())
        try:
            with use(exp.runner), on_sample_error(skip):
                for record in fn(m, samples, params, done):
                    store.append([{"experiment": exp.name, "model": exp.model, "dataset": exp.data.dataset, **record}])
                    new += 1
        except AVMechError as e:
            e.add_note(f"the records written so far are kept in '{store.dir}': run the same command again to resume")
            raise
        path = store.finalize()
    return RunSummary(store.dir, pq.read_metadata(path).num_rows, new, tuple(skipped), store.skipped)


def run_experiment(
    exp: Experiment,
    results: str | Path = "results",
    shard: tuple[int, int] | None = None,
    model=None,
    *,
    wait: bool = False,
    new_folder: bool = False,
    strict: bool = False,
) -> Path:
    """Run (or resume) an experiment; returns its results directory (`execute` for the summary)."""
    return execute(exp, results, shard, model, wait=wait, new_folder=new_folder, strict=strict).directory
