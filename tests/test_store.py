"""The record store and the runner keep their promises: one writer per folder, one
configuration per folder, whole files after a kill, nothing written outside (or before),
bad data refused, and every error one line with its kind's exit status."""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from avmech import data
from avmech.cli import app, fail
from avmech.errors import EXIT_STATUS, InputError, RemoteError
from avmech.experiment import execute, fingerprint, load_experiment, run_experiment, up_to_date
from avmech.store import RecordStore, RunLock

LENS = """
name = "lens"
flow = "letter_lens"
seed = {seed}
[data]
dataset = "av-speakerbench"
n_synthetic = 8
limit = 2
"""


def _exp_file(tmp_path: Path, seed: int = 0, name: str = "exp.toml") -> Path:
    path = tmp_path / name
    path.write_text(LENS.format(seed=seed))
    return path


def _folder(results: Path) -> Path:
    return results / "lens" / "tiny-omni"


def _lines(output: str) -> list[str]:
    """The lines of a command's output that are not progress bars."""
    return [line for line in output.splitlines() if line.strip() and "sample/s]" not in line and "%|" not in line]


# ---- one writer per folder (real processes) -------------------------------------------
HOLDER = textwrap.dedent("""
    import pathlib, sys, time
    from avmech.experiment import load_experiment, run_experiment
    from avmech.store import RecordStore

    signal = pathlib.Path(sys.argv[3])
    append = RecordStore.append

    def held(self, records):  # write the first record, then hold the folder until told to go on
        append(self, records)
        (signal.parent / "holding").touch()
        while not signal.exists():
            time.sleep(0.05)

    RecordStore.append = held
    run_experiment(load_experiment(sys.argv[1]), sys.argv[2])
""")


def _cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "avmech.cli", "run", *args], text=True, **kw)


