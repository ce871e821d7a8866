"""The figures driver: every figure and table of the study, from one command.

    python -m paper_figures [--results results] [--out paper_figures/out] [--model NAME]
    avmech figures [--results DIR] [--out DIR] [--model NAME]     # the same
    make figures                                                  # creates .venv first

1. Runs every ``experiments/*.toml`` whose ``results/<experiment>/<model>/records.parquet``
   is missing (a half-done run resumes), on the file's model (the embedded random demo
   model) or on ``--model``; experiments that read a sweep's results (effective_pathway)
   run after the others.
2. Writes ``results/layout/<model>/layout.json``, the TokenMap of the first sample of
   ``av_video_knockout`` and of ``interleaved_knockout``, by ``avmech.load(model).prepare
   (sample).tokens``: a prepare, no forward pass. This step, here and not in a figure
   script, is the only model load of drawing; the figure scripts read saved files only.
3. Draws every figure and table of `FIGURES` from every model directory found under the
   results (real models' results drawn beside the demo's) into ``--out`` (PNG, PDF; tables
   also Markdown, CSV), and writes ``index.md`` / ``index.html``.
"""

from __future__ import annotations

import argparse
import json
import math
from functools import cache
from pathlib import Path

from paper_figures import (
    attention_vs_knockout,
    discard_table,
    index,
    knockout_av,
    knockout_interleaved,
    layout_strip,
    letter_lens,
    pathway_table,
    sinks_table,
    window_ablation,
)

FIGURES = (knockout_av, knockout_interleaved, window_ablation, attention_vs_knockout, letter_lens,
           sinks_table, discard_table, pathway_table, layout_strip)
LAYOUT_FROM = ("av_video_knockout", "interleaved_knockout")
EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def run_missing(results: Path, experiments: Path, model: str | None, load) -> list[str]:
    """Run the experiments without records (sweep readers last); returns their names."""
    from avmech.experiment import load_experiment, results_dir, run_experiment

    exps = [load_experiment(p, model=model) for p in sorted(experiments.glob("*.toml"))]
    ran = []
    for exp in sorted(exps, key=lambda e: "sweep" in e.params):
        if (results_dir(exp, results) / "records.parquet").exists():
            continue
        print(f"running {exp.name} on {exp.model} ...", flush=True)
        run_experiment(exp, results, model=load(exp.model, exp.seed))
        ran.append(exp.name)
    return ran


def write_layout(results: Path, experiments: Path, model: str | None, load) -> Path:
    """``results/layout/<model>/layout.json`` from prepared samples (no forward pass), unless present."""
    from avmech.experiment import load_experiment, load_samples
    from avmech.store import environment, slug
    from avmech.tokens import ITEM_ROLES

    exps = [load_experiment(experiments / f"{name}.toml", model=model) for name in LAYOUT_FROM]
    path = results / "layout" / slug(exps[0].model) / layout_strip.LAYOUT
    if path.exists():
        return path
    m = load(exps[0].model, exps[0].seed)
    samples = []
    for exp in exps:
        sample = load_samples(exp.data, exp.seed)[0]
        t = m.prepare(sample).tokens
        samples.append({
            "sample_id": sample.id, "dataset": exp.data.dataset, "data_root": exp.data.root, "answer": t.answer,
            "item_kinds": list(t.item_kinds),
            "positions": {"role": t.roles, "time": [None if math.isnan(x) else float(x) for x in t.time],
                          "chunk": t.chunk.tolist(), "item": t.item.tolist(), "option": t.option.tolist(),
                          "item_role": [ITEM_ROLES[i] for i in t.item_role]},
        })
    path.parent.mkdir(parents=True, exist_ok=True)
    layout = {"model": exps[0].model, "git_revision": environment()["git_revision"], "samples": samples}
    path.write_text(json.dumps(layout, indent=1))
    return path


def render(results: Path, out: Path) -> tuple[list, list[tuple[str, str]]]:
    """Draw every figure whose results exist; (rendered, [(name, why not drawn)])."""
    rendered, missing = [], []
    for module in FIGURES:
        try:
            rendered.append(module.main(results, out))
            print(f"drew {module.NAME}", flush=True)
        except FileNotFoundError as e:
            missing.append((module.NAME, str(e)))
            print(f"skipped {module.NAME}: {e}", flush=True)
    return rendered, missing


def make(results: str | Path = "results", out: str | Path = "paper_figures/out", model: str | None = None,
         experiments: str | Path = EXPERIMENTS) -> Path:
    """Run what is missing, write the layout, draw everything; returns the index.md path."""
    results, out, experiments = Path(results), Path(out), Path(experiments)

    @cache
    def load(name: str, seed: int):
        import avmech

        return avmech.load(name, seed=seed)

    run_missing(results, experiments, model, load)
    write_layout(results, experiments, model, load)
    rendered, missing = render(results, out)
    return index.write(rendered, missing, out)[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m paper_figures", description=__doc__.split("\n")[0])
    parser.add_argument("--results", default="results", help="results root (results/<experiment>/<model>/)")
    parser.add_argument("--out", default="paper_figures/out", help="where the figures and the index go")
    parser.add_argument("--model", default=None, help="run missing experiments on this model (default: each file's)")
    args = parser.parse_args(argv)
    print(f"index: {make(args.results, args.out, args.model)}")
