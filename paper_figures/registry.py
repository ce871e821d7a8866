"""The one list of the study's figures and tables: what each is called, and what it is drawn from.

A figure script declares its figure where it defines it::

    @registry.figure("fig_knockout_av_video", TITLE, ("av_video_knockout",), note=NOTE)
    def draw(records, meta) -> Figure: ...

and a table script its table, around the function that computes the numbers (the cells
shown are ``cells(numbers)``)::

    @registry.table("table_token_discard", TITLE, ("token_discard", ...), cells=formatted, note=NOTE)
    def table(records) -> pd.DataFrame: ...

`entries` imports every module of the package and returns what they declared, by name;
`render` reads an entry's saved records (``results/<experiment>/<model>/``, every model
found) and writes its files. The driver, the index pages and ``python -m paper_figures
--only NAME`` read this registry, and nothing else lists the figures.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from paper_figures import common


@dataclass(frozen=True)
class Entry:
    """A figure (``draw``) or a table (``numbers`` and ``cells`` too) and the records it reads.

    ``read`` replaces the default reader of the experiments' records (the token layout is
    a file the driver writes, not an experiment)."""

    name: str
    title: str
    experiments: tuple[str, ...]
    draw: Callable[[Any, common.Meta], Figure]
    module: str
    note: str = ""
    numbers: Callable[[Any], pd.DataFrame] | None = None
    cells: Callable[[pd.DataFrame], pd.DataFrame] | None = None
    read: Callable[[Path], tuple[Any, common.Meta]] | None = None

    def load(self, results: str | Path) -> tuple[Any, common.Meta]:
        """The records it is drawn from (one frame, or a dict by experiment) and their sources."""
        if self.read is not None:
            return self.read(Path(results))
        if len(self.experiments) == 1:
            return common.load(results, self.experiments[0])
        return common.load_many(results, self.experiments)


REGISTRY: dict[str, Entry] = {}


def _add(entry: Entry) -> None:
    if entry.name in REGISTRY and REGISTRY[entry.name].module != entry.module:
        raise ValueError(f"{entry.module} and {REGISTRY[entry.name].module} both declare the figure {entry.name!r}")
    REGISTRY[entry.name] = entry


def figure(name: str, title: str, experiments: tuple[str, ...], note: str = "",
           read: Callable[[Path], tuple[Any, common.Meta]] | None = None) -> Callable:
    """Declare ``draw(records, meta) -> Figure`` as the figure ``name`` (returned unchanged)."""
    def declare(draw: Callable) -> Callable:
        _add(Entry(name, title, experiments, draw, draw.__module__, note, read=read))
        return draw
    return declare


def table(name: str, title: str, experiments: tuple[str, ...], cells: Callable[[pd.DataFrame], pd.DataFrame],
          note: str = "", read: Callable[[Path], tuple[Any, common.Meta]] | None = None) -> Callable:
    """Declare ``numbers(records) -> DataFrame`` as the table ``name``; its image shows ``cells(numbers)``.
    Each row counts the records its numbers left out (a column ``excluded``), and the footnote says so."""
    def declare(numbers: Callable) -> Callable:
        def draw(records, meta: common.Meta) -> Figure:
            return common.table_figure(cells(numbers(records)), title, meta, f"{note} {common.TABLE_EXCLUDED}".strip())

        _add(Entry(name, title, experiments, draw, numbers.__module__, note, numbers=numbers, cells=cells, read=read))
        return numbers
    return declare


def entries() -> list[Entry]:
    """Every figure and table the package's scripts declare, by name."""
    import paper_figures

    for module in pkgutil.iter_modules(paper_figures.__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"paper_figures.{module.name}")
    return [REGISTRY[name] for name in sorted(REGISTRY)]


def render(entry: Entry, results: str | Path, out: str | Path) -> common.Rendered:
    """Read an entry's records, draw it, write its files (tables: image, Markdown, CSV)."""
    records, meta = entry.load(results)
    fig = entry.draw(records, meta)
    if entry.numbers is None:
        return common.Rendered(entry.name, entry.title, tuple(common.save(fig, out, entry.name)), meta)
    t = entry.numbers(records)
    note = f"{entry.note}\n\n{common.TABLE_EXCLUDED}".strip()
    files = common.save_table(t, entry.cells(t), fig, out, entry.name, entry.title, meta, note)
    return common.Rendered(entry.name, entry.title, tuple(files), meta)
