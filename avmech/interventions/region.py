"""Sweeps that recompute only what a knockout can change.

A knockout of edges into ``dst`` in layers ``[l, l + k)`` changes nothing below layer
``l``, and, attention being causal, nothing at positions before ``min(dst)`` in any
layer. So after one clean pass that keeps every layer's input and keys/values, a
condition needs only the *affected region*: layers from its first knocked-out layer, at
positions from its first target position, attending to the clean keys/values of the
earlier positions. For the study's main edges (into the question and the last position,
which follow the audio-visual tokens that make up most of the sequence) that is a small
fraction of a forward pass.

`run_many` groups the knockout-only conditions by first target position and batches
each group through the region layers at once (conditions whose first knocked-out layer
is later pass unchanged through the earlier region layers, which costs little for the
few rows of late targets, and saves one pass of per-layer overhead per condition). The
region runs the model's own decoder layers, called through the family's decoder map
(`avmech.decoder`), with an explicit ``[batch, 1, rows, n]`` mask (never sdpa's implicit
causal path, which with cached keys is wrong), and adds what the decoder adds between
layers (Qwen3-Omni's DeepStack visual features) at the region's positions. Conditions with
other primitives, or whose region is the whole forward, fall back to a full run.

The clean pass's state (hidden states, a KV cache) lives in this process, so a remote
backend (`avmech.backends`) runs every condition as one full trace instead: the same
numbers, computed where the model is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Float

from avmech.backends import Backend, resolve, use
from avmech.decoder import Model
from avmech.interventions.base import Intervention, RunContext
from avmech.interventions.knockout import Knockout, causal_mask
from avmech.interventions.run import prepare_interventions, run, run_session
from avmech.prepared import Prepared, RunResult

MASK_BUDGET = 2**26  # mask entries per batch (256 MB in float32)


@dataclass(frozen=True)
class CleanState:
    """What the clean pass keeps: each layer's input, keys and values, the rotary tables,
    and what the decoder adds between layers (``extra``, see `Decoder.after_layer`)."""

    resid_pre: list[Float[torch.Tensor, "1 pos d_model"]]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    rotary: tuple[torch.Tensor, ...]
    extra: dict[str, Any]


class _PrefixCache:
    """A stand-in KV cache: prepends the clean keys/values of positions before the region."""

    def __init__(self, state: CleanState, p0: int, batch: int):
        self.state, self.p0, self.batch = state, p0, batch

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        k = self.state.keys[layer_idx][:, :, : self.p0].expand(self.batch, -1, -1, -1)
        v = self.state.values[layer_idx][:, :, : self.p0].expand(self.batch, -1, -1, -1)
        return torch.cat([k, key_states], dim=2), torch.cat([v, value_states], dim=2)


def clean_pass(m: Model, p: Prepared) -> CleanState:
    """One plain run that also keeps every layer's input and a full KV cache."""
    cache = m.decoder.new_cache(m.llm_module)
    inputs = run(m, p, [_LayerInputs()], cache=cache)[0]
    enc = m.encode(p)
    with torch.no_grad():
        rotary = m.decoder.rotary(m.llm_module, enc.inputs_embeds, enc.position_ids)
    layers = cache.layers
    return CleanState(
        resid_pre=list(inputs),
        keys=[layers[i].keys for i in range(m.n_layers)],
        values=[layers[i].values for i in range(m.n_layers)],
        rotary=tuple(rotary), extra=enc.extra,
    )


class _LayerInputs(Intervention):
    """Readout: every layer's input hidden state (the clean pass keeps them)."""

    stage = "read"

    def apply(self, ctx: RunContext) -> list[torch.Tensor]:
        return [ctx.layer(layer).input for layer in range(ctx.n_layers)]