def _until(condition, what: str, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_a_second_run_on_the_same_folder_is_refused_or_waits(omni, tmp_path):
    """Process A holds the folder (mid-run); B is refused naming A's pid, host and start;
    C, with --wait, waits until A is done and then finds nothing left to do."""
    exp, results, go = _exp_file(tmp_path), tmp_path / "results", tmp_path / "go"
    (tmp_path / "holder.py").write_text(HOLDER)
    a = subprocess.Popen([sys.executable, str(tmp_path / "holder.py"), str(exp), str(results), str(go)],
                         stderr=subprocess.PIPE, text=True)
    c = None
    try:
        _until(lambda: (tmp_path / "holding").exists() or a.poll() is not None, "A to start")
        assert a.poll() is None, a.stderr.read()
        b = subprocess.run([sys.executable, "-m", "avmech.cli", "run", str(exp), "--results", str(results)],
                           capture_output=True, text=True, timeout=300)
        assert b.returncode == EXIT_STATUS[InputError], b.stderr
        (line,) = _lines(b.stderr)
        assert line.startswith("error: results folder") and "is being written by another avmech run" in line
        assert f"pid {a.pid} on {platform.node()}, started 20" in line and "--wait" in line
        with open(tmp_path / "c.err", "w") as err:
            c = _cli(str(exp), "--results", str(results), "--wait", stdout=subprocess.PIPE, stderr=err)
        _until(lambda: "waiting for the avmech run" in (tmp_path / "c.err").read_text() or c.poll() is not None,
               "C to wait")
        assert c.poll() is None, (tmp_path / "c.err").read_text()
        go.touch()
        assert a.wait(timeout=300) == 0, a.stderr.read()
        out, _ = c.communicate(timeout=300)
        assert c.returncode == 0, (tmp_path / "c.err").read_text()
        assert "8 records (0 new), 0 samples skipped" in out
    finally:
        for p in (a, c):
            if p is not None and p.poll() is None:
                p.kill()
    records = pd.read_parquet(_folder(results) / "records.parquet")
    assert len(records) == 8 and not records.duplicated(["sample_id", "condition"]).any()


def test_shards_of_one_count_run_side_by_side_and_others_are_refused(tmp_path):
    first = RunLock(tmp_path, (0, 2))
    first.acquire()
    try:
        other = RunLock(tmp_path, (1, 2))
        other.acquire()  # disjoint samples: allowed
        other.release()
        for clash in (None, (0, 2), (1, 3)):
            with pytest.raises(InputError, match=rf"being written by another avmech run \(pid {os.getpid()} .*"
                                                 r"run\.shard-0-of-2\.lock"):
                RunLock(tmp_path, clash).acquire()
    finally:
        first.release()
    free = RunLock(tmp_path, None)
    free.acquire()  # nothing holds the folder any more
    free.release()


# ---- the runner knows what is done ------------------------------------------------------
def test_a_resumed_run_skips_finished_samples_and_writes_only_missing_records(omni, tmp_path, monkeypatch):
    exp = load_experiment(_exp_file(tmp_path))
    folder = run_experiment(exp, tmp_path / "results", model=omni)
    whole = pd.read_parquet(folder / "records.parquet")
    finished = (folder / "finished.jsonl").read_text().splitlines()
    assert [json.loads(line)["sample_id"] for line in finished] == list(dict.fromkeys(whole["sample_id"]))
    # killed in the middle of the second sample: its finish mark and its last two records were never written
    (folder / "finished.jsonl").write_text(finished[0] + "\n")
    lines = (folder / "records.jsonl").read_text().splitlines()
    (folder / "records.jsonl").write_text("\n".join(lines[:-2]) + "\n")
    prepared = []
    monkeypatch.setattr(omni, "prepare", lambda s, prepare=omni.prepare: prepared.append(s.id) or prepare(s))
    summary = execute(exp, tmp_path / "results", model=omni)
    assert prepared == [whole["sample_id"].iloc[-1]]  # the finished sample is not even prepared
    assert summary.new == 2 and summary.records == len(whole)
    resumed = pd.read_parquet(folder / "records.parquet")
    assert not resumed.duplicated(["sample_id", "condition"]).any() and len(resumed) == len(whole)
    assert len((folder / "finished.jsonl").read_text().splitlines()) == 2


# ---- one configuration per folder ------------------------------------------------------
def test_resuming_with_another_configuration_is_refused_naming_the_fields(omni, tmp_path, caplog):
    results = tmp_path / "results"
    first = run_experiment(load_experiment(_exp_file(tmp_path, seed=0)), results, model=omni)
    config, log = (first / "config.json").read_text(), (first / "records.jsonl").read_text()
    changed = load_experiment(_exp_file(tmp_path, seed=1))
    with pytest.raises(InputError, match=r"another configuration \(seed: 0 -> 1\).*--new-folder"):
        run_experiment(changed, results, model=omni)
    assert (first / "config.json").read_text() == config and (first / "records.jsonl").read_text() == log
    cli = CliRunner().invoke(app, ["run", str(_exp_file(tmp_path, seed=1)), "--results", str(results)])
    assert cli.exit_code == 2 and "seed: 0 -> 1" in cli.output
    second = run_experiment(changed, results, model=omni, new_folder=True)
    assert second == first.with_name("tiny-omni-2") and "writing to" in caplog.text and str(second) in caplog.text
    assert json.loads((second / "fingerprint.json").read_text()) == fingerprint(changed)
    assert run_experiment(changed, results, model=omni, new_folder=True) == second  # resumes -2, no -3
    assert run_experiment(load_experiment(_exp_file(tmp_path, seed=0)), results, model=omni) == first
    more = load_experiment(_exp_file(tmp_path, seed=0)).model_copy(update={"params": {"norm": False}})
    with pytest.raises(InputError, match=r"params\.norm: true -> false"):
        run_experiment(more, results, model=omni)


def test_a_folder_from_before_fingerprints_is_checked_against_its_config(omni, tmp_path):
    results = tmp_path / "results"
    folder = run_experiment(load_experiment(_exp_file(tmp_path)), results, model=omni)
    (folder / "fingerprint.json").unlink()
    with pytest.raises(InputError, match=r"seed: 0 -> 1"):
        run_experiment(load_experiment(_exp_file(tmp_path, seed=1)), results, model=omni)
    assert run_experiment(load_experiment(_exp_file(tmp_path)), results, model=omni) == folder
    assert (folder / "fingerprint.json").exists()


# ---- whole files after a kill ----------------------------------------------------------
def _killed_mid_write(monkeypatch, under: Path) -> None:
    """From now on, a file opened for writing under ``under`` takes half of a write, then the process 'dies'."""
    real = builtins.open

    class Dying:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            raise KeyboardInterrupt

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def __getattr__(self, name):
            return getattr(self.f, name)

    def dying_open(file, mode="r", *args, **kw):
        f = real(file, mode, *args, **kw)
        writes = any(c in str(mode) for c in "wax+")
        return Dying(f) if writes and isinstance(file, str | os.PathLike) and Path(file).is_relative_to(under) else f

    monkeypatch.setattr(builtins, "open", dying_open)
    monkeypatch.setattr(io, "open", dying_open)


def test_metadata_and_repaired_logs_are_replaced_whole(tmp_path, monkeypatch):
    store = RecordStore(tmp_path / "run")
    store.append([{"sample_id": "s", "condition": c, "x": 1} for c in ("a", "b")])
    store.write_meta({"name": "t"}, {"seed": 0})
    with open(store.log, "a") as f:
        f.write('{"sample_id": "s", "cond')  # torn by a kill
    before = {p.name: p.read_bytes() for p in store.dir.iterdir()}
    _killed_mid_write(monkeypatch, store.dir)
    with pytest.raises(KeyboardInterrupt):
        store.append([{"sample_id": "s", "condition": "c"}])  # dies repairing the tail
    with pytest.raises(KeyboardInterrupt):
        store.write_meta({"name": "t"}, {"seed": 0})  # dies rewriting env.json
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in store.dir.iterdir() if not p.name.startswith(".")} == before
    assert len(json.loads((store.dir / "env.json").read_text())) == 1
    assert [r["condition"] for r in store.records()] == ["a", "b"]


