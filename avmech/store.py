"""Results on disk: one record per (sample, condition), durable as soon as it is computed.

A run writes ``results/<experiment>/<model>/``:

- ``fingerprint.json``: what the records depend on (model and revision, data, flow,
  parameters, seed, backend, avmech version; see `avmech.experiment.fingerprint`),
  written when the folder is made. A run whose fingerprint differs is refused, naming
  the fields (``seed: 0 -> 1``): resuming it would mix records of two configurations;
- ``config.json``: the resolved experiment configuration of the run that made the folder
  (never overwritten; every run's own configuration is in its ``env.json`` entry);
- ``env.json``: versions, git revision, device, host, start time, shard and
  configuration, one entry per run or resume;
- ``records[.shard-i-of-n].jsonl``: the append-only log, one JSON record per line,
  flushed and fsync'd as each (sample, condition) completes;
- ``skipped[.shard-i-of-n].jsonl``: the samples a run could not prepare (a corrupt clip),
  one JSON line each: ``sample_id``, ``error`` (its kind), ``message``, ``time``;
- ``finished[.shard-i-of-n].jsonl``: the samples whose records are all written, one
  ``{"sample_id": ...}`` line each: a resumed run skips them without preparing them;
- ``records.parquet``: the tidy table, rebuilt from the logs when a run finishes;
- ``run[.shard-i-of-n].lock`` and ``*.lock.holder.json``: the run that writes there now
  (pid, host, start time), and ``meta.lock`` guarding the metadata files.

**One writer.** A run holds its lock (`RunLock`, a `filelock` lock: released by the
operating system when the process dies, so a killed run never leaves it taken) for as
long as it writes. A second run that would write the same records (any run beside an
unsharded one; shards of a different count) is refused with the holder's pid, host and
start time, or, asked to wait, waits for it; shards ``i/n`` of one ``n`` run side by side.

**Nothing lost, nothing mixed.** A run killed half-way loses at most the record being
written: on restart the store cuts the torn last line of its log, and the flow skips
every (sample, condition) already there, so nothing is computed twice and nothing is
lost (a sample the run had not finished is run again, and only its missing records are
written). Any other line that is not a record, and a (sample, condition) recorded twice, is
an `InputError` naming the file and line, never silently dropped. Metadata files and a
repaired log are replaced whole (temporary file, fsync, ``os.replace``), so a kill
leaves the old version or the new one. A write that fails (a read-only folder, a full
disk) is an `InputError` naming the path; the records written before it stay.

Figure scripts read ``records.parquet`` only.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import platform
import re
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from filelock import FileLock, Timeout

from avmech.errors import InputError

RECORDS = "records.parquet"
KEY = ("sample_id", "condition")
FINGERPRINT = "fingerprint.json"
_SHARD_LOCK = re.compile(r"run\.shard-(\d+)-of-(\d+)\.lock")
log = logging.getLogger(__name__)


def slug(name: str) -> str:
    """A file-system-safe name for a model or experiment ("Qwen/Qwen2.5-Omni-7B" -> "Qwen--Qwen2.5-Omni-7B")."""
    name = name.rstrip("/")
    if os.sep in name and Path(name).exists():
        name = Path(name).name
    return name.replace("/", "--").replace(" ", "_")


def folder_name(value: str, field: str, name: str | None = None) -> str:
    """``name`` (default ``value``) if it names one folder inside the results folder, else an `InputError`.

    ``""``, ``"."``, ``".."``, path separators and absolute paths would write outside
    ``results/<experiment>/<model>/``; the error names ``field`` and ``value``.
    """
    name = value if name is None else name
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name or os.path.isabs(name):
        made = "" if name == value else f" (its folder name would be {name!r})"
        raise InputError(
            f"{field} {value!r}{made} does not name a folder inside the results folder: use letters, digits and "
            "'_', '-', '.', not '', '.', '..' or a path separator"
        )
    return name


def environment() -> dict[str, Any]:
    """Versions, git revision and device: enough to tell two runs apart."""
    import nnsight
    import torch
    import transformers

    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        rev = None
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "nnsight": nnsight.__version__,
        "git_revision": rev,
        "device": device,
        "host": platform.node(),
    }


def differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``"field: old -> new"`` for every field that differs, nested tables as ``data.root``."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {json.dumps(a, default=str)} -> {json.dumps(b, default=str)}")
    return out


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an `OSError` of the writes inside into an `InputError` naming the path and the fix."""
    try:
        yield
    except OSError as e:
        where = e.filename or path
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            fix = "free some disk space"
        elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            fix = "make it writable or pass --results a writable folder"
        else:
            fix = "check the results folder"
        raise InputError(f"cannot write '{where}' ({e.strerror or e}): {fix}, then run the same command again") from e


