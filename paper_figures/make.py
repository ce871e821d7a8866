"""The figures driver: every figure and table of the study, from one command.

    python -m paper_figures [--results results] [--out paper_figures/out] [--model NAME ...] [--only NAME ...]
    avmech figures [the same options]                          # this package's avmech.commands entry point
    make figures                                               # creates .venv first

1. Runs every ``experiments/*.toml`` whose ``results/<experiment>/<model>/records.parquet``
   is missing (a half-done run resumes; finished records of another configuration, or of
   other inputs, are an error naming the folder), on each demo model or on the ``--model``
   given; each experiment after the experiments whose records it reads (its ``[inputs]``
   table, `avmech.experiment.in_order`). The demo models: ``planted-omni``,
   ``planted-salmonn`` and ``planted-omni-interleaved`` (trained on the planted tasks on
   first use, about 5.5, 6.5 and 2.5 minutes; `avmech.models.planted`), which run the experiments
   of the data set they were trained on (AV-SpeakerBench's layout; AV-Odyssey's for the
   last) with its planted questions (``root = "planted"``), and ``tiny-omni`` and ``tiny-salmonn``
   (random weights, one per family), which run, on the synthetic sets, the experiments of
   the data sets no planted model among those given is trained on (WorldSense's, and the
   sweep it reads; given alone, a random model runs every experiment).
2. Writes ``results/layout/<model>/layout.json``, the TokenMap of the first sample of
   ``av_video_knockout`` and of ``interleaved_knockout`` (in the study's layout and in the
   data set's), by ``avmech.load(model).prepare(sample).tokens``: a prepare, no forward
   pass. This step, here and not in a figure script, is the only model load of drawing;
   the figure scripts read saved files only.
3. Draws every figure and table the scripts declare (`paper_figures.registry`) from every
   model directory found under the results (real models' results drawn beside the
   demo's) into ``--out`` (PNG, PDF; tables also Markdown, CSV), and writes ``index.md`` /
   ``index.html``. ``--only NAME`` draws those alone, running nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import traceback
from functools import cache
from pathlib import Path

from paper_figures import common, index, layout_strip, registry

DEMO = ("planted-omni", "planted-salmonn", "planted-omni-interleaved", "tiny-omni", "tiny-salmonn")
LAYOUT_FROM = ("av_video_knockout", "interleaved_knockout", "binding_knockout")
EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def run_missing(results: Path, experiments: Path, models: tuple[str, ...], load) -> list[str]:
    """Run, per model, the experiments without records (each after those it reads); returns "name on model"s."""
    from avmech.experiment import in_order, run_experiment, up_to_date

    ran, covered = [], planted_datasets(models)
    for model in models:
        exps, skipped = experiments_for(model, experiments, covered)
        for why in dict.fromkeys(skipped.values()):
            names = ", ".join(name for name, reason in skipped.items() if reason == why)
            print(f"not running {names} on {model}: {why}", flush=True)
        for exp in in_order(exps):
            if up_to_date(exp, results):  # records of another configuration: an error naming the folder
                continue
            print(f"running {exp.name} on {exp.model} ...", flush=True)
            run_experiment(exp, results, model=load(exp.model, exp.seed))
            ran.append(f"{exp.name} on {exp.model}")
    return ran


def planted_datasets(models: tuple[str, ...]) -> frozenset[str]:
    """The data sets the planted models among ``models`` are trained on."""
    from avmech.models.planted_recipes import RECIPES

    return frozenset(RECIPES[m].dataset for m in models if m in RECIPES)


def experiments_for(model: str, experiments: Path, covered: frozenset[str] = frozenset()) -> tuple[list, dict[str, str]]:
    """The experiment files as ``model`` runs them, and why each of the others is not run.

    A planted model runs its planted questions, and only the experiments on the data set it was
    trained on; any other model the experiments on a data set not in ``covered`` (those a planted
    model among the demo models runs: the random demo models draw only what no planted one can),
    with those whose records they read. Of these, an experiment whose data selection keeps none of
    the model's questions (binding_knockout on a set without binding questions) is not run either,
    nor one that reads the records of an experiment not run.
    """
    from avmech.experiment import load_experiment, load_samples
    from avmech.models.planted_recipes import RECIPES

    paths = sorted(experiments.glob("*.toml"))
    if model not in RECIPES:
        exps = {e.name: e for e in (load_experiment(p, model=model) for p in paths)}
        keep = [name for name, e in exps.items() if e.data.dataset not in covered]
        for name in keep:  # and the experiments whose records those read (grows while it is walked)
            keep += [i for i in exps[name].inputs.values() if i in exps and i not in keep]
        why = "a planted demo model runs their data sets"
    else:
        exps = {e.name: e for e in (load_experiment(p, model=model, root="planted") for p in paths)}
        keep = [name for name, e in exps.items() if e.data.dataset == RECIPES[model].dataset]
        why = "it is not trained on their data sets"
    skipped = {name: why for name in exps if name not in keep}
    for name in keep:
        if not load_samples(exps[name].data, exps[name].seed, model, allow_none=True):
            skipped[name] = f"their data selection keeps none of its questions of {exps[name].data.dataset}"
    while orphans := [name for name in keep if name not in skipped
                      and any(i in skipped for i in exps[name].inputs.values())]:
        skipped |= {name: "they read the records of an experiment not run on it" for name in orphans}
    return [e for name, e in exps.items() if name in keep and name not in skipped], skipped


def layout_sample(tokens, sample, exp, layout: str) -> dict:
    """One prepared sample's map as the layout file stores it."""
    from avmech.tokens import ITEM_ROLES

    return {
        "sample_id": sample.id, "dataset": exp.data.dataset, "data_root": exp.data.root, "layout": layout,
        "answer": tokens.answer, "item_kinds": list(tokens.item_kinds),
        "positions": {"role": tokens.roles, "time": [None if math.isnan(x) else float(x) for x in tokens.time],
                      "chunk": tokens.chunk.tolist(), "item": tokens.item.tolist(), "option": tokens.option.tolist(),
                      "item_role": [ITEM_ROLES[i] for i in tokens.item_role]},
    }


