"""Experiments as data: one TOML file names a model, a data set, a flow and its parameters.

::

    name = "token_discard"
    flow = "token_discard"
    model = "tiny-omni"                  # or "Qwen/Qwen2.5-Omni-7B", a directory
    backend = "local"                    # or "ndif": traces run on an NDIF server
    seed = 0

    [data]
    dataset = "av-speakerbench"          # av-speakerbench | av-odyssey | worldsense
    root = "synthetic"                   # the embedded demo set, "planted", or a local copy
    limit = 8
    select = { category = ["speaker recognition", "visual recognition"] }   # the study's subset

    [inputs]                             # records of other experiments this flow reads
    sweep = "av_video_knockout"          # the same model's records of that experiment

    [params]                             # validated by the flow's own parameter model
    settings = [...]

    [ndif]                               # optional; only read with backend = "ndif"
    host = "https://api.ndif.us"         # else NDIF_HOST, else nnsight's config
    model = "Qwen/Qwen2.5-Omni-7B"       # the repository id the server serves (default: model)
    timeout = 600                        # seconds to wait for one run's result

(the API key: ``api_key`` in the table, better ``NDIF_API_KEY`` or nnsight's config; it
is never written to the results). Loading validates every field (an unknown or
ill-typed field is an error naming it; a name or model that would not name one folder
inside the results folder, such as ``..``, too), and the ``[inputs]`` table against
what the flow reads (`avmech.flows.Flow`). Dependencies between experiments are these
tables and nothing else: `in_order` runs every experiment after those it reads.

`run_experiment` writes ``results/<name>/<model>/`` (see `avmech.store`) and resumes
where an interrupted run stopped. In order, and refusing at the first problem: the
input records must exist (the same model's, written by the experiments named); the
folder's `fingerprint` must equal the run's (else ``new_folder=True`` picks
``<folder>-2``, ``-3``, ... and logs where), no other run may be writing there (else
``wait=True`` waits for it), the model and the samples load; only then is anything
written. The runner, not the flow, knows what is done: it hands the flow the samples not
yet finished, writes only records not yet written, and marks a sample finished when the
flow moves past it. A sample that cannot be prepared (a corrupt clip: a `MediaError` or
an `InputError` of that one sample) is skipped and logged to ``skipped.jsonl``; with
``strict=True`` it stops the run instead. `execute` does the same and returns a
`RunSummary` (records, skipped samples), which the command line prints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from avmech.backends import Backend, LocalBackend, NDIFBackend, use
from avmech.errors import AVMechError, InputError
from avmech.flows import FLOWS
from avmech.flows.common import on_sample_error, sample_fields
from avmech.store import RECORDS, RecordStore, RunLock, folder_name, mismatch, slug

log = logging.getLogger(__name__)


class DataSpec(BaseModel):
    """The ``[data]`` table: which benchmark, where, which of its samples, and how its prompts
    are laid out (``layout = "study"`` feeds interleaved items as the study did, see
    `avmech.AVSample`). ``select`` keeps the samples whose fields match (`avmech.data.read`),
    before ``limit``; ``n_synthetic`` and ``synthetic_seconds`` size the embedded demo set
    (``root = "synthetic"``) or the planted one (``root = "planted"``: `avmech.data.planted`,
    the tasks the planted models are trained on; ``synthetic_seconds`` does not apply)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    dataset: Literal["av-speakerbench", "av-odyssey", "worldsense"]
    root: str = "synthetic"
    split: str | None = None
    limit: int | None = Field(default=None, ge=1)
    select: dict[str, str | int | list[str | int]] | None = None
    n_synthetic: int = Field(default=8, ge=1)
    synthetic_seconds: float | None = Field(default=None, gt=0)
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
    inputs: dict[str, str] = Field(default_factory=dict, description="flow input -> experiment whose records it is")
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

    @field_validator("inputs")
    @classmethod
    def _inputs_are_folders(cls, inputs: dict[str, str]) -> dict[str, str]:
        for name, experiment in inputs.items():
            folder_name(experiment, f"inputs.{name}")
        return inputs

    @model_validator(mode="after")
    def _inputs_match_the_flow(self) -> Experiment:
        flow = FLOWS[self.flow]
        unknown = sorted(set(self.inputs) - set(flow.inputs))
        if unknown:
            reads = f"reads {', '.join(flow.inputs)}" if flow.inputs else "reads no other experiment's records"
            raise ValueError(f"inputs {unknown}: the flow {self.flow} {reads}")
        return self

    @property
    def flow_params(self) -> BaseModel:
        return FLOWS[self.flow].params.model_validate(self.params)

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
        params = exp.flow_params
    except ValidationError as e:
        raise InputError(_explain(e, str(path), prefix="params.")) from None
    missing = sorted(FLOWS[exp.flow].needs(params) - set(exp.inputs))
    if missing:
        raise InputError(f"invalid experiment {path}: its params read the records of {missing}: name the experiment "
                         f"of each in an [inputs] table (e.g. {missing[0]} = \"av_video_knockout\")")
    return exp


