import numpy as np
import pytest

import fastconv.functional as F
from fastconv import _core
import reference as R
from reference import assert_close, rand, scale_of
from threads import results_on_threads

OPS = ["max", "avg_incl", "avg_excl"]


def run_pool(op, x, kernel_size, **kw):
    if op == "max":
        return F.max_pool2d(x, kernel_size, **kw), R.max_pool2d(x, kernel_size, **kw)
    cip = op == "avg_incl"
    return (F.avg_pool2d(x, kernel_size, count_include_pad=cip, **kw),
            R.avg_pool2d(x, kernel_size, count_include_pad=cip, **kw))


def check_pool(op, x, kernel_size, **kw):
    y, ref = run_pool(op, x, kernel_size, **kw)
    kh, kw_ = R.pair(kernel_size)
    assert_close(y, ref, kh * kw_, scale_of(x), err_msg=f"{op} k={kernel_size} {kw}")
    return y


def _window_can_miss_input(kernel, dilation, padding, hw, stride):
    """True if some window may lie entirely in explicit padding (tested separately)."""
    (kh, kw), (dh, dw) = R.pair(kernel), R.pair(dilation)
    s = R.pair(kernel if stride is None else stride)
    pads = R.resolve_padding(padding, hw, (kh, kw), s, (dh, dw))
    return any(max(p) >= d * (k - 1) + 1 for p, k, d in zip(pads, (kh, kw), (dh, dw)))


HW = (7, 8)
GRID = [(k, s, p) for k in (1, 2, 3, (2, 3)) for s in (None, 1, 2, (1, 2), 3)
        for p in (0, 1, (1, 0), ((0, 1), (1, 2)), "valid", "same", "same_lower")
        if not _window_can_miss_input(k, 1, p, HW, s)]     # those: test_window_entirely_in_padding


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("kernel,stride,padding", GRID, ids=str)
def test_pool_vs_reference(rng, kernel, stride, padding, ceil_mode, op):
    x = rand(rng, (2, 3) + HW)
    check_pool(op, x, kernel, stride=stride, padding=padding, ceil_mode=ceil_mode)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("kernel,stride,padding,dilation", [
    (2, 1, 0, 2), (3, 2, 1, 2), ((2, 3), (2, 1), ((1, 2), (0, 2)), (2, 1)), (3, 1, "same", (1, 3)),
    (2, 3, "same_lower", 2), (3, None, 2, 2)], ids=str)
