import numpy as np
import pytest

import fastconv.functional as F
import reference as R
from reference import ACTIVATIONS, assert_close, rand, scale_of

SHAPES = [(1,), (7,), (3, 5), (2, 3, 4), (2, 17, 5, 7), (1, 1, 1, 1), (4, 1, 33, 2), (2, 3, 2, 2, 2), (0, 3)]


# --------------------------------------------------------------------------- activations

@pytest.mark.parametrize("name", ["relu", "relu6", "tanh", "sigmoid"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_activation_functions(rng, name, shape):
    x = rand(rng, shape, -10, 10)
    y = getattr(F, name)(x)
    assert_close(y, getattr(R, name)(x), 1, 1.0, rtol=2e-6)


@pytest.mark.parametrize("name", ["relu", "relu6", "tanh", "sigmoid"])
def test_activation_special_values(name):
    x = np.array([0.0, -0.0, 6.0, 5.999, 6.001, -1e30, 1e30, 88.0, -88.0, 100.0, -100.0, 1e-30, -1e-30,
                  np.inf, -np.inf], dtype=np.float32)
    y = getattr(F, name)(x)
    assert_close(y, getattr(R, name)(x), 1, 1.0, rtol=2e-6)


@pytest.mark.parametrize("name", ["relu", "relu6", "tanh", "sigmoid"])
def test_activation_nan_propagates(name):
    x = np.array([1.0, np.nan, -1.0, np.nan, 7.0] * 7, dtype=np.float32)
    y = getattr(F, name)(x)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(x))


@pytest.mark.parametrize("name", ["relu", "relu6", "tanh", "sigmoid"])
def test_activation_views_dtypes_fresh(rng, name):
    base = rand(rng, (6, 40), -8, 8)
    x = base[::-2, ::3]
    y = getattr(F, name)(x)
    assert_close(y, getattr(R, name)(x), 1, 1.0, rtol=2e-6)
    xi = np.arange(-9, 10).reshape(1, 19)
    assert_close(getattr(F, name)(xi), getattr(R, name)(xi), 1, 1.0, rtol=2e-6)
    before = base.copy()
    y = getattr(F, name)(base)
    assert not np.shares_memory(y, base)
    np.testing.assert_array_equal(base, before)


# --------------------------------------------------------------------------- softmax

@pytest.mark.parametrize("shape,axis", [((7,), 0), ((7,), -1), ((3, 5), 0), ((3, 5), 1), ((3, 5), -2),
                                        ((2, 3, 4, 5), 1), ((2, 3, 4, 5), 2), ((2, 3, 4, 5), -1),
                                        ((2, 3, 4, 5), 0), ((4, 1000), 1), ((1, 1), 1), ((3, 33, 2), 1)],
                         ids=str)
def test_softmax(rng, shape, axis):
    x = rand(rng, shape, -10, 10)
    y = F.softmax(x, axis=axis)
    ref = R.softmax(x, axis=axis)
    assert_close(y, ref, shape[axis], 1.0, rtol=2e-5)
    np.testing.assert_allclose(y.sum(axis=axis), 1.0, rtol=1e-5 * max(1, shape[axis] ** 0.5))


def test_softmax_default_axis(rng):
    x = rand(rng, (3, 4, 6), -5, 5)
    assert_close(F.softmax(x), R.softmax(x, axis=-1), 6, 1.0, rtol=2e-5)


@pytest.mark.parametrize("offset", [1e3, -1e3, 3e4, 88.0, 1e30])
def test_softmax_large_values_stable(rng, offset):
    x = (rng.uniform(-5, 5, size=(4, 9)) + offset).astype(np.float32)
    y = F.softmax(x, axis=1)
    assert np.isfinite(y).all()
    # reference on the float32-rounded input: the result depends only on differences
    assert_close(y, R.softmax(x, axis=1), 9, 1.0, rtol=2e-5)


# --------------------------------------------------------------------------- lrn

@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("C", [1, 2, 5, 16, 37])
def test_lrn(rng, size, C, data_format):
    shape = (2, C, 5, 7) if data_format == "channels_first" else (2, 5, 7, C)
    x = rand(rng, shape, -3, 3)
    for alpha, beta, k in [(1e-4, 0.75, 1.0), (0.5, 0.75, 2.0), (1.0, 1.0, 1.0), (2e-3, 0.5, 0.5)]:
        y = F.lrn(x, size, alpha=alpha, beta=beta, k=k, data_format=data_format)
        ref = R.lrn(x, size, alpha=alpha, beta=beta, k=k, data_format=data_format)
        assert_close(y, ref, size, 1.0, rtol=1e-5, err_msg=f"alpha={alpha} beta={beta} k={k}")


def test_lrn_defaults_and_even_window_by_hand():
    x = np.zeros((1, 4, 1, 1), np.float32)
    x[0, :, 0, 0] = [1.0, 2.0, 3.0, 4.0]
    y = F.lrn(x, 2, alpha=2.0, beta=1.0, k=1.0)
    # size 2: channel c sums c .. c+1 (floor(1/2)=0 before, ceil(1/2)=1 after)
    expected = [1 / (1 + (1 + 4)), 2 / (1 + (4 + 9)), 3 / (1 + (9 + 16)), 4 / (1 + 16)]
    np.testing.assert_allclose(y[0, :, 0, 0], expected, rtol=1e-5)
    xr = np.random.default_rng(1).uniform(-2, 2, (1, 6, 3, 3)).astype(np.float32)
    assert_close(F.lrn(xr, 5), R.lrn(xr, 5), 5, 1.0)


# --------------------------------------------------------------------------- batch_norm

@pytest.mark.parametrize("affine", ["both", "gamma", "beta", "none"])
@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
@pytest.mark.parametrize("shape", [(5, 3), (4, 7, 9), (2, 3, 4, 5), (1, 37, 3, 3), (0, 4, 2, 2)], ids=str)
def test_batch_norm(rng, shape, data_format, affine):
    x = rand(rng, shape, -4, 4)
    c = shape[1] if data_format == "channels_first" else shape[-1]
    mean, var = rand(rng, (c,)), rand(rng, (c,), 0.1, 3)
    gamma = rand(rng, (c,), -2, 2) if affine in ("both", "gamma") else None
    beta = rand(rng, (c,), -2, 2) if affine in ("both", "beta") else None
    y = F.batch_norm(x, mean, var, gamma=gamma, beta=beta, data_format=data_format)
    ref = R.batch_norm(x, mean, var, gamma, beta, data_format=data_format)
    assert_close(y, ref, 4, scale_of(x) * 20)


def test_batch_norm_eps(rng):
    x = rand(rng, (2, 3, 4, 4))
    mean, var = np.zeros(3, np.float32), np.array([0.0, 1e-3, 1.0], np.float32)
    for eps in (1e-5, 1e-3, 0.5):
        y = F.batch_norm(x, mean, var, eps=eps)
        assert_close(y, R.batch_norm(x, mean, var, eps=eps), 4, 1.0 / np.sqrt(eps))


# --------------------------------------------------------------------------- add

@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("sa,sb", [((2, 3, 4, 5), (2, 3, 4, 5)), ((2, 3, 4, 5), (1, 3, 1, 1)), ((2, 3, 4, 5), (5,)),
                                   ((3, 1), (1, 4)), ((1,), (7, 3)), ((2, 1, 4, 1), (3, 1, 5)), ((), (3, 2)),
                                   ((17,), (17,)), ((0, 3), (1, 3))], ids=str)
def test_add(rng, sa, sb, activation):
    a, b = rand(rng, sa, -5, 5), rand(rng, sb, -5, 5)
    y = F.add(a, b, activation=activation)
    assert_close(y, R.add(a, b, activation), 1, 10.0)


def test_add_views_and_dtypes(rng):
    a = rand(rng, (4, 10))[:, ::-2]
    b = rng.integers(-3, 4, size=(1, 5))
    y = F.add(a, b)
    assert_close(y, R.add(a, b), 1, 5.0)
    y = F.add(a.astype(np.float64), b.astype(np.float64))
    assert_close(y, R.add(a, b), 1, 5.0)


# --------------------------------------------------------------------------- concat / flatten

@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
def test_concat_default_channel_axis(rng, data_format):
    cs = [3, 1, 16, 5]
    if data_format == "channels_first":
        ts = [rand(rng, (2, c, 4, 5)) for c in cs]
        expected_shape = (2, sum(cs), 4, 5)
    else:
        ts = [rand(rng, (2, 4, 5, c)) for c in cs]
        expected_shape = (2, 4, 5, sum(cs))
    y = F.concat(ts, data_format=data_format)
    assert y.shape == expected_shape
    assert_close(y, R.concat(ts, data_format=data_format), 1, 0.0, rtol=0)


@pytest.mark.parametrize("axis", [0, 1, 2, 3, -1, -4])
def test_concat_explicit_axis(rng, axis):
    base = [2, 3, 4, 5]
    ts = []
    for extra in (1, 4, 2):
        s = list(base)
        s[axis] = extra
        ts.append(rand(rng, tuple(s)))
    ts.append(rand(rng, tuple(base))[..., ::-1])     # a negatively strided view among them
    for data_format in ("channels_first", "channels_last"):
        y = F.concat(ts, axis=axis, data_format=data_format)
        assert_close(y, R.concat(ts, axis=axis), 1, 0.0, rtol=0)


def test_concat_tuple_and_dtypes(rng):
    ts = (rand(rng, (1, 2, 3, 3)), np.ones((1, 1, 3, 3), np.int64), rand(rng, (1, 2, 3, 3)).astype(np.float64))
    y = F.concat(ts)
    assert_close(y, R.concat(ts), 1, 0.0, rtol=0)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (6,), (3, 7), (2, 1, 3), (0, 3, 2)], ids=str)
def test_flatten(rng, shape, ):
    x = rand(rng, shape)
    for axis in range(len(shape) + 1):
        y = F.flatten(x, axis=axis)
        ref = R.flatten(x, axis=axis)
        assert_close(y, ref, 1, 0.0, rtol=0, err_msg=f"axis={axis}")


def test_flatten_default_axis_and_view(rng):
    x = rand(rng, (2, 3, 4, 5))[:, ::-1, ::2]
    y = F.flatten(x)
    assert y.shape == (2, 3 * 2 * 5)
    assert_close(y, R.flatten(x), 1, 0.0, rtol=0)
