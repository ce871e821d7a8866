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
from typing import TYPE_CHECKING, Any, Sequence

import nnsight
import torch
from jaxtyping import Float
from transformers import Cache

from avmech.backends import Backend, RemoteError, check_portable, portable_context, resolve, use
from avmech.errors import InputError, ModelError
from avmech.interventions.base import Intervention, RunContext
from avmech.interventions.drop import TokenDrop

if TYPE_CHECKING:
    from avmech.models.base import AVModel, Prepared

STAGES = ("structure", "edit", "read")


@dataclass(frozen=True, eq=False)
class RunResult:
    """What one run gives: the last position's logits, answer metrics and each readout.

    ``result[i]`` or ``result[primitive]`` is the readout of the i-th / that primitive
    (``None`` for edits)."""

    logits: Float[torch.Tensor, " d_vocab"]
    answer_ids: tuple[int, ...]
    answer: int | None
    interventions: tuple[Intervention, ...]
    readouts: tuple[Any, ...]

    def __getitem__(self, key: int | Intervention) -> Any:
        if isinstance(key, int):
            return self.readouts[key]
        for i, r in zip(self.interventions, self.readouts):
            if i is key or i == key:
                return r
        raise KeyError(f"{key!r} was not part of this run")

    @property
    def finite(self) -> bool:
        """Whether the logits are all finite: a NaN or inf (an edit gone wrong, an overflow)
        leaves the run without a prediction, never an argmax of NaNs."""
        return bool(torch.isfinite(self.logits).all())

    @property
    def probs(self) -> Float[torch.Tensor, " d_vocab"]:
        return torch.softmax(self.logits.float(), dim=-1)

    @property
    def letter_probs(self) -> Float[torch.Tensor, " n_option"]:
        """Probability of each option letter at the last position (softmax over the whole vocabulary)."""
        return self.probs[list(self.answer_ids)]

    @property
    def p_correct(self) -> float:
        """Probability of the correct option's letter (NaN when the logits are not finite)."""
        if self.answer is None:
            raise ValueError("this sample has no answer: p_correct is undefined")
        return float(self.letter_probs[self.answer]) if self.finite else float("nan")

    @property
    def pred(self) -> int | None:
        """Index of the option whose letter has the highest logit; None when the logits are not finite."""
        if not self.answer_ids:
            raise ValueError("this sample has no options")
        return int(torch.argmax(self.logits[list(self.answer_ids)])) if self.finite else None

    @property
    def correct(self) -> bool:
        return self.answer is not None and self.pred is not None and self.pred == self.answer


def _llm_inputs(m: AVModel, p: Prepared, cache: Cache | None = None) -> dict[str, Any]:
    enc = m.encode(p)
    inputs = {
        "inputs_embeds": enc.inputs_embeds,
        "position_ids": enc.position_ids,
        "attention_mask": p.inputs["attention_mask"].to(m.device),
        "use_cache": cache is not None,
    }
    if cache is not None:
        inputs[m.cache_kwarg] = cache
    return inputs


def prepare_interventions(m: AVModel, p: Prepared, interventions: Sequence[Intervention]):
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
class _Plan:
    """One condition, checked and ready to trace: bound primitives, their context, invoke order."""

    bound: list[Intervention]
    ctx: RunContext
    order: list[int]


def _plan(m: AVModel, p: Prepared, interventions: Sequence[Intervention], where: Backend) -> _Plan:
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
    return _Plan(bound, ctx, sorted(range(len(bound)), key=lambda k: STAGES.index(bound[k].stage)))


def _traced(model, inputs: dict[str, Any], plan: _Plan, backend=None) -> tuple[Any, dict[int, Any]]:
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


def _result(p: Prepared, plan: _Plan, logits, readouts: dict[int, Any], where: Backend) -> RunResult:
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
    m: AVModel,
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
    plan = _plan(m, p, interventions, where)
    with torch.no_grad():
        logits, readouts = _traced(m.nn, _llm_inputs(m, p, cache), plan, where.tracer_backend(m))
    return _result(p, plan, logits, readouts, where)


def run_session(m: AVModel, p: Prepared, conditions: Sequence[Sequence[Intervention]], where: Backend) -> list[RunResult]:
    """Every condition as one trace of a single remote request (an nnsight session): the
    sample's inputs travel once, not once per condition."""
    plans = [_plan(m, p, list(c), where) for c in conditions]
    inputs, model = _llm_inputs(m, p), m.nn  # the session body may name only what travels: not `m`
    with torch.no_grad(), model.session(backend=where.tracer_backend(m)):
        outputs = nnsight.save([])
        for plan in plans:
            outputs.append(_traced(model, inputs, plan))
    return [_result(p, plan, logits, readouts, where) for plan, (logits, readouts) in zip(plans, outputs)]


