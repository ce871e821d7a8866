"""`make bench`: every benchmark, printed as medians and ratios measured side by side."""

from benchmarks import attention_memory, discard, overhead, planted_training, remote, sweep
from benchmarks.common import setup_threads

if __name__ == "__main__":
    setup_threads()
    for bench in (overhead, discard, sweep, remote, attention_memory, planted_training):
        bench.main()
