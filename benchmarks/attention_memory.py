"""AttentionRead of the last row at 16,000 tokens: peak memory vs the plain forward.

Each variant runs in its own process, on the same synthetic 16,000-token LLM input of the
bench model (random embeddings with 3-D positions: the encoders are not what is
measured). The measure is the growth of peak resident memory (Linux ``VmHWM``, reset
after loading through ``/proc/self/clear_refs``) over the resident memory before the run.
"""

from __future__ import annotations

from pathlib import Path
import subprocess
import sys

N = 16_000


def _child(variant: str) -> None:
    import torch

    import avmech
    from avmech import AttentionRead
    from avmech.prepared import Encoded, Prepared
    from avmech.tokens import TokenMapBuilder
    from benchmarks.common import bench_model, plain_forward

    m = bench_model()
    b = TokenMapBuilder()
    b.add(N - 1, "audio")
    b.add(1, "last")
    tokens = b.build(answer=None, n_options=0)
    pos = torch.arange(N).view(1, 1, -1).expand(3, 1, -1)
    ids = torch.zeros(1, N, dtype=torch.long)
    p = Prepared(avmech.AVSample(question="memory"), {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                                                       "position_ids": pos}, tokens, (), "")
    torch.manual_seed(0)
    p._cache["encoded"] = Encoded(torch.randn(1, N, m.d_model) * 0.02, pos)
    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak to the current RSS
    if variant == "plain":
        plain_forward(m, p._cache["encoded"].inputs_embeds, pos)
    elif variant == "run":
        m.run(p)
    else:
        m.run(p, [AttentionRead(layers="all", queries="last", keys_by_group=("audio",))])
    print(f"{before} {_status('VmHWM')}")


def _status(key: str) -> int:
    """A /proc/self/status field in kB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def main() -> None:
    peaks = {}
    for variant in ("plain", "run", "read"):
        out = subprocess.run([sys.executable, "-m", "benchmarks.attention_memory", variant],
                             capture_output=True, text=True, check=True).stdout.split()
        peaks[variant] = (int(out[0]), int(out[1]))
    plain = peaks["plain"][1] - peaks["plain"][0]
    bare = peaks["run"][1] - peaks["run"][0]
    read = peaks["read"][1] - peaks["read"][0]
    print(f"\n## AttentionRead memory, last row of {N} tokens, bench-omni (peak RSS growth over the loaded model)")
    print(f"plain forward: {plain / 1024:.0f} MB, traced run: {bare / 1024:.0f} MB, "
          f"run + AttentionRead(all layers): {read / 1024:.0f} MB, ratio to plain {read / plain:.2f}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        _child(sys.argv[1])
    else:
        main()
