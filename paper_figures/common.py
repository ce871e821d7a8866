"""What the figure scripts share: reading saved results, naming their source, titling, saving.

Every script reads ``results/<experiment>/<model-slug>/records.parquet`` (all model
subdirectories found, one row of panels or table rows per model) with ``config.json`` and
``env.json`` beside it for the model, data set and git revision, and never loads a model.
Figures are built on `matplotlib.figure.Figure` (rendered by the Agg canvas, no pyplot
state). Random-weight demo models are marked in every title.

Nothing is dropped quietly: a mean is taken over the records with a finite value (and,
where the record says, a finite run), and every figure and table says how many records
it left out (`usable`, ``finish(..., excluded=)``): runs with non-finite logits
(``finite`` false) and conditions with nothing to measure (NaN ``dp`` of an
``allow_empty`` sweep). Layers are numbered from 0 throughout (`LAYERS_NOTE`).
"""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

# avmech's embedded models (tests keep these in sync): random-weight models of the real
# architectures, and planted ones, trained on synthetic tasks whose answer's route is known.
DEMO_MODELS = frozenset({"tiny-omni", "tiny-salmonn", "tiny-qwen3-omni", "bench-omni"})
PLANTED_MODELS = frozenset({"planted-omni", "planted-salmonn", "planted-omni-interleaved", "planted-omni-shuffled",
                            "planted-omni-shuffled-binding", "planted-omni-shuffled-count",
                            "planted-omni-shuffled-heading", "planted-omni-interleaved-shuffled"})
DEMO_MARK = "RANDOM demo model — not a finding"
PLANTED_MARK = "planted demo model (trained on synthetic tasks; pathways known)"
RECORDS = "records.parquet"
SEPARATOR = "   ·   "
# Columns that split samples by task, in order of preference (AV-SpeakerBench, AV-Odyssey, WorldSense).
TASK_COLUMNS = ("category", "direction", "task_domain", "task_type", "task")
ROLE_COLORS = {
    "system": "#9e9e9e", "user_header": "#cfcfcf", "marker": "#5d4037", "video": "#1f77b4",
    "audio": "#ff7f0e", "audio_pad": "#ffd8a8", "image": "#17becf", "instruction": "#c5e1a5",
    "question": "#2ca02c", "option_letter": "#9467bd", "option_text": "#d4b9e8", "options": "#9467bd",
    "turn_end": "#e0e0e0", "assistant_header": "#b0bec5", "last": "#d62728", "generated": "#8c564b",
    "other": "#616161", "candidates": "#17becf", "reference": "#bcbd22", "correct": "#2ca02c",
    "incorrect": "#e377c2", "audio_tokens": "#ff7f0e", "question_block": "#2ca02c",
}


@dataclass(frozen=True)
class Source:
    """One results directory a figure was drawn from."""

    experiment: str
    model: str
    dataset: str
    data_root: str
    path: str
    n_records: int
    n_samples: int
    git_revision: str | None

    @property
    def data_label(self) -> str:
        where = {"synthetic": "synthetic demo set", "planted": "planted task set"}.get(self.data_root, self.data_root)
        return f"{self.dataset} ({where})"


@dataclass(frozen=True)
class Meta:
    """The sources of one figure; says which models and data produced it."""

    sources: tuple[Source, ...] = field(default_factory=tuple)

    @property
    def models(self) -> list[str]:
        return order_models({s.model for s in self.sources})

    @property
    def caption(self) -> str:
        data = sorted({s.data_label for s in self.sources})
        return f"model: {'; '.join(model_label(m) for m in self.models)}{SEPARATOR}data: {'; '.join(data)}"


@dataclass(frozen=True)
class Rendered:
    """A drawn figure or table: its output files and the records behind it (for the index)."""

    name: str
    title: str
    files: tuple[Path, ...]
    meta: Meta


def is_demo(model: str) -> bool:
    """A random-weight demo model."""
    return model in DEMO_MODELS


def is_planted(model: str) -> bool:
    """A planted demo model (`avmech.models.planted`)."""
    return model in PLANTED_MODELS


def tag(model: str) -> str:
    """``" (RANDOM demo)"``, ``" (planted demo)"`` or nothing (a real model), for panel titles."""
    return " (RANDOM demo)" if is_demo(model) else " (planted demo)" if is_planted(model) else ""


def model_label(model: str) -> str:
    mark = DEMO_MARK if is_demo(model) else PLANTED_MARK if is_planted(model) else None
    return f"{model} ({mark})" if mark else model


