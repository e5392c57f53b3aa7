import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastconv
import fastconv.functional as F
import reference as R
from fastconv.runtime import isa_cap
from reference import assert_close, rand, scale_of

LEVELS = ["scalar", "avx2", "avx512"]


def expected_isa(cap):
    detected = fastconv.show_config(mode="dicts")["isa_detected"]
    assert detected in LEVELS
    return LEVELS[min(LEVELS.index(cap), LEVELS.index(detected))]


@pytest.mark.parametrize("name", LEVELS)
def test_isa_cap_reported(name):
    before = fastconv.show_config(mode="dicts")
    with isa_cap(name):
        cfg = fastconv.show_config(mode="dicts")
        assert cfg["isa"] == expected_isa(name)
        assert LEVELS.index(cfg["isa"]) <= LEVELS.index(cfg["isa_detected"])
        assert cfg["isa_detected"] == before["isa_detected"]
    assert fastconv.show_config(mode="dicts")["isa"] == before["isa"]


def test_isa_cap_selects_different_kernels():
    kernels = {}
    for name in LEVELS:
        with isa_cap(name):
            kernels[expected_isa(name)] = fastconv.show_config(mode="dicts")["kernels"]["gemm"]
    assert len(set(kernels.values())) == len(kernels), kernels


def test_isa_cap_unknown_name():
    with pytest.raises(ValueError, match="bogus"):
        with isa_cap("bogus"):
            pass


def test_isa_cap_nested_restores():
    before = fastconv.show_config(mode="dicts")["isa"]
    with isa_cap("avx2"):
        with isa_cap("scalar"):
            assert fastconv.show_config(mode="dicts")["isa"] == "scalar"
        assert fastconv.show_config(mode="dicts")["isa"] == expected_isa("avx2")
    assert fastconv.show_config(mode="dicts")["isa"] == before


GEMM_SHAPES = [(1, 1, 1), (4, 8, 7), (6, 16, 256), (8, 32, 257), (13, 37, 300), (5, 1030, 31), (33, 17, 513)]
CONV_CASES = [((2, 3, 13, 17), (5, 3, 3, 3), dict(padding=1)),
              ((1, 8, 9, 10), (12, 4, 3, 2), dict(stride=(2, 1), padding="same_lower", groups=2)),
              ((2, 6, 11, 11), (6, 1, 5, 5), dict(padding=2, groups=6, dilation=(1, 2))),
              ((1, 37, 7, 9), (33, 37, 1, 1), dict()),
              ((1, 130, 6, 6), (9, 130, 3, 3), dict(stride=2, padding="same"))]


@pytest.mark.parametrize("name", LEVELS)
def test_gemm_under_cap(rng, name):
    with isa_cap(name):
        for m, n, k in GEMM_SHAPES:
            a, b = rand(rng, (m, k), -2, 2), rand(rng, (k, n), -2, 2)
            bias = rand(rng, (n,))
            for act in ("relu6", "sigmoid", None):
                assert_close(F.gemm(a, b, bias, act), R.gemm(a, b, bias, act), k + 1, scale_of(a, b) + 1,
                             err_msg=f"isa={name} {m}x{n}x{k} {act}")


@pytest.mark.parametrize("algorithm", ["im2col", "implicit", "direct", "auto"])
@pytest.mark.parametrize("name", LEVELS)
def test_conv2d_under_cap(rng, name, algorithm):
    with isa_cap(name):
        for xs, ws, kw in CONV_CASES:
            x, w, b = rand(rng, xs), rand(rng, ws), rand(rng, (ws[0],))
            for data_format in ("channels_first", "channels_last"):
                xx, ww = x, w
                if data_format == "channels_last":
                    xx, ww = x.transpose(0, 2, 3, 1), w.transpose(2, 3, 1, 0)
                y = F.conv2d(xx, ww, b, algorithm=algorithm, activation="tanh", data_format=data_format, **kw)
                ref = R.conv2d(xx, ww, b, activation="tanh", data_format=data_format, **kw)
                assert_close(y, ref, w[0].size + 1, scale_of(x, w) + 1, err_msg=f"isa={name} {xs} {ws} {kw}")
        w1 = rand(rng, (33, 37, 1, 1))
        x1 = rand(rng, (1, 37, 7, 9))
        assert_close(F.conv2d(x1, w1, algorithm="gemm"), R.conv2d(x1, w1), 37, scale_of(x1, w1))


