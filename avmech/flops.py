"""A FLOP model of the LLM's prefill: what a shortened sequence or a region should cost.

Speed claims are checked against this model. Per decoder layer, with ``rows`` query
positions and ``keys`` visible (query, key) pairs in total:

- projections: ``2 * rows * d * (heads + 2 * kv_heads) * head_dim`` (q, k, v) and
  ``2 * rows * heads * head_dim * d`` (o);
- MLP: ``rows`` times the family's per-position MLP cost (`Decoder.mlp_flops`: a gated
  MLP is ``2 * 3 * d * d_mlp``; a mixture counts its active experts);
- attention: ``2 * 2 * keys * heads * head_dim`` (scores and the weighted sum).

Norms, rotary embeddings and the unembedding of one position are ignored (small).
"""

from __future__ import annotations

from typing import Sequence

from avmech.decoder import Model


def layer_flops(m: Model, rows: int, keys: int) -> float:
    """FLOPs of one decoder layer for ``rows`` queries attending over ``keys`` pairs in total."""
    d, h, kv, hd = m.d_model, m.n_heads, m.n_kv_heads, m.head_dim
    proj = 2 * rows * d * (h + 2 * kv) * hd + 2 * rows * h * hd * d
    mlp = rows * m.decoder.mlp_flops(m.llm_module)
    attn = 2 * 2 * keys * h * hd
    return float(proj + mlp + attn)


def causal_pairs(first: int, stop: int) -> int:
    """Visible (query, key) pairs for queries first..stop-1 under a causal mask."""
    return (stop * (stop + 1) - first * (first + 1)) // 2


def prefill_flops(m: Model, lengths: Sequence[int]) -> float:
    """A prefill where layer ``l`` runs on ``lengths[l]`` positions (shorter after drops)."""
    return sum(layer_flops(m, n, causal_pairs(0, n)) for n in lengths)


def region_flops(m: Model, n: int, first_layer: int, first_row: int) -> float:
    """The affected region of a knockout: layers >= first_layer, queries >= first_row."""
    rows = n - first_row
    return sum(layer_flops(m, rows, causal_pairs(first_row, n)) for _ in range(first_layer, m.n_layers))