def in_order(experiments: Iterable[Experiment]) -> list[Experiment]:
    """The experiments, each after those whose records it reads (its ``[inputs]``), else in the given order."""
    pending = {e.name: e for e in experiments}
    out: list[Experiment] = []
    while pending:
        ready = [e for e in pending.values() if not set(e.inputs.values()) & set(pending)]
        if not ready:
            raise InputError(f"experiments {sorted(pending)} read each other's records in a cycle: break it")
        for e in ready:
            out.append(pending.pop(e.name))
    return out


def load_samples(spec: DataSpec, seed: int = 0, model: str | None = None, *, allow_none: bool = False) -> list:
    """The samples of a data spec: the embedded synthetic set, the planted one (of the tasks and
    variants ``model`` is trained on, when it is a planted model), or a local copy of the benchmark.
    A selection that keeps none is an `InputError` (a run over it would say nothing), unless
    ``allow_none`` (to ask whether an experiment applies to a model's data at all)."""
    from avmech import data
    from avmech.models.planted_recipes import RECIPES

    root = spec.root
    if root == "synthetic":
        root = data.synthetic.ensure(spec.dataset, n=spec.n_synthetic, seed=seed, seconds=spec.synthetic_seconds)
    elif root == "planted":
        scope = {"tasks": RECIPES[model].tasks, "variants": RECIPES[model].variants} if model in RECIPES else {}
        root = data.planted.ensure(spec.dataset, n=spec.n_synthetic, seed=seed, **scope)
    samples = data.read(spec.dataset, root, split=spec.split, limit=spec.limit, select=spec.select)
    if not samples and not allow_none:  # an experiment over no question would write no records and say nothing
        trained = f" of the tasks {model} is trained on ({', '.join(RECIPES[model].tasks)})" if model in RECIPES else ""
        raise InputError(f"{spec.dataset} at '{root}' holds no question{trained} that [data] select = {spec.select} "
                         "and split keep: widen the selection, or run a model trained on the selected questions")
    return [dataclasses.replace(s, layout=spec.layout) for s in samples]


def results_dir(exp: Experiment, results: str | Path = "results") -> Path:
    """``results/<name>/<model slug>``; a name or model that would leave it is an `InputError`."""
    return Path(results) / folder_name(exp.name, "name") / folder_name(exp.model, "model", slug(exp.model))


def load_inputs(exp: Experiment, results: str | Path = "results") -> dict[str, pd.DataFrame]:
    """The records each of ``exp``'s inputs names: that experiment's, for the same model."""
    out = {}
    for name, experiment in exp.inputs.items():
        path = Path(results) / experiment / slug(exp.model) / RECORDS
        if not path.exists():
            raise InputError(
                f"experiment {exp.name} reads the records of {experiment} (its input {name!r}) for {exp.model}, and "
                f"'{path}' does not exist: run that experiment on this model first (avmech run "
                f"experiments/{experiment}.toml --model {exp.model} --results {results})"
            )
        out[name] = pd.read_parquet(path)
        if out[name].empty:
            raise InputError(f"experiment {exp.name} reads the records of {experiment} (its input {name!r}) for "
                             f"{exp.model}, and '{path}' holds no record: run that experiment again (avmech run "
                             f"experiments/{experiment}.toml --model {exp.model} --results {results})")
    return out


def digest(records: pd.DataFrame) -> str:
    """A short hash of a record set's content (row and column order aside)."""
    ordered = records.sort_values(["sample_id", "condition"]).reindex(sorted(records.columns), axis=1)
    hashed = pd.util.hash_pandas_object(ordered.astype(str), index=False).to_numpy()
    return hashlib.sha1(hashed.tobytes()).hexdigest()[:16]


