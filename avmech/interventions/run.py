"""Running a list of primitives on a prepared sample, in one nnsight trace of the LLM.

The encoders run once per sample (`AVModel.encode`, cached); each run traces the LLM
alone on the cached embeddings with explicit 3-D position ids. The trace has one invoke
that feeds the input and reads the answer, and one empty invoke per primitive (each
primitive then only needs its own accesses in layer order), ordered by stage:
structure (token drops), then edits (knockouts, patches, ablations), then reads (lens,
attention, captures), so that readouts see the edited run.

Only the last position goes through the unembedding: the final norm's output is cut to
it inside the trace, so a 20,000-token input never builds a ``[pos, d_vocab]`` tensor.

The same trace runs locally or on an NDIF server (`avmech.backends`). Its body refers
only to what can travel: the model's envoy, the input tensors, the primitives and a run
context; a remote run swaps in the portable context (the model's shape, no sample) and
checks the primitives first. Readouts come back in one saved dict, which the trace
itself creates, so that a server's copy is the one returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import nnsight
import torch
from transformers import Cache

from avmech.backends import Backend, resolve, use
from avmech.decoder import Model
from avmech.errors import InputError, ModelError, RemoteError
from avmech.interventions.base import Intervention, RunContext
from avmech.interventions.drop import TokenDrop
from avmech.prepared import Prepared, RunResult
from avmech.remote.portable import check_portable, portable_context

STAGES = ("structure", "edit", "read")


def llm_inputs(m: Model, p: Prepared, cache: Cache | None = None) -> dict[str, Any]:
    """The keywords of one run of the LLM on ``p``: its embeddings (encoders run once), explicit
    positions, mask, the decoder's extra inputs, and a cache to fill if given."""
    enc = m.encode(p)
    inputs = {
        "inputs_embeds": enc.inputs_embeds,
        "position_ids": enc.position_ids,
        "attention_mask": p.inputs["attention_mask"].to(m.device),
        "use_cache": cache is not None,
        **enc.extra,
    }
    if cache is not None:
        inputs[m.cache_kwarg] = cache
    return inputs


def prepare_interventions(m: Model, p: Prepared, interventions: Sequence[Intervention]):
    """Bind and check every primitive against model and sample; build the run context."""
    bad = [i for i in interventions if not isinstance(i, Intervention)]
    if bad:
        raise TypeError(f"not interventions: {bad!r}; pass avmech primitives (AttentionKnockout(...), ...)")
    bound = [i.bind(m, p) for i in interventions]
    ctx = RunContext(m, p, [i for i in bound if isinstance(i, TokenDrop)])
    for i in bound:
        i.check(ctx)
    return bound, ctx


@dataclass(frozen=True, eq=False)
class Plan:
    """One condition, checked and ready to trace: bound primitives, their context, invoke order."""

    bound: list[Intervention]
    ctx: RunContext
    order: list[int]


def plan_condition(m: Model, p: Prepared, interventions: Sequence[Intervention], where: Backend) -> Plan:
    """Bind and check a condition for ``where``: a remote one is checked portable and gets
    the portable context."""
    if m.decoder_on_server and not where.remote:
        raise ModelError(
            f"{m.name} was loaded with decoder='server' (its LLM layers are on the NDIF server): "
            "run with backend='ndif', or load it with decoder='local'"
        )
    with use(where):
        bound, ctx = prepare_interventions(m, p, interventions)
    if where.remote:
        check_portable(bound)
        ctx = portable_context(ctx)
    return Plan(bound, ctx, sorted(range(len(bound)), key=lambda k: STAGES.index(bound[k].stage)))


def traced(model, inputs: dict[str, Any], plan: Plan, backend=None) -> tuple[Any, dict[int, Any]]:
    """One trace of the LLM: the input invoke reads the last position's logits, then one
    invoke per primitive. Inside a session, ``backend`` is None (the session's applies)."""
    with model.trace(backend=backend) as tracer:
        readouts = nnsight.save({})
        with tracer.invoke(**inputs):
            model.ln_final.output = model.ln_final.output[:, -1:]
            logits = model.lm_head.output[0, -1].save()
        for k in plan.order:
            with tracer.invoke():
                value = plan.bound[k].apply(plan.ctx)
                if value is not None:
                    readouts[k] = value
    return logits, readouts


def result(p: Prepared, plan: Plan, logits, readouts: dict[int, Any], where: Backend) -> RunResult:
    """The `RunResult` of a traced condition (a server that sent nothing back is an error)."""
    if logits is None:
        raise RemoteError(f"the {type(where).__name__} run returned no logits: the server sent back no result")
    return RunResult(
        logits=logits.detach().float(),
        answer_ids=p.answer_ids,
        answer=p.sample.answer,
        interventions=tuple(plan.bound),
        readouts=tuple(readouts.get(k) for k in range(len(plan.bound))),
    )


def run(
    m: Model,
    p: Prepared,
    interventions: Sequence[Intervention] = (),
    cache: Cache | None = None,
    backend: str | Backend | None = None,
) -> RunResult:
    """Run the LLM on ``p`` with ``interventions`` applied in one trace (filling ``cache`` if given).

    ``backend`` says where the trace runs (`avmech.backends.resolve`); a patch's source
    run goes where this run goes."""
    where = resolve(backend)
    if where.remote and cache is not None:
        raise InputError("a KV cache stays in this process: fill it with a local run (backend='local')")
    checked = plan_condition(m, p, interventions, where)
    with torch.no_grad():
        logits, readouts = traced(m.nn, llm_inputs(m, p, cache), checked, where.tracer_backend(m))
    return result(p, checked, logits, readouts, where)
