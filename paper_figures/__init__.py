"""The figures and tables of the study, drawn from saved results (never from a model).

One script per figure/table, each declaring it with `paper_figures.registry` (a pure
``draw(records, meta) -> Figure``, and for tables the numbers and their cells);
`paper_figures.make` is the driver (``python -m paper_figures``, ``avmech figures``,
``make figures``). See README.md in this folder for the list.
"""
