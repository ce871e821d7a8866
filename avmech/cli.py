"""The `avmech` command line: inspect a sample's layout, run experiments, draw the figures.

    avmech inspect clip.mp4 -q "Who speaks first?" -o "the man" -o "the woman"
    avmech run experiments/av_video_knockout.toml [--model M] [--limit N] [--shard i/n] [--wait]
    avmech figures [--results DIR] [--out DIR] [--model M ...]

``figures`` is a command the repository's figures package adds: avmech runs whatever the
entry point ``figures`` of the group ``avmech.commands`` names, a ``main(argv)``, and
never imports that package itself.

Every error avmech raises on purpose (`avmech.errors.AVMechError`) is printed as one
line, ``error: <what and where>: <the fix>``, and the command exits with its kind's
status (``--debug`` prints the traceback instead, same status):

======  ==========================================================================
status  meaning
======  ==========================================================================
0       done (``run`` prints how many records, and how many samples it skipped)
1       an unexpected error (a bug: its traceback is printed), or an
        `AVMechError` of no kind
2       `InputError`: an argument, file, configuration, data set or results folder
        (in use by another run, written with another configuration, not writable)
3       `RemoteError`: a run on an NDIF server failed
4       `ModelError`: a model avmech cannot load or trace
5       `MediaError`: a media file (with ``run --strict``: a sample's corrupt clip)
======  ==========================================================================

``run`` keeps every record computed before an error, so the same command resumes.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import NoReturn

import typer

from avmech.errors import EXIT_STATUS, AVMechError, InputError, RemoteError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Trace audio-visual LLMs.")
DEBUG_HELP = "on an error, print its traceback instead of one line"
# Commands other installed packages add, as entry points of this group (pyproject.toml's
# [project.entry-points."avmech.commands"]): each a ``main(argv)``.
COMMANDS = "avmech.commands"


def one_line(e: AVMechError) -> str:
    """The error's message and notes as one line (a line ending in ':' runs on, others join with '; ')."""
    lines = [line.strip() for part in (str(e), *getattr(e, "__notes__", ())) for line in part.splitlines()]
    out = ""
    for line in filter(None, lines):
        out += line if not out else (" " if out.endswith(":") else "; ") + line
    return out


def exit_status(e: AVMechError) -> int:
    """The status of the error's kind (`EXIT_STATUS`), 1 for an `AVMechError` of no kind."""
    return next((status for kind, status in EXIT_STATUS.items() if isinstance(e, kind)), 1)


def fail(e: AVMechError, debug: bool) -> NoReturn:
    """Print ``e`` (one line, or with ``debug`` its traceback and, for a remote error, what
    the server said in full) and exit with its kind's status."""
    if debug:
        text = "".join(traceback.format_exception(e))
        if isinstance(e, RemoteError) and e.detail:
            text += f"\nwhat the server said:\n{e.detail.rstrip()}\n"
    else:
        text = f"error: {one_line(e)}\n"
    typer.echo(text, err=True, nl=False)
    raise typer.Exit(exit_status(e)) from e


@app.callback()
def main() -> None:
    """avmech: how sound and sight travel through audio-visual LLMs."""


