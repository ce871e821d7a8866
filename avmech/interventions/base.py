"""The primitive protocol: a frozen dataclass with a `check` and one `apply` inside a trace.

An intervention is data: which positions, which layers, which site. It is checked twice
before any forward pass: at construction for its form (`__post_init__`), and against
the model and sample (`check`: layers inside the model, groups that exist and are
non-empty where that matters). Then the runner opens one nnsight trace of the LLM and
gives every intervention its own invoke, in which `apply(ctx)` reads or writes the
named modules it needs, in layer order. What `apply` returns is the readout.

Sites follow TransformerLens's names, with the layer (and head) in the string:

===================  ==================================================  ===========
``resid_pre.L``      residual stream entering layer L                    [b, pos, d]
``resid_post.L``     residual stream leaving layer L                     [b, pos, d]
``attn_out.L``       self-attention output of layer L (after the output  [b, pos, d]
                     projection)
``mlp_out.L``        MLP output of layer L                               [b, pos, d]
``head_out.L.H``     head H's output before the output projection (its   [b, pos, hd]
                     slice of the projection's input)
===================  ==================================================  ===========

A new primitive is a subclass with typed fields and an ``apply``; it becomes a frozen
dataclass by itself::

    class ScaleHead(avmech.Intervention):
        layer: int
        head: int
        factor: float

        def apply(self, ctx):
            ctx.head_output(self.layer, self.head)[:] *= self.factor
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from jaxtyping import Float, Int

from avmech.decoder import Model
from avmech.errors import InputError, ModelError
from avmech.prepared import Prepared
from avmech.tokens import Group

GroupSpec = str | Group | tuple  # a tuple (or list) of specs is their union
SITE_KINDS = ("resid_pre", "resid_post", "attn_out", "mlp_out", "head_out")


@dataclass(frozen=True)
class Site:
    """A named activation: ``Site("resid_post", 5)`` or ``Site.parse("head_out.5.3")``."""

    kind: Literal["resid_pre", "resid_post", "attn_out", "mlp_out", "head_out"]
    layer: int
    head: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in SITE_KINDS:
            raise InputError(f"unknown site {self.kind!r}: use one of {', '.join(SITE_KINDS)}")
        if (self.kind == "head_out") != (self.head is not None):
            raise InputError(f"site {self}: a head index goes with head_out only, and head_out needs one")

    @classmethod
    def parse(cls, spec: str | Site) -> Site:
        if isinstance(spec, Site):
            return spec
        m = re.fullmatch(r"(\w+)\.(\d+)(?:\.(\d+))?", spec)
        if not m:
            raise InputError(f"cannot read site {spec!r}: write e.g. 'resid_post.5' or 'head_out.5.3'")
        return cls(m.group(1), int(m.group(2)), int(m.group(3)) if m.group(3) else None)

    def __str__(self) -> str:
        return f"{self.kind}.{self.layer}" + (f".{self.head}" if self.head is not None else "")


class Intervention:
    """Base of every primitive. ``stage`` orders invokes: structure, then edits, then reads."""

    stage: ClassVar[Literal["structure", "edit", "read"]] = "edit"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Explicit super(): a remote request rebuilds this method from its source, without the class cell.
        super(Intervention, cls).__init_subclass__(**kwargs)
        own = cls.__dict__.get("__post_init__")
        if not getattr(own, "checks_fields", False):
            def __post_init__(self) -> None:  # typed fields first, then the class's own checks
                _check_fields(self)
                if own is not None:
                    own(self)

            __post_init__.checks_fields = True
            cls.__post_init__ = __post_init__
        if "__dataclass_fields__" not in cls.__dict__:
            dataclass(frozen=True)(cls)

    def check(self, ctx: RunContext) -> None:
        """Validate against the model and sample; raise `InputError` naming the problem."""

    def bind(self, m: Model, p: Prepared) -> Intervention:
        """Resolve what must be computed before the trace (e.g. a patch's source run)."""
        return self

    def apply(self, ctx: RunContext) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define apply(ctx)")

    def replace(self, **changes: Any) -> Intervention:
        return dataclasses.replace(self, **changes)


_PLAIN = {"int": int, "float": (int, float), "bool": bool, "str": str}


def _check_fields(i: Intervention) -> None:
    """Fields annotated as a plain ``int``, ``float``, ``bool`` or ``str`` hold one (a bool is no int)."""
    for f in dataclasses.fields(i):
        hint = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        want = _PLAIN.get(hint)
        value = getattr(i, f.name)
        if want is not None and (not isinstance(value, want) or (hint != "bool" and isinstance(value, bool))):
            raise InputError(f"{type(i).__name__}.{f.name} = {value!r} is not {hint}: give {f.name} as {hint}")


LayerSpec = int | range | list[int] | tuple[int, ...] | str


def layer_list(layers: LayerSpec) -> tuple[int, ...] | str:
    """Normalise a layer spec to a sorted tuple, or ``"all"`` (resolved against a model by
    `RunContext.check_layers`: primitives are built before any model is known)."""
    if layers == "all":
        return "all"
    if isinstance(layers, str):
        raise InputError(f"layers={layers!r}: give an int, a range, a list of ints or 'all'")
    if isinstance(layers, int):
        return (layers,)
    out = tuple(sorted(set(int(x) for x in layers)))
    if not out:
        raise InputError("an empty layer list: give at least one layer")
    return out


class RunContext:
    """What `apply` sees: the traced model under standard names (``ctx.nn``), the family's
    decoder map (``ctx.decoder``), the sample's tokens, and helpers that map groups to
    positions (taking dropped tokens into account)."""

    def __init__(self, m: Model, p: Prepared, drops: list[Intervention] = ()):
        self.m, self.p, self.tokens = m, p, p.tokens
        self.nn, self.decoder = m.nn, m.decoder
        self.n_layers, self.n = m.n_layers, len(p)
        self.drops = list(drops)
        self._alive = self._alive_schedule([(self.positions(d.group), d.after_layer) for d in self.drops])

    # ---- tokens -----------------------------------------------------------------------
    def group(self, spec: GroupSpec) -> Group:
        return self.tokens.group(spec)

    def positions(self, spec: GroupSpec) -> Int[torch.Tensor, " pos"]:
        return self.tokens.positions(spec)

    def _alive_schedule(self, drops: list[tuple[torch.Tensor, int]]) -> list[Int[torch.Tensor, " pos"]]:
        """Original positions alive at the input of each layer (and after the last, index L)."""
        alive = torch.ones(self.n, dtype=torch.bool)
        out = []
        for layer in range(self.n_layers + 1):
            for positions, after in drops:
                if after == layer - 1:
                    alive[positions] = False
            out.append(torch.nonzero(alive).flatten())
        return out

    def alive(self, layer: int) -> Int[torch.Tensor, " pos"]:
        """Original positions present at the input of ``layer`` (all of them without drops)."""
        return self._alive[layer]

    def local(self, positions: Int[torch.Tensor, " pos"], layer: int) -> Int[torch.Tensor, " pos"]:
        """Indices into the (possibly shortened) sequence inside ``layer`` (its input to its output).

        Raises when a requested position was dropped before that layer."""
        alive = self._alive[layer]
        if len(alive) == self.n:
            return positions
        where = torch.full((self.n,), -1, dtype=torch.long)
        where[alive] = torch.arange(len(alive))
        idx = where[positions]
        if (idx < 0).any():
            raise InputError(f"positions {positions[idx < 0][:5].tolist()} were dropped before layer {layer}")
        return idx

    # ---- sites --------------------------------------------------------------------------
    def layer(self, layer: int):
        """Decoder layer ``layer`` of the traced model (an nnsight envoy)."""
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self.n_layers:
            raise InputError(f"layer {layer!r} is outside this model's layers 0..{self.n_layers - 1}")
        return self.nn.llm.layers[layer]

    def read(self, site: Site | str) -> Float[torch.Tensor, "batch pos d_model"]:
        """The activation at ``site`` (a `Site` or its name, e.g. ``"resid_post.1"``)."""
        site = Site.parse(site)
        layer = self.layer(site.layer)
        if site.kind == "resid_pre":
            return layer.input
        if site.kind == "resid_post":
            return layer.output
        if site.kind == "attn_out":
            return self.decoder.attention(layer).output[0]
        if site.kind == "mlp_out":
            return self.decoder.mlp(layer).output
        return self.head_output(site.layer, site.head)

    def write(self, site: Site | str, value: Float[torch.Tensor, "batch pos d_model"]) -> None:
        """Replace the activation at ``site`` by ``value`` (same shape)."""
        site = Site.parse(site)
        layer = self.layer(site.layer)
        if site.kind == "resid_pre":
            layer.input = value
        elif site.kind == "resid_post":
            layer.output = value
        elif site.kind == "attn_out":
            attention = self.decoder.attention(layer)
            attention.output = (value, attention.output[1])
        elif site.kind == "mlp_out":
            self.decoder.mlp(layer).output = value
        else:
            self._check_head(site.head)
            hd = self.m.head_dim
            heads = self.decoder.heads_in(layer)
            merged = heads.input.clone()
            merged[..., site.head * hd:(site.head + 1) * hd] = value
            heads.input = merged

    def head_output(self, layer: int, head: int) -> Float[torch.Tensor, "batch pos d_head"]:
        """Head ``head``'s output in ``layer``: a view into the output projection's input, editable in place."""
        self._check_head(head)
        hd = self.m.head_dim
        return self.decoder.heads_in(self.layer(layer)).input[..., head * hd:(head + 1) * hd]

    def _check_head(self, head: int) -> None:
        if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < self.m.n_heads:
            raise InputError(f"head {head!r} is outside this model's heads 0..{self.m.n_heads - 1}")

    # ---- checks ------------------------------------------------------------------------
    def check_layers(self, layers: tuple[int, ...] | str, what: str, lo: int = 0) -> tuple[int, ...]:
        """The layers of a spec on this model; raises naming those outside it."""
        if layers == "all":
            return tuple(range(self.n_layers))
        bad = [x for x in layers if not lo <= x < self.n_layers]
        if bad:
            raise InputError(f"{what}: layers {bad} are outside this model's {lo}..{self.n_layers - 1}")
        return layers

    def check_site(self, site: Site, what: str) -> None:
        self.check_layers((site.layer,), what)
        if site.head is not None and not 0 <= site.head < self.m.n_heads:
            raise InputError(f"{what}: head {site.head} is outside 0..{self.m.n_heads - 1}")

    def require_masks(self, what: str) -> None:
        """Refuse kernels that ignore explicit masks, as the decoder layers themselves run them."""
        impl = self.m.attn_implementation
        if impl not in ("eager", "sdpa"):
            raise ModelError(
                f"{what} edits the attention mask, which the {impl!r} kernel of the decoder layers ignores: load "
                "the model with attn_implementation='sdpa' or 'eager'"
            )