def fingerprint(exp: Experiment, revision: str | None = None,
                inputs: dict[str, pd.DataFrame] | None = None) -> dict[str, Any]:
    """What an experiment's records depend on: a folder holds the records of one fingerprint.

    The model and its revision (the checkpoint's commit, when known), and on an NDIF
    server the name it serves the model by; the data set (all of `DataSpec` but
    ``limit``: a larger limit extends the same samples), the flow and its resolved
    parameters, the records it reads (each input's experiment and a digest of its
    records: a sweep run further changes the layers a discard follows), the seed, the
    backend and avmech's version. Not the shard, the description, the server's host or
    timeout: they do not change a record.
    """
    served = [exp.ndif.model, exp.ndif.model_key] if exp.backend == "ndif" else None
    read = {name: {"experiment": exp.inputs[name], "records": digest(frame)} for name, frame in (inputs or {}).items()}
    return {
        "model": exp.model,
        "revision": revision,
        "served_as": served,
        "data": exp.data.model_dump(exclude={"limit"}),
        "flow": exp.flow,
        "params": exp.flow_params.model_dump(mode="json"),
        "inputs": read,
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


def up_to_date(exp: Experiment, results: str | Path = "results") -> bool:
    """Whether ``exp``'s folder holds its finished records (``records.parquet``, at least one), written
    with this configuration and these inputs; finished records of another configuration are an `InputError`.

    A ``records.parquet`` without a row (a run that skipped every sample, or one written before an
    empty data selection was refused) is not up to date: running again retries its samples.
    """
    base = results_dir(exp, results)
    if not (base / RECORDS).exists() or pq.read_metadata(base / RECORDS).num_rows == 0:
        return False
    fp = fingerprint(exp, inputs=load_inputs(exp, results))
    found = _recorded(base)
    compare = tuple(f for f in fp if f != "revision")
    if found is not None and any(found.get(f) != fp[f] for f in compare):
        raise mismatch(base, {f: found.get(f) for f in compare}, {f: fp[f] for f in compare})
    return True


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
    inputs = load_inputs(exp, results)
    base = results_dir(exp, results)
    without_revision = tuple(f for f in fingerprint(exp, inputs=inputs) if f != "revision")
    planned = _folder(base, fingerprint(exp, inputs=inputs), new_folder, without_revision)  # refuse before loading
    if not wait and (busy := RunLock(planned, shard).busy()) is not None:
        raise busy
    # On an NDIF server the LLM runs there: load only what runs here (processor, encoders, embeddings).
    decoder = "server" if exp.backend == "ndif" else "local"
    m = model if model is not None else avmech.load(exp.model, seed=exp.seed, decoder=decoder)
    samples = load_samples(exp.data, exp.seed, exp.model)
    if shard is not None:
        samples = samples[shard[0]::shard[1]]
    fp = fingerprint(exp, _revision(m), inputs)
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
        finished = store.finished()
        todo = [s for s in samples if sample_fields(s)["sample_id"] not in finished]
        try:
            flow = FLOWS[exp.flow].run(m, todo, exp.flow_params, **inputs)
            with use(exp.runner), on_sample_error(skip), contextlib.closing(flow):  # closed: its progress bar ends
                for record in unwritten(flow, store):
                    store.append([{"experiment": exp.name, "model": exp.model, "dataset": exp.data.dataset, **record}])
                    new += 1
        except AVMechError as e:
            e.add_note(kept_records(store))
            raise
        path = store.finalize()
        written = pq.read_metadata(path).num_rows
        if samples and not written:  # a run over samples that left no record is a failure, not an empty result
            raise InputError(f"{exp.name} on {exp.model} wrote no record for its {len(samples)} samples "
                             f"({len(skipped)} skipped, see '{store.skipped}'): mend what that log names and run "
                             "again (--strict stops at the first sample that fails)")
    return RunSummary(store.dir, written, new, tuple(skipped), store.skipped)


def unwritten(records: Iterable[dict[str, Any]], store: RecordStore) -> Iterator[dict[str, Any]]:
    """The flow's records that ``store`` lacks; a sample is marked finished once the flow has moved past it."""
    done = store.done()
    current = None
    for record in records:
        if record["sample_id"] != current:
            if current is not None:
                store.finish(current)
            current = record["sample_id"]
        if (record["sample_id"], record["condition"]) not in done:
            yield record
    if current is not None:
        store.finish(current)


def kept_records(store: RecordStore) -> str:
    """What a failed run leaves in ``store``, for its error's note."""
    try:
        n = len(store.records())
    except AVMechError:  # a damaged log: its own error says so when the run resumes
        n = -1
    if n == 0:
        return f"no record was written to '{store.dir}'"
    held = "the records" if n < 0 else "the record" if n == 1 else f"the {n} records"
    return f"'{store.dir}' keeps {held} written so far: run the same command again to resume"


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
