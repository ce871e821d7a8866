"""What may travel to an NDIF server, checked before anything is sent.

The server has the model and nothing else: no avmech, no media, no processor, no sample.
A remote run therefore carries the LLM's inputs as tensors, the primitives (frozen
dataclasses of plain values, group names and tensors) and a portable run context: the
`TokenMap`, the token-drop schedule and the model's shape and decoder map
(`avmech.decoder.ModelFacts`), never the local model or the sample. `check_portable`
refuses, with the fix, a primitive that holds or reads something only this process has.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import enum
import functools
import inspect
import textwrap
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avmech.decoder import ModelFacts
from avmech.errors import InputError
from avmech.prepared import Prepared, RunResult
from avmech.sample import AVSample


class _NotSent:
    """Stands in for ``ctx.p`` in a remote run: the sample stays on the client."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(
            f"ctx.p.{name} is not available in a remote run (the sample stays on the client): resolve what "
            "apply() needs in bind() or check() and keep it in the primitive's fields"
        )


def portable_context(ctx: Any) -> Any:
    """A copy of a run context that can travel: the model's facts instead of the model, no sample."""
    out = copy.copy(ctx)
    out.m = ModelFacts.of(ctx.m)
    out.p = _NotSent()
    return out


_LEAVES = (type(None), bool, int, float, complex, str, bytes, range, enum.Enum, torch.Tensor, torch.dtype,
           types.FunctionType, np.ndarray, np.generic)
_FACTS = frozenset(f.name for f in dataclasses.fields(ModelFacts))


def _local_object(value: Any, depth: int = 0) -> str | None:
    """The type name of the first thing in ``value`` that cannot travel to a server, or None."""
    if isinstance(value, _LEAVES):
        return None
    if isinstance(value, (torch.nn.Module, Path, Prepared, RunResult, AVSample)) or depth > 8:
        return type(value).__name__
    if isinstance(value, (tuple, list, set, frozenset)):
        return next((bad for v in value if (bad := _local_object(v, depth + 1))), None)
    if isinstance(value, dict):
        return next((bad for kv in value.items() for v in kv if (bad := _local_object(v, depth + 1))), None)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return next((bad for f in dataclasses.fields(value)
                     if (bad := _local_object(getattr(value, f.name), depth + 1))), None)
    return type(value).__name__


@functools.cache
def _reads_local_context(cls: type) -> str | None:
    """``ctx.p`` or ``ctx.m.<not a shape field>``, where the primitive's ``apply`` reads one itself
    (what its helpers read is caught on the server, with the same message)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls.apply)))
    except (OSError, TypeError, SyntaxError):
        return None
    args = tree.body[0].args.args if isinstance(tree.body[0], ast.FunctionDef) else []
    if len(args) < 2:
        return None
    ctx = args[1].arg

    def on_ctx(node: ast.AST, attr: str) -> bool:
        return (isinstance(node, ast.Attribute) and node.attr == attr and isinstance(node.value, ast.Name)
                and node.value.id == ctx)

    for node in ast.walk(tree):
        if on_ctx(node, "p"):
            return f"{ctx}.p"
        if isinstance(node, ast.Attribute) and on_ctx(node.value, "m") and node.attr not in _FACTS:
            return f"{ctx}.m.{node.attr}"
    return None


def check_portable(interventions: list[Any]) -> None:
    """Refuse, before anything is sent, primitives that need objects only this process has."""
    for i in interventions:
        name = type(i).__name__
        for f in dataclasses.fields(i):
            bad = _local_object(getattr(i, f.name))
            if bad:
                raise InputError(
                    f"{name}.{f.name} holds a {bad}, which cannot travel to an NDIF server (it has only the "
                    "model): give plain values, group names or tensors, or run with backend='local'"
                )
        read = _reads_local_context(type(i))
        if read:
            raise InputError(
                f"{name} reads {read} inside the trace, which a server does not have: keep what apply() needs in "
                "the primitive's fields (resolved in bind() or check()), or run with backend='local'"
            )