def test_pool_dilation(rng, kernel, stride, padding, dilation, ceil_mode, op):
    x = rand(rng, (1, 4, 11, 12))
    check_pool(op, x, kernel, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("hw,kernel,stride,padding,expected", [
    ((2, 2), 1, 2, 0, (1, 1)),          # last window would start in the (zero) end padding
    ((4, 4), 3, 2, 0, (2, 2)),
    ((5, 5), 2, 2, 0, (3, 3)),          # last window holds one real row/column
    ((6, 6), 3, 2, 1, (4, 4)),          # last window reaches beyond the explicit padding
    ((5, 5), 2, 2, 1, (3, 3)),          # 4th window would start at H + p_begin: dropped
    ((7, 4), 3, 3, 0, (3, 2)),
])
def test_ceil_mode_examples(rng, hw, kernel, stride, padding, expected, op):
    x = rand(rng, (1, 2) + hw)
    y = check_pool(op, x, kernel, stride=stride, padding=padding, ceil_mode=True)
    assert y.shape[2:] == expected


def test_ceil_mode_divisors_by_hand():
    x = np.arange(36, dtype=np.float32).reshape(1, 1, 6, 6)
    # k3 s2 p1 ceil: last window covers rows 5 (real), 6 (padding), 7 (beyond the padding)
    y = F.avg_pool2d(x, 3, stride=2, padding=1, ceil_mode=True, count_include_pad=True)
    assert y.shape == (1, 1, 4, 4)
    np.testing.assert_allclose(y[0, 0, 3, 3], 35.0 / 4, rtol=1e-6)       # 2x2 positions inside padded input
    np.testing.assert_allclose(y[0, 0, 0, 0], (0 + 1 + 6 + 7) / 9, rtol=1e-6)
    y = F.avg_pool2d(x, 3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)
    np.testing.assert_allclose(y[0, 0, 3, 3], 35.0, rtol=1e-6)
    np.testing.assert_allclose(y[0, 0, 0, 0], (0 + 1 + 6 + 7) / 4, rtol=1e-6)
    y = F.max_pool2d(-x, 3, stride=2, padding=1, ceil_mode=True)
    assert y[0, 0, 3, 3] == -35.0 and y[0, 0, 0, 0] == 0.0


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("padding,kernel,stride", [(2, 2, 2), (1, 1, 1), (((3, 0), (0, 2)), 2, 1)], ids=str)
def test_window_entirely_in_padding(rng, padding, kernel, stride, op):
    x = rand(rng, (1, 2, 4, 5))
    y = check_pool(op, x, kernel, stride=stride, padding=padding)
    assert (y == (-np.inf if op == "max" else 0.0)).any()


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("kw", [dict(), dict(stride=1, padding="same"), dict(padding=1, ceil_mode=True, stride=2),
                                dict(dilation=2, padding=((0, 1), (2, 1)))], ids=str)
@pytest.mark.parametrize("C", [1, 3, 8, 16, 35])
def test_channels_last(rng, C, kw, op):
    x = rand(rng, (2, 9, 10, C))
    y_cl = check_pool(op, x, 3, data_format="channels_last", **kw)
    y_cf, _ = run_pool(op, np.ascontiguousarray(x.transpose(0, 3, 1, 2)), 3, **kw)
    assert_close(y_cl, y_cf.transpose(0, 2, 3, 1), 9, scale_of(x))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("hw", [(1, 1), (1, 37), (33, 2), (17, 19), (64, 65)])
def test_pool_sizes(rng, hw, op):
    x = rand(rng, (2, 5) + hw)
    k = (min(2, hw[0]), min(3, hw[1]))
    check_pool(op, x, k, stride=1)
    check_pool(op, x, k, stride=2, ceil_mode=True)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
def test_pool_empty_batch(op, data_format):
    shape = (0, 3, 8, 8) if data_format == "channels_first" else (0, 8, 8, 3)
    y = run_pool(op, np.zeros(shape, np.float32), 2, data_format=data_format)[0]
    assert y.shape == ((0, 3, 4, 4) if data_format == "channels_first" else (0, 4, 4, 3))


def test_pool_views_and_dtypes(rng):
    base = rand(rng, (2, 6, 14, 16))
    x = base[:, ::2, ::-1, ::2]                       # strided and negatively strided
    check_pool("max", x, 3, stride=2, padding=1)
    check_pool("avg_incl", x, 2)
    xi = rng.integers(-5, 6, size=(1, 2, 6, 6))
    y = check_pool("avg_excl", xi, 3, padding=1)
    assert y.dtype == np.float32
    check_pool("max", base.astype(np.float64), (2, 3), stride=(1, 2))


def test_pool_nan_inf_propagation(rng):
    x = rand(rng, (1, 2, 6, 6))
    x[0, 0, 1, 1] = np.nan
    x[0, 1, 4, 4] = np.inf
    x[0, 1, 0, 5] = -np.inf
    for op in OPS:
        y, ref = run_pool(op, x, 2, stride=2)
        assert np.isnan(ref).any()
        assert_close(y, ref, 4, scale_of(x), err_msg=op)


@pytest.mark.parametrize("width", list(range(1, 41)) + [47, 64, 65, 96, 130])
def test_max_pool_2x2_stride_2_rows_read_in_place(rng, width):
    """The 2x2 stride-2 path (rows read in place, vectors of output columns plus a masked or
    scalar tail): every width up to two AVX-512 vectors of outputs and some beyond, odd sizes
    (the last column and row unused), NaN and infinities in every position of a window,
    bit-identical on two threads."""
    x = rand(rng, (2, 3, 5, width))
    x[0, 0, 0, ::3] = np.nan
    x[0, 1, 1, 1::4] = np.nan
    x[1, 2, ::2, ::5] = np.inf
    x[1, 0, 1::2, 2::7] = -np.inf
    expected = R.max_pool2d(x, 2, stride=2) if width >= 2 else None
    if expected is None:
        with pytest.raises(ValueError):
            F.max_pool2d(x, 2, stride=2)
        return
    one, two = results_on_threads(lambda: F.max_pool2d(x, 2, stride=2))
    np.testing.assert_array_equal(one, expected.astype(np.float32))
    np.testing.assert_array_equal(two, one)


def _with_special_values(x):
    """NaN in a corner, at the opposite corner and inside; +inf and -inf scattered; one plane
    all -inf (its output must be -inf, not a padding artefact). Sparse, so most windows stay
    finite and a wrong column or row still shows."""
    h, w = x.shape[2:]
    x[0, 0, 0, w - 1] = np.nan
    x[1, 1, h - 1, 0] = np.nan
    x[0, 2, h // 2, w // 2] = np.nan
    x[1, 2, ::3, ::4] = np.inf
    x[0, 1, :, ::5] = -np.inf
    x[1, 0] = -np.inf
    return x


@pytest.mark.parametrize("width", range(1, 41))
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("stride,padding", [(1, 0), (1, 1), (2, 0), (2, 1), (1, ((0, 2), (1, 0))),
                                            (2, ((1, 0), (0, 2)))], ids=str)
def test_max_pool_3x3_rows_read_in_place(rng, stride, padding, ceil_mode, width):
    """The 3x3 stride-1/2 paths (rows read in place, two output rows per kernel call, masked
    loads at the row edges; at stride 1 with padding 1 on small planes, each plane as one flat
    run): every width from 1 to 40 (under, at and over the 4, 8 and 16 lanes), heights giving odd
    and even output row counts, and one past the flat kernel's plane size, padding before and
    after, ceil mode, NaN and infinities, batch 2; equal to the float64 reference and
    bit-identical on two threads."""
    for height in (1, 2, 3, 4, 5, 8, 1 + 1024 // width):
        try:
            g = F._PoolGeometry("test", (height, width), 3, stride, padding, 1, ceil_mode)
        except ValueError:  # the window does not fit the padded plane
            continue
        kernel = _core.pool2d_kernel(True, g.kernel, g.stride, g.dilation, g.pads, (height, width),
                                     g.out_hw)
        assert kernel in {1: ("maxpool3x3s1", "maxpool3x3s1_flat"), 2: ("maxpool3x3s2",)}[stride]
        x = _with_special_values(rand(rng, (2, 3, height, width)))
        expected = R.max_pool2d(x, 3, stride=stride, padding=padding, ceil_mode=ceil_mode)
        one, two = results_on_threads(
            lambda: F.max_pool2d(x, 3, stride=stride, padding=padding, ceil_mode=ceil_mode))
        np.testing.assert_array_equal(one, expected.astype(np.float32),
                                      err_msg=f"height {height}")
        np.testing.assert_array_equal(two, one)


@pytest.mark.parametrize("hw,stride,padding,kernel", [
    ((14, 14), 1, 1, "maxpool3x3s1_flat"), ((32, 32), 1, 1, "maxpool3x3s1_flat"),
    ((33, 32), 1, 1, "maxpool3x3s1"), ((14, 14), 1, ((1, 1), (0, 1)), "maxpool3x3s1"),
    ((14, 14), 2, 1, "maxpool3x3s2"), ((14, 14), 1, 2, "wmax"), ((14, 14), 3, 1, "wmax")], ids=str)
def test_max_pool_3x3_kernel_choice(hw, stride, padding, kernel):
    """Which 3x3 kernel a geometry takes: flat runs only for stride 1, padding 1 all round and
    planes of at most 1024 floats; the general window kernel beyond stride 2 or padding 1."""
    g = F._PoolGeometry("test", hw, 3, stride, padding, 1, False)
    assert _core.pool2d_kernel(True, g.kernel, g.stride, g.dilation, g.pads, hw, g.out_hw) == kernel


# --------------------------------------------------------------------------- global pools

@pytest.mark.parametrize("keepdims", [True, False])
@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (1, 35, 1, 1), (3, 16, 13, 1), (1, 1, 64, 65), (0, 4, 5, 5)],
                         ids=str)
def test_global_pools(rng, shape, data_format, keepdims):
    if data_format == "channels_last":
        shape = (shape[0], shape[2], shape[3], shape[1])
    x = rand(rng, shape, -3, 3)
    n = shape[0]
    c = shape[1] if data_format == "channels_first" else shape[3]
    if keepdims:
        expected = (n, c, 1, 1) if data_format == "channels_first" else (n, 1, 1, c)
    else:
        expected = (n, c)
    hw = shape[2] * shape[3] if data_format == "channels_first" else shape[1] * shape[2]
    for fn, ref_fn in [(F.global_avg_pool2d, R.global_avg_pool2d), (F.global_max_pool2d, R.global_max_pool2d)]:
        y = fn(x, data_format=data_format, keepdims=keepdims)
        assert y.shape == expected
        if n:
            assert_close(y, ref_fn(x, data_format=data_format, keepdims=keepdims), hw, scale_of(x))


def test_global_pools_default_keepdims(rng):
    x = rand(rng, (2, 3, 4, 5))
    assert F.global_avg_pool2d(x).shape == (2, 3, 1, 1)
    assert F.global_max_pool2d(x).shape == (2, 3, 1, 1)
    assert F.global_max_pool2d(np.ascontiguousarray(x.transpose(0, 2, 3, 1)),
                               data_format="channels_last").shape == (2, 1, 1, 3)
