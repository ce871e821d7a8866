"""avmech benchmarks: compared variants run side by side in one process, printed as ratios."""
