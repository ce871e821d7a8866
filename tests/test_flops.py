"""The FLOP model the speed claims are checked against."""

from __future__ import annotations

from avmech.flops import causal_pairs, layer_flops, prefill_flops, region_flops


def test_causal_pairs_counts_visible_keys():
    assert causal_pairs(0, 4) == 1 + 2 + 3 + 4
    assert causal_pairs(2, 4) == 3 + 4
    assert causal_pairs(3, 3) == 0


def test_layer_flops_by_hand(omni):
    d, h, kv, hd = omni.d_model, omni.n_heads, omni.n_kv_heads, omni.head_dim
    d_mlp = omni.llm_module.layers[0].mlp.up_proj.out_features
    rows, keys = 5, 12
    by_hand = 2 * rows * (d * h * hd + 2 * d * kv * hd + h * hd * d) + 2 * rows * 3 * d * d_mlp + 4 * keys * h * hd
    assert layer_flops(omni, rows, keys) == by_hand


def test_prefill_and_region(omni):
    n, L = 100, omni.n_layers
    full = prefill_flops(omni, [n] * L)
    assert full == L * layer_flops(omni, n, n * (n + 1) // 2)
    assert region_flops(omni, n, 0, 0) == full  # the whole forward is the largest region
    assert region_flops(omni, n, L - 1, n - 1) == layer_flops(omni, 1, n)  # the last position in the last layer
    shorter = prefill_flops(omni, [n, n, n // 2, n // 2][:L])
    assert shorter < full