@pytest.mark.parametrize("name", LEVELS)
def test_pools_lrn_elementwise_under_cap(rng, name):
    with isa_cap(name):
        for shape in [(2, 3, 7, 9), (1, 35, 6, 5), (1, 17, 33, 34)]:
            x = rand(rng, shape, -3, 3)
            for kw in (dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), dict(kernel_size=2),
                       dict(kernel_size=(2, 3), stride=1, padding="same", dilation=(2, 1))):
                assert_close(F.max_pool2d(x, **kw), R.max_pool2d(x, **kw), 9, scale_of(x))
                for cip in (True, False):
                    assert_close(F.avg_pool2d(x, count_include_pad=cip, **kw),
                                 R.avg_pool2d(x, count_include_pad=cip, **kw), 9, scale_of(x))
            xl = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
            assert_close(F.max_pool2d(xl, 3, 2, data_format="channels_last"),
                         R.max_pool2d(xl, 3, 2, data_format="channels_last"), 9, scale_of(x))
            assert_close(F.global_avg_pool2d(x), R.global_avg_pool2d(x), shape[2] * shape[3], scale_of(x))
            assert_close(F.global_max_pool2d(x), R.global_max_pool2d(x), 1, scale_of(x))
            for size in (2, 5):
                assert_close(F.lrn(x, size, alpha=0.1), R.lrn(x, size, alpha=0.1), size, 1.0)
            assert_close(F.lrn(xl, 3, data_format="channels_last"), R.lrn(xl, 3, data_format="channels_last"),
                         3, 1.0)
            for fn in ("relu", "relu6", "tanh", "sigmoid"):
                assert_close(getattr(F, fn)(x * 3), getattr(R, fn)(x * 3), 1, 1.0, rtol=2e-6)
            assert_close(F.softmax(x, axis=1), R.softmax(x, axis=1), shape[1], 1.0, rtol=2e-5)
            assert_close(F.add(x, x[:, :1], "relu"), R.add(x, x[:, :1], "relu"), 1, 3.0)


# --------------------------------------------------------------------------- environment variable

SCRIPT = """
import json, numpy as np, fastconv, fastconv.functional as F
rng = np.random.default_rng(7)
x = rng.uniform(-1, 1, (1, 5, 11, 13)).astype(np.float32)
w = rng.uniform(-1, 1, (7, 5, 3, 3)).astype(np.float32)
y = F.conv2d(x, w, padding=1, algorithm="im2col")
y2 = F.gemm(x[0, 0], x[0, 1].T)
cfg = fastconv.show_config(mode="dicts")
print(json.dumps({"isa": cfg["isa"], "isa_cap": cfg["isa_cap"], "y": y.tolist(), "y2": y2.tolist()}))
"""


def _run(env_value, code, *extra):
    env = dict(os.environ, FASTCONV_ISA=env_value)
    return subprocess.run([sys.executable, *extra, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)


def test_env_cap_scalar_subprocess():
    proc = _run("scalar", SCRIPT)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["isa"] == "scalar"
    rng = np.random.default_rng(7)
    x = rng.uniform(-1, 1, (1, 5, 11, 13)).astype(np.float32)
    w = rng.uniform(-1, 1, (7, 5, 3, 3)).astype(np.float32)
    assert_close(np.array(out["y"], np.float32), R.conv2d(x, w, padding=1), 45, scale_of(x, w))
    assert_close(np.array(out["y2"], np.float32), R.gemm(x[0, 0], x[0, 1].T), 13, scale_of(x, x))


@pytest.mark.parametrize("value", ["avx2", "avx512"])
def test_env_cap_levels_subprocess(value):
    proc = _run(value, "import fastconv; print(fastconv.show_config(mode='dicts')['isa'])")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == expected_isa(value)


def test_env_cap_bogus_is_reported():
    proc = _run("bogus", "import fastconv; print('ISA', fastconv.show_config(mode='dicts')['isa'])",
                "-W", "always")
    if proc.returncode != 0:
        assert "FASTCONV_ISA" in proc.stderr, proc.stderr
    else:
        assert "FASTCONV_ISA" in proc.stderr, f"no error and no warning naming FASTCONV_ISA: {proc.stderr!r}"