def write_layout(results: Path, experiments: Path, model: str, load) -> Path | None:
    """``results/layout/<model>/layout.json`` from prepared samples (no forward pass) of those of
    ``LAYOUT_FROM`` that ``model`` runs, unless present; None where it runs none of them."""
    import dataclasses

    from avmech.experiment import load_samples
    from avmech.store import environment, slug

    exps = [e for e in experiments_for(model, experiments)[0] if e.name in LAYOUT_FROM]
    path = results / "layout" / slug(model) / layout_strip.LAYOUT
    if path.exists():
        return path
    if not exps:
        print(f"no token layout of {model}: it runs none of {', '.join(LAYOUT_FROM)}", flush=True)
        return None
    m = load(model, exps[0].seed)
    samples = []
    for exp in exps:
        sample = load_samples(exp.data, exp.seed, exp.model)[0]
        layouts = [sample.layout] + ([other for other in ("study", "dataset") if other != sample.layout]
                                     if sample.items else [])
        for layout in layouts:
            shown = dataclasses.replace(sample, layout=layout)
            samples.append(layout_sample(m.prepare(shown).tokens, shown, exp, layout))
    path.parent.mkdir(parents=True, exist_ok=True)
    layout = {"model": model, "git_revision": environment()["git_revision"], "samples": samples}
    path.write_text(json.dumps(layout, indent=1))
    return path


def render(results: Path, out: Path, only: tuple[str, ...] = ()) -> tuple[list, list[tuple[str, str]]]:
    """Draw every declared figure (or those named in ``only``) whose results exist; (rendered, [(name, why not)])."""
    rendered, missing = [], []
    entries = registry.entries()
    unknown = sorted(set(only) - {e.name for e in entries})
    if unknown:
        raise SystemExit(f"unknown figure {unknown}: the figures are {', '.join(e.name for e in entries)}")
    for entry in entries:
        if only and entry.name not in only:
            continue
        try:
            rendered.append(registry.render(entry, results, out))
            print(f"drew {entry.name}", flush=True)
        except FileNotFoundError as e:
            missing.append((entry.name, str(e)))
            print(f"skipped {entry.name}: {e}", flush=True)
    return rendered, missing


def make(results: str | Path = "results", out: str | Path = "paper_figures/out", models: tuple[str, ...] = DEMO,
         experiments: str | Path = EXPERIMENTS, only: tuple[str, ...] = ()) -> Path:
    """Run what is missing, write the layouts, draw everything; returns the index.md path."""
    results, out, experiments = Path(results), Path(out), Path(experiments)

    @cache
    def load(name: str, seed: int):
        import avmech

        return avmech.load(name, seed=seed)

    if not only:
        run_missing(results, experiments, tuple(models), load)
        for model in models:
            write_layout(results, experiments, model, load)
    rendered, missing = render(results, out, tuple(only))
    return index.write(rendered, missing, out)[0]


def main(argv: list[str] | None = None) -> None:
    """``python -m paper_figures`` and ``avmech figures``: an avmech error is one line and its exit status."""
    from avmech.cli import exit_status, one_line
    from avmech.errors import AVMechError

    parser = argparse.ArgumentParser(prog="avmech figures", description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=Path("results"), help="results root (results/<exp>/<model>/)")
    parser.add_argument("--out", type=Path, default=Path("paper_figures/out"), help="where the figures and index go")
    parser.add_argument("--model", action="append", default=None,
                        help=f"run missing experiments on this model (repeat for several; default: {', '.join(DEMO)})")
    parser.add_argument("--only", action="append", default=[], help="draw only this figure (repeat); runs nothing")
    parser.add_argument("--debug", action="store_true", help="on an error, print its traceback instead of one line")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        path = make(args.results, args.out, tuple(args.model or DEMO), only=tuple(args.only))
    except AVMechError as e:
        print("".join(traceback.format_exception(e)) if args.debug else f"error: {one_line(e)}", file=sys.stderr)
        raise SystemExit(exit_status(e)) from e
    print(f"index: {path}")
