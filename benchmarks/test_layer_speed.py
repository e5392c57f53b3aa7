"""pytest-benchmark suite: the GEMM, and every distinct convolution and pooling layer of
AlexNet, VGG-16/19, GoogLeNet and ResNet-50 at batch 1, each validated before it is timed
(convolutions against torch in float64, then timed with their weights packed once).

    python -m pytest benchmarks/test_layer_speed.py -q --benchmark-columns=median,ops
    FASTCONV_ISA=avx2 python -m pytest benchmarks/test_layer_speed.py -k gemm
"""
import numpy as np
import pytest

import fastconv.functional as F
from conftest import RESULTS
from shapes import conv_macs, conv_shapes, pool_shapes

RNG = np.random.default_rng(0)


def record(benchmark, name, flops, peak):
    gflops = flops / benchmark.stats.stats.median / 1e9
    benchmark.extra_info.update(gflops=gflops, percent_of_peak=100 * gflops / peak)
    RESULTS.append((name, gflops, peak))


@pytest.mark.parametrize("n", [256, 512, 1024, 2048])
def test_gemm(benchmark, peak_gflops, n):
    a = RNG.standard_normal((n, n)).astype(np.float32)
    np.testing.assert_allclose(F.gemm(a, a), a.astype(np.float64) @ a, rtol=1e-3, atol=1e-3 * n)
    benchmark(F.gemm, a, a)
    record(benchmark, f"gemm {n}^3", 2.0 * n ** 3, peak_gflops)


CONVS = conv_shapes()


@pytest.mark.parametrize("name,shape", CONVS, ids=[n for n, _ in CONVS])
def test_conv(benchmark, peak_gflops, name, shape):
    torch = pytest.importorskip("torch")
    s = shape
    x = RNG.standard_normal((1, s["c"], s["h"], s["w"])).astype(np.float32)
    w = (RNG.standard_normal((s["o"], s["c"] // s["groups"]) + s["k"]) * 0.1).astype(np.float32)
    args = dict(stride=s["stride"], padding=s["padding"], dilation=s["dilation"], groups=s["groups"])
    y = F.conv2d(x, w, **args)
    (top, bottom), (left, right) = s["padding"]
    xt = torch.nn.functional.pad(torch.from_numpy(x).double(), (left, right, top, bottom))
    expected = torch.nn.functional.conv2d(xt, torch.from_numpy(w).double(), stride=s["stride"],
                                          dilation=s["dilation"], groups=s["groups"]).numpy()
    assert np.abs(y - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())
    # Timed as a model runs it: weights packed once, outside the timing.
    prepared = F.PreparedConv2d(w, None, x.shape[1:], **args)
    assert np.array_equal(prepared(x), y)
    out = np.empty_like(y)
    benchmark(prepared, x, out=out)
    record(benchmark, name, 2.0 * conv_macs(s, y.shape[2:]), peak_gflops)


POOLS = pool_shapes()


@pytest.mark.parametrize("name,shape", POOLS, ids=[n for n, _ in POOLS])
def test_pool(benchmark, peak_gflops, name, shape):
    s = shape
    x = RNG.standard_normal((1, s["c"], s["h"], s["w"])).astype(np.float32)
    op = F.max_pool2d if s["kind"] == "max" else F.avg_pool2d
    ceil = F.pool_output_size(s["h"], s["k"][0], s["stride"][0], s["padding"][0]) != s["out"][0]
    y = op(x, s["k"], s["stride"], s["padding"], ceil_mode=ceil)
    assert y.shape[2:] == tuple(s["out"])
    benchmark(op, x, s["k"], s["stride"], s["padding"], ceil_mode=ceil)
    record(benchmark, name, float(y.size * s["k"][0] * s["k"][1]), peak_gflops)