def atomic_write(path: Path, text: str | bytes) -> None:
    """Replace ``path`` by ``text`` whole: a reader (or a kill) sees the old file or the new one."""
    data = text.encode() if isinstance(text, str) else text
    tmp = _temporary(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _temporary(path: Path) -> Path:
    """A temporary name beside ``path``, this process's own (made with the usual permissions)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def append_durably(path: Path, lines: str) -> None:
    """Append ``lines`` to ``path`` after cutting a torn last line; flushed and fsync'd before returning."""
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
        if torn:  # left by a kill mid-write: cut it, so the next record starts clean
            data = path.read_bytes()
            atomic_write(path, data[: data.rfind(b"\n") + 1])
    with open(path, "a") as f:
        f.write(lines)
        f.flush()
        os.fsync(f.fileno())


@dataclass(frozen=True)
class Holder:
    """Who holds a run lock: written beside it, shown to the run that is refused."""

    pid: int
    host: str
    started: str

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started}"


def _holder(lock: Path) -> str:
    path = lock.with_name(lock.name + ".holder.json")
    try:
        return str(Holder(**json.loads(path.read_text())))
    except (OSError, ValueError, TypeError):
        return "a process that has not recorded itself yet"


def _held(lock: Path) -> bool:
    """Whether another process holds ``lock`` now (tried without waiting, released at once)."""
    probe = FileLock(lock, timeout=0)
    try:
        probe.acquire()
    except Timeout:
        return True
    probe.release()
    return False


def _overlap(a: tuple[int, int] | None, b: tuple[int, int] | None) -> bool:
    """Whether two runs (None: every sample; (i, n): shard i of n) can write the same records."""
    return a is None or b is None or a[1] != b[1] or a[0] == b[0]


class RunLock:
    """The exclusive right to write one log of a results folder (all samples, or shard i/n)."""

    def __init__(self, directory: Path, shard: tuple[int, int] | None):
        self.dir, self.shard = directory, shard
        self.path = directory / ("run.lock" if shard is None else f"run.shard-{shard[0]}-of-{shard[1]}.lock")
        self.holder = self.path.with_name(self.path.name + ".holder.json")
        self._lock = FileLock(self.path, timeout=0)

    def _others(self) -> list[Path]:
        """Lock files of runs whose records could overlap ours."""
        out = []
        for path in sorted(self.dir.glob("run*.lock")):
            m = _SHARD_LOCK.fullmatch(path.name)
            shard = (int(m.group(1)), int(m.group(2))) if m else None
            if path != self.path and (path.name == "run.lock" or m) and _overlap(self.shard, shard):
                out.append(path)
        return out

    def _busy(self, lock: Path) -> InputError:
        return InputError(
            f"results folder '{self.dir}' is being written by another avmech run ({_holder(lock)}; lock "
            f"'{lock.name}'): wait for it to finish, pass --wait (wait=True) to start when it does, or write "
            "elsewhere (--results)"
        )

    def busy(self) -> InputError | None:
        """The refusal a run would get now, without taking anything (None: free)."""
        if not self.dir.is_dir():
            return None
        with writing(self.dir):
            for lock in [self.path, *self._others()]:
                if lock.exists() and _held(lock):
                    return self._busy(lock)
        return None

    def acquire(self, wait: bool = False) -> None:
        """Take the lock, or raise an `InputError` naming its holder (``wait``: block until free)."""
        with writing(self.dir):
            while True:
                try:
                    self._lock.acquire(timeout=0)
                except Timeout:
                    if not wait:
                        raise self._busy(self.path) from None
                    log.warning("waiting for the avmech run writing '%s' (%s) to finish", self.dir, _holder(self.path))
                    self._lock.acquire(timeout=-1)
                clash = next((lock for lock in self._others() if _held(lock)), None)
                if clash is None:
                    me = Holder(os.getpid(), platform.node(), time.strftime("%Y-%m-%dT%H:%M:%S%z"))
                    atomic_write(self.holder, json.dumps(asdict(me)))
                    return
                self._lock.release()
                if not wait:
                    raise self._busy(clash)
                log.warning("waiting for the avmech run writing '%s' (%s) to finish", self.dir, _holder(clash))
                with FileLock(clash):
                    pass

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self.holder.unlink()
        self._lock.release()