@app.command()
def inspect(
    video: Path = typer.Argument(None, help="a clip (its own sound is used unless --no-video-audio)"),
    question: str = typer.Option(..., "--question", "-q", help="the question text"),
    option: list[str] = typer.Option([], "--option", "-o", help="an option text; repeat for each"),
    answer: int = typer.Option(None, help="index of the correct option"),
    audio: Path = typer.Option(None, help="an audio file, beside or instead of the video"),
    video_audio: bool = typer.Option(True, help="use the video's own sound track"),
    model: str = typer.Option("tiny-omni", help="embedded name, hub id or checkpoint directory"),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Print what every sequence position of a prepared sample is."""
    import avmech

    try:
        m = avmech.load(model)
        sample = avmech.AVSample(
            video=video, audio=audio, question=question, options=tuple(option), answer=answer,
            use_video_audio=video_audio,
        )
        p = m.prepare(sample)
    except AVMechError as e:
        fail(e, debug)
    typer.echo(f"{m}\n{p.tokens.summary()}")


def _shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise typer.BadParameter(f"--shard {text!r}: write i/n, e.g. 0/4") from None
    return i, n


def _statuses() -> str:
    """The exit statuses, one a line, from `EXIT_STATUS` and the error classes' own summaries."""
    kinds = sorted(EXIT_STATUS.items(), key=lambda kv: kv[1])
    rows = ["0  done", "1  an unexpected error (a bug: its traceback is printed), or an AVMechError of no kind"]
    rows += [f"{status}  {kind.__name__}: {re.split(r'[.;]', kind.__doc__)[0].lower()}" for kind, status in kinds]
    return "\n".join(rows)


@app.command(help=f"""Run (or resume) an experiment and write its records.

Writes RESULTS/<experiment>/<model>/ (records.jsonl as each record completes, records.parquet at the end); \
running the same command again resumes. A sample whose media cannot be prepared is skipped and logged to \
skipped.jsonl (--strict: stop). An error is printed as one line (--debug: its traceback) and exits with its status:

{_statuses()}
""")
def run(
    experiment: Path = typer.Argument(..., help="an experiment file (experiments/*.toml)"),
    model: str = typer.Option(None, help="override the experiment's model"),
    data: str = typer.Option(None, help="root of a local copy of the data set (default: the synthetic demo set)"),
    limit: int = typer.Option(None, help="use at most this many samples"),
    shard: str = typer.Option(None, help="run shard i/n of the samples (e.g. 0/4)"),
    results: Path = typer.Option(Path("results"), help="where results/<experiment>/<model>/ go"),
    backend: str = typer.Option(
        None, help="where traces run: local or ndif (host and key: the experiment's \\[ndif] table, NDIF_HOST / "
        "NDIF_API_KEY, or nnsight's config); overrides the experiment's backend",
    ),
    wait: bool = typer.Option(
        False, "--wait", help="if another run is writing the same folder, wait for it (default: refuse)"),
    new_folder: bool = typer.Option(
        False, "--new-folder", help="if the folder holds records of another configuration, write to <folder>-2, "
        "-3, ... (default: refuse, naming the fields that differ)",
    ),
    strict: bool = typer.Option(
        False, "--strict", help="stop at the first sample that cannot be prepared (default: skip it)"),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    from avmech.experiment import execute, load_experiment

    try:
        exp = load_experiment(experiment, model=model, root=data, limit=limit, backend=backend)
        summary = execute(exp, results, _shard(shard), wait=wait, new_folder=new_folder, strict=strict)
    except AVMechError as e:
        fail(e, debug)
    typer.echo(f"records: {summary.directory / 'records.parquet'}\n{summary}")


def plugin(name: str) -> Callable[[list[str]], None]:
    """The ``main(argv)`` of the command ``name`` an installed package adds (group `COMMANDS`)."""
    found = list(entry_points(group=COMMANDS, name=name))
    if not found:
        raise InputError(f"no installed package adds the command {name!r} (entry point group {COMMANDS}): "
                         "reinstall avmech from its repository (pip install -e . or make install)")
    point = found[0]
    try:
        return point.load()
    except ImportError as e:
        raise InputError(f"the command {name!r} comes from {point.value}, which cannot be imported ({e}): install "
                         "avmech from its repository (pip install -e .)") from e


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False)
def figures(ctx: typer.Context) -> None:
    """Run the study's missing experiments, then draw every figure and table (the figures package; --help)."""
    try:
        main = plugin("figures")
    except AVMechError as e:
        fail(e, "--debug" in ctx.args)
    main(ctx.args)


if __name__ == "__main__":
    app()
