"""How well fastconv and ONNX Runtime each use a second core, measured side by side.

    python benchmarks/thread_scaling.py resnet50 [--batch 8] [--rounds 10]

Each round runs fastconv and ONNX Runtime (a torch.onnx export, as compare_models.py makes it)
on one thread and on two, in an order that reverses every round, each the fastest of `--repeats`
runs by the wall clock after one untimed run, once the outputs were validated against each
other. Per backend it prints the median times and the median over the rounds of the scaling
(one-thread time over two-thread time, 2.0 at best) with its quartiles: within a round both
thread counts met the same phase of a shared machine, which two separate grid cells minutes
apart do not. Needs torch, torchvision and onnxruntime.
"""
import argparse
import sys
import tempfile
import time

import numpy as np

from fastconv import cli_bench
from ort_profile import onnx_backends

BACKENDS = ("fastconv", "onnxruntime")


def fastest(run, threads, repeats):
    """The best wall-clock seconds of `repeats` runs of run(threads), after an untimed one."""
    run(threads)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run(threads)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("network", help="zoo name, e.g. resnet50")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs per turn (the fastest counts)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        backends = onnx_backends(args.network, args.batch, tmp, "thread_scaling.py")
        cli_bench.validate(backends, 1)  # the outputs agree before anything is timed
        runners = backends.runners
        turns = [(name, threads) for name in BACKENDS for threads in (1, 2)]
        seconds = {turn: [] for turn in turns}
        for r in range(args.rounds):
            for name, threads in turns if r % 2 == 0 else reversed(turns):
                seconds[(name, threads)].append(fastest(runners[name], threads, args.repeats))
    for name in BACKENDS:
        one, two = np.array(seconds[(name, 1)]) * 1e3, np.array(seconds[(name, 2)]) * 1e3
        q1, q2, q3 = np.quantile(one / two, [0.25, 0.5, 0.75])
        print(f"{name:<12} 1 thread {np.median(one):9.2f} ms, 2 threads {np.median(two):9.2f} ms, "
              f"scaling {q2:.2f} (quartiles {q1:.2f}-{q3:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
