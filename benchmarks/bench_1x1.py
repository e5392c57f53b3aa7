"""Every distinct stride-1 1x1 convolution of ResNet-50, GoogLeNet and MobileNetV2 on the GEMM
algorithm (what model plans run them with), one thread, median CPU time of the calling thread.

    python benchmarks/bench_1x1.py [--rounds 9]

Prints, per shape, the first layer that has it, C, H x W, O, milliseconds and GFLOP/s, then the
summed time. Shapes come from the zoo models themselves (MobileNetV2 is not in shapes.py).
"""
import argparse
import time

import numpy as np

import fastconv
from fastconv import functional as F


def shapes():
    """(first layer name, (C, H, W, O)) for every distinct stride-1 1x1 convolution."""
    seen = {}
    for net in ("resnet50", "googlenet", "mobilenet_v2"):
        for layer in getattr(fastconv.models, net)().layers:
            if type(layer).__name__ != "Conv2D":
                continue
            cfg = layer.get_config()
            if tuple(cfg["kernel_size"]) != (1, 1) or tuple(cfg["strides"]) != (1, 1):
                continue
            o, h, w = layer.output.sample_shape
            seen.setdefault((layer.get_weights()[0].shape[1], h, w, o), f"{net}:{layer.name}")
    return [(name, key) for key, name in seen.items()]


def median_ms(fn, rounds):
    fn()
    times = []
    for _ in range(rounds):
        start = time.thread_time()
        fn()
        times.append(time.thread_time() - start)
    return float(np.median(times)) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    fastconv.set_num_threads(1)
    rng = np.random.default_rng(0)
    total = 0.0
    for name, (c, h, w, o) in shapes():
        x = rng.standard_normal((1, c, h, w)).astype(np.float32)
        weight = rng.standard_normal((o, c, 1, 1)).astype(np.float32)
        conv = F.PreparedConv2d(weight, rng.standard_normal(o).astype(np.float32), (c, h, w),
                                activation="relu", algorithm="gemm")
        reps = max(1, int(2e7 / (o * c * h * w)))  # calls per timing: at least ~1 ms of work
        ms = median_ms(lambda: [conv(x) for _ in range(reps)], args.rounds) / reps
        total += ms
        print(f"{name:42s} C={c:5d} HW={h:3d}x{w:<3d} O={o:5d} {ms:8.3f} ms "
              f"{2e-6 * o * c * h * w / ms:6.1f} GF/s", flush=True)
    print(f"sum {total:.2f} ms")


if __name__ == "__main__":
    main()
