"""The `avmech` command line: inspect a sample's layout (more commands join as flows land)."""

from __future__ import annotations

from pathlib import Path

import typer

from avmech.errors import InputError, ModelError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Trace audio-visual LLMs.")


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
    except (InputError, ModelError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    typer.echo(f"{m}\n{p.tokens.summary()}")


def _shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise typer.BadParameter(f"--shard {text!r}: write i/n, e.g. 0/4") from None
    return i, n


@app.command()
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
) -> None:
    """Run (or resume) an experiment and write its records."""
    from avmech.backends import RemoteError
    from avmech.experiment import load_experiment, run_experiment

    try:
        exp = load_experiment(experiment, model=model, root=data, limit=limit, backend=backend)
        out = run_experiment(exp, results, _shard(shard))
    except (InputError, ModelError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    except RemoteError as e:
        typer.echo(f"error: {e}\nthe records computed so far are kept: run the same command again to resume", err=True)
        raise typer.Exit(3) from e
    typer.echo(f"records: {out / 'records.parquet'}")


@app.command()
def figures(
    results: Path = typer.Option(Path("results"), help="results root: results/<experiment>/<model>/"),
    out: Path = typer.Option(Path("paper_figures/out"), help="where the figures, tables and index go"),
    model: str = typer.Option(None, help="run missing experiments on this model (default: each file's demo model)"),
) -> None:
    """Run the study's missing experiments, then draw every figure and table (paper_figures/)."""
    from paper_figures.make import make

    try:
        index = make(results, out, model)
    except (InputError, ModelError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    typer.echo(f"index: {index}")
