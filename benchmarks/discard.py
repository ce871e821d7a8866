"""Token discarding: measured prefill time ratio vs the FLOP model's ratio.

Audio and video are dropped after layer L for L at 25%, 50% and 75% of depth; the full
prefill and the discarded one are timed side by side (encoders cached, LLM only).
"""

from __future__ import annotations

from avmech import TokenDrop
from avmech.flops import prefill_flops
from avmech.interventions.run import prepare_interventions
from benchmarks.common import bench_model, prepared, row, timed


def main() -> None:
    m = bench_model()
    p = prepared(20)
    n = len(p)
    full_s = timed(lambda: m.run(p), repeats=5)
    full_flops = prefill_flops(m, [n] * m.n_layers)
    print(f"\n## Token discarding (audio + video), bench-omni, {n} tokens")
    print(row("after L", "depth", "full s", "drop s", "measured", "FLOP model", "error"))
    for frac in (0.25, 0.5, 0.75):
        after = round(frac * m.n_layers) - 1
        drop = [TokenDrop("audio | video", after)]
        drop_s = timed(lambda: m.run(p, drop), repeats=5)
        full_again = timed(lambda: m.run(p), repeats=5)  # side by side: drift hits both
        _, ctx = prepare_interventions(m, p, drop)
        predicted = prefill_flops(m, [len(ctx.alive(layer)) for layer in range(m.n_layers)]) / full_flops
        measured = drop_s / ((full_s + full_again) / 2)
        print(row(after, frac, full_again, drop_s, measured, predicted, measured / predicted - 1))


if __name__ == "__main__":
    main()
