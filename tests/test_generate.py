"""Generation under interventions against a no-cache reference loop (full recompute per token)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import avmech
from avmech import AttentionKnockout, TokenDrop


def _prepared(m):
    rng = np.random.default_rng(3)
    frames = (rng.random((8, 56, 56, 3)) * 255).astype(np.uint8)
    wave = (0.4 * np.sin(2 * np.pi * 500 * np.arange(32000) / 16000)).astype(np.float32)
    return m.prepare(avmech.AVSample(video=frames, fps=4, audio=wave, sample_rate=16000,
                                     question="Describe it.", options=("a", "b"), answer=0))


def reference_tokens(m, p, steps, block=None, drop=None):
    """Greedy tokens from full forwards without a cache. ``block=(src, dst_includes_new, layers)``
    blocks src keys for the last prompt position and every new one in ``layers``;
    ``drop=(positions, after)`` runs layers after ``after`` on the kept positions only."""
    llm = m.llm_module
    enc = m.encode(p)
    n = len(p)
    embeds, pos = enc.inputs_embeds, enc.position_ids
    ids = []
    with torch.no_grad():
        for _ in range(steps):
            h = embeds
            total = h.shape[1]
            cos0, sin0 = llm.rotary_emb(h, pos)
            cos, sin = cos0, sin0
            keep = torch.arange(total)
            for i, layer in enumerate(llm.layers):
                if drop is not None and i == drop[1] + 1:
                    keep = torch.tensor([x for x in range(total) if x not in set(drop[0].tolist())])
                    h, cos, sin = h[:, keep], cos0[:, keep], sin0[:, keep]
                k = len(keep)
                mask = torch.full((k, k), torch.finfo(torch.float32).min).triu(1)[None, None]
                if block is not None and i in block[2]:
                    rows = [j for j, x in enumerate(keep.tolist()) if x == n - 1 or (block[1] and x >= n)]
                    cols = [j for j, x in enumerate(keep.tolist()) if x in set(block[0].tolist())]
                    mask[0, 0, torch.tensor(rows)[:, None], torch.tensor(cols)[None, :]] = torch.finfo(torch.float32).min
                h = layer(h, attention_mask=mask, position_embeddings=(cos, sin), use_cache=False)
                h = m.decoder.after_layer(i, h, keep, enc.extra)  # DeepStack (Qwen3-Omni); else unchanged
            tok = int(m.lm_head_module(llm.norm(h))[0, -1].argmax())
            ids.append(tok)
            new = llm.embed_tokens(torch.tensor([[tok]]))
            embeds = torch.cat([embeds, new], dim=1)
            pos = torch.cat([pos, torch.full((3, 1, 1), int(pos.max()) + 1)], dim=2)
    return ids


@pytest.fixture(scope="module", params=["omni-sdpa", "omni-eager", "salmonn-sdpa", "salmonn-eager", "qwen3-omni-sdpa",
                                        "qwen3-omni-eager"])
def model(request):
    return request.getfixturevalue(
        {"omni-sdpa": "omni", "omni-eager": "omni_eager", "salmonn-sdpa": "salmonn", "salmonn-eager": "salmonn_eager",
         "qwen3-omni-sdpa": "qwen3_omni", "qwen3-omni-eager": "qwen3_omni_eager"}[request.param])


def test_plain_generation_matches_reference(model):
    p = _prepared(model)
    g = model.generate(p, max_new_tokens=5)
    assert list(g.ids) == reference_tokens(model, p, len(g.ids))


@pytest.mark.parametrize("dst,inherit", [("last", False), ("last | generated", True)])
def test_new_tokens_inherit_the_block_when_dst_includes_them(model, dst, inherit):
    p = _prepared(model)
    src = p.tokens.positions("audio | video | question")
    g = model.generate(p, [AttentionKnockout("audio | video | question", dst, [1, 2])], max_new_tokens=5)
    assert list(g.ids) == reference_tokens(model, p, len(g.ids), block=(src, inherit, [1, 2]))


def test_generation_after_a_drop_keeps_a_shorter_cache(model):
    p = _prepared(model)
    dropped = p.tokens.positions("audio | video")
    g = model.generate(p, [TokenDrop("audio | video", after_layer=1)], max_new_tokens=5)
    assert list(g.ids) == reference_tokens(model, p, len(g.ids), drop=(dropped, 1))
    n, new = len(p), len(g.ids) - 1  # the last token is never fed back
    assert g.cache_lengths == (n + new,) * 2 + (n - len(dropped) + new,) * (model.n_layers - 2)
