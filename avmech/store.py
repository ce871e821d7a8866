"""Results on disk: one record per (sample, condition), durable as soon as it is computed.

A run writes ``results/<experiment>/<model>/``:

- ``config.json``: the resolved experiment configuration;
- ``env.json``: versions, git revision, device, start time (one entry per run/resume);
- ``records[.shard-i-of-n].jsonl``: the append-only log, one JSON record per line,
  flushed and fsync'd as each (sample, condition) completes;
- ``records.parquet``: the tidy table, rebuilt from the logs when a run finishes.

A run killed half-way loses at most the record being written: on restart the store
reads the logs (ignoring a torn last line), and the flow skips every (sample, condition)
already there, so nothing is computed twice and nothing is lost. Figure scripts read
``records.parquet`` only.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

RECORDS = "records.parquet"


def slug(name: str) -> str:
    """A file-system-safe name for a model or experiment ("Qwen/Qwen2.5-Omni-7B" -> "Qwen--Qwen2.5-Omni-7B")."""
    name = name.rstrip("/")
    if os.sep in name and Path(name).exists():
        name = Path(name).name
    return name.replace("/", "--").replace(" ", "_")


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


class RecordStore:
    """The records of one (experiment, model) directory; ``shard`` = (i, n) or None."""

    def __init__(self, directory: str | Path, shard: tuple[int, int] | None = None):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.shard = shard
        name = "records.jsonl" if shard is None else f"records.shard-{shard[0]}-of-{shard[1]}.jsonl"
        self.log = self.dir / name

    def write_meta(self, config: dict[str, Any]) -> None:
        """Write the resolved config and append this run's environment."""
        (self.dir / "config.json").write_text(json.dumps(config, indent=2, default=str))
        env_file = self.dir / "env.json"
        runs = json.loads(env_file.read_text()) if env_file.exists() else []
        runs.append(environment())
        env_file.write_text(json.dumps(runs, indent=2))

    def _lines(self, path: Path) -> list[dict[str, Any]]:
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a torn last line from a killed run
                continue
        return out

    def records(self) -> list[dict[str, Any]]:
        """Every record in every shard's log of this directory."""
        return [r for path in sorted(self.dir.glob("records*.jsonl")) for r in self._lines(path)]

    def done(self) -> set[tuple[str, str]]:
        """(sample_id, condition) pairs already recorded."""
        return {(r["sample_id"], r["condition"]) for r in self.records()}

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records durably (flush + fsync) before returning."""
        lines = "".join(json.dumps(r, default=_jsonable) + "\n" for r in records)
        if not lines:
            return
        self._repair_tail()
        with open(self.log, "a") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())

    def _repair_tail(self) -> None:
        """Cut a torn last line (left by a kill mid-write) so the next record starts clean."""
        if not self.log.exists() or self.log.stat().st_size == 0:
            return
        data = self.log.read_bytes()
        if not data.endswith(b"\n"):
            self.log.write_bytes(data[: data.rfind(b"\n") + 1])

    def finalize(self) -> Path:
        """Rebuild ``records.parquet`` from all logs; returns its path."""
        frame = pd.DataFrame(self.records())
        path = self.dir / RECORDS
        tmp = path.with_suffix(".tmp")
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
        return path


def read_records(directory: str | Path) -> pd.DataFrame:
    """The tidy records of a results directory (``records.parquet``)."""
    path = Path(directory) / RECORDS
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run the experiment first (avmech run ...)")
    return pd.read_parquet(path)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
