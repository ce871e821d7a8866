"""The package as a user imports it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


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


def test_the_package_is_layered():
    """`lint-imports` checks the contracts in pyproject.toml: no module imports a layer above it."""
    done = subprocess.run([str(Path(sys.executable).parent / "lint-imports")], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def test_no_module_outside_the_adapters_names_a_familys_internals():
    """The engine reaches a decoder only through its family's map (avmech.decoder)."""
    root = Path(__file__).resolve().parents[1] / "avmech"
    names = ("o_proj", "gate_proj", "rotary_emb", "apply_rotary_pos_emb", "self_attn")
    found = [f"{path.relative_to(root)}: {name}" for path in root.rglob("*.py") if "models" not in path.parts
             for name in names if name in path.read_text()]
    assert not found, found