def order_models(models) -> list[str]:
    """Real models first, then planted, then random demo models, each alphabetically."""
    return sorted(models, key=lambda m: (is_demo(m), is_planted(m), m))


def read_source(directory: Path) -> tuple[pd.DataFrame, Source]:
    """The records of one ``results/<experiment>/<model>/`` directory and where they came from."""
    records = pd.read_parquet(directory / RECORDS)
    if records.empty:  # a figure of nothing would say "no effect"
        from avmech.errors import InputError

        raise InputError(f"'{directory / RECORDS}' holds no record: run the experiment again (make figures reruns "
                         "it), or move the folder away")
    config = json.loads((directory / "config.json").read_text()) if (directory / "config.json").exists() else {}
    env = json.loads((directory / "env.json").read_text()) if (directory / "env.json").exists() else []
    data = config.get("data", {})
    first = records.iloc[0]
    source = Source(
        experiment=config.get("name", directory.parent.name),
        model=config.get("model", first.get("model", directory.name)),
        dataset=data.get("dataset", first.get("dataset", "unknown data")),
        data_root=data.get("root", "unknown"),
        path=str(directory / RECORDS),
        n_records=len(records),
        n_samples=int(records["sample_id"].nunique()) if "sample_id" in records else 0,
        git_revision=", ".join(dict.fromkeys(str(run.get("git_revision")) for run in env)) or None,
    )
    if "model" not in records:
        records["model"] = source.model
    return records, source


def load(results_dir: str | Path, experiment: str) -> tuple[pd.DataFrame, Meta]:
    """The records of one experiment for every model found under ``results_dir/experiment``."""
    dirs = sorted(p.parent for p in (Path(results_dir) / experiment).glob(f"*/{RECORDS}"))
    if not dirs:
        raise FileNotFoundError(f"no {Path(results_dir) / experiment}/<model>/{RECORDS}: run the experiment first")
    frames, sources = zip(*(read_source(d) for d in dirs))
    return pd.concat(frames, ignore_index=True), Meta(tuple(sources))


def load_many(results_dir: str | Path, experiments: tuple[str, ...]) -> tuple[dict[str, pd.DataFrame], Meta]:
    """`load` for several experiments: records by experiment name, and all their sources."""
    out, sources = {}, []
    for name in experiments:
        out[name], meta = load(results_dir, name)
        sources += meta.sources
    return out, Meta(tuple(sources))


def load_present(results_dir: str | Path, experiments: tuple[str, ...]) -> tuple[dict[str, pd.DataFrame], Meta]:
    """`load_many` over those of ``experiments`` that have records; none at all is a `FileNotFoundError`."""
    present = tuple(e for e in experiments if any((Path(results_dir) / e).glob(f"*/{RECORDS}")))
    if not present:
        raise FileNotFoundError(f"no records of {' or '.join(experiments)} under {results_dir}: run one of them first")
    return load_many(results_dir, present)


def task_column(records: pd.DataFrame) -> str | None:
    """The column that splits these samples by task, if any."""
    return next((c for c in TASK_COLUMNS if c in records and records[c].notna().any()), None)


