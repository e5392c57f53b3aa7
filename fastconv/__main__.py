"""`python -m fastconv`: runs two classic convolutional networks end to end on random weights
and prints the configuration, the latency and the throughput (until the benchmark CLI exists).

Networks are written with fastconv.functional: LeNet-5 (32x32x1, batch 64) and the 13
convolutions and 5 pools of VGG-16 (224x224x3, batch 1). Speed does not depend on the weights.
"""
import argparse
import time

import numpy as np

from . import functional as F
from .runtime import show_config

VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def _he(rng, shape):
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def lenet5(rng):
    """Weights and forward function of the common LeNet-5 (conv 6@5x5, pool, conv 16@5x5, pool,
    FC 120, 84, 10), and its multiply-adds per image."""
    w = {"c1": _he(rng, (6, 1, 5, 5)), "c3": _he(rng, (16, 6, 5, 5)), "f5": _he(rng, (120, 400)),
         "f6": _he(rng, (84, 120)), "out": _he(rng, (10, 84))}

    def forward(x):
        x = F.max_pool2d(F.conv2d(x, w["c1"], activation="relu"), 2)
        x = F.max_pool2d(F.conv2d(x, w["c3"], activation="relu"), 2)
        x = F.dense(F.flatten(x), w["f5"], activation="relu")
        x = F.dense(x, w["f6"], activation="relu")
        return F.softmax(F.dense(x, w["out"]))

    macs = 6 * 25 * 28 * 28 + 16 * 150 * 10 * 10 + 400 * 120 + 120 * 84 + 84 * 10
    return forward, macs


def vgg16_features(rng):
    """The convolutional part of VGG-16 (13 3x3 convolutions with ReLU, 5 max pools)."""
    weights, macs, channels, size = [], 0, 3, 224
    for stage in VGG16_STAGES:
        for filters in stage:
            weights.append(_he(rng, (filters, channels, 3, 3)))
            macs += filters * channels * 9 * size * size
            channels = filters
        size //= 2

    def forward(x):
        i = 0
        for stage in VGG16_STAGES:
            for _ in stage:
                x = F.conv2d(x, weights[i], padding=1, activation="relu")
                i += 1
            x = F.max_pool2d(x, 2)
        return x

    return forward, macs


def _time(forward, x, repeats):
    forward(x)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward(x)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastconv", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per network (median)")
    args = parser.parse_args(argv)
    show_config()
    rng = np.random.default_rng(0)
    print(f"\n{'network':<16}{'input':<20}{'median ms':>10}{'images/s':>10}{'GFLOP/s':>9}")
    for name, build, shape in (("LeNet-5", lenet5, (64, 1, 32, 32)),
                               ("VGG-16 convs", vgg16_features, (1, 3, 224, 224))):
        forward, macs = build(rng)
        x = rng.standard_normal(shape).astype(np.float32)
        seconds = _time(forward, x, args.repeats)
        gflops = 2.0 * macs * shape[0] / seconds / 1e9
        print(f"{name:<16}{str(shape):<20}{seconds * 1e3:>10.2f}{shape[0] / seconds:>10.1f}{gflops:>9.1f}")


if __name__ == "__main__":
    main()
