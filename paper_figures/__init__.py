"""The figures and tables of the study, drawn from saved results (never from a model).

One script per figure/table, each with a pure ``draw(records, meta) -> Figure`` and a
``main(results_dir, out_dir)`` that reads ``results/<experiment>/<model>/records.parquet``;
`paper_figures.make` is the driver (``python -m paper_figures``, ``avmech figures``,
``make figures``). See README.md in this folder for the list.
"""