def tasks(records: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """("all", records) followed by (task, its records) for each task present."""
    col = task_column(records)
    groups = [] if col is None else [(str(t), g) for t, g in records.groupby(col, sort=True)]
    return [("all", records)] + groups


LAYERS_NOTE = ("layers numbered from 0: layer i is the (i+1)-th decoder layer, so the study's \"L26\" of 36 "
               "(the 26th layer) is layer 25 here.")


def flagged(values: pd.Series) -> pd.Series:
    """Where a flag column says false (``finite``, ``applies``); a missing value is no flag."""
    return values.map(lambda v: isinstance(v, bool | np.bool_) and not v).astype(bool)


def usable(records: pd.DataFrame, value: str) -> tuple[pd.DataFrame, int]:
    """The records with a finite ``value`` from a finite run (``finite`` not false), and how many others there were."""
    if value not in records:
        return records.iloc[:0], len(records)
    ok = np.isfinite(pd.to_numeric(records[value], errors="coerce").astype(float))
    if "finite" in records:
        ok &= ~flagged(records["finite"])
    return records[ok], int((~ok).sum())


def applied(records: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The records of conditions that applied (``applies`` not false), and how many did not (flagged, no numbers)."""
    if "applies" not in records:
        return records, 0
    ok = ~flagged(records["applies"])
    return records[ok], int((~ok).sum())


def accuracy(records: pd.DataFrame, column: str = "correct") -> tuple[float, int]:
    """Accuracy (%) over the finite runs, and how many runs it left out (non-finite: no prediction)."""
    kept = records[~flagged(records["finite"])] if "finite" in records else records
    rate = 100 * kept[column].astype(float).mean() if len(kept) else math.nan
    return rate, len(records) - len(kept)


TABLE_EXCLUDED = ("excluded: the records each row's numbers leave out, counted in that row (runs with non-finite "
                  "logits, conditions with nothing to measure); not applied: conditions that removed or blocked "
                  "nothing in a sample, recorded as such and kept out of every number.")


def excluded_note(count: int, what: str = "mean") -> str:
    """The sentence a figure or table ends with: how many records its numbers left out, and why."""
    return (f"excluded from every {what}: {count} record{'s' * (count != 1)} without a finite value "
            "(non-finite logits, or conditions with nothing to measure).")


def groups_note(records: pd.DataFrame, columns: Iterable[tuple[str, str]] = (("src", "src_roles"), ("dst", "dst_roles"))) -> str:
    """What each group name meant, from the roles the records say it covered ("question_block = instruction+...")."""
    meaning: dict[str, set[str]] = {}
    for name_col, roles_col in columns:
        if name_col in records and roles_col in records:
            for name, roles in records[[name_col, roles_col]].dropna().drop_duplicates().itertuples(index=False):
                if name != roles:
                    meaning.setdefault(name, set()).add(roles)
    return "; ".join(f"{name} = {' or '.join(sorted(r))}" for name, r in sorted(meaning.items()))


def window_label(rows: pd.DataFrame, k: int) -> str:
    """The x label of knockout curves: the window size asked for and the widths the model allowed."""
    widths = (rows["stop"] - rows["start"]).astype(int) if len(rows) else pd.Series([k])
    low, high = int(widths.min()), int(widths.max())
    real = f"{low}–{high}" if low < high else f"{high}"
    if high < k:
        return f"window centre layer (k = {k}, cut to {real} layers)"
    return f"window centre layer (k = {k}; {real} layers)" if low < k else f"window centre layer (k = {k})"


def mean_ci(values) -> tuple[float, float, float]:
    """Mean and its 95% normal-approximation interval (mean ± 1.96 SEM); no interval for n < 2."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    mean = float(v.mean())
    if len(v) < 2:
        return mean, math.nan, math.nan
    half = 1.96 * float(v.std(ddof=1)) / math.sqrt(len(v))
    return mean, mean - half, mean + half


def summarise(records: pd.DataFrame, x: str, y: str, scale: float = 1.0) -> tuple[pd.DataFrame, int]:
    """Per value of ``x``: mean of ``y`` (times ``scale``) and its 95% interval, sorted by x, over the
    `usable` records; and how many records were left out."""
    kept, excluded = usable(records, y)
    rows = [(xv, *(scale * v for v in mean_ci(g[y]))) for xv, g in kept.groupby(x)]
    return pd.DataFrame(rows, columns=[x, "mean", "lo", "hi"]).sort_values(x), excluded


def plot_mean(ax: Axes, records: pd.DataFrame, x: str, y: str, *, label: str, color, gid: str,
              scale: float = 100.0, band: bool = True, **line) -> int:
    """A line of the mean of ``y`` per ``x`` with its 95% band; ``gid`` names the line for readers and tests.
    Returns how many records the mean left out (`usable`)."""
    s, excluded = summarise(records, x, y, scale)
    (artist,) = ax.plot(s[x], s["mean"], label=label, color=color, marker="o", markersize=3, **line)
    artist.set_gid(gid)
    if band and s["lo"].notna().any():
        ax.fill_between(s[x], s["lo"], s["hi"], color=color, alpha=0.18, linewidth=0)
    return excluded


def layer_axis(ax: Axes) -> None:
    """Integer ticks for layer numbers."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def arrow(edge: str) -> str:
    return edge.replace("->", " → ")


def cell(spec: str) -> Callable[[float], str]:
    """A table-cell formatter: ``format(value, spec)``, "—" for a missing value."""
    return lambda value: "—" if pd.isna(value) else format(value, spec)


def finish(fig: Figure, title: str, meta: Meta, note: str = "", excluded: int | None = None) -> Figure:
    """Title (what, which models, which data) and a footnote: how to read it, how many records the
    numbers left out (``excluded``), and the demo warning in red."""
    caption, fit = meta.caption, int(fig.get_figwidth() * 11)  # 11-pt characters per line
    if len(caption) > fit:
        caption = "\n".join(textwrap.fill(part, fit) for part in caption.split(SEPARATOR))
    fig.suptitle(f"{title}\n{caption}", fontsize=11)
    lines = [(note, "black")] if note else []
    if excluded is not None:
        lines.append((excluded_note(excluded), "black"))
    if any(is_planted(m) for m in meta.models):
        lines.append(("Planted demo model: trained here on synthetic questions answered by the sound alone "
                      "(pitch, beeps) or the frames alone (colour, motion), (planted-omni-shuffled) with the options also "
                      "shuffled, (-binding) a task that needs both (the colour while the tone sounds), (-count) "
                      "the beeps, (-heading) the motion in one word, with the options also shuffled, or "
                      "(planted-omni-interleaved) on interleaved items answered by the reference alone "
                      "(candidates in the class order; planted-omni-interleaved-shuffled: also shuffled, matched "
                      "against the reference), so the route the "
                      "answer must take is known; it checks the method, not how audio-visual LLMs behave.",
                      "#1b5e20"))
    if any(is_demo(m) for m in meta.models):
        lines.append((f"{DEMO_MARK}: random-weight demo models show that the pipeline runs, "
                      "not how audio-visual LLMs behave.", "#b71c1c"))
    width = int(fig.get_figwidth() * 16)  # 8-pt characters per line
    lines = [(textwrap.fill(text, width), color) for text, color in lines]
    line_h = 8 * 1.5 / 72 / fig.get_figheight()  # one 8-pt line as a fraction of the figure height
    y = 0.005
    for text, color in reversed(lines):
        fig.text(0.01, y, text, fontsize=8, va="bottom", ha="left", color=color)
        y += line_h * (text.count("\n") + 1)
    fig.get_layout_engine().set(rect=(0, y, 1, 1 - y))
    return fig


def figure(nrows: int, ncols: int, width: float, height: float, **kw) -> tuple[Figure, np.ndarray]:
    """A constrained-layout figure of ``nrows`` x ``ncols`` panels, each ``width`` x ``height`` inches."""
    fig = Figure(figsize=(max(6.0, width * ncols), height * nrows + 1.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def table_figure(display: pd.DataFrame, title: str, meta: Meta, note: str = "", excluded: int | None = None) -> Figure:
    """A table image of the formatted cells (strings; a newline breaks a cell), titled like every figure."""
    cells = [list(display.columns)] + display.astype(str).values.tolist()
    lines = [1 + max(str(v).count("\n") for v in row) for row in cells]
    widths = [2 + max(5, *(len(part) for row in cells for part in str(row[c]).split("\n")))
              for c in range(len(cells[0]))]  # in characters
    fig = Figure(figsize=(max(8.0, 0.075 * sum(widths) + 0.6), 0.2 * sum(lines) + 2.0), layout="constrained")
    ax = fig.subplots()
    ax.axis("off")
    table = ax.table(cellText=cells[1:], colLabels=cells[0], cellLoc="center", bbox=(0, 0, 1, 1),
                     colWidths=[w / sum(widths) for w in widths])
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    for (row, _), cell in table.get_celld().items():
        cell.set_height(lines[row])
        if row == 0:
            cell.set_text_props(fontweight="bold")
            cell.set_facecolor("#eeeeee")
    return finish(fig, title, meta, note, excluded)


def markdown(display: pd.DataFrame) -> str:
    """A pipe table of the formatted cells (line breaks as <br>)."""
    rows = [list(display.columns), ["---"] * len(display.columns), *display.astype(str).values.tolist()]
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", "<br>")  # noqa: E731
    return "\n".join("| " + " | ".join(cell(v) for v in row) + " |" for row in rows) + "\n"


def save_table(table: pd.DataFrame, display: pd.DataFrame, fig: Figure, out_dir: str | Path, name: str,
               title: str, meta: Meta, note: str = "") -> list[Path]:
    """PNG and PDF of the table image, ``name.md`` (title, sources, formatted table) and ``name.csv`` (numbers)."""
    paths = save(fig, out_dir, name)
    md, csv = Path(out_dir) / f"{name}.md", Path(out_dir) / f"{name}.csv"
    md.write_text(f"# {title}\n\n{meta.caption}\n\n{markdown(display)}\n{note}\n".rstrip() + "\n")
    table.to_csv(csv, index=False)
    return paths + [md, csv]


def save(fig: Figure, out_dir: str | Path, name: str) -> list[Path]:
    """Write ``name.png`` (150 dpi) and ``name.pdf``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1])
    return paths
