"""Greedy generation under interventions, with a KV cache.

The prefill is an ordinary run (every primitive applies, readouts come from it) that
also fills a `DynamicCache`. Each new token then runs through the LLM alone, with an
explicit per-layer mask over that layer's cached keys (transformers silently keeps only
the first keys when a cache meets sdpa without a mask). Two primitives act on the new
tokens too:

- `AttentionKnockout`: a new token inherits the block when ``dst`` includes it. Groups
  are resolved on the prompt extended by the generated positions, whose role is
  ``generated``: ``dst="last | generated"`` blocks ``src`` for the answer position and
  everything written after it; ``dst="last"`` blocks the prompt's last position only.
- `TokenDrop`: the dropped positions are absent from the later layers' caches, so those
  layers keep a shorter KV cache while decoding.

Other edits act on the prompt (prefill) only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from avmech.decoder import Model
from avmech.errors import InputError
from avmech.interventions.base import Intervention
from avmech.interventions.knockout import AttentionKnockout
from avmech.interventions.run import prepare_interventions, run
from avmech.prepared import Prepared, RunResult


@dataclass(frozen=True)
class Generation:
    """Greedy continuation: new token ids and text, the prefill's `RunResult`, and the
    KV cache length of every layer at the end (shorter after a `TokenDrop`)."""

    ids: tuple[int, ...]
    text: str
    prefill: RunResult
    cache_lengths: tuple[int, ...]


def generate(
    m: Model, p: Prepared, interventions: Sequence[Intervention] = (), max_new_tokens: int = 8
) -> Generation:
    bound, ctx = prepare_interventions(m, p, interventions)
    dec = m.decoder
    cache = dec.new_cache()
    prefill = run(m, p, bound, cache=cache)
    knockouts = [i for i in bound if isinstance(i, AttentionKnockout)]
    n = len(p)
    ids = [int(prefill.logits.argmax())]
    eos = m.tokenizer.eos_token_id
    while len(ids) < max_new_tokens and ids[-1] != eos:
        step = len(ids) - 1  # the newest token sits at position n + step
        tokens = p.tokens.extended(step + 1)
        embeds = m.embed(torch.tensor([[ids[-1]]]))
        position_ids = dec.next_positions(p.position_ids, step).to(m.device)
        masks = []
        for layer in range(m.n_layers):
            alive = torch.cat([ctx.alive(layer), torch.arange(n, n + step + 1)])
            mask = torch.zeros(1, 1, 1, len(alive), dtype=m.dtype, device=m.device)
            for k in knockouts:
                if layer in ctx.check_layers(k.layers, "AttentionKnockout") and n + step in tokens.positions(k.dst):
                    blocked = torch.isin(alive, tokens.positions(k.src))
                    if blocked.all():
                        raise InputError(f"{k} leaves generated token {step} with no key to attend to")
                    heads = slice(None) if k.heads is None else list(k.heads)
                    if k.heads is not None:
                        mask = mask.expand(1, m.n_heads, 1, len(alive)).clone()
                    mask[:, heads, :, blocked] = torch.finfo(m.dtype).min
            masks.append(mask)
        with torch.no_grad(), m.nn.trace() as tracer:
            with tracer.invoke(inputs_embeds=embeds, position_ids=position_ids, use_cache=True, **{m.cache_kwarg: cache}):
                for layer in range(m.n_layers):
                    attn = dec.attention(m.nn.llm.layers[layer])
                    args, kwargs = attn.inputs
                    attn.inputs = (args, {**kwargs, dec.mask_kw: masks[layer]})
                logits = m.nn.lm_head.output[0, -1].save()
        ids.append(int(logits.argmax()))
    lengths = tuple(cache.layers[layer].get_seq_length() for layer in range(m.n_layers))
    return Generation(tuple(ids), m.tokenizer.decode(ids, skip_special_tokens=True), prefill, lengths)
