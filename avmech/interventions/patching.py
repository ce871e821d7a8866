"""Activation patching, ablation and capture at named sites.

Patching asks a counterfactual question: if this activation, at these positions, had
the value it takes on another input (the *source*), what would the model do? Copy the
source's activation in, keep everything else, and read the answer. Patching a run into
itself changes nothing; patching the final residual stream from another sample gives
that sample's logits at the patched positions. Ablation replaces the activation by
zero or by its mean over the sequence, asking what is lost without it. `Capture` only
reads a site; its readout is a cache that later patches can take as their source.

Positions are a `TokenMap` group. With a source sample of another length, the group is
resolved in each sample and must select as many positions in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from jaxtyping import Float

from avmech.decoder import Model
from avmech.errors import InputError
from avmech.interventions.base import GroupSpec, Intervention, RunContext, Site
from avmech.prepared import Prepared, RunResult



class Capture(Intervention):
    """Read a site at some positions: the readout is ``[pos, d]`` (batch dropped)."""

    site: str | Site
    positions: GroupSpec = "all"

    stage: ClassVar = "read"

    def __post_init__(self) -> None:
        object.__setattr__(self, "site", Site.parse(self.site))

    def check(self, ctx: RunContext) -> None:
        ctx.check_site(self.site, "Capture")
        ctx.tokens.nonempty(self.positions, "Capture positions")

    def apply(self, ctx: RunContext) -> Float[torch.Tensor, "pos d_model"]:
        idx = ctx.local(ctx.positions(self.positions), self.site.layer)
        return ctx.read(self.site)[0, idx].clone()


@dataclass(frozen=True)
class _Values:
    """Source activations resolved before the trace: ``[pos, d]``."""

    tensor: torch.Tensor


class ActivationPatch(Intervention):
    """Overwrite ``site`` at ``positions`` with the source's activation there.

    ``source`` is another `Prepared` sample (run first, once), a `RunResult` holding a
    `Capture` of this site and group, or a tensor ``[pos, d]``. ``source_positions``
    names the group in the source when it differs from ``positions``.
    """

    site: str | Site
    positions: GroupSpec
    source: Any
    source_positions: GroupSpec | None = None

    stage: ClassVar = "edit"

    def __post_init__(self) -> None:
        object.__setattr__(self, "site", Site.parse(self.site))

    def bind(self, m: Model, p: Prepared) -> ActivationPatch:
        src = self.source
        spec = self.source_positions if self.source_positions is not None else self.positions
        if isinstance(src, Prepared):
            src = m.run(src, [Capture(self.site, spec)])  # where this run goes (`avmech.backends.use`)
        if isinstance(src, RunResult):
            found = [r for i, r in zip(src.interventions, src.readouts)
                     if isinstance(i, Capture) and i.site == self.site and i.positions == spec]
            if not found:
                raise InputError(
                    f"the source run has no Capture({str(self.site)!r}, {spec!r}): add one to its interventions"
                )
            src = found[0]
        if isinstance(src, _Values):
            return self
        if not isinstance(src, torch.Tensor):
            raise InputError(
                f"ActivationPatch source is a {type(src).__name__}: give a Prepared sample, a RunResult "
                "with a Capture of the site, or a tensor [pos, d]"
            )
        return self.replace(source=_Values(src.detach()))

    def check(self, ctx: RunContext) -> None:
        ctx.check_site(self.site, "ActivationPatch")
        group = ctx.tokens.nonempty(self.positions, "ActivationPatch positions")
        values = self.source.tensor if isinstance(self.source, _Values) else None
        if values is None:
            return
        width = ctx.m.head_dim if self.site.kind == "head_out" else ctx.m.d_model
        if values.dim() != 2 or values.shape[1] != width:
            raise InputError(
                f"ActivationPatch: the source is shaped {tuple(values.shape)}, but {self.site} takes [positions, "
                f"{width}]: capture the same site of this model"
            )
        if values.shape[0] != len(group):
            raise InputError(
                f"ActivationPatch: the source has {values.shape[0]} positions for {len(group)} in "
                f"{group.name!r}: patch groups of equal size (source_positions= names the source's group)"
            )
        if not torch.isfinite(values).all():
            raise InputError("ActivationPatch: the source holds NaN or infinite values")

    def apply(self, ctx: RunContext) -> None:
        idx = ctx.local(ctx.positions(self.positions), self.site.layer)
        current = ctx.read(self.site)
        patched = current.clone()
        patched[:, idx] = self.source.tensor.to(current.device, current.dtype)
        ctx.write(self.site, patched)


class Ablate(Intervention):
    """Replace ``site`` at ``positions`` by zero, or by its mean over all positions of the run."""

    site: str | Site
    positions: GroupSpec
    mode: Literal["zero", "mean"] = "zero"

    stage: ClassVar = "edit"

    def __post_init__(self) -> None:
        object.__setattr__(self, "site", Site.parse(self.site))
        if self.mode not in ("zero", "mean"):
            raise InputError(f"Ablate mode {self.mode!r}: use 'zero' or 'mean'")

    def check(self, ctx: RunContext) -> None:
        ctx.check_site(self.site, "Ablate")
        ctx.tokens.nonempty(self.positions, "Ablate positions")

    def apply(self, ctx: RunContext) -> None:
        idx = ctx.local(ctx.positions(self.positions), self.site.layer)
        current = ctx.read(self.site)
        ablated = current.clone()
        ablated[:, idx] = 0.0 if self.mode == "zero" else current.mean(dim=1, keepdim=True)
        ctx.write(self.site, ablated)

