"""The index page of the rendered figures and tables: ``index.md`` and ``index.html``.

Each entry shows the figure and lists its files and its source records: path, number of
records and samples, model (demo models marked), data set and the git revision of the run
(from ``env.json``). Figures whose results are missing are listed with the reason.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from paper_figures.common import Rendered, model_label

COLUMNS = ("experiment", "records", "n records", "samples", "model", "data", "git revision")


def source_rows(r: Rendered) -> list[tuple[str, ...]]:
    return [(s.experiment, s.path, str(s.n_records), str(s.n_samples), model_label(s.model), s.data_label,
             s.git_revision or "unknown") for s in r.meta.sources]


def markdown(rendered: list[Rendered], missing: list[tuple[str, str]], out: Path) -> str:
    lines = ["# avmech: figures and tables of the study", ""]
    for r in rendered:
        files = " · ".join(f"[{p.suffix[1:]}]({os.path.relpath(p, out)})" for p in r.files)
        png = next(p for p in r.files if p.suffix == ".png")
        lines += [f"## {r.title}", "", f"![{r.title}]({os.path.relpath(png, out)})", "", f"files: {files}", "",
                  "| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
        lines += ["| " + " | ".join(row) + " |" for row in source_rows(r)] + [""]
    if missing:
        lines += ["## Not drawn", ""] + [f"- {name}: {why}" for name, why in missing] + [""]
    return "\n".join(lines)


def page(rendered: list[Rendered], missing: list[tuple[str, str]], out: Path) -> str:
    e = html.escape
    body = ["<h1>avmech: figures and tables of the study</h1>"]
    for r in rendered:
        png = next(p for p in r.files if p.suffix == ".png")
        links = " · ".join(f'<a href="{e(os.path.relpath(p, out))}">{p.suffix[1:]}</a>' for p in r.files)
        head = "".join(f"<th>{e(c)}</th>" for c in COLUMNS)
        rows = "".join("<tr>" + "".join(f"<td>{e(v)}</td>" for v in row) + "</tr>" for row in source_rows(r))
        body += [f"<h2>{e(r.title)}</h2>", f'<img src="{e(os.path.relpath(png, out))}" alt="{e(r.title)}">',
                 f"<p>files: {links}</p>", f"<table><tr>{head}</tr>{rows}</table>"]
    if missing:
        body += ["<h2>Not drawn</h2>", "<ul>" + "".join(f"<li>{e(n)}: {e(w)}</li>" for n, w in missing) + "</ul>"]
    style = ("body{font-family:sans-serif;max-width:1400px;margin:auto}img{max-width:100%;border:1px solid #ddd}"
             "table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #ccc;padding:2px 6px}")
    return (f'<!doctype html>\n<html><head><meta charset="utf-8"><title>avmech figures</title>'
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write(rendered: list[Rendered], missing: list[tuple[str, str]], out_dir: str | Path) -> list[Path]:
    """Write ``index.md`` and ``index.html`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "index.md", out / "index.html"]
    paths[0].write_text(markdown(rendered, missing, out))
    paths[1].write_text(page(rendered, missing, out))
    return paths
