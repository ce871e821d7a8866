"""Knockout sweep: affected-region engine vs one full forward per condition.

The study's edges (audio/video -> question, audio/video/question -> last) over windows of
k = 7 layers centred on every layer. A naive condition is exactly one full forward of the
LLM (encoders cached), so its cost is measured as the median full forward times the number
of conditions; the engine's whole `run_many` (clean pass included) is timed. The FLOP
lower bound is the clean pass plus every condition's affected region, converted to time
at the full forward's measured FLOP rate.
"""

from __future__ import annotations

from avmech import AttentionKnockout, metrics
from avmech.flops import prefill_flops, region_flops
from avmech.flows.common import windows
from avmech.interventions.base import RunContext
from avmech.interventions.region import region_of
from benchmarks.common import av_fraction, bench_model, prepared, row, timed

EDGES = [("audio", "question"), ("video", "question"), ("audio", "last"), ("video", "last"), ("question", "last")]


def conditions(m):
    return [[AttentionKnockout(src, dst, w.layers)] for src, dst in EDGES for w in windows(m.n_layers, 7)]


def bench(seconds: float, check: bool) -> dict:
    m = bench_model()
    p = prepared(seconds)
    conds = conditions(m)
    full_s = timed(lambda: m.run(p), repeats=3)
    engine_s = timed(lambda: m.run_many(p, conds), repeats=1)
    n = len(p)
    full_flops = prefill_flops(m, [n] * m.n_layers)
    ctx = RunContext(m, p)
    region = full_flops + sum(region_flops(m, n, *region_of(c, ctx)) for c in conds)
    bound_s = full_s * region / full_flops
    out = {"tokens": n, "av": av_fraction(p), "conditions": len(conds), "full_s": full_s,
           "naive_s": full_s * len(conds), "engine_s": engine_s, "bound_s": bound_s}
    if check:  # identical dp on every condition, against real full passes
        base = m.run(p)
        fast = m.run_many(p, conds)
        out["max_dp_diff"] = max(
            abs(metrics.dp(f, base) - metrics.dp(m.run(p, c), base)) for f, c in zip(fast, conds)
        )
    return out


def main() -> None:
    print("\n## Knockout sweep (5 edges x windows of k=7 centred on every layer), bench-omni")
    print(row("tokens", "AV frac", "conds", "naive s", "engine s", "speed-up", "bound s", "vs bound", "max|ddp|"))
    for seconds, check in ((10, False), (20, True), (40, False)):
        r = bench(seconds, check)
        print(row(r["tokens"], r["av"], r["conditions"], r["naive_s"], r["engine_s"], r["naive_s"] / r["engine_s"],
                  r["bound_s"], r["engine_s"] / r["bound_s"],
                  f"{r['max_dp_diff']:.1e}" if "max_dp_diff" in r else "-"))


if __name__ == "__main__":
    main()
