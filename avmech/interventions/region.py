"""Sweeps that recompute only what a knockout can change, where the model lives.

A knockout of edges into ``dst`` in layers ``[l, l + k)`` changes nothing below layer
``l``, and, attention being causal, nothing at positions before ``min(dst)`` in any
layer. So after one clean pass that keeps each layer's input and keys/values, a
condition needs only its *affected region*: layers from its first knocked-out layer, at
positions from its first target position, attending to the clean keys/values of the
earlier positions. For the study's main edges (into the question and the last position,
which follow the audio-visual tokens that make up most of the sequence) that is a small
fraction of a forward pass.

A region is an ordinary trace of the model on the region's positions only: a KV cache
holding the clean keys/values of the earlier positions (`Decoder.new_cache`, filled from
`Decoder.keys_values` of the clean pass), the clean positions' ids, layers before the
region skipped (nnsight's ``skip``) and the first region layer's input set to the clean
hidden state, each region layer's attention given an explicit ``[batch, 1, rows, n]`` mask
with the condition's blocked edges (never sdpa's implicit causal path, which with cached
keys is wrong), and what the decoder adds between layers outside them (Qwen3-Omni's
DeepStack, `Decoder.after_layer`) added at the region's rows. Conditions sharing a first
target position are batched (those whose first knocked-out layer is later pass unchanged
through the earlier region layers, which costs little for the few rows of late targets).

`run_many` runs the clean pass, the regions and every other condition (a full trace
each) in one nnsight session: locally, or on an NDIF server as **one request per
sample**, where the clean pass's state stays and only each condition's last-position
logits come back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import nnsight
import torch

from avmech.backends import Backend, resolve
from avmech.decoder import Decoder, Model
from avmech.interventions.base import Intervention, RunContext
from avmech.interventions.knockout import Knockout, causal_mask
from avmech.interventions.run import Plan, llm_inputs, plan_condition, result, traced
from avmech.prepared import Prepared, RunResult

MASK_BUDGET = 2**26  # mask entries per batch (256 MB in float32)

# one condition's blocked edges: (its layers, query rows counted from the region's first position, keys)
Blocks = tuple[tuple[tuple[int, ...], torch.Tensor, torch.Tensor], ...]


@dataclass(frozen=True, eq=False)
class Region:
    """Knockout conditions recomputed together: layers from ``l0``, positions from ``p0``."""

    l0: int
    p0: int
    members: tuple[int, ...]  # the conditions' indices in `run_many`'s list
    blocks: tuple[Blocks, ...]

    def cost(self, n: int, n_layers: int) -> int:
        """Layer-positions it computes: every member's rows through the region's layers."""
        return len(self.members) * (n - self.p0) * (n_layers - self.l0)


def region_of(bound: Sequence[Intervention], ctx: RunContext) -> tuple[int, int] | None:
    """(first layer, first target position) of a knockout-only condition, else None."""
    if not bound or not all(isinstance(i, Knockout) and getattr(i, "heads", None) is None for i in bound):
        return None  # other primitives, and head-specific knockouts, take a full run
    rows = [int(q.min()) for q, _ in (i.pairs(ctx) for i in bound) if len(q)]
    if not rows:
        return None
    return min(min(ctx.check_layers(i.layers, type(i).__name__)) for i in bound), min(rows)


def plan_regions(plans: Sequence[Plan], n: int) -> tuple[list[int], list[Region]]:
    """The conditions that need a full run (their indices), and the batched regions of the others."""
    full, groups = [], {}
    for j, plan in enumerate(plans):
        region = region_of(plan.bound, plan.ctx)
        if region is None or region == (0, 0):
            full.append(j)
        else:
            groups.setdefault(region[1], []).append((j, region[0]))
    regions = []
    for p0, members in sorted(groups.items()):
        rows = n - p0
        by_start: dict[int, list[tuple[int, int]]] = {}
        for j, l0 in members:  # few rows: overhead-bound, batch across start layers; many rows: equal starts only
            by_start.setdefault(0 if rows <= 8 else l0, []).append((j, l0))
        per_batch = max(1, MASK_BUDGET // (rows * n))
        for batch in by_start.values():
            for at in range(0, len(batch), per_batch):
                chunk = batch[at: at + per_batch]
                blocks = tuple(_blocks(plans[j], p0) for j, _ in chunk)
                regions.append(Region(min(l0 for _, l0 in chunk), p0, tuple(j for j, _ in chunk), blocks))
    return full, regions


def _blocks(plan: Plan, p0: int) -> Blocks:
    ctx = plan.ctx
    out = []
    for knockout in plan.bound:
        q, k = knockout.pairs(ctx)
        out.append((tuple(ctx.check_layers(knockout.layers, type(knockout).__name__)), q - p0, k))
    return tuple(out)


def run_many(
    m: Model, p: Prepared, conditions: Sequence[Sequence[Intervention]], backend: str | Backend | None = None
) -> list[RunResult]:
    """Results of each condition, as `run` gives them, computing knockout conditions' affected
    regions only; one nnsight session (one request to an NDIF server) for all of them."""
    where = resolve(backend)
    plans = [plan_condition(m, p, list(c), where) for c in conditions]
    full, regions = plan_regions(plans, len(p))
    # the session body may name only what travels: not `m`
    inputs, model, decoder, full_plans = llm_inputs(m, p), m.nn, m.decoder, [plans[j] for j in full]
    shape = Shape(len(p), m.n_layers, m.n_kv_heads, m.head_dim, m.cache_kwarg)
    with torch.no_grad(), model.session(backend=where.tracer_backend(m)):
        outputs = nnsight.save([])
        sweep(model, decoder, inputs, full_plans, regions, shape, outputs)
    results: list[RunResult | None] = [None] * len(conditions)
    for j, (logits, readouts) in zip(full, outputs[:len(full)]):
        results[j] = result(p, plans[j], logits, readouts, where)
    for region, logits in zip(regions, outputs[len(full):]):
        for j, row in zip(region.members, logits):
            results[j] = RunResult(row.float(), p.answer_ids, p.sample.answer, tuple(plans[j].bound),
                                   tuple(None for _ in plans[j].bound))
    return results


@dataclass(frozen=True)
class Shape:
    """What the session body needs to know of the model and the sample (plain values: it travels)."""

    n: int
    n_layers: int
    n_kv_heads: int
    head_dim: int
    cache_kwarg: str


def sweep(model, decoder: Decoder, inputs: dict[str, Any], full: list[Plan], regions: list[Region],
          shape: Shape, outputs: list) -> None:
    """The body of `run_many`'s session: every full condition's trace, then the clean pass and
    each region; ``outputs`` gets (logits, readouts) per full condition, then logits per region."""
    for plan in full:
        outputs.append(traced(model, inputs, plan))
    if not regions:
        return
    clean = clean_pass(model, decoder, inputs, regions, shape)
    for region in regions:
        outputs.append(region_logits(model, decoder, inputs, clean, region, shape))


def clean_pass(model, decoder: Decoder, inputs: dict[str, Any], regions: list[Region], shape: Shape) -> dict:
    """One plain run keeping what the regions start from: the input of each region's first
    layer at the positions regions compute, and every later layer's keys and values at the
    positions before them."""
    starts = sorted({r.l0 for r in regions})
    first_row, last_row = min(r.p0 for r in regions), max(r.p0 for r in regions)
    with model.trace() as tracer:
        kept = nnsight.save({"resid": {}, "keys": {}, "values": {}})
        with tracer.invoke(**inputs):
            for i in range(starts[0], shape.n_layers):
                layer = model.llm.layers[i]
                if i in starts:
                    kept["resid"][i] = layer.input[:, first_row:]
                k, v = decoder.keys_values(layer, shape.n_kv_heads, shape.head_dim)
                kept["keys"][i], kept["values"][i] = k[:, :, :last_row], v[:, :, :last_row]
    kept["first_row"] = first_row
    return kept


def region_logits(model, decoder: Decoder, inputs: dict[str, Any], clean: dict, region: Region,
                  shape: Shape) -> torch.Tensor:
    """Last-position logits ``[batch, d_vocab]`` of a region's conditions."""
    b, n, p0, l0 = len(region.members), shape.n, region.p0, region.l0
    rows = n - p0
    h = clean["resid"][l0][:, p0 - clean["first_row"]:]
    cache = decoder.new_cache()
    for i in range(l0, shape.n_layers):
        keys, values = clean["keys"][i][:, :, :p0], clean["values"][i][:, :, :p0]
        cache.update(keys.expand(b, *keys.shape[1:]), values.expand(b, *values.shape[1:]), i)
    positions = inputs["position_ids"][..., p0:]
    region_inputs = {"inputs_embeds": h.new_zeros(b, rows, h.shape[-1]),
                     "position_ids": positions.expand(positions.shape[0], b, rows),
                     "use_cache": True, shape.cache_kwarg: cache}
    base = causal_mask(rows, n, h.dtype, h.device).expand(b, 1, rows, n)
    low = torch.finfo(h.dtype).min
    rows_at = torch.arange(p0, n)
    with model.trace() as tracer:
        with tracer.invoke(**region_inputs):
            for i in range(l0):
                model.llm.layers[i].skip(model.llm.layers[i].input)
            model.llm.layers[l0].input = h.expand(b, *h.shape[1:])
            for i in range(l0, shape.n_layers):
                layer = model.llm.layers[i]
                mask = base.clone()
                for j, blocks in enumerate(region.blocks):
                    for layers, q, k in blocks:
                        if i in layers:
                            mask[j, 0, q, k] = low
                attention = decoder.attention(layer)
                args, kwargs = attention.inputs
                attention.inputs = (args, {**kwargs, decoder.mask_kw: mask})
                if i in decoder.injected_layers:
                    layer.output = decoder.after_layer(i, layer.output, rows_at, inputs)
            model.ln_final.output = model.ln_final.output[:, -1:]
            logits = model.lm_head.output[:, -1].save()
    return logits