def test_a_damaged_log_line_or_a_record_written_twice_is_an_error(tmp_path):
    store = RecordStore(tmp_path)
    store.append([{"sample_id": "s", "condition": "a"}])
    with open(store.log, "a") as f:
        f.write("garbage\n")
    with pytest.raises(InputError, match=r"records\.jsonl' line 2 is not a record"):
        store.done()
    store.log.write_text(json.dumps({"sample_id": "s", "condition": "a"}) + "\n")
    RecordStore(tmp_path, (0, 2)).append([{"sample_id": "s", "condition": "a"}])
    with pytest.raises(InputError, match=r"sample 's' condition 'a' is recorded twice.*shard-0-of-2"):
        RecordStore(tmp_path).finalize()


# ---- nothing outside the folder, nothing before the model and data load ----------------
@pytest.mark.parametrize("field,value", [("name", ".."), ("model", ".."), ("model", "/"), ("name", ".")])
def test_names_that_would_leave_the_results_folder_are_refused(tmp_path, field, value):
    text = LENS.format(seed=0).replace('name = "lens"', f'name = "{value}"' if field == "name" else 'name = "lens"')
    path = tmp_path / "exp.toml"
    path.write_text(text)
    refused = rf"{field}.*{value!r}.*does not name a folder inside the results folder"
    with pytest.raises(InputError, match=refused):
        load_experiment(path, **({"model": value} if field == "model" else {}))
    copied = load_experiment(_exp_file(tmp_path)).model_copy(update={field: value})  # model_copy does not validate
    with pytest.raises(InputError, match=refused):
        run_experiment(copied, tmp_path / "results")
    assert not (tmp_path / "results").exists()


@pytest.mark.integration
@pytest.mark.parametrize("args,status", [
    (["--model", ".."], 2), (["--model", "no-such-model"], 4), (["--data", "/no/such/copy"], 2),
])
def test_nothing_is_written_before_the_model_and_data_load(tmp_path, args, status):
    results = tmp_path / "inner" / "results"
    result = CliRunner().invoke(app, ["run", str(_exp_file(tmp_path)), "--results", str(results), *args])
    assert result.exit_code == status, result.output
    assert not (tmp_path / "inner").exists(), list((tmp_path / "inner").rglob("*"))


