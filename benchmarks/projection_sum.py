"""ResNet-50's projection blocks: conv3 and its downsample shortcut as two layers (the shortcut
stored, then added in conv3's store) against one `_core.ConvSumPlan` (a GEMM over both inputs'
channels), interleaved.

    python benchmarks/projection_sum.py [--threads 1] [--batch 1] [--rounds 15]

Each round runs the two ways in turn (order alternating), each 5 times, the fastest counting;
it prints both medians and the median per-round ratio fused / separate with its quartiles.
CPU time on one thread, wall time on more. Weights are random (the speed does not depend on
them); the two outputs are checked to agree.
"""
import argparse
import time

import numpy as np

import fastconv
from fastconv import _core
from fastconv.functional import PreparedConv2d

# (block, conv3 input channels, block input channels, output channels, output size, stride)
BLOCKS = [("layer1.0", 64, 64, 256, 56, 1), ("layer2.0", 128, 256, 512, 28, 2),
          ("layer3.0", 256, 512, 1024, 14, 2), ("layer4.0", 512, 1024, 2048, 7, 2)]


def block_ways(rng, batch, c3, cd, o, h, s):
    """The two ways of one block as callables, and a check that they agree."""
    def weights(c):
        return (rng.standard_normal((o, c, 1, 1)) * 0.05).astype(np.float32)

    x3 = rng.standard_normal((batch, c3, h, h)).astype(np.float32)
    xd = rng.standard_normal((batch, cd, h * s, h * s)).astype(np.float32)
    w3, wd, bias = weights(c3), weights(cd), rng.standard_normal(o).astype(np.float32)
    shortcut = PreparedConv2d(wd, bias, (cd, h * s, h * s), stride=s)
    conv3 = PreparedConv2d(w3, np.zeros(o, np.float32), (c3, h, h), activation="relu")
    fused = _core.ConvSumPlan(w3, wd, bias, (c3, h, h), (cd, h * s, h * s), s, 1)
    out_separate = np.empty((batch, o, h, h), np.float32)
    out_fused = np.empty_like(out_separate)

    def separate():
        shortcut(xd, out=out_separate)
        conv3(x3, residual=out_separate, out=out_separate)

    def summed():
        fused.run(x3, xd, out_fused)

    separate(), summed()
    np.testing.assert_allclose(out_fused, out_separate, rtol=1e-4, atol=1e-4)
    return separate, summed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    fastconv.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    rng = np.random.default_rng(0)
    print(f"{args.threads} thread(s), batch {args.batch}, {args.rounds} rounds; ms")
    for name, c3, cd, o, h, s in BLOCKS:
        ways = block_ways(rng, args.batch, c3, cd, o, h, s)
        times = [[], []]
        for r in range(args.rounds):
            for i in ((0, 1) if r % 2 == 0 else (1, 0)):
                best = float("inf")
                for _ in range(5):
                    start = clock()
                    ways[i]()
                    best = min(best, clock() - start)
                times[i].append(best * 1e3)
        ratio = np.array(times[1]) / np.array(times[0])
        q1, q2, q3 = np.percentile(ratio, [25, 50, 75])
        print(f"{name}: separate {np.median(times[0]):.3f}, fused {np.median(times[1]):.3f}, "
              f"per round x{q2:.3f} ({q1:.3f}-{q3:.3f})")


if __name__ == "__main__":
    main()
