"""Embedded random models: real architectures at toy sizes, built in seconds, no download.

Tests, the demo (`make figures`) and the benchmarks need models of the real classes
without their weights. Each family's builders (``*_tiny.py`` beside its adapter, listed
in its `Family` record) make a real transformers model from a small config, the real
Qwen2.5 tokenizer (`avmech.models.vocab`: the released vocabulary with the family's
special tokens at their real ids, 151643 on, and its released chat template), and the
real processor class assembled from transformers' own parts. Everything is seeded and
written as an ordinary checkpoint directory, so loading a demo model goes through the
same `from_pretrained` path as a real one. This module holds what the builders share.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    """Where embedded models and data sets are kept: ``$AVMECH_CACHE`` (default ``~/.cache/avmech``)."""
    return Path(os.environ.get("AVMECH_CACHE", Path.home() / ".cache" / "avmech"))


def write_atomically(path: Path, write) -> None:
    """Write a directory under a temporary name and rename it, so no half-written checkpoint stays."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
    try:
        write(tmp)
        os.replace(tmp, path) if not path.exists() else shutil.rmtree(tmp)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def mrope_section(head_dim: int) -> list[int]:
    """An M-RoPE split of ``head_dim / 2`` rotary pairs over (temporal, height, width) in the
    released proportions ([16, 24, 24] of 64 at head_dim 128), for small heads."""
    half = head_dim // 2
    temporal = half // 4
    return [temporal, (half - temporal) // 2, half - temporal - (half - temporal) // 2]
