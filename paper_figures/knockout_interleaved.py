"""Figure: the two parallel streams of the interleaved-items configuration (finding 2), from
``interleaved_knockout``.

Knockout curves as in `knockout_av` (x: window centre layer, y: mean dp %, 95% band), one
panel per stream segment: candidates / question / reference / options -> last; correct vs
incorrect option -> last; candidates / question -> reference; candidates -> option letters.
One row per (model, direction): audio -> image (A->I) and image -> audio (I->A).
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from paper_figures import common, registry
from paper_figures.knockout_av import draw_curves

TITLE = "Attention knockout per layer window: interleaved audio / image items"
FAMILIES = (
    ("items → last", lambda src, dst: dst == "last" and src not in ("correct", "incorrect")),
    ("correct vs incorrect option → last", lambda src, dst: dst == "last"),
    ("→ reference", lambda src, dst: dst == "reference"),
    ("candidates → option letters", lambda src, dst: dst == "options"),
)


@registry.figure("fig_knockout_interleaved", TITLE, ("interleaved_knockout",))
def draw(records: pd.DataFrame, meta: common.Meta) -> Figure:
    return draw_curves(records, meta, FAMILIES, TITLE)