class RecordStore:
    """The records of one (experiment, model) directory; ``shard`` = (i, n) or None.

    Nothing is written on construction: the folder is made by the first write.
    """

    def __init__(self, directory: str | Path, shard: tuple[int, int] | None = None):
        self.dir = Path(directory)
        self.shard = shard
        tail = "" if shard is None else f".shard-{shard[0]}-of-{shard[1]}"
        self.log = self.dir / f"records{tail}.jsonl"
        self.skipped = self.dir / f"skipped{tail}.jsonl"
        self.finished_log = self.dir / f"finished{tail}.jsonl"

    @contextlib.contextmanager
    def locked(self, wait: bool = False) -> Iterator[RunLock]:
        """Hold this store's `RunLock` for the block (making the folder first)."""
        with writing(self.dir):
            self.dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(self.dir, self.shard)
        lock.acquire(wait)
        try:
            yield lock
        finally:
            lock.release()

    def fingerprint(self) -> dict[str, Any] | None:
        """The fingerprint the folder was made with (None: none recorded)."""
        return _read_json(self.dir / FINGERPRINT, None)

    def write_meta(self, config: dict[str, Any], fingerprint: dict[str, Any]) -> None:
        """Record ``fingerprint`` and ``config`` if the folder has none, and this run's environment."""
        with writing(self.dir), FileLock(self.dir / "meta.lock"):
            found = self.fingerprint()
            if found is not None and found != fingerprint:  # a run that started while we checked
                raise mismatch(self.dir, found, fingerprint)
            if found is None:
                if (self.dir / "config.json").exists():
                    log.warning("'%s' was written by an avmech without fingerprints: checked against its config.json, "
                                "now recorded in %s", self.dir, FINGERPRINT)
                atomic_write(self.dir / FINGERPRINT, json.dumps(fingerprint, indent=2, default=str))
            if not (self.dir / "config.json").exists():
                atomic_write(self.dir / "config.json", json.dumps(config, indent=2, default=str))
            env_file = self.dir / "env.json"
            runs = _read_json(env_file, [])
            runs.append({**environment(), "shard": self.shard and list(self.shard), "config": config})
            atomic_write(env_file, json.dumps(runs, indent=2, default=str))

    def _lines(self, path: Path) -> list[dict[str, Any]]:
        lines = path.read_bytes().split(b"\n")
        out = []
        for n, line in enumerate(lines[:-1], start=1):  # lines[-1]: b"" or a torn tail (a kill, or a writer now)
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                record = None
            if not isinstance(record, dict) or not all(k in record for k in KEY):
                raise InputError(
                    f"'{path}' line {n} is not a record with {' and '.join(KEY)} ({line[:80]!r}): the log is "
                    "damaged; remove that line (its record is computed again) and run again"
                )
            out.append(record)
        return out

    def records(self) -> list[dict[str, Any]]:
        """Every record in every shard's log of this directory; a record seen twice is an `InputError`."""
        out, seen = [], {}
        for path in sorted(self.dir.glob("records*.jsonl")):
            for record in self._lines(path):
                key = (record["sample_id"], record["condition"])
                if key in seen:
                    raise InputError(
                        f"sample {key[0]!r} condition {key[1]!r} is recorded twice, in '{seen[key]}' and '{path}' "
                        "(two runs wrote the same records): keep one of the two lines"
                    )
                seen[key] = path
                out.append(record)
        return out

    def done(self) -> set[tuple[str, str]]:
        """(sample_id, condition) pairs already recorded."""
        return {(r["sample_id"], r["condition"]) for r in self.records()}

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records durably (flush + fsync) before returning."""
        lines = "".join(json.dumps(r, default=_jsonable) + "\n" for r in records)
        if lines:
            with writing(self.log):
                self.dir.mkdir(parents=True, exist_ok=True)
                append_durably(self.log, lines)

    def finish(self, sample_id: str) -> None:
        """Record, durably, that every record of ``sample_id`` is written."""
        with writing(self.finished_log):
            self.dir.mkdir(parents=True, exist_ok=True)
            append_durably(self.finished_log, json.dumps({"sample_id": sample_id}) + "\n")

    def finished(self) -> set[str]:
        """The samples finished by any shard's run in this directory."""
        out = set()
        for path in sorted(self.dir.glob("finished*.jsonl")):
            for n, line in enumerate(path.read_bytes().split(b"\n")[:-1], start=1):
                try:
                    out.add(json.loads(line)["sample_id"])
                except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                    raise InputError(f"'{path}' line {n} is not a finished sample ({line[:80]!r}): remove that line "
                                     "(the sample is run again) and run again") from None
        return out

    def skip(self, sample_id: str, error: Exception) -> None:
        """Log a sample that could not be prepared to ``skipped[...].jsonl``, durably."""
        line = {"sample_id": sample_id, "error": type(error).__name__, "message": str(error),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        with writing(self.skipped):
            self.dir.mkdir(parents=True, exist_ok=True)
            append_durably(self.skipped, json.dumps(line) + "\n")

    def finalize(self) -> Path:
        """Rebuild ``records.parquet`` from all logs; returns its path."""
        frame = pd.DataFrame(self.records())
        path = self.dir / RECORDS
        with writing(path):
            tmp = _temporary(path)
            try:
                frame.to_parquet(tmp, index=False)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        return path


def _read_json(path: Path, missing: Any) -> Any:
    """The JSON in ``path`` (``missing`` if there is none); a damaged file is an `InputError` naming it."""
    if not path.exists():
        return missing
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"'{path}' is not valid JSON ({e}): restore it, or move the folder away") from None


def mismatch(directory: Path, old: dict[str, Any], new: dict[str, Any]) -> InputError:
    """The refusal to resume ``directory`` (made with ``old``) with the configuration ``new``."""
    return InputError(
        f"results folder '{directory}' holds records of another configuration ({'; '.join(differences(old, new))}): "
        "resuming would mix them; run with the folder's settings to resume it, pass --new-folder "
        "(new_folder=True) to write to a new folder beside it, or move it away"
    )


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
