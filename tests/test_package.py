"""The package as a user imports it."""

from __future__ import annotations

import subprocess
import sys


def test_import_avmech_exposes_what_the_readme_uses():
    """`import avmech` alone gives avmech.data, avmech.flows and avmech.metrics, and reads no file."""
    code = (
        "import avmech, sys\n"
        "assert callable(avmech.data.read) and callable(avmech.data.synthetic.ensure)\n"
        "assert 'knockout_sweep' in avmech.flows.FLOWS and callable(avmech.metrics.dp)\n"
        "assert not any(m.startswith('paper_figures') for m in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