# ---- one line, its kind's status ------------------------------------------------------
def test_cli_errors_are_one_line_with_the_kinds_status_or_a_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(LENS.format(seed=0).replace("limit = 2", "limit = 0").replace('flow = "letter_lens"', 'flow = "x"'))
    result = CliRunner().invoke(app, ["run", str(bad), "--results", str(tmp_path)])
    assert result.exit_code == 2
    (line,) = _lines(result.output)
    assert line.startswith(f"error: invalid experiment {bad}: flow:") and "; data.limit:" in line
    model = CliRunner().invoke(app, ["run", str(_exp_file(tmp_path)), "--model", "no-such", "--results", str(tmp_path)])
    assert model.exit_code == 4 and len(_lines(model.output)) == 1 and "unknown model 'no-such'" in model.output
    debug = CliRunner().invoke(app, ["run", str(bad), "--debug"])
    assert debug.exit_code == 2 and "Traceback (most recent call last)" in debug.output
    assert "avmech.errors.InputError: invalid experiment" in debug.output
    help_text = CliRunner().invoke(app, ["run", "--help"]).output
    for kind, status in EXIT_STATUS.items():
        assert f"{status}  {kind.__name__}" in help_text


def test_debug_shows_what_the_server_said(capsys):
    """A remote error is one line; --debug adds the server's full answer (its traceback)."""
    err = RemoteError("request 7 failed on the NDIF server: ValueError: boom", detail="Traceback ...\nValueError: boom")
    for debug in (False, True):
        with pytest.raises(typer.Exit) as exit_:
            fail(err, debug)
        assert exit_.value.exit_code == EXIT_STATUS[RemoteError]
        out = capsys.readouterr().err
        assert ("what the server said:\nTraceback ...\nValueError: boom" in out) is debug
        if not debug:
            assert out == "error: request 7 failed on the NDIF server: ValueError: boom\n"


# ---- a corrupt clip is skipped, or stops the run with --strict ------------------------
@pytest.fixture
def corrupt_copy(tmp_path):
    """The synthetic AV-SpeakerBench set with its first clip (questions 1 and 2) corrupt."""
    root = tmp_path / "data"
    shutil.copytree(data.synthetic.ensure("av-speakerbench", n=8), root)
    first = data.read("av-speakerbench", root, limit=1)[0]
    first.video.write_bytes(b"not a video")
    return root


def test_a_corrupt_clip_is_skipped_logged_and_counted(omni, corrupt_copy, tmp_path):
    exp = load_experiment(_exp_file(tmp_path), root=str(corrupt_copy), limit=3)
    summary = execute(exp, tmp_path / "results", model=omni)
    ids = [s.id for s in data.read("av-speakerbench", corrupt_copy, limit=3)]
    assert summary.skipped == tuple(ids[:2]) and summary.skipped_log == summary.directory / "skipped.jsonl"
    skipped = [json.loads(line) for line in summary.skipped_log.read_text().splitlines()]
    assert [s["sample_id"] for s in skipped] == ids[:2]
    assert {s["error"] for s in skipped} <= {"MediaError", "InputError"} and "could not decode" in skipped[0]["message"]
    records = pd.read_parquet(summary.directory / "records.parquet")
    assert set(records.sample_id) == {ids[2]} and summary.records == len(records) == omni.n_layers
    n = omni.n_layers
    assert str(summary) == f"{n} records ({n} new), 2 samples skipped (see {summary.skipped_log})"
    result = CliRunner().invoke(app, ["run", str(_exp_file(tmp_path)), "--data", str(corrupt_copy), "--limit", "3",
                                      "--results", str(tmp_path / "cli")])
    assert result.exit_code == 0 and "2 samples skipped (see " in result.output
    strict = CliRunner().invoke(app, ["run", str(_exp_file(tmp_path)), "--data", str(corrupt_copy), "--limit", "3",
                                      "--results", str(tmp_path / "strict"), "--strict"])
    kind = next(k for k in EXIT_STATUS if k.__name__ == skipped[0]["error"])
    assert strict.exit_code == EXIT_STATUS[kind], strict.output
    (line,) = _lines(strict.output)
    assert "could not decode" in line and f"while preparing sample {ids[0]!r}" in line
    assert not (tmp_path / "strict" / "lens" / "tiny-omni" / "skipped.jsonl").exists()


