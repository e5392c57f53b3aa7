"""Every convolution algorithm on every distinct layer shape of the five networks, side by side:
what the "auto" heuristic in fastconv/functional.py (_conv_algorithm) is based on.

    python benchmarks/compare_algorithms.py [--threads 1] [--rounds 7] [--filter resnet]

Prints, per shape, the median milliseconds and GFLOP/s of each algorithm that can run it
(implicit GEMM, im2col, Winograd F(2x2) and F(4x4) for stride 1 and kernels of 3x3 or more,
direct for thin groups) and the fastest.
On one thread the times are CPU time of the calling thread, which other processes on a shared
machine barely disturb; on more threads they are wall-clock time.
"""
import argparse
import time

import numpy as np

import fastconv
from fastconv import functional as F
from shapes import conv_shapes


def algorithms(shape):
    names = ["implicit", "im2col"]
    if min(shape["k"]) >= 3 and shape["stride"] == (1, 1) and shape["dilation"] == (1, 1) \
            and shape["groups"] == 1:
        names += ["winograd", "winograd4"]
    if shape["o"] // shape["groups"] < 8:
        names = ["direct"] + names
    return names


def median_ms(fn, rounds, clock):
    fn()
    times = []
    for _ in range(rounds):
        start = clock()
        fn()
        times.append(clock() - start)
    return float(np.median(times)) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--filter", default="", help="only layer names containing this")
    args = parser.parse_args()
    fastconv.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    rng = np.random.default_rng(0)
    for name, s in conv_shapes():
        if args.filter not in name:
            continue
        x = rng.standard_normal((1, s["c"], s["h"], s["w"])).astype(np.float32)
        w = rng.standard_normal((s["o"], s["c"] // s["groups"]) + s["k"]).astype(np.float32)
        cells = {}
        for algorithm in algorithms(s):
            conv = F.PreparedConv2d(w, None, x.shape[1:], s["stride"], s["padding"], s["dilation"],
                                    s["groups"], "relu", algorithm=algorithm)
            cells[algorithm] = median_ms(lambda: conv(x), args.rounds, clock)
        out = conv.output_shape[1:]
        gflop = 2e-9 * s["o"] * out[0] * out[1] * (s["c"] // s["groups"]) * s["k"][0] * s["k"][1]
        row = "  ".join(f"{a} {ms:7.3f} ms {gflop / ms * 1e3:4.0f} GF/s" for a, ms in cells.items())
        print(f"{name:32s} {row}   best: {min(cells, key=cells.get)}")


if __name__ == "__main__":
    main()
