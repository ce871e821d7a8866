"""Tracing overhead: `m.run` with a few saves vs the plain transformers forward, 2,000 tokens.

Both start from the cached encoder output (inputs_embeds + 3-D position ids) and unembed
the last position only (as flows do; `benchmarks.common.plain_forward`).
"""

from __future__ import annotations

from avmech import Capture, LogitLens
from benchmarks.common import bench_model, plain_forward, prepared, row, timed


def main() -> None:
    m = bench_model()
    p = prepared(20)
    enc = m.encode(p)
    mask = p.inputs["attention_mask"]

    def plain():
        return plain_forward(m, enc.inputs_embeds, enc.position_ids, mask)

    saves = [Capture("resid_post.3", "last"), Capture("attn_out.6", "question"), LogitLens(layers=[11])]
    plain_s = timed(plain, repeats=7)
    bare_s = timed(lambda: m.run(p), repeats=7)
    traced_s = timed(lambda: m.run(p, saves), repeats=7)
    plain2_s = timed(plain, repeats=7)
    ref = (plain_s + plain2_s) / 2
    print(f"\n## Tracing overhead, bench-omni, {len(p)} tokens")
    print(row("plain s", "run s", "run+saves s", "overhead", "with saves"))
    print(row(ref, bare_s, traced_s, bare_s / ref - 1, traced_s / ref - 1))


if __name__ == "__main__":
    main()