def test_a_run_that_leaves_no_record_is_an_error_and_is_run_again(omni, corrupt_copy, tmp_path):
    """Questions 1 and 2 share the corrupt clip: both skipped, no record. That is an error, not an empty
    result, and the empty records.parquet is not "up to date": once the clip is mended the run retries."""
    exp = load_experiment(_exp_file(tmp_path), root=str(corrupt_copy), limit=2)
    results = tmp_path / "results"
    with pytest.raises(InputError, match=r"wrote no record for its 2 samples \(2 skipped, see '.*skipped.jsonl'\)"):
        execute(exp, results, model=omni)
    assert pd.read_parquet(_folder(results) / "records.parquet").empty and not up_to_date(exp, results)
    first = data.read("av-speakerbench", corrupt_copy, limit=1)[0]
    shutil.copy(data.read("av-speakerbench", data.synthetic.ensure("av-speakerbench", n=8), limit=1)[0].video,
                first.video)
    summary = execute(exp, results, model=omni)
    assert summary.records == summary.new == 2 * omni.n_layers and summary.skipped == ()
    assert up_to_date(exp, results)


def test_neither_a_figure_nor_a_later_experiment_reads_a_records_file_without_a_record(tmp_path):
    """The token-discard experiment reads the knockout sweep's records; an empty sweep would give it no layer."""
    from avmech.experiment import load_inputs
    from paper_figures.common import read_source

    folder = tmp_path / "av_video_knockout" / "tiny-omni"
    folder.mkdir(parents=True)
    pd.DataFrame({"sample_id": [], "condition": []}).to_parquet(folder / "records.parquet")
    with pytest.raises(InputError, match="holds no record: run the experiment again"):
        read_source(folder)
    discard = load_experiment(Path(__file__).parents[1] / "experiments" / "token_discard.toml", model="tiny-omni")
    with pytest.raises(InputError, match=r"reads the records of av_video_knockout .* holds no record: run that"):
        load_inputs(discard, tmp_path)


# ---- a full disk, a read-only folder --------------------------------------------------
def test_a_full_disk_is_one_line_and_keeps_the_records(omni, tmp_path, monkeypatch):
    exp, results = _exp_file(tmp_path), tmp_path / "results"
    log = _folder(results) / "records.jsonl"
    real, calls = os.fsync, {"n": 0}

    def full(fd):
        if os.readlink(f"/proc/self/fd/{fd}") == str(log):
            calls["n"] += 1
            if calls["n"] > 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", full)
    result = CliRunner().invoke(app, ["run", str(exp), "--results", str(results)])
    assert result.exit_code == 2, result.output
    (line,) = _lines(result.output)
    assert f"cannot write '{log}' (No space left on device): free some disk space" in line
    kept = RecordStore(log.parent).records()
    assert len(kept) >= 3 and f"'{log.parent}' keeps the {len(kept)} records written so far" in line
    monkeypatch.setattr(os, "fsync", real)
    resumed = CliRunner().invoke(app, ["run", str(exp), "--results", str(results)])
    assert resumed.exit_code == 0 and f"8 records ({8 - len(kept)} new)" in resumed.output


def test_a_read_only_folder_is_one_line_and_keeps_the_records(omni, tmp_path, monkeypatch):
    """As root, permissions do not stop writes: the folder's writes fail as on a read-only mount."""
    exp, results = _exp_file(tmp_path), tmp_path / "results"
    folder = run_experiment(load_experiment(exp), results, model=omni)
    (folder / "records.parquet").unlink()  # a half-done run, to be resumed
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    real_os_open, real_open = os.open, builtins.open

    def refuse(path):
        if Path(path).resolve().is_relative_to(folder.resolve()):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def os_open(path, flags, *args, **kw):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_os_open(path, flags, *args, **kw)

    def open_(file, mode="r", *args, **kw):
        if isinstance(file, str | os.PathLike) and any(c in mode for c in "wax+"):
            refuse(file)
        return real_open(file, mode, *args, **kw)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)
    result = CliRunner().invoke(app, ["run", str(exp), "--results", str(results)])
    monkeypatch.undo()
    assert result.exit_code == 2, result.output
    (line,) = _lines(result.output)
    assert f"cannot write '{folder}/" in line and "(Read-only file system): make it writable" in line
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
