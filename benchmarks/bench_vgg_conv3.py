"""Time fastconv.functional.conv2d against torch.nn.functional.conv2d on VGG-16 conv3.

Shape: input 1x256x56x56, 256 output channels, 3x3 kernel, padding 1, stride 1 (1.85 GMAC).
Both libraries run at the same thread count. The outputs are checked to agree first; then both
are warmed up and timed in interleaved rounds (the order alternates each round).

    python benchmarks/bench_vgg_conv3.py [--threads N] [--algorithm auto|implicit|im2col|winograd|direct]
"""

import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as TF

import fastconv
from fastconv import functional as F

N, C, H, W, O, KH, KW = 1, 256, 56, 56, 256, 3, 3
MACS = N * O * H * W * C * KH * KW  # stride 1, "same" padding: output is H x W


def default_threads():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--algorithm", choices=("auto", "implicit", "im2col", "winograd", "direct"), default="auto")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    fastconv.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, W), dtype=np.float32)
    w = (rng.standard_normal((O, C, KH, KW)) / np.sqrt(C * KH * KW)).astype(np.float32)
    b = rng.standard_normal(O, dtype=np.float32)
    xt, wt, bt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)

    def run_fastconv():
        return F.conv2d(x, w, b, padding=1, algorithm=args.algorithm)

    def run_torch():
        with torch.inference_mode():
            return TF.conv2d(xt, wt, bt, padding=1)

    # Validate: both against a float64 evaluation, then against each other.
    with torch.inference_mode():
        exact = TF.conv2d(xt.double(), wt.double(), bt.double(), padding=1).numpy()
    ours, theirs = run_fastconv(), run_torch().numpy()
    for label, y in (("fastconv", ours), ("torch", theirs)):
        err = float(np.max(np.abs(y - exact)))
        print(f"max |{label} - float64 reference| = {err:.2e}")
    if ours.shape != theirs.shape or not np.allclose(ours, theirs, rtol=1e-4, atol=1e-4):
        print("ERROR: fastconv and torch outputs disagree", file=sys.stderr)
        return 1

    for _ in range(args.warmup):
        run_fastconv()
        run_torch()

    times = {"fastconv": [], "torch": []}
    runners = [("fastconv", run_fastconv), ("torch", run_torch)]
    for r in range(args.rounds):
        for label, fn in (runners if r % 2 == 0 else runners[::-1]):
            t0 = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - t0)

    config = fastconv.show_config(mode="dicts")
    print(f"VGG-16 conv3: {N}x{C}x{H}x{W} -> {O}, {KH}x{KW}, pad 1, stride 1, "
          f"{MACS / 1e9:.2f} GMAC")
    print(f"fastconv isa={config['isa']!r} threads={fastconv.get_num_threads()} "
          f"algorithm={args.algorithm}; torch {torch.__version__} threads={torch.get_num_threads()}")
    print(f"{args.rounds} interleaved rounds after {args.warmup} warm-up calls each\n")
    print(f"{'':10s} {'median ms':>10s} {'p90 ms':>10s} {'GFLOP/s':>10s}")
    median = {}
    for label, ts in times.items():
        ms = np.array(ts) * 1e3
        median[label] = float(np.median(ms))
        gflops = 2 * MACS / (median[label] * 1e-3) / 1e9
        print(f"{label:10s} {median[label]:10.2f} {np.percentile(ms, 90):10.2f} {gflops:10.1f}")
    print(f"\ntorch_time / fastconv_time (medians) = {median['torch'] / median['fastconv']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
