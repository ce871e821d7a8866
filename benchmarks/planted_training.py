"""Training a planted model with glibc's default malloc vs the Makefile's settings.

A planted model's unembedding (151,936 x 64 floats), its gradient and AdamW's two moments are
39 MB each; glibc's malloc serves every allocation over 32 MB from fresh kernel pages and
unmaps them when freed, so each training step page-faults them in anew. The Makefile sets
``MALLOC_MMAP_MAX_=0`` and ``MALLOC_TRIM_THRESHOLD_`` (every allocation from the heap, nothing
handed back); the benchmark measures the values ``make bench`` exports, read from the environment
(so they cannot drift from the Makefile's). Each variant runs in its own process (the settings are
read when a process starts) on the same planted-omni training, shortened: the same questions,
seeds and threads.
The measures are the training's wall time, its kernel time and minor page faults, and whether
the trained weights are the same bits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

MALLOC = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")
QUESTIONS, STEPS = 96, 80


def _child() -> None:
    import hashlib
    import resource
    import tempfile
    import time
    from dataclasses import replace
    from pathlib import Path

    import torch

    from avmech.models import planted
    from avmech.models.planted_recipes import RECIPES

    recipe = replace(RECIPES["planted-omni"], n_train=QUESTIONS, n_eval=4, steps=STEPS)
    torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    with tempfile.TemporaryDirectory() as tmp:
        questions = planted.training_set(recipe, "planted-omni", Path(tmp))
    m, examples = questions.model, questions.train
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    planted.train(m, examples, recipe)
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    weights = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in m.llm_module.parameters()))
    print(json.dumps({"seconds": seconds, "kernel": after.ru_stime - before.ru_stime,
                      "faults": after.ru_minflt - before.ru_minflt, "weights": weights.hexdigest()}))


def _run(settings: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in MALLOC} | settings
    out = subprocess.run([sys.executable, "-m", "benchmarks.planted_training", "child"], env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    missing = [k for k in MALLOC if k not in os.environ]
    if missing:
        raise SystemExit(f"{', '.join(missing)} not set: run this benchmark through `make bench`, which exports the "
                         "Makefile's malloc settings, or export them as the Makefile does")
    default, heap = _run({}), _run({k: os.environ[k] for k in MALLOC})
    print(f"\n## Planted training, {STEPS} steps of planted-omni's recipe (batch 32): glibc's default malloc vs the "
          "Makefile's settings")
    for name, r in (("default", default), ("Makefile", heap)):
        print(f"{name:>8}: {r['seconds']:.1f} s, {r['kernel']:.1f} s in the kernel, {r['faults'] / 1e6:.1f} M page faults")
    if default["weights"] != heap["weights"]:
        raise SystemExit("the malloc settings changed the trained weights: a planted model built under make would "
                         "differ from one built outside it")
    print(f"ratio (default / Makefile): {default['seconds'] / heap['seconds']:.2f}; the same weights to the last bit")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        _child()
    else:
        main()