def region_of(bound: Sequence[Intervention], ctx: RunContext) -> tuple[int, int] | None:
    """(first layer, first target position) of a knockout-only condition, else None."""
    if not bound or not all(isinstance(i, Knockout) and getattr(i, "heads", None) is None for i in bound):
        return None  # other primitives, and head-specific knockouts, take a full run
    rows = [int(q.min()) for q, _ in (i.pairs(ctx) for i in bound) if len(q)]
    if not rows:
        return None
    return min(min(ctx.check_layers(i.layers, type(i).__name__)) for i in bound), min(rows)


def region_logits(
    m: Model, ctx: RunContext, state: CleanState, conditions: list[list[Intervention]], l0: int, p0: int
) -> Float[torch.Tensor, "batch d_vocab"]:
    """Last-position logits of a batch of knockout conditions, recomputing layers >= l0 at positions >= p0."""
    b, n = len(conditions), ctx.n
    rows = n - p0
    h = state.resid_pre[l0][:, p0:].expand(b, -1, -1)
    rotary = tuple(t[:, p0:].expand(b, *t[:, p0:].shape[1:]) for t in state.rotary)
    positions = torch.arange(p0, n)
    llm, dec = m.llm_module, m.decoder
    cache = _PrefixCache(state, p0, b)
    low = torch.finfo(h.dtype).min
    base = causal_mask(rows, n, h.dtype, h.device)
    cache_kwarg = {m.cache_kwarg: cache}
    # each condition's blocked edges, once: (its layers, query rows in the region, keys)
    blocks = [[(set(ctx.check_layers(i.layers, type(i).__name__)), *i.pairs(ctx)) for i in cond] for cond in conditions]
    with torch.no_grad():
        for layer in range(l0, m.n_layers):
            mask = base.expand(b, 1, rows, n).clone()
            for j, cond in enumerate(blocks):
                for layers, q, k in cond:
                    if layer in layers:
                        mask[j, 0, q - p0, k] = low
            h = dec.run_layer(llm, layer, h, mask=mask, rotary=rotary, cache=cache_kwarg)
            h = dec.after_layer(layer, h, positions, state.extra)
        return m.lm_head_module(m.final_norm_module(h[:, -1]))


def run_many(
    m: Model, p: Prepared, conditions: Sequence[Sequence[Intervention]], backend: str | Backend | None = None
) -> list[RunResult]:
    """Results of each condition, as `run` gives them: locally computing only affected
    regions, remotely one full trace per condition, all in one request."""
    where = resolve(backend)
    if where.remote:
        return run_session(m, p, conditions, where)
    with use(where):
        return _affected_regions(m, p, conditions)


def _affected_regions(m: Model, p: Prepared, conditions: Sequence[Sequence[Intervention]]) -> list[RunResult]:
    results: list[RunResult | None] = [None] * len(conditions)
    groups: dict[int, list[tuple[int, int, list[Intervention]]]] = {}
    for j, cond in enumerate(conditions):
        bound, ctx = prepare_interventions(m, p, list(cond))
        region = region_of(bound, ctx)
        if region is None or region == (0, 0):
            results[j] = run(m, p, bound)
        else:
            groups.setdefault(region[1], []).append((j, region[0], bound))
    if groups:
        state = clean_pass(m, p)
        ctx = RunContext(m, p)
        for p0, members in sorted(groups.items()):
            rows = len(p) - p0
            # few rows: overhead-bound, batch across start layers; many rows: batch equal starts only
            keys = (lambda x: 0) if rows <= 8 else (lambda x: x[1])
            by_start: dict[int, list] = {}
            for item in members:
                by_start.setdefault(keys(item), []).append(item)
            per_batch = max(1, MASK_BUDGET // (rows * len(p)))
            for batch in by_start.values():
                for at in range(0, len(batch), per_batch):
                    chunk = batch[at: at + per_batch]
                    l0 = min(x[1] for x in chunk)
                    logits = region_logits(m, ctx, state, [x[2] for x in chunk], l0, p0)
                    for (j, _, bound), row in zip(chunk, logits):
                        results[j] = RunResult(row.float(), p.answer_ids, p.sample.answer, tuple(bound),
                                               tuple(None for _ in bound))
    return results
